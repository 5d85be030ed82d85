//! Packed operand layouts of the int8 GEMM.
//!
//! - Weights `B[K, N]` (s8) are packed once into panels of [`NR`] = 32 columns; inside a panel, K runs in
//!   groups of 4, and each group stores 32 columns × 4 consecutive k values (128 bytes): exactly what one
//!   `vpdpbusd` pair reads. K is padded with zeros to a multiple of 4, N to a multiple of 32.
//! - Activations `A[M, K]` are packed per call into panels of `mr` rows: for each k group, `mr` rows × 4 bytes
//!   of **u8**. Signed activations are stored shifted (`a + 128`), the shift is undone in the epilogue
//!   through the weights' column sums. Padding is the byte 0, which contributes nothing.
use crate::error::{KernelError, Result};
use crate::huge::HugeBuf;
use std::sync::Mutex;

/// Columns per weight panel.
pub const NR: usize = 32;
/// Largest K for which the i32 accumulator is exact for s8 × s8 (|product| ≤ 2^14).
pub const MAX_K: usize = 131_071;

/// `x` rounded up to a multiple of `to`.
#[inline]
pub(crate) fn round_up(x: usize, to: usize) -> usize {
    x.div_ceil(to) * to
}

/// Whether [`pack_groups_avx2`] can run (AVX2 present and the active ISA is not the scalar one).
fn fast_transpose() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        crate::cpu::active() != crate::cpu::Isa::Scalar && std::arch::is_x86_feature_detected!("avx2")
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// Packs k groups `g0..g1` (each of four rows of `src`, row stride `n`) of the first `panels` column panels into
/// `out` (the whole packed buffer, K padded to `kp`), adding each column's values to `sums[j]`; returns whether a byte
/// -128 was among them. One panel at a time over the groups, so that each panel's part is one contiguous run of
/// writes, its column sums stay in registers (as i16 pair sums: at most 16 groups, |sum| <= 4096) and the -128 test
/// is a running byte minimum instead of a pass of its own (a separate scan of the packed 16 MiB took 0.9 ms, one
/// thread). `stream`: non-temporal stores, which write the lines without reading them first (see [`pack_kn`]).
///
/// # Safety
/// Rows `4 g0 .. 4 g1` of `src` hold at least `32 panels` bytes each; `out` holds `panels` panels of `kp` × 32 bytes;
/// `sums` holds `32 panels` i32; `g1 - g0` <= 16; the CPU has AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[allow(clippy::too_many_arguments)]
unsafe fn pack_groups_avx2(
    src: *const i8,
    n: usize,
    kp: usize,
    g0: usize,
    g1: usize,
    panels: usize,
    out: *mut i8,
    sums: *mut i32,
    stream: bool,
) -> bool {
    use std::arch::x86_64::*;
    unsafe {
        let (ones8, ones16) = (_mm256_set1_epi8(1), _mm256_set1_epi16(1));
        let mut low = _mm256_set1_epi8(i8::MAX);
        for p in 0..panels {
            let mut acc = [_mm256_setzero_si256(); 4];
            let dst = out.add(p * kp * NR);
            for g in g0..g1 {
                let r = src.add(4 * g * n + p * NR);
                let ld = |e: usize| _mm256_loadu_si256(r.add(e * n) as *const __m256i);
                let (x0, x1, x2, x3) = (ld(0), ld(1), ld(2), ld(3));
                low = _mm256_min_epi8(low, _mm256_min_epi8(_mm256_min_epi8(x0, x1), _mm256_min_epi8(x2, x3)));
                let a = _mm256_unpacklo_epi8(x0, x1); // lanes: cols 0-7 | 16-23, pairs (r0, r1)
                let b = _mm256_unpackhi_epi8(x0, x1); // cols 8-15 | 24-31
                let c = _mm256_unpacklo_epi8(x2, x3);
                let d = _mm256_unpackhi_epi8(x2, x3);
                let e0 = _mm256_unpacklo_epi16(a, c); // cols 0-3 | 16-19, groups of 4
                let e1 = _mm256_unpackhi_epi16(a, c); // cols 4-7 | 20-23
                let e2 = _mm256_unpacklo_epi16(b, d); // cols 8-11 | 24-27
                let e3 = _mm256_unpackhi_epi16(b, d); // cols 12-15 | 28-31
                // Columns 0-7, 8-15, 16-23, 24-31, each as its four k values.
                let o = [
                    _mm256_permute2x128_si256::<0x20>(e0, e1),
                    _mm256_permute2x128_si256::<0x20>(e2, e3),
                    _mm256_permute2x128_si256::<0x31>(e0, e1),
                    _mm256_permute2x128_si256::<0x31>(e2, e3),
                ];
                let w = dst.add(g * NR * 4) as *mut __m256i;
                for (i, v) in o.into_iter().enumerate() {
                    if stream {
                        _mm256_stream_si256(w.add(i), v);
                    } else {
                        _mm256_storeu_si256(w.add(i), v);
                    }
                    acc[i] = _mm256_add_epi16(acc[i], _mm256_maddubs_epi16(ones8, v));
                }
            }
            for (i, v) in acc.into_iter().enumerate() {
                let q = sums.add(p * NR + 8 * i) as *mut __m256i;
                _mm256_storeu_si256(q, _mm256_add_epi32(_mm256_loadu_si256(q), _mm256_madd_epi16(v, ones16)));
            }
        }
        if stream {
            // Streaming stores are weakly ordered: visible to the threads that read the panels next.
            _mm_sfence();
        }
        _mm256_movemask_epi8(_mm256_cmpeq_epi8(low, _mm256_set1_epi8(i8::MIN))) != 0
    }
}

