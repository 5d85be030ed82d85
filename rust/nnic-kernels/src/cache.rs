//! The CPU caches: their sizes, detected at run time ([`sizes`]), for blocking that fits the machine it runs on;
//! and evicting memory from them, for timings that meet data the way a large model's forward does.
//!
//! In a decode step every layer's weights have been pushed out of the caches by the rest of the model (GPT-2
//! small holds ~500 MB of float32 weights) before the layer runs again, so a layer timed call after call with
//! its weights warm in L2/L3 measures a different, faster layer: a dense GPT-2 layer took 1.7-3× longer inside
//! the model than in such a loop. [`flush`] writes back and invalidates the cache lines of a buffer, from every
//! level, so that the next call reads it from memory; it costs about one cache-line operation per 64 bytes, far
//! less than touching a buffer larger than the last-level cache (260 MB on the Intel part this was written on,
//! 32 MiB on the AMD Zen 4 one that followed it).

/// Evicts every cache line of `data` from all cache levels, then fences, so that no later load is served from
/// the caches. `clflushopt` where the CPU has it (weakly ordered: the flushes overlap), else `clflush` (each
/// waits for the previous one: ~300 ns per line measured on a 9.4 MB weight, 46 ms). A no-op off x86-64.
pub fn flush(data: &[u8]) {
    #[cfg(target_arch = "x86_64")]
    {
        if data.is_empty() {
            return;
        }
        let (start, end) = (data.as_ptr() as usize & !63, data.as_ptr() as usize + data.len());
        let opt = has_clflushopt();
        for line in (start..end).step_by(64) {
            // SAFETY: every line flushed holds at least one byte of `data`, which is mapped; CLFLUSHOPT is only
            // used where CPUID reports it, CLFLUSH is SSE2 (always present on x86-64).
            unsafe {
                if opt {
                    std::arch::asm!("clflushopt [{p}]", p = in(reg) line, options(nostack, preserves_flags));
                } else {
                    std::arch::x86_64::_mm_clflush(line as *const u8);
                }
            }
        }
        // SAFETY: SSE2.
        unsafe { std::arch::x86_64::_mm_mfence() };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = data;
}

/// CPUID leaf 7, EBX bit 23 (not among the features `is_x86_feature_detected!` knows).
#[cfg(target_arch = "x86_64")]
fn has_clflushopt() -> bool {
    static HAS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    // CPUID is available on every x86-64 CPU; leaf 7 is read only when the maximum leaf (leaf 0) reaches it.
    *HAS.get_or_init(|| {
        use std::arch::x86_64::__cpuid_count;
        __cpuid_count(0, 0).eax >= 7 && (__cpuid_count(7, 0).ebx >> 23) & 1 == 1
    })
}

/// Bytes of one core's data caches and of the last-level cache (0 where unknown).
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct Sizes {
    pub l1d: usize,
    pub l2: usize,
    pub l3: usize,
}

/// The cache sizes of CPU 0, read once: from Linux's `/sys/devices/system/cpu/cpu0/cache`, else from CPUID's
/// deterministic cache parameters (leaf 4 on Intel, 0x8000001D on AMD), else all 0. Why at run time: blocking
/// tuned for one part is wrong on another (the kernels were tuned on an Intel part with 2 MiB of L2 per core and
/// 260 MB of L3, then ran on an AMD Zen 4 with 1 MiB and 32 MiB).
pub fn sizes() -> Sizes {
    static S: std::sync::OnceLock<Sizes> = std::sync::OnceLock::new();
    *S.get_or_init(|| {
        let found = from_sysfs();
        if found.l2 != 0 {
            found
        } else {
            from_cpuid()
        }
    })
}

/// One cache level's entry by (level, data or unified) into `s`.
fn record(s: &mut Sizes, level: u32, data: bool, bytes: usize) {
    match (level, data) {
        (1, true) => s.l1d = bytes,
        (2, true) => s.l2 = bytes,
        (3, true) => s.l3 = bytes,
        _ => {}
    }
}

/// Parses a sysfs cache size: `"32K"`, `"1024K"`, `"32M"` or a plain byte count.
fn parse_size(text: &str) -> Option<usize> {
    let t = text.trim();
    let (digits, unit) = match t.as_bytes().last()? {
        b'K' | b'k' => (&t[..t.len() - 1], 1 << 10),
        b'M' | b'm' => (&t[..t.len() - 1], 1 << 20),
        b'G' | b'g' => (&t[..t.len() - 1], 1 << 30),
        _ => (t, 1),
    };
    digits.parse::<usize>().ok().map(|v| v * unit)
}

fn from_sysfs() -> Sizes {
    let mut s = Sizes::default();
    let dir = std::path::Path::new("/sys/devices/system/cpu/cpu0/cache");
    for index in 0..8 {
        let read = |f: &str| std::fs::read_to_string(dir.join(format!("index{index}")).join(f)).ok();
        let (Some(level), Some(kind), Some(size)) = (read("level"), read("type"), read("size")) else { continue };
        if let (Ok(level), Some(bytes)) = (level.trim().parse(), parse_size(&size)) {
            record(&mut s, level, matches!(kind.trim(), "Data" | "Unified"), bytes);
        }
    }
    s
}

fn from_cpuid() -> Sizes {
    let mut s = Sizes::default();
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::__cpuid_count;
        let (leaf, max) = if crate::cpu::is_amd() {
            (0x8000_001d, __cpuid_count(0x8000_0000, 0).eax)
        } else {
            (4, __cpuid_count(0, 0).eax)
        };
        if max < leaf {
            return s;
        }
        for sub in 0..8 {
            let r = __cpuid_count(leaf, sub);
            let kind = r.eax & 0x1f; // 0: no more caches, 1: data, 2: instruction, 3: unified
            if kind == 0 {
                break;
            }
            let ways = ((r.ebx >> 22) & 0x3ff) as usize + 1;
            let parts = ((r.ebx >> 12) & 0x3ff) as usize + 1;
            let line = (r.ebx & 0xfff) as usize + 1;
            let sets = r.ecx as usize + 1;
            record(&mut s, (r.eax >> 5) & 7, kind != 2, ways * parts * line * sets);
        }
    }
    s
}

