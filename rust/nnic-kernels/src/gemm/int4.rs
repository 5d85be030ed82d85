//! int4 weights (two per byte, per-group scales and optional per-group zero points) × int8 activations
//! quantized on the fly, for small M, where the weight bytes dominate the cost.
//!
//! `w[j, k] = s[j, g] · (q[j, k] - zw[j, g])` with codes and zero points in [-8, 7] (zero points absent:
//! symmetric). `y[i, j] = sa_i · (sum_g s[j, g] · sum_{k in g} (qa[i, k] - za_i) · (q - zw)[j, k]) + bias_j`
//! with u8 activation codes `qa`; the tiles of [`super::int4_micro`] (layout documented there) take them as
//! signed bytes `qa - 128` ([`signed_activations`]), and the remaining `(128 - za_i)` term folds into one
//! per-column constant at pack time (it vanishes for symmetric activations, whose `za_i` is 128). Threads split
//! the output into blocks of rows × 32-column panels, taken dynamically.
//!
//! Scales are stored as given: `f32`, or IEEE half precision ([`GroupScales::F16`], as GGUF, GPTQ and AWQ
//! keep them), which makes a group of 32 codes 18 bytes instead of 20 (0.5625 bytes per weight instead of
//! 0.625); the tiles widen them exactly to `f32` at each group end, so the result is the one of the `f32`
//! values of the half scales.
//!
//! Or double-quantized ([`GroupScales::U8`]): unsigned 8-bit codes times one `f32` step per output column, 17
//! bytes per group of 32 codes and column (0.53 bytes per weight, ~4.26 bits); the tiles scale each group's
//! integer sum by its code, and the epilogue multiplies by the column's step (layout: [`super::int4_micro`]).
#![allow(clippy::needless_range_loop)] // the epilogue indexes the register tile by row and column
use super::act_pack::{self, ActQuant};
use super::int4_micro::{tile_mv, Panel, ScaleFmt, MR4, WHOLE_BYTE_MAX_GROUP};
use super::panels::{round_up, PackedA, NR};
use super::{isa_of, Block, Path};
use crate::error::{KernelError, Result};
use crate::huge::HugeBuf;
use crate::half::f16_to_f32;
use crate::pool;

/// Per-group scales `[n, ceil(k / group)]` as given to [`PackedInt4::new`].
#[derive(Copy, Clone, Debug)]
pub enum GroupScales<'a> {
    /// `f32` scales.
    F32(&'a [f32]),
    /// IEEE 754 half-precision bits.
    F16(&'a [u16]),
    /// Double-quantized: scale `s[j, g] = codes[j, g] · step[j]`, codes in [1, 255] (`[n, groups]`) and one
    /// finite positive `f32` step per output column (`[n]`).
    U8 { codes: &'a [u8], step: &'a [f32] },
}

impl<'a> From<&'a [f32]> for GroupScales<'a> {
    fn from(s: &'a [f32]) -> Self {
        GroupScales::F32(s)
    }
}

impl<'a> From<&'a Vec<f32>> for GroupScales<'a> {
    fn from(s: &'a Vec<f32>) -> Self {
        GroupScales::F32(s)
    }
}

impl<'a, const N: usize> From<&'a [f32; N]> for GroupScales<'a> {
    fn from(s: &'a [f32; N]) -> Self {
        GroupScales::F32(s)
    }
}

impl GroupScales<'_> {
    fn len(&self) -> usize {
        match self {
            GroupScales::F32(s) => s.len(),
            GroupScales::F16(s) => s.len(),
            GroupScales::U8 { codes, .. } => codes.len(),
        }
    }
    /// Scale `i` in the units the tiles apply (the code itself for 8-bit scales: the step comes at the end).
    fn get(&self, i: usize) -> f32 {
        match self {
            GroupScales::F32(s) => s[i],
            GroupScales::F16(s) => f16_to_f32(s[i]),
            GroupScales::U8 { codes, .. } => codes[i] as f32,
        }
    }
    fn fmt(&self) -> ScaleFmt {
        match self {
            GroupScales::F32(_) => ScaleFmt::F32,
            GroupScales::F16(_) => ScaleFmt::F16,
            GroupScales::U8 { .. } => ScaleFmt::U8,
        }
    }
}

/// One cache line, the unit of [`PackedInt4`]'s buffer: panels and group blocks start on line boundaries, so the
/// tiles' 64-byte loads never split a line (a plain `Vec<u8>` of this size starts 16 bytes into one).
#[derive(Copy, Clone, Debug, PartialEq)]
#[repr(C, align(64))]
struct Line([u8; 64]);

