//! Exact few-row products `out = a · b` that read `b` in its own `[K, N]` layout (`torch._int_mm`'s), for
//! [`super::int8_matmul`] at few rows on VNNI: packing B for one product reads and writes all of it once more
//! than the product does (at 4096² the packing alone took as long as two M = 1 products from memory).
//!
//! Each k group's four source rows are interleaved in registers into the `vpdpbusd` layout (as the packing
//! would store them), with every weight byte shifted to u8 (`b + 128`) so that the activations can stay signed
//! (the s8 operand): `Σ (b + 128) a = Σ a b + 128 Σ a`, and the last term is one number per row. The threads take
//! runs of k groups, so that each reads one contiguous stretch of B in memory order, into partial sums of their
//! own, added up at the end.
use super::panels::round_up;
use std::sync::Mutex;

/// Rows up to which [`super::int8_matmul`] takes this product on VNNI instead of packing B. Each row's partial
/// sums go to memory and back once per block of [`GROUPS`], so the cost per row grows faster than the packed
/// product's. Against packing + the packed product (`int8_matmul` before; 2 threads, alternated, medians of 30, ms):
/// 4096² M = 1 0.38 / 1.47, M = 2 0.58 / 1.57, M = 4 0.71 / 1.63, M = 8 1.64 / 1.65; 4096 × 11008 M = 1 1.48 /
/// 2.80, M = 4 1.98 / 3.49, M = 8 4.03 / 4.00; 768 × 3072 M = 1 0.045 / 0.101, M = 4 0.122 / 0.119, M = 8 0.43 /
/// 0.15.
pub(crate) const MAX_ROWS: usize = 4;

/// k groups (of four source rows) interleaved at a time: their 8 weight vectors stay in registers while every
/// row multiplies them. Two, not more: each block's source rows are read as that many streams, one line of each
/// per strip, and eight streams kept the memory busier than 16 or 24 (4096², M = 1: 0.38 ms against 0.63-1.0 with 4
/// groups, 0.94 with 6; 4096 × 11008: 1.48 against 2.4-2.9 and 4.6); one group (four streams) read 0.63.
const GROUPS: usize = 2;

/// Columns of one step: a 64-byte line of each source row.
const STRIP: usize = 64;

/// Exact `out[m, n] = a[m, k] · b[k, n]` (i32, row-major) on AVX-512 VNNI without packing `b`.
///
/// # Safety
/// The CPU has AVX-512F/BW and AVX512-VNNI; `a`, `b` and `out` hold `m k`, `k n` and `m n` values, and `k` is at
/// most [`super::MAX_K`] (the caller, [`super::int8_matmul`], checked all of it).
pub(crate) unsafe fn matmul(a: &[i8], m: usize, k: usize, b: &[i8], n: usize, out: &mut [i32]) {
    if m == 0 || n == 0 {
        return;
    }
    let n64 = round_up(n, STRIP);
    let blocks = k.div_ceil(4 * GROUPS).max(1);
    // The activations as u32 words of four k values, zero past K (a whole number of blocks), and `128 Σ a` per row.
    let ka = blocks * GROUPS * 4;
    let mut apad = vec![0i8; m * ka];
    let mut shift = vec![0i32; m];
    for r in 0..m {
        apad[r * ka..r * ka + k].copy_from_slice(&a[r * k..(r + 1) * k]);
        shift[r] = 128 * a[r * k..(r + 1) * k].iter().map(|&v| v as i32).sum::<i32>();
    }
    let threads = if m * k * n < crate::pool::PAR_MIN { 1 } else { crate::pool::num_threads() };
    // About two runs a thread (a descheduled thread leaves its second run to the others), at least 16 blocks each.
    let runs = (2 * threads).min(blocks.div_ceil(16)).max(1);
    let per = blocks.div_ceil(runs);
    let runs = blocks.div_ceil(per);
    // Each run's partial sums, strip by strip, the rows of a strip side by side (see `x86::block`).
    let parts: Vec<Mutex<Vec<i32>>> = (0..runs).map(|_| Mutex::new(Vec::new())).collect();
    let run = |i: usize| {
        let mut sums = parts[i].lock().unwrap_or_else(|e| e.into_inner());
        *sums = vec![0i32; m * n64];
        for blk in i * per..((i + 1) * per).min(blocks) {
            // SAFETY: the block's rows past K are not read (`k` bounds them); `apad` holds every block's words;
            // `sums` holds `m · n64` values; the caller checked the CPU.
            unsafe { x86::block(b.as_ptr(), k, n, blk * GROUPS * 4, apad.as_ptr().add(blk * GROUPS * 4), ka, m, &mut sums, n64) };
        }
    };
    // One run stays on the calling thread (`par::for_each` runs a single task inline).
    super::par::for_each(runs, threads, &run);
    // The sums in the strip's column order (see `x86::block`), added up, less `128 Σ a`.
    let parts: Vec<Vec<i32>> = parts.into_iter().map(|p| p.into_inner().unwrap_or_else(|e| e.into_inner())).collect();
    for r in 0..m {
        let row = &mut out[r * n..(r + 1) * n];
        row.fill(shift[r].wrapping_neg());
        for part in &parts {
            for s0 in 0..n64 / STRIP {
                let strip = &part[(s0 * m + r) * STRIP..(s0 * m + r + 1) * STRIP];
                for (p, &v) in strip.iter().enumerate() {
                    let j = s0 * STRIP + column(p);
                    if j < n {
                        row[j] = row[j].wrapping_add(v);
                    }
                }
            }
        }
    }
}