/// Every byte of `v` as a byte slice (plain-old-data element types only: integers and floats).
pub fn bytes_of<T: Copy>(v: &[T]) -> &[u8] {
    // SAFETY: the callers pass integer and float slices, which have no padding; the length covers `v` exactly.
    unsafe { std::slice::from_raw_parts(v.as_ptr() as *const u8, std::mem::size_of_val(v)) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_sizes_parse_from_sysfs_text_and_detect_an_l2_no_larger_than_the_l3() {
        assert_eq!(parse_size("32K\n"), Some(32 << 10));
        assert_eq!(parse_size("32768K"), Some(32 << 20));
        assert_eq!(parse_size("2M"), Some(2 << 20));
        assert_eq!(parse_size("4096"), Some(4096));
        assert_eq!(parse_size("lots"), None);
        let s = sizes();
        if s.l2 != 0 && s.l3 != 0 {
            assert!(s.l1d <= s.l2 && s.l2 <= s.l3, "{s:?}");
        }
    }

    #[test]
    fn flushing_keeps_the_data_and_accepts_any_alignment_and_length() {
        let v: Vec<u8> = (0..1000u32).map(|i| (i * 7) as u8).collect();
        for (a, b) in [(0, 0), (0, 1), (3, 67), (5, 1000), (63, 129)] {
            flush(&v[a..b]);
        }
        assert!(v.iter().enumerate().all(|(i, &x)| x == (i as u32 * 7) as u8));
        let f = [1.5f32, -2.0];
        assert_eq!(bytes_of(&f).len(), 8);
        flush(bytes_of(&f));
        assert_eq!(f, [1.5, -2.0]);
    }
}