/// Source bytes a block of the `[K, N]` packing reads (see [`kn_block_groups`]).
const KN_BLOCK_BYTES: usize = 128 << 10;

/// K groups a block of the `[K, N]` packing takes at a time: its `4 · groups` source rows ([`KN_BLOCK_BYTES`])
/// stay in cache while every panel's part of them is written (16 groups at N = 2048, 8 at 4096; at 4096² blocks of
/// 1 to 16 groups measured within the noise of each other), at most 16 (the i16 column sums of
/// [`pack_groups_avx2`]).
fn kn_block_groups(n: usize) -> usize {
    (KN_BLOCK_BYTES / (4 * n.max(1))).clamp(1, 16)
}

/// A pointer that tasks writing disjoint parts of one buffer share.
#[derive(Clone, Copy)]
struct SharedOut(*mut i8);
// SAFETY: every task writes its own k groups of each panel (see `pack_kn`).
unsafe impl Send for SharedOut {}
unsafe impl Sync for SharedOut {}

/// Packs `src` (`[K, N]`, row-major) k groups `g0..g1` into `out` (all of the packed buffer: `sums.len() / 32` panels
/// of `kp` × 32 bytes, zero where K or N is padded), adding the column sums to `sums`; returns whether a byte -128
/// was seen. Whole panels of four real rows go through [`pack_groups_avx2`] where AVX2 runs; the last partial
/// panel and group (and everything elsewhere) byte by byte; `stream` as there.
///
/// # Safety
/// `out` is the packed buffer of this shape, and no other thread writes k groups `g0..g1` of it meanwhile.
#[allow(clippy::too_many_arguments)]
unsafe fn pack_kn_groups(
    src: &[i8],
    k: usize,
    n: usize,
    kp: usize,
    g0: usize,
    g1: usize,
    out: SharedOut,
    sums: &mut [i32],
    stream: bool,
) -> bool {
    let panels = sums.len() / NR;
    let (full_groups, full_panels) = (k / 4, n / NR);
    let simd = fast_transpose();
    let step = kn_block_groups(n);
    let mut seen = false;
    for b0 in (g0..g1).step_by(step) {
        let b1 = (b0 + step).min(g1);
        let fast_to = if simd { b1.min(full_groups).max(b0) } else { b0 };
        #[cfg(target_arch = "x86_64")]
        if fast_to > b0 && full_panels > 0 {
            // SAFETY: groups below `full_groups` have four rows of N >= 32 · `full_panels` bytes; `out` and `sums`
            // hold every panel; at most 16 groups; AVX2 checked (`fast_transpose`).
            seen |= unsafe { pack_groups_avx2(src.as_ptr(), n, kp, b0, fast_to, full_panels, out.0, sums.as_mut_ptr(), stream) };
        }
        for g in b0..b1 {
            let rows = k.saturating_sub(4 * g).min(4);
            let first = if g < fast_to { full_panels } else { 0 };
            for p in first..panels {
                let j0 = p * NR;
                let cols = n.saturating_sub(j0).min(NR);
                for e in 0..rows {
                    let row = &src[(4 * g + e) * n + j0..(4 * g + e) * n + j0 + cols];
                    for (c, &v) in row.iter().enumerate() {
                        // SAFETY: inside panel `p`'s group `g` (128 bytes), which only this task writes.
                        unsafe { *out.0.add(p * kp * NR + g * NR * 4 + c * 4 + e) = v };
                        sums[j0 + c] += v as i32;
                        seen |= v == i8::MIN;
                    }
                }
            }
        }
    }
    seen
}