/// The column (within its strip of 64) whose sum sits at position `p` of the strip's four accumulators: vector
/// `i = p / 16` holds, in each 128-bit lane `l`, columns `16 l + 4 i .. 16 l + 4 i + 4` (the byte interleave works
/// within lanes).
fn column(p: usize) -> usize {
    let (i, l, c) = (p / 16, (p % 16) / 4, p % 4);
    16 * l + 4 * i + c
}

/// The AVX-512 part (this whole module is x86-64 only: `gemm/mod.rs` declares it so).
mod x86 {
    use super::{GROUPS, STRIP};
    use std::arch::x86_64::*;

    /// Adds one block of [`GROUPS`] k groups (source rows `row0 .. row0 + 4 GROUPS`, those past `k` taken as zero)
    /// to the sums of the `m` rows, strip by strip: the strip's line of each of the block's rows is shifted to u8
    /// and the lines of each group interleaved into four vectors of 16 columns × 4 k values; then each row's four
    /// accumulators are loaded, multiplied with all of them, and stored. `sums` holds the `n64 / 64` strips one
    /// after another, each the `m` rows' 64 sums side by side. `a`: the block's activation words of row 0 (row
    /// stride `ka`).
    ///
    /// # Safety
    /// As [`super::matmul`]; `b` holds `k` rows of `n`; `a` has `4 GROUPS` readable bytes at each row's offset;
    /// `sums` holds `m · n64` values.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn block(
        b: *const i8,
        k: usize,
        n: usize,
        row0: usize,
        a: *const i8,
        ka: usize,
        m: usize,
        sums: &mut [i32],
        n64: usize,
    ) {
        unsafe {
            let flip = _mm512_set1_epi8(i8::MIN);
            for s in 0..n64 / STRIP {
                let j0 = s * STRIP;
                let mask: __mmask64 = if n - j0 >= STRIP { !0 } else { (1u64 << (n - j0)) - 1 };
                let mut w = [[_mm512_setzero_si512(); 4]; GROUPS];
                for (q, wq) in w.iter_mut().enumerate() {
                    let line = |e: usize| {
                        let row = row0 + 4 * q + e;
                        let x = if row < k {
                            _mm512_maskz_loadu_epi8(mask, b.add(row * n + j0))
                        } else {
                            _mm512_setzero_si512()
                        };
                        _mm512_xor_si512(x, flip)
                    };
                    let (x0, x1, x2, x3) = (line(0), line(1), line(2), line(3));
                    let lo01 = _mm512_unpacklo_epi8(x0, x1);
                    let hi01 = _mm512_unpackhi_epi8(x0, x1);
                    let lo23 = _mm512_unpacklo_epi8(x2, x3);
                    let hi23 = _mm512_unpackhi_epi8(x2, x3);
                    *wq = [
                        _mm512_unpacklo_epi16(lo01, lo23),
                        _mm512_unpackhi_epi16(lo01, lo23),
                        _mm512_unpacklo_epi16(hi01, hi23),
                        _mm512_unpackhi_epi16(hi01, hi23),
                    ];
                }
                for r in 0..m {
                    let acc = sums.as_mut_ptr().add((s * m + r) * STRIP) as *mut __m512i;
                    let mut v = [_mm512_loadu_si512(acc), _mm512_loadu_si512(acc.add(1)),
                                 _mm512_loadu_si512(acc.add(2)), _mm512_loadu_si512(acc.add(3))];
                    let ar = a.add(r * ka);
                    for (q, wq) in w.iter().enumerate() {
                        let word = _mm512_set1_epi32((ar.add(4 * q) as *const i32).read_unaligned());
                        for i in 0..4 {
                            v[i] = _mm512_dpbusd_epi32(v[i], wq[i], word);
                        }
                    }
                    for (i, vi) in v.into_iter().enumerate() {
                        _mm512_storeu_si512(acc.add(i), vi);
                    }
                }
            }
        }
    }
}
