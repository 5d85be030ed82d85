//! Batched int8 kernels (int8 values, int8 activations, `m ≥ GEMV_MAX_M` rows): integer dot products over
//! **K-quads**, the unit `vpdpbusd` multiplies.
//!
//! Why: at 128 rows the dense VNNI GEMM ([`crate::gemm`]) does 64 useful multiply-adds per instruction, while
//! the float tiled kernels ([`super::spmm`]) do 16 per stored value; at 90 % zeros they lost every BERT-base
//! layer to it. Here each output row keeps its nonzero quads (4 consecutive inputs, the zeros inside a quad
//! kept): at 90 % unstructured about `1 - 0.9⁴ ≈ 34 %` of the quads hold a value, so the product takes ~2.9×
//! fewer `vpdpbusd` than the dense one, each still doing 16 rows × 4 inputs.
//!
//! Layout, derived once from the CSR weight ([`Quads`]): per output row and per block of [`KB_QUADS`] quads,
//! the nonzero quads' positions (u16) and their 4 codes (one i32). Activations are the u8 codes of
//! [`super::act`] (the int8 GEMM's quantization), packed per call as `[k/4][mp][4]` (`mp` = `m` rounded up to
//! 16, zero padded), so that the 16 rows × 4 inputs one instruction reads are one 64-byte line.
//!
//! Loop (per task: a range of output rows × a group of up to [`GROUP_ROWS`] batch rows): for each K block
//! (its slice of the packed activations, ≤ 32 KiB, stays in L1), for each output row, each stored quad is
//! broadcast once and multiplied into up to 8 accumulators of 16 rows: one 64-byte load per `vpdpbusd`, from
//! L1. The i32 partial sums of the task wait in a small buffer between K blocks. Sums are exact (|u8 · s8| ≤
//! 2¹⁵, K ≤ 2¹⁶); the zero points are subtracted per output as `z_m · Σ codes_r`, then the epilogue scales.
//!
//! The portable loop is the readable ground truth and runs on the scalar ISA; AVX-512 with VNNI runs the
//! `vpdpbusd` loop; AVX2 (no VNNI) keeps the float tiled kernels.
use super::{row_chunks, Epilogue, RowCols, SparseLinear, Values};
use crate::cpu::{self, Isa};
use crate::gemm::par;

/// Quads per K block: with [`GROUP_ROWS`] rows, the block's packed activations take `64 · 128 · 4` = 32 KiB.
pub(crate) const KB_QUADS: usize = 64;
/// Batch rows per task group: 8 accumulators of 16 rows.
const GROUP_ROWS: usize = 128;
/// Quads per task of [`pack_quads`]' transposition.
const PACK_QUADS: usize = 64;
/// Output rows whose i32 partial sums (`ROW_TILE · GROUP_ROWS · 4` bytes) go through all K blocks together.
const ROW_TILE: usize = 64;

/// The nonzero K-quads of every output row, split into blocks of [`KB_QUADS`] quads.
#[derive(Clone, Debug)]
pub(crate) struct Quads {
    /// K blocks per row.
    nkb: usize,
    /// Row `r`'s quads in K block `b` are `ptr[r · nkb + b] .. ptr[r · nkb + b + 1]`.
    ptr: Vec<u32>,
    /// Each quad's position (`k / 4`).
    pos: Vec<u16>,
    /// Each quad's 4 codes, little-endian in an i32 (a `vpdpbusd` broadcast operand).
    val: Vec<i32>,
}

impl Quads {
    /// Builds the quads of a CSR weight with int8 values (`None` otherwise).
    pub(crate) fn of(w: &SparseLinear) -> Option<Quads> {
        let Values::I8(v) = w.values() else { return None };
        let (rows, k) = (w.out_features(), w.in_features());
        let nkb = k.div_ceil(4 * KB_QUADS).max(1);
        let mut q = Quads { nkb, ptr: Vec::with_capacity(rows * nkb + 1), pos: Vec::new(), val: Vec::new() };
        q.ptr.push(0);
        for r in 0..rows {
            let (range, RowCols::Csr(cols)) = w.row(r) else { return None };
            let (mut b, mut last) = (0, None);
            for (&c, &code) in cols.iter().zip(&v[range]) {
                let p = c as usize / 4;
                if last != Some(p) {
                    while p / KB_QUADS > b {
                        q.ptr.push(q.pos.len() as u32);
                        b += 1;
                    }
                    q.pos.push(p as u16);
                    q.val.push(0);
                    last = Some(p);
                }
                *q.val.last_mut().expect("pushed above") |= ((code as u8) as i32) << (8 * (c as usize % 4));
            }
            while b < nkb {
                q.ptr.push(q.pos.len() as u32);
                b += 1;
            }
        }
        Some(q)
    }