/// Packs `src` (`[K, N]`, row-major) into `out` (zero where K or N is padded) and its column sums into `colsum`;
/// returns whether no byte is -128. The threads take runs of k groups, each reading its source rows in memory
/// order once (a run of panels instead, as before, read each 4 KiB row in 1 KiB pieces, which the hardware
/// prefetchers followed badly), and keep their own column sums, added up at the end.
///
/// `int8_matmul` packs its B on every call, so this is on its path. At 4096 × 4096 (2 threads, best of 15) it went
/// from 2.7 ms (of which 0.9 ms the separate -128 scan) to 1.0-1.1 ms.
///
/// Where the source and its packed copy do not both fit the L3, the panels are written with streaming stores: the
/// lines are not read before they are written, and the product that follows would find them gone from the cache
/// anyway. `int8_matmul`, 2 threads, alternated, median of 40 each (ms, plain / streaming): 4096 × 4096 M = 1
/// 2.86 / 2.37, M = 16 2.82 / 2.23, M = 128 7.20 / 6.69; 4096 × 11008 M = 1 5.12 / 3.90. Below that they cost: 2048
/// × 4096 M = 1 0.64 / 0.79, 3072 × 4096 1.03 / 1.23 (the product then reads its B from the cache).
fn pack_kn(src: &[i8], k: usize, n: usize, kp: usize, out: &mut [i8], colsum: &mut [i32]) -> bool {
    let groups = kp / 4;
    let step = kn_block_groups(n);
    let threads = if k * n < crate::pool::PAR_MIN { 1 } else { crate::pool::num_threads() };
    let l3 = crate::cache::sizes().l3;
    let stream = l3 > 0 && src.len() + out.len() >= l3;
    let dst = SharedOut(out.as_mut_ptr());
    if threads == 1 {
        // SAFETY: `out` is this shape's packed buffer, written by this thread alone.
        return !unsafe { pack_kn_groups(src, k, n, kp, 0, groups, dst, colsum, stream) };
    }
    // About four runs a thread, each a whole number of blocks, on the GEMMs' own threads (`par::for_each`: torch's
    // OpenMP team), not on the rayon pool: a product right after a packing on the rayon pool found the team thread
    // that shares a CPU with a just-used rayon worker 1-5 ms late (a scheduler slice), once or twice in 30 rounds of
    // `bench/gemm.py`'s M = 1 rows (4 of 5 probes), which opened the avoidance window for the calls after it.
    let per = groups.div_ceil(4 * threads).div_ceil(step).max(1) * step;
    let runs = groups.div_ceil(per);
    let mut partial = vec![0i32; runs * colsum.len()];
    let seen = std::sync::atomic::AtomicBool::new(false);
    let parts: Vec<Mutex<&mut [i32]>> = partial.chunks_mut(colsum.len()).map(Mutex::new).collect();
    super::par::for_each(runs, threads, &|i| {
        let mut sums = parts[i].lock().unwrap_or_else(|e| e.into_inner());
        let (g0, g1) = (i * per, ((i + 1) * per).min(groups));
        // SAFETY: run `i` alone writes k groups `g0..g1` of each panel.
        if unsafe { pack_kn_groups(src, k, n, kp, g0, g1, dst, &mut sums, stream) } {
            seen.store(true, std::sync::atomic::Ordering::Relaxed);
        }
    });
    drop(parts);
    for part in partial.chunks(colsum.len()) {
        colsum.iter_mut().zip(part).for_each(|(s, &v)| *s += v);
    }
    !seen.into_inner()
}