/// Packed int4 weights of a `[n, k]` linear layer.
#[derive(Clone, Debug, PartialEq)]
pub struct PackedInt4 {
    n: usize,
    k: usize,
    group: usize,
    kp: usize,
    /// Panels of 32 columns, each `kp / group` blocks of `stride` bytes: the group's codes, then its 32 scales
    /// (8-bit scales: pairs of groups of `stride` bytes behind their scale line; layout: [`super::int4_micro`]).
    /// On 2 MiB pages where the OS gives them ([`HugeBuf`]): a GEMV streams it from DRAM.
    data: HugeBuf<Line>,
    stride: usize,
    /// How the group scales are stored.
    fmt: ScaleFmt,
    /// The per-column steps of 8-bit scales (padded columns 0), else empty.
    step: Vec<f32>,
    /// Stored zero points `zw + 8`, `[panel][group][32]`; empty when every zero point is 0.
    zeros: Vec<u8>,
    /// `sum_g s[j, g] · sum_{k in g} q[j, k]` per padded column (8-bit scales: in units of the column's step).
    csum: Vec<f32>,
}

impl PackedInt4 {
    /// Packs codes `q[n, k]` (each in [-8, 7]) with `scales[n, ceil(k / group)]` (`f32`, half-precision bits,
    /// or 8-bit codes with per-column steps: [`GroupScales`]) and zero points `zeros` (empty, or
    /// `[n, ceil(k / group)]` values in [-8, 7]); `group` is a multiple of 8.
    pub fn new<'a>(q: &[i8], n: usize, k: usize, scales: impl Into<GroupScales<'a>>, zeros: &[i8], group: usize)
        -> Result<PackedInt4> {
        let scales = scales.into();
        if group == 0 || !group.is_multiple_of(8) {
            return Err(KernelError::Invalid { what: format!("group size must be a positive multiple of 8, got {group}") });
        }
        if q.len() != n * k {
            return Err(KernelError::Mismatch {
                what: format!("weight has {} elements, expected N*K = {n}*{k} = {}", q.len(), n * k),
            });
        }
        let ng = k.div_ceil(group);
        if scales.len() != n * ng {
            return Err(KernelError::Mismatch {
                what: format!("scales has {} elements, expected N*ceil(K/group) = {n}*{ng} = {}", scales.len(), n * ng),
            });
        }
        if !zeros.is_empty() && zeros.len() != n * ng {
            return Err(KernelError::Mismatch {
                what: format!("zero points have {} elements, expected 0 or N*ceil(K/group) = {}", zeros.len(), n * ng),
            });
        }
        for (arg, vals) in [("weight", q), ("zero_point", zeros)] {
            if let Some((i, &v)) = vals.iter().enumerate().find(|(_, v)| !(-8..=7).contains(*v)) {
                return Err(KernelError::ValueOutOfRange { arg, index: i, value: v as i64, lo: -8, hi: 7 });
            }
        }
        let affine = zeros.iter().any(|&z| z != 0);
        if let Some((i, s)) = (0..scales.len()).map(|i| (i, scales.get(i))).find(|(_, s)| !(s.is_finite() && *s > 0.0)) {
            return Err(KernelError::BadScale { channel: Some(i), value: s });
        }
        if let GroupScales::U8 { step, .. } = scales {
            if step.len() != n {
                return Err(KernelError::Mismatch {
                    what: format!("scale steps have {} elements, expected one per output column, {n}", step.len()),
                });
            }
            if let Some((j, &v)) = step.iter().enumerate().find(|(_, v)| !((**v * 255.0).is_finite() && **v > 0.0)) {
                return Err(KernelError::BadScale { channel: Some(j), value: v });
            }
        }
        let kp = round_up(k.max(1), group);
        let np = round_up(n.max(1), NR);
        let gp = kp / group;
        let pairs = group / 8;
        let fmt = scales.fmt();
        let stride = Panel::stride_of(pairs, fmt);
        let plen = Panel::len_of(gp, pairs, fmt);
        let mut data = HugeBuf::<Line>::zeroed(np / NR * plen / 64);
        data.fill(Line([0x88; 64]));
        let mut csum = vec![0f32; np];
        let mut zs = if affine { vec![8u8; np * gp] } else { Vec::new() };
        {
            let bytes = lines_mut(&mut data);
            for j in 0..n {
                let (p, c) = (j / NR, j % NR);
                let panel = &mut bytes[p * plen..(p + 1) * plen];
                let place = |g: usize| fmt.group_at(g, stride, pairs);
                let row = &q[j * k..(j + 1) * k];
                for (kk, &v) in row.iter().enumerate() {
                    let (g, r) = (kk / group, kk % group);
                    let (at, hi) = Panel::code_at(r, c);
                    let byte = &mut panel[place(g).0 + at];
                    let nib = (v + 8) as u8;
                    *byte = if hi { (*byte & 0x0F) | (nib << 4) } else { (*byte & 0xF0) | nib };
                }
                let mut cs = 0f32;
                for g in 0..ng {
                    let s = scales.get(j * ng + g);
                    let at = place(g).1;
                    match scales {
                        GroupScales::F32(from) => panel[at + 4 * c..at + 4 * c + 4].copy_from_slice(&from[j * ng + g].to_le_bytes()),
                        GroupScales::F16(from) => panel[at + 2 * c..at + 2 * c + 2].copy_from_slice(&from[j * ng + g].to_le_bytes()),
                        GroupScales::U8 { codes, .. } => panel[at + c] = codes[j * ng + g],
                    }
                    let zw = if affine { zeros[j * ng + g] as i32 } else { 0 };
                    if affine {
                        zs[(p * gp + g) * NR + c] = (zw + 8) as u8;
                    }
                    let sum: i32 = row[g * group..((g + 1) * group).min(k)].iter().map(|&v| v as i32 - zw).sum();
                    cs += s * sum as f32;
                }
                csum[j] = cs;
            }
            // Scales of the padding columns (and the unused half of an unpaired group's 8-bit scale line): 0 (their
            // outputs are never written).
            let w = fmt.width();
            let place = |g: usize| fmt.group_at(g, stride, pairs);
            for j in n..np {
                let (p, c) = (j / NR, j % NR);
                for g in 0..gp {
                    let at = p * plen + place(g).1 + w * c;
                    bytes[at..at + w].fill(0);
                }
            }
            if fmt == ScaleFmt::U8 && gp % 2 == 1 {
                for p in 0..np / NR {
                    let at = p * plen + place(gp - 1).1 + NR;
                    bytes[at..at + NR].fill(0);
                }
            }
        }
        let step = match scales {
            GroupScales::U8 { step, .. } => (0..np).map(|j| step.get(j).copied().unwrap_or(0.0)).collect(),
            _ => Vec::new(),
        };
        Ok(PackedInt4 { n, k, group, kp, data, stride, fmt, step, zeros: zs, csum })
    }

    pub fn in_features(&self) -> usize {
        self.k
    }
    pub fn out_features(&self) -> usize {
        self.n
    }
    pub fn group_size(&self) -> usize {
        self.group
    }
    /// Bytes held.
    pub fn nbytes(&self) -> usize {
        64 * self.data.len() + self.zeros.len() + 4 * self.csum.len() + 4 * self.step.len()
    }
    /// Whether the scales are stored as half-precision bits.
    pub fn has_f16_scales(&self) -> bool {
        self.fmt == ScaleFmt::F16
    }
    /// Whether the scales are 8-bit codes with per-column steps ([`GroupScales::U8`]).
    pub fn has_u8_scales(&self) -> bool {
        self.fmt == ScaleFmt::U8
    }
    /// Whether the weights have zero points.
    pub fn is_affine(&self) -> bool {
        !self.zeros.is_empty()
    }

    fn bytes(&self) -> &[u8] {
        // SAFETY: `Line` is 64 plain bytes (`repr(C)`, no padding); the slice covers exactly the buffer's lines.
        unsafe { std::slice::from_raw_parts(self.data.as_ptr() as *const u8, 64 * self.data.len()) }
    }

    /// Bytes of one weight panel (32 columns).
    fn panel_len(&self) -> usize {
        Panel::len_of(self.kp / self.group, self.group / 8, self.fmt)
    }

    /// Weight panel `p` (32 columns).
    fn panel(&self, p: usize) -> Panel<'_> {
        let groups = self.kp / self.group;
        let len = self.panel_len();
        Panel {
            bytes: &self.bytes()[p * len..(p + 1) * len],
            zeros: if self.is_affine() { &self.zeros[p * groups * NR..(p + 1) * groups * NR] } else { &[] },
            groups,
            pairs: self.group / 8,
            stride: self.stride,
            fmt: self.fmt,
        }
    }

    /// The codes `[n, k]`, scales `[n, groups]` (as `f32`: exact for half-precision scales, see
    /// [`PackedInt4::f16_scales`]; for 8-bit ones the `f32` product of code and step, see
    /// [`PackedInt4::u8_scales`]) and zero points (`[n, groups]`, or empty when symmetric): the round trip
    /// of [`PackedInt4::new`].
    pub fn unpack(&self) -> (Vec<i8>, Vec<f32>, Vec<i8>) {
        let ng = self.k.div_ceil(self.group);
        let mut q = vec![0i8; self.n * self.k];
        let mut s = vec![0f32; self.n * ng];
        let mut z = if self.is_affine() { vec![0i8; self.n * ng] } else { Vec::new() };
        for j in 0..self.n {
            let (w, c) = (self.panel(j / NR), j % NR);
            for kk in 0..self.k {
                let (g, r) = (kk / self.group, kk % self.group);
                let (at, hi) = Panel::code_at(r, c);
                let byte = w.bytes[w.group_at(g).0 + at];
                let nib = if hi { byte >> 4 } else { byte & 0x0F };
                q[j * self.k + kk] = nib as i8 - 8;
            }
            for g in 0..ng {
                s[j * ng + g] = if self.has_u8_scales() { w.scale(g, c) * self.step[j] } else { w.scale(g, c) };
                if self.is_affine() {
                    z[j * ng + g] = w.zero(g, c) as i8 - 8;
                }
            }
        }
        (q, s, z)
    }

    /// The half-precision bits of the scales `[n, groups]`, when they are stored so.
    pub fn f16_scales(&self) -> Option<Vec<u16>> {
        if !self.has_f16_scales() {
            return None;
        }
        let ng = self.k.div_ceil(self.group);
        let at = |j: usize, g: usize| {
            let w = self.panel(j / NR);
            let i = w.group_at(g).1 + 2 * (j % NR);
            u16::from_le_bytes([w.bytes[i], w.bytes[i + 1]])
        };
        Some((0..self.n * ng).map(|i| at(i / ng, i % ng)).collect())
    }

    /// The 8-bit scale codes `[n, groups]` and per-column steps `[n]`, when the scales are stored so.
    pub fn u8_scales(&self) -> Option<(Vec<u8>, Vec<f32>)> {
        if !self.has_u8_scales() {
            return None;
        }
        let ng = self.k.div_ceil(self.group);
        let codes = (0..self.n * ng).map(|i| self.panel(i / ng / NR).scale(i % ng, i / ng % NR) as u8).collect();
        Some((codes, self.step[..self.n].to_vec()))
    }
}