    /// Evicts the quads from the CPU caches (see [`SparseLinear::flush_caches`]).
    pub(crate) fn flush_caches(&self) {
        use crate::cache::{bytes_of, flush};
        flush(bytes_of(&self.ptr));
        flush(bytes_of(&self.pos));
        flush(bytes_of(&self.val));
    }
}

/// Whether batched int8 products run on quads on `isa`: the portable loop on the scalar ISA, `vpdpbusd` with
/// AVX-512 VNNI.
pub(crate) fn applies(isa: Isa) -> bool {
    match isa {
        Isa::Scalar => true,
        Isa::Avx512 => cpu::has_vnni_vbmi2(),
        Isa::Avx2 => false,
    }
}

/// `xq[m, k]` (u8) as `[k/4][mp][4]`, zero padded to `mp = m` rounded up to 16 rows and to whole quads; returns
/// the buffer and the offset where that layout starts, on a 64-byte line.
///
/// A quad is 4 bytes, so this is a transposition of `[m][k/4]` 32-bit elements ([`transpose32`]: 16 × 16
/// blocks in registers on AVX-512) when `k % 4 == 0`; otherwise quad by quad, each copied as one u32 (a copy of a
/// run-time length calls `memcpy`: 60-100 µs at 128 × 768). Line-aligned because every `vpdpbusd` of the kernel
/// loads one 64-byte run of it: at the allocator's 16-byte alignment each load was split over two lines (see
/// [`aligned`]).
fn pack_quads(isa: Isa, xq: &[u8], m: usize, k: usize, mp: usize, threads: usize) -> (Vec<u8>, usize) {
    let kq = k.div_ceil(4);
    let (mut buf, off) = aligned::<u8>(kq * mp * 4);
    if k.is_multiple_of(4) {
        assert!(xq.len() >= m * k, "pack_quads: {} activation codes for {m} x {k}", xq.len());
        // blocks of PACK_QUADS quads over the threads: it runs before any product task
        let dst = super::OutPtr(buf[off..].as_mut_ptr() as *mut f32);
        let task = |b: usize| {
            let c = b * PACK_QUADS;
            // SAFETY: element (i, g) of the source is xq[i·k + 4g .. +4] (i < m, g < kq), inside xq; element (g, i)
            // of the destination is buf[off + 4(g·mp + i) .. +4], inside the kq · mp · 4 bytes from off; task b
            // writes the destination rows g in c..c + PACK_QUADS only.
            unsafe {
                let (src, out) = ((xq.as_ptr() as *const u32).add(c), ({ &dst }.0 as *mut u32).add(c * mp));
                transpose32(isa, src, kq, m, PACK_QUADS.min(kq - c), out, mp);
            }
        };
        par::for_each(kq.div_ceil(PACK_QUADS), if m * k < super::PAR_MIN_WORK { 1 } else { threads }, &task);
        return (buf, off);
    }
    for (g, line) in buf[off..off + kq * mp * 4].chunks_exact_mut(mp * 4).enumerate() {
        let c0 = 4 * g;
        for (i, dst) in line.chunks_exact_mut(4).take(m).enumerate() {
            let src = &xq[i * k + c0..(i + 1) * k];
            if let Some(quad) = src.first_chunk::<4>() {
                *dst.first_chunk_mut::<4>().expect("4-byte chunks") = *quad;
            } else {
                dst[..src.len()].copy_from_slice(src); // the last, partial quad
            }
        }
    }
    (buf, off)
}