/// Packs `src` (`[N, K]`, row-major: `nn.Linear.weight`) into `out` and its column sums into `colsum`; returns
/// whether no byte is -128 (as [`pack_kn`]). The threads take runs of panels; each column of a panel is one source
/// row, read in memory order.
fn pack_nk(src: &[i8], k: usize, n: usize, kp: usize, out: &mut [i8], colsum: &mut [i32]) -> bool {
    // Whether a -128 was among the run's bytes.
    let run = |p0: usize, out: &mut [i8], sums: &mut [i32]| {
        let mut seen = false;
        for (pp, o) in out.chunks_mut(kp * NR).enumerate() {
            let cols = n.saturating_sub((p0 + pp) * NR).min(NR);
            for c in 0..cols {
                let j = (p0 + pp) * NR + c;
                let mut s = 0i32;
                for (kk, &v) in src[j * k..(j + 1) * k].iter().enumerate() {
                    o[(kk / 4) * NR * 4 + c * 4 + kk % 4] = v;
                    s += v as i32;
                    seen |= v == i8::MIN;
                }
                sums[pp * NR + c] = s;
            }
        }
        seen
    };
    let panels = colsum.len() / NR;
    let threads = if k * n < crate::pool::PAR_MIN { 1 } else { crate::pool::num_threads() };
    if threads == 1 {
        return !run(0, out, colsum);
    }
    // On the GEMMs' own threads, as `pack_kn` says.
    let per = panels.div_ceil(threads * 2).max(1);
    let seen = std::sync::atomic::AtomicBool::new(false);
    let chunks: Vec<Mutex<(&mut [i8], &mut [i32])>> =
        out.chunks_mut(per * kp * NR).zip(colsum.chunks_mut(per * NR)).map(Mutex::new).collect();
    super::par::for_each(chunks.len(), threads, &|i| {
        let mut chunk = chunks[i].lock().unwrap_or_else(|e| e.into_inner());
        let (d, s) = &mut *chunk;
        if run(i * per, d, s) {
            seen.store(true, std::sync::atomic::Ordering::Relaxed);
        }
    });
    !seen.into_inner()
}

/// s8 weights `B[K, N]` packed for the micro-kernels, with per-column sums (for the zero-point terms).
#[derive(Clone, Debug, PartialEq)]
pub struct PackedB {
    k: usize,
    n: usize,
    /// K padded to a multiple of 4.
    kp: usize,
    /// On 2 MiB pages where the OS gives them ([`HugeBuf`]): the few-row products stream it from DRAM.
    data: HugeBuf<i8>,
    /// `sum_k B[k, j]` for each (padded) column.
    colsum: Vec<i32>,
    /// No byte is -128, so the AVX2 path may take its `vpmaddubsw` kernel ([`super::micro::x86::avx2_sign`]).
    min_free: bool,
}

fn check_k(k: usize) -> Result<()> {
    if k > MAX_K {
        return Err(KernelError::Invalid {
            what: format!("K = {k} is too large: the int32 accumulator is exact only for K <= {MAX_K}"),
        });
    }
    Ok(())
}

pub(crate) fn check_dims(m: usize, k: usize, n: usize) -> Result<()> {
    check_k(k)?;
    let _ = (m, n);
    Ok(())
}

impl PackedB {
    /// Packs `b`, row-major `[K, N]` (the layout of `torch._int_mm`'s second operand).
    pub fn from_kn(b: &[i8], k: usize, n: usize) -> Result<PackedB> {
        Self::pack(b, k, n, false, None)
    }

    /// [`PackedB::from_kn`] into the buffer of `old` where it has the size this shape needs (else a new one).
    /// Why: a product that packs its B on every call (`int8_matmul`) otherwise takes a fresh 2 MiB-page buffer
    /// each time, whose pages the OS faults in and zeroes, which this then zeroes and writes again, and gives
    /// back at the end: at 4096 × 4096 that was most of the call.
    pub fn from_kn_reusing(old: PackedB, b: &[i8], k: usize, n: usize) -> Result<PackedB> {
        Self::pack(b, k, n, false, Some(old.data))
    }

    /// Packs `w`, row-major `[N, K]` (the layout of `nn.Linear.weight`): `B = w.T`.
    pub fn from_nk(w: &[i8], n: usize, k: usize) -> Result<PackedB> {
        Self::pack(w, k, n, true, None)
    }