fn lines_mut(v: &mut [Line]) -> &mut [u8] {
    // SAFETY: as `PackedInt4::bytes`.
    unsafe { std::slice::from_raw_parts_mut(v.as_mut_ptr() as *mut u8, 64 * v.len()) }
}

impl crate::prefetch::Resident for PackedInt4 {
    /// The GEMV's read order: blocks of 8 panels (the tasks' column blocks, taken in order), each block's codes
    /// and scales (one stream) then its zero points (the column sums and steps, read once per block after its
    /// panels, 1-2 KiB: left out).
    fn regions(&self) -> Vec<&[u8]> {
        let gp = self.kp / self.group;
        let plen = Panel::len_of(gp, self.group / 8, self.fmt);
        let bytes = self.bytes();
        let panels = bytes.len() / plen;
        let mut out = Vec::new();
        for p0 in (0..panels).step_by(8) {
            let p1 = (p0 + 8).min(panels);
            out.push(&bytes[p0 * plen..p1 * plen]);
            if !self.zeros.is_empty() {
                out.push(&self.zeros[p0 * gp * NR..p1 * gp * NR]);
            }
        }
        out
    }
}

#[derive(Copy, Clone)]
struct OutF(*mut f32);
// SAFETY: tasks write disjoint blocks.
unsafe impl Send for OutF {}
unsafe impl Sync for OutF {}

