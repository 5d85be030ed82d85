//! int4 weights (two per byte, per-group scales) × int8 activations quantized on the fly, for small M,
//! where the weight bytes dominate the cost.
//!
//! `y[i, j] = sa_i · (sum_g s[j, g] · sum_{k in g} (qa[i, k] - za_i) · q[j, k]) + bias_j`, with the
//! zero-point term folded into one per-column constant at pack time. Layout: panels of 32 columns; each
//! 128-byte row holds 8 k values × 32 columns: the low nibbles are k group `2t` (4 k values), the high
//! nibbles k group `2t+1`, each stored as `q + 8` in [0, 15] and widened back to s8 in the kernel.
#![allow(clippy::needless_range_loop)] // register tiles are indexed by row
use super::panels::{round_up, PackedA, NR};
use super::act_pack::{self, ActQuant};
use super::{isa_of, Block, Path};
use crate::error::{KernelError, Result};
use crate::pool;

/// Rows per register tile.
const MR4: usize = 8;

/// Packed int4 weights of a `[n, k]` linear layer.
#[derive(Clone, Debug, PartialEq)]
pub struct PackedInt4 {
    n: usize,
    k: usize,
    group: usize,
    kp: usize,
    data: Vec<u8>,
    /// `[panel][group][32]`.
    scales: Vec<f32>,
    /// `sum_g s[j, g] · sum_{k in g} q[j, k]` per padded column.
    csum: Vec<f32>,
}

impl PackedInt4 {
    /// Packs codes `q[n, k]` (each in [-8, 7]) with `scales[n, ceil(k / group)]`; `group` is a multiple of 8.
    pub fn new(q: &[i8], n: usize, k: usize, scales: &[f32], group: usize) -> Result<PackedInt4> {
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
        if let Some((i, &v)) = q.iter().enumerate().find(|(_, v)| !(-8..=7).contains(*v)) {
            return Err(KernelError::ValueOutOfRange { arg: "weight", index: i, value: v as i64, lo: -8, hi: 7 });
        }
        if let Some((i, &s)) = scales.iter().enumerate().find(|(_, s)| !(s.is_finite() && **s > 0.0)) {
            return Err(KernelError::BadScale { channel: Some(i), value: s });
        }
        let kp = round_up(k.max(1), group);
        let np = round_up(n.max(1), NR);
        let gp = kp / group;
        let mut data = vec![0x88u8; np * kp / 2];
        let mut sc = vec![0f32; np * gp];
        let mut csum = vec![0f32; np];
        for j in 0..n {
            let (p, c) = (j / NR, j % NR);
            let panel = &mut data[p * kp * NR / 2..(p + 1) * kp * NR / 2];
            let row = &q[j * k..(j + 1) * k];
            for (kk, &v) in row.iter().enumerate() {
                let (t, hi, e) = (kk / 8, (kk / 4) % 2, kk % 4);
                let byte = &mut panel[t * 128 + c * 4 + e];
                let nib = (v + 8) as u8;
                *byte = if hi == 1 { (*byte & 0x0F) | (nib << 4) } else { (*byte & 0xF0) | nib };
            }
            let mut cs = 0f32;
            for g in 0..ng {
                let s = scales[j * ng + g];
                sc[(p * gp + g) * NR + c] = s;
                let sum: i32 = row[g * group..((g + 1) * group).min(k)].iter().map(|&v| v as i32).sum();
                cs += s * sum as f32;
            }
            csum[j] = cs;
        }
        Ok(PackedInt4 { n, k, group, kp, data, scales: sc, csum })
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
        self.data.len() + 4 * (self.scales.len() + self.csum.len())
    }

    /// The codes `[n, k]` and scales `[n, groups]` (round trip of [`PackedInt4::new`]).
    pub fn unpack(&self) -> (Vec<i8>, Vec<f32>) {
        let ng = self.k.div_ceil(self.group);
        let gp = self.kp / self.group;
        let mut q = vec![0i8; self.n * self.k];
        let mut s = vec![0f32; self.n * ng];
        for j in 0..self.n {
            let (p, c) = (j / NR, j % NR);
            let panel = &self.data[p * self.kp * NR / 2..];
            for kk in 0..self.k {
                let byte = panel[(kk / 8) * 128 + c * 4 + kk % 4];
                let nib = if (kk / 4) % 2 == 1 { byte >> 4 } else { byte & 0x0F };
                q[j * self.k + kk] = nib as i8 - 8;
            }
            for g in 0..ng {
                s[j * ng + g] = self.scales[(p * gp + g) * NR + c];
            }
        }
        (q, s)
    }
}