    /// Packs `src` (`[K, N]`, or `[N, K]` when `nk`) into `reuse` when it holds exactly the bytes this shape
    /// needs (zeroed first where the shape pads K or N: the packing writes every other byte), else into a new
    /// zeroed buffer.
    fn pack(src: &[i8], k: usize, n: usize, nk: bool, reuse: Option<HugeBuf<i8>>) -> Result<PackedB> {
        check_k(k)?;
        if src.len() != k * n {
            return Err(KernelError::Mismatch {
                what: format!("weight has {} elements, expected K*N = {k}*{n} = {}", src.len(), k * n),
            });
        }
        let kp = round_up(k.max(1), 4);
        let np = round_up(n.max(1), NR);
        let mut data = match reuse {
            Some(mut d) if d.len() == kp * np => {
                if kp != k || np != n {
                    d.fill(0);
                }
                d
            }
            _ => HugeBuf::<i8>::zeroed(kp * np),
        };
        let mut colsum = vec![0i32; np];
        let min_free = if nk {
            pack_nk(src, k, n, kp, &mut data, &mut colsum)
        } else {
            pack_kn(src, k, n, kp, &mut data, &mut colsum)
        };
        Ok(PackedB { k, n, kp, data, colsum, min_free })
    }

    /// The original `[K, N]` matrix (round trip of [`PackedB::from_kn`]).
    pub fn to_kn(&self) -> Vec<i8> {
        let mut out = vec![0i8; self.k * self.n];
        for kk in 0..self.k {
            for j in 0..self.n {
                out[kk * self.n + j] = self.get(kk, j);
            }
        }
        out
    }

    /// The `[N, K]` matrix (round trip of [`PackedB::from_nk`]).
    pub fn to_nk(&self) -> Vec<i8> {
        let mut out = vec![0i8; self.k * self.n];
        for j in 0..self.n {
            for kk in 0..self.k {
                out[j * self.k + kk] = self.get(kk, j);
            }
        }
        out
    }

    #[inline]
    fn get(&self, kk: usize, j: usize) -> i8 {
        self.data[(j / NR) * self.kp * NR + (kk / 4) * NR * 4 + (j % NR) * 4 + kk % 4]
    }

    pub fn k(&self) -> usize {
        self.k
    }
    pub fn n(&self) -> usize {
        self.n
    }
    pub(crate) fn kp(&self) -> usize {
        self.kp
    }
    pub(crate) fn colsum(&self) -> &[i32] {
        &self.colsum
    }
    /// Whether no weight byte is -128 (see the field).
    pub(crate) fn min_free(&self) -> bool {
        self.min_free
    }
    /// Bytes held (packed data and column sums).
    pub fn nbytes(&self) -> usize {
        self.data.len() + 4 * self.colsum.len()
    }
    /// The packed panels as stored (32-column panels, each all of K in groups of 4, panel after panel): for
    /// measurements that read the same memory as the tiles with other loops (`examples/gemv_split`).
    pub fn data_bytes(&self) -> &[i8] {
        &self.data
    }
    /// Pointer to panel `p` at k group `g`.
    #[inline]
    pub(crate) fn panel_ptr(&self, p: usize, g: usize) -> *const i8 {
        debug_assert!(p * self.kp * NR + g * NR * 4 <= self.data.len());
        // SAFETY: in bounds by the layout (checked above in debug builds).
        unsafe { self.data.as_ptr().add(p * self.kp * NR + g * NR * 4) }
    }
}

/// Activations packed as u8 panels of `mr` rows (the last panel may have fewer rows and is packed with its
/// own row count), plus each row's zero point (in u8 terms), scale and byte sum.
pub(crate) struct PackedA {
    pub m: usize,
    pub mr: usize,
    pub kp: usize,
    pub data: Vec<u8>,
    /// Zero point of each row in the u8 domain (128 for shifted s8).
    pub zero: Vec<i32>,
    /// Scale of each row (float path only; empty for the integer path).
    pub scale: Vec<f32>,
    /// `sum_k A_u8[i, k]` of each row (used with weight zero points).
    pub rowsum: Vec<i32>,
    /// Every code is at most 127 (7-bit activations, `reduce_range`): the AVX2 path's narrow tile is exact.
    pub narrow: bool,
}