/// `out[m, n] = x[m, k] · dequant(w)ᵀ + bias`, activations quantized on the fly as `act` says.
pub fn int4_linear(
    path: Path,
    x: &[f32],
    m: usize,
    w: &PackedInt4,
    bias: Option<&[f32]>,
    act: ActQuant,
    out: &mut [f32],
) -> Result<()> {
    let (k, n) = (w.k, w.n);
    if !path.is_supported() {
        return Err(KernelError::Invalid { what: format!("GEMM path {:?} is not supported by this CPU", path.name()) });
    }
    for (what, len, want) in [("x", x.len(), m * k), ("out", out.len(), m * n)] {
        if len != want {
            return Err(KernelError::Mismatch { what: format!("{what} has {len} elements, expected {want}") });
        }
    }
    if let Some(b) = bias {
        if b.len() != n {
            return Err(KernelError::Mismatch { what: format!("bias has {} elements, expected {n}", b.len()) });
        }
    }
    act.check()?;
    if m == 0 || n == 0 {
        return Ok(());
    }
    let mut pa = act_pack::pack_f32(path, MR4, x, m, k, w.kp, act, false)?;
    let (mr, kp, groups) = (pa.mr, pa.kp, w.kp / w.group);
    let mut na = vec![0i32; m * groups];
    signed_activations(&mut pa.data[..m * kp], m, mr, kp, k, w.group, if w.is_affine() { 1 } else { 8 }, &mut na);
    let threads = if m * n * k < (1 << 20) { 1 } else { pool::num_threads() };
    let blocks = finer_tail(super::plan(m, n, mr, threads, 64, 8 * NR), threads);
    let o = OutF(out.as_mut_ptr());
    let run = |blk: Block| {
        #[allow(clippy::redundant_locals)] // captures the Sync wrapper, not its raw pointer field
        let o = o;
        // The tiles' sums go to the output as they are, and the epilogue runs once over the block after its last
        // panel ([`finish_rows`] says why).
        // SAFETY: `o` is the `[m, n]` output, and rows blk.i0..blk.i1, columns blk.j0..blk.j1 are this task's block.
        unsafe {
            if !block_tile(path, &pa, &na, w, blk, o.0, n) {
                panel_tiles(path, &pa, &na, w, blk, o.0, n);
            }
        }
        let (j0, j1) = (blk.j0, blk.j1);
        let st = if w.has_u8_scales() { &w.step[j0..j1] } else { &[][..] };
        let b = bias.map_or(&[][..], |b| &b[j0..j1]);
        for i in blk.i0..blk.i1 {
            let (sa, za) = (pa.scale[i], (pa.zero[i] - 128) as f32);
            // SAFETY: row i, columns j0..j1 are this task's block.
            let y = unsafe { std::slice::from_raw_parts_mut(o.0.add(i * n + j0), j1 - j0) };
            finish_rows(isa_of(path), y, &w.csum[j0..j1], st, b, sa, za);
        }
    };
    super::par::for_each(blocks.len(), threads, &|i| run(blocks[i]));
    act_pack::release(pa);
    Ok(())
}