/// `dst[c · ds + r] = src[r · ss + c]` for `r < rows`, `c < cols`: a transposition of 32-bit elements at any
/// alignment, in 16 × 16 blocks held in registers on AVX-512 (16 loads, 64 shuffles, 16 stores per block), the
/// edges element by element. The kernel's two transpositions (activation quads in, outputs out) went through
/// L1 one element at a time before: a gather per 16 outputs and a u32 copy per quad, 7 % of a 128 × 768 × 768
/// product.
///
/// # Safety
/// `src` is readable at every `r · ss + c` and `dst` writable at every `c · ds + r` (`r < rows`, `c < cols`), as
/// 4-byte elements.
unsafe fn transpose32(isa: Isa, src: *const u32, ss: usize, rows: usize, cols: usize, dst: *mut u32, ds: usize) {
    let (mut rb, mut cb) = (0, 0); // rows and columns done in whole blocks
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx512 {
        (rb, cb) = (rows / 16 * 16, cols / 16 * 16);
        for r in (0..rb).step_by(16) {
            for c in (0..cb).step_by(16) {
                // SAFETY: the block's 16 rows and 16 columns lie inside rows × cols (the caller's contract).
                unsafe { x86::transpose16(src.add(r * ss + c), ss, dst.add(c * ds + r), ds) };
            }
        }
    }
    let _ = isa;
    for r in 0..rows {
        let c0 = if r < rb { cb } else { 0 };
        for c in c0..cols {
            // SAFETY: the caller's contract.
            unsafe { dst.add(c * ds + r).write_unaligned(src.add(r * ss + c).read_unaligned()) };
        }
    }
}

/// A zeroed buffer with `n` elements from the returned offset on, which starts on a 64-byte line.
///
/// The kernel's 64-byte loads and stores (activation runs, partial sums) each touched two lines at the
/// allocator's 16-byte alignment: split loads, counted twice against L1's load ports.
fn aligned<T: Copy + Default>(n: usize) -> (Vec<T>, usize) {
    let slack = 64 / std::mem::size_of::<T>();
    let buf = vec![T::default(); n + slack];
    let off = buf.as_ptr().align_offset(64);
    debug_assert!(off < slack);
    (buf, off)
}

#[inline(always)]
fn centre_body(acc: &[i32], zero: &[i32], sum: i32, out: &mut [f32]) {
    for ((o, &a), &z) in out.iter_mut().zip(acc).zip(zero) {
        // exact: the true sum Σ w · (q - z) fits in i32 (|w · (q - z)| ≤ 2^15, K ≤ 2^16), so wrapping gives it
        *o = a.wrapping_sub(z.wrapping_mul(sum)) as f32;
    }
}
crate::simd::multiversion!(fn centre(acc: &[i32], zero: &[i32], sum: i32, out: &mut [f32]) = centre_body;);