impl PackedA {
    /// Pointer to row panel `p` at k group `g`.
    #[inline]
    pub fn panel_ptr_rows(&self, p: usize, g: usize) -> *const u8 {
        let rows = (self.m - p * self.mr).min(self.mr);
        debug_assert!(p * self.kp * self.mr + g * rows * 4 <= self.data.len());
        // SAFETY: in bounds by the layout.
        unsafe { self.data.as_ptr().add(p * self.kp * self.mr + g * rows * 4) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic bytes in [-127, 127] (a linear congruential generator).
    fn bytes(len: usize, seed: u64) -> Vec<i8> {
        let mut x = seed;
        (0..len)
            .map(|_| {
                x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                (((x >> 33) % 255) as i16 - 127) as i8
            })
            .collect()
    }

    /// The packed layout by its definition: panel `j / 32`, k group `kk / 4`, column `j % 32`, byte `kk % 4`;
    /// zero in the padding.
    fn expected_layout(src: &[i8], k: usize, n: usize) -> Vec<i8> {
        let (kp, np) = (round_up(k.max(1), 4), round_up(n.max(1), NR));
        let mut out = vec![0i8; kp * np];
        for kk in 0..k {
            for j in 0..n {
                out[(j / NR) * kp * NR + (kk / 4) * NR * 4 + (j % NR) * 4 + kk % 4] = src[kk * n + j];
            }
        }
        out
    }

    /// `[K, N]` packing at shapes with and without partial panels and k groups, on one thread and on the pool (K·N
    /// from 65536): the bytes of the definition, each column's sum, and whether a -128 was seen wherever it sits (in
    /// the vectorised part, the last partial panel, the last partial group, or nowhere); `[N, K]` packing of the
    /// transpose gives the same.
    #[test]
    fn kn_packing_gives_the_layout_the_column_sums_and_the_minus_128_flag() {
        for (k, n) in [(1, 1), (3, 5), (4, 32), (7, 33), (64, 64), (67, 95), (256, 256), (259, 300), (1030, 96)] {
            let clean = bytes(k * n, (k * 1000 + n) as u64);
            let places = [None, Some(0), Some(k * n - 1), Some((k / 2) * n + n / 2), Some((k - 1) * n)];
            for at in places {
                let mut src = clean.clone();
                if let Some(i) = at {
                    src[i] = i8::MIN;
                }
                let pb = PackedB::from_kn(&src, k, n).unwrap();
                assert_eq!(&pb.data[..], &expected_layout(&src, k, n)[..], "K {k} N {n} -128 at {at:?}");
                for j in 0..n {
                    let want: i32 = (0..k).map(|kk| src[kk * n + j] as i32).sum();
                    assert_eq!(pb.colsum[j], want, "K {k} N {n} column {j}");
                }
                assert!(pb.colsum[n..].iter().all(|&s| s == 0));
                assert_eq!(pb.min_free(), at.is_none(), "K {k} N {n} -128 at {at:?}");
                // Packed again into the same buffer (`int8_matmul`'s reuse): the same bytes, padding included.
                let again = PackedB::from_kn_reusing(PackedB::from_kn(&clean, k, n).unwrap(), &src, k, n).unwrap();
                assert_eq!(again, pb);
                // From the transpose (`[N, K]`, a Linear's weight): the same packing, sums and flag.
                let nk: Vec<i8> = (0..n * k).map(|i| src[(i % k) * n + i / k]).collect();
                assert_eq!(PackedB::from_nk(&nk, n, k).unwrap(), pb, "K {k} N {n} -128 at {at:?}");
            }
        }
    }

    /// Streaming stores (taken when the source and its packed copy overflow the L3) write the bytes and sums of
    /// plain ones.
    #[test]
    fn streaming_stores_pack_what_plain_stores_pack() {
        let (k, n) = (130, 4096 + 64);
        let src = bytes(k * n, 7);
        let (kp, np) = (round_up(k, 4), round_up(n, NR));
        let pack = |stream: bool| {
            let mut out = HugeBuf::<i8>::zeroed(kp * np);
            let mut sums = vec![0i32; np];
            // SAFETY: `out` is this shape's packed buffer, written by this thread alone.
            let seen = unsafe { pack_kn_groups(&src, k, n, kp, 0, kp / 4, SharedOut(out.as_mut_ptr()), &mut sums, stream) };
            (out.to_vec(), sums, seen)
        };
        let (plain, streamed) = (pack(false), pack(true));
        assert_eq!(plain, streamed);
        assert_eq!(plain.0, expected_layout(&src, k, n));
    }
}