/// The tiles' sums of block `blk` into `out` (`[m, n]`, row stride `n`), panel by panel: one tile call per
/// 32-column panel and row panel, each panel's sums copied from the register tile to the output.
///
/// # Safety
/// `out` is the `[m, n]` output; no other thread writes `blk`'s part of it meanwhile.
unsafe fn panel_tiles(path: Path, pa: &PackedA, na: &[i32], w: &PackedInt4, blk: Block, out: *mut f32, n: usize) {
    let (mr, groups) = (pa.mr, w.kp / w.group);
    let mut f = [[0f32; NR]; MR4];
    for j0 in (blk.j0..blk.j1).step_by(NR) {
        let nr = (blk.j1 - j0).min(NR);
        let panel = w.panel(j0 / NR);
        for i0 in (blk.i0..blk.i1).step_by(mr) {
            let rows = (blk.i1 - i0).min(mr);
            let ap = pa.panel_ptr_rows(i0 / mr, 0);
            let nap = &na[i0 * groups..(i0 + rows) * groups];
            tile(path, rows, ap, nap, panel, &mut f);
            for (r, fr) in f.iter().enumerate().take(rows) {
                // SAFETY: row i0 + r, columns j0..j0 + nr are inside the block.
                let y = unsafe { std::slice::from_raw_parts_mut(out.add((i0 + r) * n + j0), nr) };
                y.copy_from_slice(&fr[..nr]);
            }
        }
    }
}

/// The tiles' sums of block `blk` into `out` as [`panel_tiles`] writes them (the same bits), in one call over
/// all of the block's panels: of the VNNI one- or two-row tile (`int4_micro::x86::vnni_block`) where the block is
/// one row panel of one or two rows with whole-byte sums (every GEMV and M = 2 step), of the AVX2 tiles
/// (`int4_micro::x86::avx2_block`, per row panel) for any block; returns whether it did.
///
/// Why: the threads' tasks are blocks of up to 256 columns, and per 32-column panel the call, the dispatch on
/// rows and scale format and the copy out of the register tile stood between two ~68 KB runs of the weight
/// stream (4096 deep); here the stream is read as one run per block.
///
/// # Safety
/// As [`panel_tiles`].
unsafe fn block_tile(path: Path, pa: &PackedA, na: &[i32], w: &PackedInt4, blk: Block, out: *mut f32, n: usize) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        use super::int4_micro::x86;
        let (mr, groups, pairs) = (pa.mr, w.kp / w.group, w.group / 8);
        let rows = blk.i1 - blk.i0;
        let vnni = path == Path::Vnni && rows <= 2 && rows <= mr && pairs * 8 <= WHOLE_BYTE_MAX_GROUP;
        // F16C: the AVX2 tiles convert half scales; CPUs with AVX2 have it, the portable tile covers one that would
        // not.
        let avx2 = path == Path::Avx2 && std::arch::is_x86_feature_detected!("f16c");
        if !(vnni || avx2) || !blk.i0.is_multiple_of(mr) {
            return false;
        }
        let (p0, plen) = (blk.j0 / NR, w.panel_len());
        debug_assert!(blk.j0.is_multiple_of(NR));
        let panels = (blk.j1 - blk.j0).div_ceil(NR);
        let affine = w.is_affine();
        let b = w.bytes()[p0 * plen..(p0 + panels) * plen].as_ptr();
        let z = if affine { w.zeros[p0 * groups * NR..(p0 + panels) * groups * NR].as_ptr() } else { w.zeros.as_ptr() };
        let (cols, stride, pf) = (blk.j1 - blk.j0, w.stride, crate::cpu::stream_prefetch_in_software());
        if avx2 {
            for i0 in (blk.i0..blk.i1).step_by(mr) {
                let rp = (blk.i1 - i0).min(mr);
                let ap = pa.panel_ptr_rows(i0 / mr, 0);
                let np = na[i0 * groups..(i0 + rp) * groups].as_ptr();
                let y = unsafe { out.add(i0 * n + blk.j0) };
                macro_rules! run {
                    ($h:path) => {
                        x86::avx2_block::<{ $h }>(panels, plen, groups, pairs, stride, ap, np, rp, b, z, affine, y, n, cols)
                    };
                }
                // SAFETY: as below; AVX2 (and FMA, which every AVX2 path of the crate assumes) checked by the caller,
                // F16C above.
                unsafe {
                    match w.fmt {
                        ScaleFmt::F32 => run!(x86::F32),
                        ScaleFmt::F16 => run!(x86::F16),
                        ScaleFmt::U8 => run!(x86::U8),
                    }
                }
            }
            return true;
        }
        let ap = pa.panel_ptr_rows(blk.i0 / mr, 0);
        let np = na[blk.i0 * groups..blk.i1 * groups].as_ptr();
        let y = unsafe { out.add(blk.i0 * n + blk.j0) };
        macro_rules! run {
            ($h:path) => {
                match rows {
                    1 => x86::vnni_block::<1, { $h }, true, 2>(panels, plen, groups, pairs, stride, ap, np, b, z, affine, pf, y, n, cols),
                    _ => x86::vnni_block::<2, { $h }, true, 2>(panels, plen, groups, pairs, stride, ap, np, b, z, affine, pf, y, n, cols),
                }
            };
        }
        // SAFETY: the panels, zero points and activation panel by the layouts (as in `tile`); VNNI checked by the
        // caller (`path.is_supported()`); rows blk.i0..blk.i1, columns blk.j0..blk.j1 of `out` are the block.
        unsafe {
            match w.fmt {
                ScaleFmt::F32 => run!(x86::F32),
                ScaleFmt::F16 => run!(x86::F16),
                ScaleFmt::U8 => run!(x86::U8),
            }
        }
        true
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (path, pa, na, w, blk, out, n);
        false
    }
}