/// Portable tile: `f[r][c] = sum_g s[g][c] · sum_{k in g} a_u8 · q` for `rows` rows.
#[inline(always)]
fn tile_body(rows: usize, groups: usize, pairs: usize, a: &[u8], b: &[u8], sc: &[f32], f: &mut [[f32; NR]; MR4]) {
    for fr in f.iter_mut() {
        *fr = [0.0; NR];
    }
    for g in 0..groups {
        let mut acc = [[0i32; NR]; MR4];
        for t in 0..pairs {
            let tt = g * pairs + t;
            let bb = &b[tt * 128..tt * 128 + 128];
            for (r, accr) in acc.iter_mut().enumerate().take(rows) {
                let a0 = &a[(2 * tt) * rows * 4 + r * 4..][..4];
                let a1 = &a[(2 * tt + 1) * rows * 4 + r * 4..][..4];
                for (c, acc) in accr.iter_mut().enumerate() {
                    let mut s = 0i32;
                    for e in 0..4 {
                        let byte = bb[c * 4 + e];
                        s += a0[e] as i32 * ((byte & 0x0F) as i32 - 8) + a1[e] as i32 * ((byte >> 4) as i32 - 8);
                    }
                    *acc += s;
                }
            }
        }
        let s = &sc[g * NR..(g + 1) * NR];
        for r in 0..rows {
            for c in 0..NR {
                f[r][c] += s[c] * acc[r][c] as f32;
            }
        }
    }
}
crate::simd::multiversion!(fn tile_mv(rows: usize, groups: usize, pairs: usize, a: &[u8], b: &[u8], sc: &[f32],
    f: &mut [[f32; NR]; MR4]) = tile_body;);

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{MR4, NR};
    use std::arch::x86_64::*;

    /// VNNI tile (see [`super::tile_body`]).
    ///
    /// # Safety
    /// `a`: `2 * groups * pairs` k groups of `MR` rows; `b`: `groups * pairs * 128` bytes; `sc`: `groups * 32`
    /// floats; the CPU has AVX-512 VNNI.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub(super) unsafe fn tile<const MR: usize>(
        groups: usize,
        pairs: usize,
        a: *const u8,
        b: *const u8,
        sc: *const f32,
        f: &mut [[f32; NR]; MR4],
    ) {
        unsafe {
            let mask = _mm512_set1_epi8(0x0F);
            let eight = _mm512_set1_epi8(8);
            // Few rows: low and high nibbles accumulate separately (4 independent vpdpbusd chains per row).
            let split = MR <= 2;
            for fr in f.iter_mut().take(MR) {
                *fr = [0.0; NR];
            }
            let mut ap = a;
            let mut bp = b;
            for g in 0..groups {
                let mut s = [[_mm512_setzero_si512(); 2]; MR];
                let mut t = [[_mm512_setzero_si512(); 2]; MR];
                for _ in 0..pairs {
                    let x0 = _mm512_loadu_si512(bp as *const __m512i);
                    let x1 = _mm512_loadu_si512(bp.add(64) as *const __m512i);
                    _mm_prefetch::<_MM_HINT_T0>(bp.add(2048) as *const i8);
                    _mm_prefetch::<_MM_HINT_T0>(bp.add(2048 + 64) as *const i8);
                    let l0 = _mm512_sub_epi8(_mm512_and_si512(x0, mask), eight);
                    let l1 = _mm512_sub_epi8(_mm512_and_si512(x1, mask), eight);
                    let h0 = _mm512_sub_epi8(_mm512_and_si512(_mm512_srli_epi16::<4>(x0), mask), eight);
                    let h1 = _mm512_sub_epi8(_mm512_and_si512(_mm512_srli_epi16::<4>(x1), mask), eight);
                    for r in 0..MR {
                        let a0 = _mm512_set1_epi32((ap.add(r * 4) as *const i32).read_unaligned());
                        let a1 = _mm512_set1_epi32((ap.add(MR * 4 + r * 4) as *const i32).read_unaligned());
                        s[r][0] = _mm512_dpbusd_epi32(s[r][0], a0, l0);
                        s[r][1] = _mm512_dpbusd_epi32(s[r][1], a0, l1);
                        if split {
                            t[r][0] = _mm512_dpbusd_epi32(t[r][0], a1, h0);
                            t[r][1] = _mm512_dpbusd_epi32(t[r][1], a1, h1);
                        } else {
                            s[r][0] = _mm512_dpbusd_epi32(s[r][0], a1, h0);
                            s[r][1] = _mm512_dpbusd_epi32(s[r][1], a1, h1);
                        }
                    }
                    ap = ap.add(2 * MR * 4);
                    bp = bp.add(128);
                }
                // Group end: f += float(sum) * scale, with f in L1 (keeps registers for the integer tile).
                let s0 = _mm512_loadu_ps(sc.add(g * NR));
                let s1 = _mm512_loadu_ps(sc.add(g * NR + 16));
                for r in 0..MR {
                    let (v0, v1) = if split {
                        (_mm512_add_epi32(s[r][0], t[r][0]), _mm512_add_epi32(s[r][1], t[r][1]))
                    } else {
                        (s[r][0], s[r][1])
                    };
                    let p = f[r].as_mut_ptr();
                    _mm512_storeu_ps(p, _mm512_fmadd_ps(_mm512_cvtepi32_ps(v0), s0, _mm512_loadu_ps(p)));
                    _mm512_storeu_ps(p.add(16), _mm512_fmadd_ps(_mm512_cvtepi32_ps(v1), s1, _mm512_loadu_ps(p.add(16))));
                }
            }
        }
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
    let pa: PackedA = act_pack::pack_f32(path, MR4, x, m, k, w.kp, act, false)?;
    let groups = w.kp / w.group;
    let pairs = w.group / 8;
    let o = OutF(out.as_mut_ptr());
    let threads = if m * n * k < (1 << 20) { 1 } else { pool::num_threads() };
    let mr = pa.mr;
    let blocks = super::plan(m, n, mr, threads, 64, 8 * NR);
    let run = |blk: Block| {
        #[allow(clippy::redundant_locals)] // captures the Sync wrapper, not its raw pointer field
        let o = o;
        let mut f = [[0f32; NR]; MR4];
        for j0 in (blk.j0..blk.j1).step_by(NR) {
            let p = j0 / NR;
            let nr = (blk.j1 - j0).min(NR);
            let b = &w.data[p * w.kp * NR / 2..(p + 1) * w.kp * NR / 2];
            let sc = &w.scales[p * groups * NR..(p + 1) * groups * NR];
            for i0 in (blk.i0..blk.i1).step_by(mr) {
                let rows = (blk.i1 - i0).min(mr);
                let ap = pa.panel_ptr_rows(i0 / mr, 0);
                match path {
                    #[cfg(target_arch = "x86_64")]
                    // SAFETY: sizes by the layouts; VNNI checked by `path.is_supported()`.
                    Path::Vnni => unsafe {
                        let (bp, sp) = (b.as_ptr(), sc.as_ptr());
                        match rows {
                            1 => x86::tile::<1>(groups, pairs, ap, bp, sp, &mut f),
                            2 => x86::tile::<2>(groups, pairs, ap, bp, sp, &mut f),
                            3 => x86::tile::<3>(groups, pairs, ap, bp, sp, &mut f),
                            4 => x86::tile::<4>(groups, pairs, ap, bp, sp, &mut f),
                            5 => x86::tile::<5>(groups, pairs, ap, bp, sp, &mut f),
                            6 => x86::tile::<6>(groups, pairs, ap, bp, sp, &mut f),
                            7 => x86::tile::<7>(groups, pairs, ap, bp, sp, &mut f),
                            _ => x86::tile::<8>(groups, pairs, ap, bp, sp, &mut f),
                        }
                    },
                    _ => {
                        // SAFETY: the panel holds `rows * kp` bytes.
                        let a = unsafe { std::slice::from_raw_parts(ap, rows * w.kp) };
                        tile_mv(isa_of(path), rows, groups, pairs, a, b, sc, &mut f);
                    }
                }
                for r in 0..rows {
                    let i = i0 + r;
                    let (sa, za) = (pa.scale[i], pa.zero[i] as f32);
                    for c in 0..nr {
                        let j = j0 + c;
                        let v = sa * (f[r][c] - za * w.csum[j]) + bias.map_or(0.0, |b| b[j]);
                        // SAFETY: (i, j) is inside this task's block.
                        unsafe { *o.0.add(i * n + j) = v };
                    }
                }
            }
        }
    };
    super::par::for_each(blocks.len(), threads, &|i| run(blocks[i]));
    act_pack::release(pa);
    Ok(())
}
