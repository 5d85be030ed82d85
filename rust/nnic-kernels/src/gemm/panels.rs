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

/// Whether [`transpose_4x32`] can run (AVX2 present and the active ISA is not the scalar one).
fn fast_transpose() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        crate::cpu::active() != crate::cpu::Isa::Scalar && std::arch::is_x86_feature_detected!("avx2")
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// Interleaves four rows of 32 bytes into 32 groups of 4 bytes (`out[4c + e] = row_e[c]`) and adds each column's
/// four values to `sums[c]`. Why the sums here: added element by element beside the transpose they took most of
/// the packing's time (`int8_matmul` packs its B on every call).
///
/// # Safety
/// Each row pointer has 32 readable bytes, `out` 128 writable bytes, `sums` 32 writable i32; the CPU has AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn transpose_4x32(r0: *const i8, r1: *const i8, r2: *const i8, r3: *const i8, out: *mut i8, sums: *mut i32) {
    use std::arch::x86_64::*;
    unsafe {
        let ld = |p: *const i8| _mm256_loadu_si256(p as *const __m256i);
        let (x0, x1, x2, x3) = (ld(r0), ld(r1), ld(r2), ld(r3));
        // Column sums: each row widened to i16 (columns 0-15, 16-31), four rows added (|sum| <= 512), widened to i32.
        let wide = |x: __m256i, h: usize| {
            _mm256_cvtepi8_epi16(if h == 0 { _mm256_castsi256_si128(x) } else { _mm256_extracti128_si256::<1>(x) })
        };
        for h in 0..2 {
            let (a, b) = (_mm256_add_epi16(wide(x0, h), wide(x1, h)), _mm256_add_epi16(wide(x2, h), wide(x3, h)));
            let t = _mm256_add_epi16(a, b);
            for q in 0..2 {
                let part = if q == 0 { _mm256_castsi256_si128(t) } else { _mm256_extracti128_si256::<1>(t) };
                let p = sums.add(16 * h + 8 * q) as *mut __m256i;
                _mm256_storeu_si256(p, _mm256_add_epi32(_mm256_loadu_si256(p), _mm256_cvtepi16_epi32(part)));
            }
        }
        let a = _mm256_unpacklo_epi8(x0, x1); // lanes: cols 0-7 | 16-23, pairs (r0, r1)
        let b = _mm256_unpackhi_epi8(x0, x1); // cols 8-15 | 24-31
        let c = _mm256_unpacklo_epi8(x2, x3);
        let d = _mm256_unpackhi_epi8(x2, x3);
        let e0 = _mm256_unpacklo_epi16(a, c); // cols 0-3 | 16-19, groups of 4
        let e1 = _mm256_unpackhi_epi16(a, c); // cols 4-7 | 20-23
        let e2 = _mm256_unpacklo_epi16(b, d); // cols 8-11 | 24-27
        let e3 = _mm256_unpackhi_epi16(b, d); // cols 12-15 | 28-31
        let o = out as *mut __m256i;
        _mm256_storeu_si256(o, _mm256_permute2x128_si256::<0x20>(e0, e1));
        _mm256_storeu_si256(o.add(1), _mm256_permute2x128_si256::<0x20>(e2, e3));
        _mm256_storeu_si256(o.add(2), _mm256_permute2x128_si256::<0x31>(e0, e1));
        _mm256_storeu_si256(o.add(3), _mm256_permute2x128_si256::<0x31>(e2, e3));
    }
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
        // A run of panels `p0..`: reads walk the source in memory order (for [K, N]: row by row across the
        // run of panels, so that each source row is read sequentially once).
        let run = |p0: usize, out: &mut [i8], sums: &mut [i32]| {
            let panels = out.len() / (kp * NR);
            if nk {
                for pp in 0..panels {
                    let cols = n.saturating_sub((p0 + pp) * NR).min(NR);
                    let o = &mut out[pp * kp * NR..(pp + 1) * kp * NR];
                    for c in 0..cols {
                        let j = (p0 + pp) * NR + c;
                        let row = &src[j * k..(j + 1) * k];
                        let mut s = 0i32;
                        for (kk, &v) in row.iter().enumerate() {
                            o[(kk / 4) * NR * 4 + c * 4 + kk % 4] = v;
                            s += v as i32;
                        }
                        sums[pp * NR + c] = s;
                    }
                }
            } else {
                let simd = fast_transpose();
                for g in 0..k.div_ceil(4) {
                    for pp in 0..panels {
                        let j0 = (p0 + pp) * NR;
                        let cols = n.saturating_sub(j0).min(NR);
                        let dst = &mut out[pp * kp * NR + g * NR * 4..pp * kp * NR + (g + 1) * NR * 4];
                        let sm = &mut sums[pp * NR..pp * NR + cols];
                        let rows = (k - 4 * g).min(4);
                        if simd && rows == 4 && cols == NR {
                            #[cfg(target_arch = "x86_64")]
                            // SAFETY: four rows of 32 bytes exist at these offsets; `dst` has 128 bytes, `sm` 32
                            // sums; AVX2 checked.
                            unsafe {
                                let r = |e: usize| src.as_ptr().add((4 * g + e) * n + j0);
                                transpose_4x32(r(0), r(1), r(2), r(3), dst.as_mut_ptr(), sm.as_mut_ptr());
                            }
                            continue;
                        }
                        for e in 0..rows {
                            let kk = 4 * g + e;
                            for (s, &v) in sm.iter_mut().zip(&src[kk * n + j0..kk * n + j0 + cols]) {
                                *s += v as i32;
                            }
                        }
                        for e in 0..rows {
                            let kk = 4 * g + e;
                            let row = &src[kk * n + j0..kk * n + j0 + cols];
                            for (d, &v) in dst.chunks_exact_mut(4).zip(row) {
                                d[e] = v;
                            }
                        }
                    }
                }
            }
        };
        let np_ = np / NR;
        let threads = if k * n < crate::pool::PAR_MIN { 1 } else { crate::pool::num_threads() };
        let per = np_.div_ceil(threads * 2).max(1);
        if threads == 1 {
            run(0, &mut data, &mut colsum);
        } else {
            // On the GEMMs' own threads (`par::for_each`: torch's OpenMP team), not on the rayon pool. Why:
            // `int8_matmul` packs B on every call, and the GEMM that follows found the team thread that shares a
            // CPU with a just-used rayon worker 1-5 ms late (a scheduler slice) once or twice in 30 rounds of
            // `bench/gemm.py`'s M = 1 rows (4 of 5 probes), which opened the avoidance window for the calls after it.
            let chunks: Vec<Mutex<(&mut [i8], &mut [i32])>> =
                data.chunks_mut(per * kp * NR).zip(colsum.chunks_mut(per * NR)).map(Mutex::new).collect();
            super::par::for_each(chunks.len(), threads, &|i| {
                let mut chunk = chunks[i].lock().unwrap_or_else(|e| e.into_inner());
                let (d, s) = &mut *chunk;
                run(i * per, d, s);
            });
        }
        let min_free = !data.contains(&i8::MIN);
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