/// `blocks` (taken in order) with the last `threads` of them split into column pieces of [`TAIL_PANELS`] panels,
/// so that the threads run out of work within one small piece of each other.
///
/// Why: the threads take the blocks dynamically, so the last to finish ends up to one block after the others,
/// which wait: a GEMV block of 256 columns streams ~0.55 MB (4096 deep, 8-bit scales), ~36 µs at two threads on
/// the Zen 4 machine, and quiet the caller waited 12-25 µs per 4096² call for the other thread's last block (team
/// counters, `wait_ns`). The other blocks stay whole: each block's ending reads its column terms in one run
/// ([`finish_rows`]).
fn finer_tail(blocks: Vec<Block>, threads: usize) -> Vec<Block> {
    if threads <= 1 || blocks.len() <= threads {
        return blocks;
    }
    let cut = blocks.len() - threads;
    let mut out = blocks[..cut].to_vec();
    for b in &blocks[cut..] {
        for j0 in (b.j0..b.j1).step_by(TAIL_PANELS * NR) {
            out.push(Block { j0, j1: (j0 + TAIL_PANELS * NR).min(b.j1), ..*b });
        }
    }
    out
}

/// Panels per piece of the last blocks ([`finer_tail`]).
const TAIL_PANELS: usize = 2;

/// One output row of a block from the tiles' sums `y` (in place): `y = sa · (y - za · cs) + b`, or for 8-bit
/// scales `y = sa · st · (y - za · cs) + b` (the sums in units of each column's step `st`; `+ 0` without a bias),
/// an empty `st` / `b` meaning none; per element the operations of the per-panel ending it replaced, in the same
/// order (the same bits).
///
/// Why once per block (256 columns) and not at each 32-column panel's end: the column sums and steps are per-layer
/// arrays that the weight stream evicts between calls, and read at every panel's end (between two ~68 KB runs of
/// the stream) they cost the cold GEMV ~6 % of its time (one thread, 4096², 8-bit scales: `examples/int4_stream`
/// with the ending skipped, or reading them from the panel's own last lines instead: half of it); here they are
/// read in one sequential run per block: ~4 % faster per call (both endings in one binary, eight processes).
#[inline(always)]
fn finish_rows_body(y: &mut [f32], cs: &[f32], st: &[f32], b: &[f32], sa: f32, za: f32) {
    let n = y.len();
    let cs = &cs[..n];
    match (st.is_empty(), b.is_empty()) {
        (false, false) => {
            let (st, b) = (&st[..n], &b[..n]);
            for c in 0..n {
                y[c] = sa * st[c] * (y[c] - za * cs[c]) + b[c];
            }
        }
        (false, true) => {
            let st = &st[..n];
            for c in 0..n {
                y[c] = sa * st[c] * (y[c] - za * cs[c]) + 0.0;
            }
        }
        (true, false) => {
            let b = &b[..n];
            for c in 0..n {
                y[c] = sa * (y[c] - za * cs[c]) + b[c];
            }
        }
        (true, true) => {
            for c in 0..n {
                y[c] = sa * (y[c] - za * cs[c]);
            }
        }
    }
}
crate::simd::multiversion!(fn finish_rows(y: &mut [f32], cs: &[f32], st: &[f32], b: &[f32], sa: f32, za: f32)
    = finish_rows_body;);