/// `part[i][0..16·nb] += Σ_quads dpbusd(xp[pos][rows], quad)` for the task's rows `i` in one K block (portable).
#[allow(clippy::too_many_arguments)]
fn block_scalar(q: &Quads, kb: usize, r0: usize, r1: usize, xp: &[u8], mp: usize, i0: usize, nb: usize, part: &mut [i32]) {
    let w = nb * 16;
    for (i, r) in (r0..r1).enumerate() {
        let (j0, j1) = (q.ptr[r * q.nkb + kb] as usize, q.ptr[r * q.nkb + kb + 1] as usize);
        let acc = &mut part[i * w..(i + 1) * w];
        for j in j0..j1 {
            let wq = q.val[j].to_le_bytes().map(|b| b as i8 as i32);
            let base = (q.pos[j] as usize * mp + i0) * 4;
            for (t, a) in acc.iter_mut().enumerate() {
                let x = &xp[base + 4 * t..base + 4 * t + 4];
                *a += (0..4).map(|e| x[e] as i32 * wq[e]).sum::<i32>();
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::Quads;
    use std::arch::x86_64::*;

    /// [`super::transpose32`] of one 16 × 16 block: unpack pairs of rows (32-bit, then 64-bit), then pick
    /// 128-bit lanes across the four groups of four rows.
    ///
    /// # Safety
    /// `src` is readable at `r · ss + c` and `dst` writable at `c · ds + r` for `r, c < 16`; the CPU has
    /// AVX-512F.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn transpose16(src: *const u32, ss: usize, dst: *mut u32, ds: usize) {
        unsafe {
            let r: [__m512i; 16] = std::array::from_fn(|i| _mm512_loadu_si512(src.add(i * ss) as *const __m512i));
            // t[2i], t[2i+1]: rows 2i and 2i+1 interleaved, elements 0-1 and 2-3 of each 128-bit lane
            let t: [__m512i; 16] = std::array::from_fn(|j| {
                let (a, b) = (r[j & !1], r[j | 1]);
                if j % 2 == 0 { _mm512_unpacklo_epi32(a, b) } else { _mm512_unpackhi_epi32(a, b) }
            });
            // u[4i+e]: lane L holds column 4L+e of rows 4i..4i+4
            let u: [__m512i; 16] = std::array::from_fn(|j| {
                let (i, e) = (j / 4, j % 4);
                let (a, b) = (t[4 * i + e / 2], t[4 * i + 2 + e / 2]);
                if e % 2 == 0 { _mm512_unpacklo_epi64(a, b) } else { _mm512_unpackhi_epi64(a, b) }
            });
            for e in 0..4 {
                let (v, w) = (_mm512_shuffle_i32x4::<0x88>(u[e], u[4 + e]), _mm512_shuffle_i32x4::<0xdd>(u[e], u[4 + e]));
                let (v2, w2) = (_mm512_shuffle_i32x4::<0x88>(u[8 + e], u[12 + e]), _mm512_shuffle_i32x4::<0xdd>(u[8 + e], u[12 + e]));
                let col = |lane: usize| dst.add((4 * lane + e) * ds) as *mut __m512i;
                _mm512_storeu_si512(col(0), _mm512_shuffle_i32x4::<0x88>(v, v2));
                _mm512_storeu_si512(col(1), _mm512_shuffle_i32x4::<0x88>(w, w2));
                _mm512_storeu_si512(col(2), _mm512_shuffle_i32x4::<0xdd>(v, v2));
                _mm512_storeu_si512(col(3), _mm512_shuffle_i32x4::<0xdd>(w, w2));
            }
        }
    }

    /// [`super::block_scalar`] with `NB` accumulators of 16 rows and `vpdpbusd`.
    ///
    /// # Safety
    /// The CPU has AVX-512F/BW and VNNI; `xp` holds `[k/4][mp][4]` with `i0 + 16·NB ≤ mp`, starting on a
    /// 64-byte line; `part` holds `(r1 - r0) · 16 · NB` values from a 64-byte line on; `r1 ≤ rows`, `kb < nkb`.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn block_vnni<const NB: usize>(
        q: &Quads, kb: usize, r0: usize, r1: usize, xp: &[u8], mp: usize, i0: usize, part: &mut [i32],
    ) {
        unsafe {
            let xb = xp.as_ptr().add(i0 * 4);
            let stride = mp * 4;
            for (i, r) in (r0..r1).enumerate() {
                let (j0, j1) = (*q.ptr.get_unchecked(r * q.nkb + kb) as usize, *q.ptr.get_unchecked(r * q.nkb + kb + 1) as usize);
                if j0 == j1 {
                    continue;
                }
                let pp = part.as_mut_ptr().add(i * NB * 16);
                let mut acc = [_mm512_setzero_si512(); NB];
                for (b, a) in acc.iter_mut().enumerate() {
                    *a = _mm512_load_si512(pp.add(16 * b) as *const __m512i);
                }
                for j in j0..j1 {
                    let wq = _mm512_set1_epi32(*q.val.get_unchecked(j));
                    let src = xb.add(*q.pos.get_unchecked(j) as usize * stride);
                    for (b, a) in acc.iter_mut().enumerate() {
                        *a = _mm512_dpbusd_epi32(*a, _mm512_load_si512(src.add(64 * b) as *const __m512i), wq);
                    }
                }
                for (b, a) in acc.iter().enumerate() {
                    _mm512_store_si512(pp.add(16 * b) as *mut __m512i, *a);
                }
            }
        }
    }
}

/// One K block of a task: `nb` accumulators of 16 rows from row `i0` of the packed activations.
#[allow(clippy::too_many_arguments)]
fn block(isa: Isa, q: &Quads, kb: usize, r0: usize, r1: usize, xp: &[u8], mp: usize, i0: usize, nb: usize, part: &mut [i32]) {
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx512 {
        macro_rules! go {
            ($($n:literal)*) => {
                match nb {
                    // SAFETY: `applies` checked VNNI for AVX-512; the group's rows lie inside `mp`, `part` is sized
                    // for them, the caller's rows and block are in range.
                    $($n => return unsafe { x86::block_vnni::<$n>(q, kb, r0, r1, xp, mp, i0, part) },)*
                    _ => unreachable!("at most 8 accumulators"),
                }
            };
        }
        go!(1 2 3 4 5 6 7 8);
    }
    let _ = isa;
    block_scalar(q, kb, r0, r1, xp, mp, i0, nb, part)
}

/// `chunks` (consecutive output-row ranges covering `0..rows`) with every boundary moved to a multiple of 16 rows
/// (the nearest; empty ranges dropped), so that no two tasks write the same 64-byte line of an output row.
///
/// Each task writes its rows of all the batch rows: with boundaries anywhere (48-row tasks at 768 outputs), every
/// boundary put one line per batch row under two cores' stores (128 × 768 → 3072, two threads, quiet: 575-613 →
/// 519-522 µs; the other BERT-base shapes within 3 %).
fn line_chunks(chunks: Vec<(usize, usize)>, rows: usize) -> Vec<(usize, usize)> {
    let mut out: Vec<(usize, usize)> = Vec::with_capacity(chunks.len());
    let mut start = 0;
    for (i, &(_, end)) in chunks.iter().enumerate() {
        let end = if i + 1 == chunks.len() { rows } else { ((end + 8) / 16 * 16).min(rows) };
        if end > start {
            out.push((start, end));
            start = end;
        }
    }
    if out.is_empty() {
        out.push((0, rows));
    }
    out
}

/// `out[i, r] = epilogue(Σ_k W[r, k] · (xq[i, k] - zero[i]))` for int8 values and u8 activation codes.
#[allow(clippy::too_many_arguments)]
pub(super) fn run(
    isa: Isa, w: &SparseLinear, q: &Quads, xq: &[u8], zero: &[i32], m: usize, epi: &Epilogue<'_>, out: &mut [f32],
    threads: usize,
) {
    let (k, rows) = (w.in_features(), w.out_features());
    let mp = m.div_ceil(16) * 16;
    let (xbuf, xoff) = pack_quads(isa, xq, m, k, mp, threads);
    let xp = &xbuf[xoff..];
    let sums = w.code_sums();
    let groups: Vec<usize> = (0..mp).step_by(GROUP_ROWS).collect();
    let chunks = line_chunks(row_chunks(w, threads), rows);
    let o = super::OutPtr(out.as_mut_ptr());
    let task = |id: usize| {
        #[allow(clippy::redundant_locals)]
        let o = o;
        let (r0, r1) = chunks[id % chunks.len()];
        let i0 = groups[id / chunks.len()];
        let nb = (mp - i0).min(GROUP_ROWS) / 16;
        let wd = nb * 16;
        let (mut pbuf, poff) = aligned::<i32>(ROW_TILE.min(r1 - r0) * wd);
        let part = &mut pbuf[poff..];
        // rows of `fin` 16 floats longer than a power of two, so that the 16 rows a transposed block reads spread
        // over L1's sets
        let fs = wd + 16;
        let mut fin = vec![0f32; ROW_TILE.min(r1 - r0) * fs];
        for t0 in (r0..r1).step_by(ROW_TILE) {
            let t1 = (t0 + ROW_TILE).min(r1);
            let part = &mut part[..(t1 - t0) * wd];
            part.fill(0);
            for kb in 0..q.nkb {
                block(isa, q, kb, t0, t1, xp, mp, i0, nb, part);
            }
            // per output row: the zero-point term and the epilogue along its batch rows (vectorized), into
            // `fin[i][ti]`; then transposed into `out`, whose rows are batch rows
            let used = wd.min(m - i0);
            for (i, r) in (t0..t1).enumerate() {
                let f = &mut fin[i * fs..i * fs + used];
                centre(isa, &part[i * wd..i * wd + used], &zero[i0..i0 + used], sums[r], f);
                epi.apply_col(f, i0, r);
            }
            // SAFETY: outputs t0..t1 of batch rows i0..i0+used belong to this task only (out is m × rows); `fin`
            // holds t1 - t0 rows of fs ≥ used floats.
            unsafe {
                transpose32(isa, fin.as_ptr() as *const u32, fs, t1 - t0, used, o.0.add(i0 * rows + t0) as *mut u32, rows);
                for ti in 0..used {
                    epi.activate(o.0.add((i0 + ti) * rows + t0), t1 - t0);
                }
            }
        }
    };
    par::for_each(chunks.len() * groups.len(), threads, &task);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sparse::csr;

    #[test]
    fn line_chunks_cover_the_rows_with_boundaries_on_lines() {
        for (chunks, rows) in [
            (vec![(0, 48), (48, 96), (96, 144), (144, 200)], 200),
            (vec![(0, 3), (3, 5), (5, 9)], 9),
            (vec![(0, 100)], 100),
            (vec![(0, 7), (7, 30), (30, 33)], 33),
        ] {
            let got = line_chunks(chunks.clone(), rows);
            assert_eq!(got.first().map(|c| c.0), Some(0), "{chunks:?}");
            assert_eq!(got.last().map(|c| c.1), Some(rows), "{chunks:?}");
            for w in got.windows(2) {
                assert_eq!(w[0].1, w[1].0, "{chunks:?}: contiguous");
                assert_eq!(w[0].1 % 16, 0, "{chunks:?}: boundary on a 16-row line");
            }
            assert!(got.iter().all(|c| c.1 > c.0), "{chunks:?}: no empty task");
        }
    }

    #[test]
    fn transpose32_moves_every_element_on_every_isa() {
        for isa in cpu::supported() {
            for (rows, cols) in [(16, 16), (33, 50), (5, 7), (64, 128), (17, 16), (0, 3)] {
                let (ss, ds) = (cols + 3, rows + 5);
                let src: Vec<u32> = (0..rows * ss).map(|i| i as u32 * 2654435761).collect();
                let mut dst = vec![u32::MAX; cols * ds];
                // SAFETY: src holds rows × ss and dst cols × ds elements.
                unsafe { transpose32(isa, src.as_ptr(), ss, rows, cols, dst.as_mut_ptr(), ds) };
                for r in 0..rows {
                    for c in 0..cols {
                        assert_eq!(dst[c * ds + r], src[r * ss + c], "{isa:?} {rows}x{cols}: ({r}, {c})");
                    }
                }
                for c in 0..cols {
                    assert!(dst[c * ds + rows..(c + 1) * ds].iter().all(|&v| v == u32::MAX), "{isa:?}: wrote past a row");
                }
            }
        }
    }

    #[test]
    fn quads_hold_every_stored_code_once_in_its_block() {
        let (rows, k) = (5usize, 600usize);
        let stride = k.div_ceil(8);
        let mut bits = vec![0u8; rows * stride];
        let mut codes = Vec::new();
        for r in 0..rows {
            for c in 0..k {
                if (r * 7 + c * 13) % 11 < 2 || (r == 3 && (256..264).contains(&c)) {
                    bits[r * stride + c / 8] |= 1 << (c % 8);
                    codes.push(((r * 31 + c) % 255) as i8);
                }
            }
        }
        let w = csr::from_bitmask(rows, k, &bits, Values::I8(codes), vec![1.0; rows]).unwrap();
        let q = Quads::of(&w).unwrap();
        let dense = w.to_dense();
        let mut rebuilt = vec![0f32; rows * k];
        for r in 0..rows {
            for b in 0..q.nkb {
                let (j0, j1) = (q.ptr[r * q.nkb + b] as usize, q.ptr[r * q.nkb + b + 1] as usize);
                for j in j0..j1 {
                    let p = q.pos[j] as usize;
                    assert_eq!(p / KB_QUADS, b, "row {r}: quad {p} filed under block {b}");
                    assert!(j == j0 || q.pos[j - 1] < q.pos[j], "row {r}: quads ascending, each once");
                    for (e, byte) in q.val[j].to_le_bytes().iter().enumerate() {
                        rebuilt[r * k + 4 * p + e] = *byte as i8 as f32;
                    }
                }
            }
        }
        assert_eq!(rebuilt, dense);
        assert_eq!(q.ptr.len(), rows * q.nkb + 1);
    }
}