/// Turns the u8 codes of the activation panels `data` (`m` rows of `kp` bytes in panels of `mr` rows) into signed
/// bytes `qa - 128` in place (padding past `k` stays 0) and writes `na[i][g] = -mult · sum_{k in g} (qa[i, k] -
/// 128)` for each row `i` and k group `g` of `group` values, laid out so that a panel of `rows` rows starting at
/// row `i0` finds its `[g][rows]` sums at `i0 * groups`. `mult` is 8 for symmetric weights (their stored zero
/// point, so that the tiles broadcast the zero-point term as it is), else 1 (the tiles multiply by each column's
/// zero point).
#[allow(clippy::too_many_arguments)]
fn signed_activations(
    data: &mut [u8],
    m: usize,
    mr: usize,
    kp: usize,
    k: usize,
    group: usize,
    mult: i32,
    na: &mut [i32],
) {
    let groups = kp / group;
    debug_assert!(data.len() == m * kp && na.len() == m * groups);
    for (p, panel) in data.chunks_mut(mr * kp).enumerate() {
        let rows = panel.len() / kp;
        for v in panel.iter_mut() {
            *v ^= 0x80;
        }
        for r in 0..rows {
            for kk in k..kp {
                panel[(kk / 4) * rows * 4 + r * 4 + kk % 4] = 0;
            }
        }
        let sums = &mut na[p * mr * groups..(p * mr + rows) * groups];
        for (chunk, s) in panel.chunks_exact(group * rows).zip(sums.chunks_exact_mut(rows)) {
            if rows == 1 {
                s[0] = -mult * chunk.iter().map(|&v| v as i8 as i32).sum::<i32>();
                continue;
            }
            s.fill(0);
            for quad in chunk.chunks_exact(rows * 4) {
                for (r, sr) in s.iter_mut().enumerate() {
                    *sr -= quad[r * 4..r * 4 + 4].iter().map(|&v| v as i8 as i32).sum::<i32>();
                }
            }
            s.iter_mut().for_each(|v| *v *= mult);
        }
    }
}

/// Runs the tile of `path` for `rows` (≤ [`MR4`]) rows of the signed activation panel at `ap` (`rows × kp`
/// bytes, with their group sums `na`, `groups × rows`) against one weight panel `w`.
fn tile(path: Path, rows: usize, ap: *const u8, na: &[i32], w: Panel<'_>, f: &mut [[f32; NR]; MR4]) {
    let (groups, pairs, stride) = (w.groups, w.pairs, w.stride);
    debug_assert!(w.bytes.len() == groups * stride && (w.zeros.is_empty() || w.zeros.len() == groups * NR));
    debug_assert!(na.len() == groups * rows);
    #[cfg(target_arch = "x86_64")]
    {
        use super::int4_micro::x86;
        let affine = !w.zeros.is_empty();
        let (bp, zp, np) = (w.bytes.as_ptr(), w.zeros.as_ptr(), na.as_ptr());
        // Whole-byte sums for one or two rows (module doc of `int4_micro`); more rows share each mask, and there
        // the whole byte's per-row work (initial value, `P - Q`, shift) costs more than the masks it saves.
        let whole = pairs * 8 <= WHOLE_BYTE_MAX_GROUP;
        let pf = crate::cpu::stream_prefetch_in_software();
        macro_rules! vnni {
            ($h:path) => {
                match (rows, whole) {
                    (1, true) => x86::vnni::<1, { $h }, true, 2>(groups, pairs, stride, ap, np, bp, zp, affine, pf, f),
                    (2, true) => x86::vnni::<2, { $h }, true, 2>(groups, pairs, stride, ap, np, bp, zp, affine, pf, f),
                    (1, false) => x86::vnni::<1, { $h }, false, 2>(groups, pairs, stride, ap, np, bp, zp, affine, pf, f),
                    (2, false) => x86::vnni::<2, { $h }, false, 2>(groups, pairs, stride, ap, np, bp, zp, affine, pf, f),
                    (3, _) => x86::vnni::<3, { $h }, false, 1>(groups, pairs, stride, ap, np, bp, zp, affine, pf, f),
                    (4, _) => x86::vnni::<4, { $h }, false, 1>(groups, pairs, stride, ap, np, bp, zp, affine, pf, f),
                    (5, _) => x86::vnni::<5, { $h }, false, 1>(groups, pairs, stride, ap, np, bp, zp, affine, pf, f),
                    (6, _) => x86::vnni::<6, { $h }, false, 1>(groups, pairs, stride, ap, np, bp, zp, affine, pf, f),
                    (7, _) => x86::vnni::<7, { $h }, false, 1>(groups, pairs, stride, ap, np, bp, zp, affine, pf, f),
                    _ => x86::vnni::<8, { $h }, false, 1>(groups, pairs, stride, ap, np, bp, zp, affine, pf, f),
                }
            };
        }
        match path {
            // SAFETY: sizes by the layouts (checked above); VNNI checked by the caller (`path.is_supported()`).
            Path::Vnni => unsafe {
                match w.fmt {
                    ScaleFmt::F32 => vnni!(x86::F32),
                    ScaleFmt::F16 => vnni!(x86::F16),
                    ScaleFmt::U8 => vnni!(x86::U8),
                }
                return;
            },
            // AVX2 blocks go to `block_tile`'s AVX2 tiles; here only where the CPU lacks F16C.
            Path::Avx2 | Path::Scalar => {}
        }
    }
    let _ = na; // the portable tile subtracts the zero points itself
    // SAFETY: the panel holds `rows * kp` bytes, `kp = groups * pairs * 8`.
    let a = unsafe { std::slice::from_raw_parts(ap, rows * groups * pairs * 8) };
    tile_mv(isa_of(path), rows, a, w, f);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every group block starts on a cache line (the buffer is line aligned and the stride a whole number of
    /// lines, for every group size and scale format, odd group counts included), and its scales come with its
    /// codes: the round trip holds.
    #[test]
    fn group_blocks_are_whole_lines_with_their_scales() {
        for group in [8usize, 32, 40, 64, 128] {
            for groups in [3usize, 4] {
                let (n, k): (usize, usize) = (45, (groups - 1) * group + 8);
                let ng = k.div_ceil(group);
                let q: Vec<i8> = (0..n * k).map(|i| (i % 16) as i8 - 8).collect();
                let s16: Vec<u16> = (0..n * ng).map(|i| 0x2000 + i as u16).collect();
                let s32: Vec<f32> = s16.iter().map(|&h| f16_to_f32(h)).collect();
                let codes: Vec<u8> = (0..n * ng).map(|i| 1 + (i % 255) as u8).collect();
                let step: Vec<f32> = (0..n).map(|j| 1e-3 * (j + 1) as f32).collect();
                for fmt in [ScaleFmt::F32, ScaleFmt::F16, ScaleFmt::U8] {
                    let scales = match fmt {
                        ScaleFmt::F32 => GroupScales::F32(&s32),
                        ScaleFmt::F16 => GroupScales::F16(&s16),
                        ScaleFmt::U8 => GroupScales::U8 { codes: &codes, step: &step },
                    };
                    let w = PackedInt4::new(&q, n, k, scales, &[], group).unwrap();
                    assert_eq!(w.bytes().as_ptr() as usize % 64, 0);
                    assert_eq!(w.stride % 64, 0);
                    assert_eq!(Panel::len_of(ng, group / 8, fmt) % 64, 0);
                    let want = match fmt {
                        ScaleFmt::F32 => group / 8 * 128 + 128,
                        ScaleFmt::F16 => group / 8 * 128 + 64,
                        ScaleFmt::U8 => 64 + 2 * (group / 8 * 128),
                    };
                    assert_eq!(w.stride, want);
                    let s = match fmt {
                        ScaleFmt::U8 => (0..n * ng).map(|i| codes[i] as f32 * step[i / ng]).collect(),
                        _ => s32.clone(),
                    };
                    assert_eq!(w.unpack(), (q.clone(), s, vec![]));
                    assert_eq!(w.f16_scales().is_some(), fmt == ScaleFmt::F16);
                    assert_eq!(w.u8_scales(), (fmt == ScaleFmt::U8).then(|| (codes.clone(), step.clone())));
                }
            }
        }
    }

    /// The integer sums at their largest: every activation at a code extreme and every weight code -8 or 7
    /// (so that each byte is 0x00 or 0xFF, the largest whole-byte sums), with zero points at the other extreme,
    /// in groups around the VNNI tile's limit for whole-byte sums ([`WHOLE_BYTE_MAX_GROUP`]) and for one to
    /// three rows (the whole-byte tiles of one and two rows, the masked one of three), on every path, against an exact i64
    /// reference. Scales of 1 and activations whose codes are their values make the expected outputs integers
    /// that `f32` holds exactly (multiples of 8 below 2^27).
    #[test]
    fn largest_sums_are_exact_around_the_whole_byte_limit() {
        let paths: Vec<Path> = Path::ALL.into_iter().filter(|p| p.is_supported()).collect();
        for group in [WHOLE_BYTE_MAX_GROUP, WHOLE_BYTE_MAX_GROUP + 8] {
            let (n, k) = (33, group);
            for (m, code) in [(1, 127.0f32), (2, -127.0), (3, 127.0)] {
                for affine in [false, true] {
                    // Codes of column j: all -8 (even j) or all 7 (odd j); zero points 7 / -8 when affine.
                    let q: Vec<i8> = (0..n * k).map(|i| if (i / k).is_multiple_of(2) { -8 } else { 7 }).collect();
                    let zero = |j: usize| if j.is_multiple_of(2) { 7 } else { -8 };
                    let zeros: Vec<i8> = if affine { (0..n).map(zero).collect() } else { vec![] };
                    let w = PackedInt4::new(&q, n, k, &vec![1.0f32; n], &zeros, group).unwrap();
                    // Static activations with scale 1, zero point 128: the codes are the values.
                    let x: Vec<f32> = (0..m * k).map(|i| if (i / k).is_multiple_of(2) { code } else { -code }).collect();
                    let act = ActQuant::Static { scale: 1.0, zero_point: 128 };
                    for &path in &paths {
                        let mut out = vec![0f32; m * n];
                        int4_linear(path, &x, m, &w, None, act, &mut out).unwrap();
                        for i in 0..m {
                            for j in 0..n {
                                let zw = zeros.get(j).copied().unwrap_or(0) as i64;
                                let qa = x[i * k] as i64;
                                let want = (q[j * k] as i64 - zw) * qa * k as i64;
                                assert_eq!(out[i * n + j] as i64, want, "{path:?} group {group} m {m} row {i} col {j}");
                            }
                        }
                    }
                }
            }
        }
    }
}
