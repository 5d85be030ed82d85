//! [`PackedLinear`]: prepacked int8 weights of a linear layer with scales and zero points, and the float
//! path [`int8_linear`] `f32 = dequant(quant(x) · W_s8ᵀ) + bias` built on the driver and the f32 epilogue.
use super::act_pack::{self, ActQuant};
use super::driver::{check_out, drive, Block};
use super::epilogue::{epilogue_f32, Activation, TileEpilogue};
use super::panels::{self, PackedA, PackedB, NR};
use super::path::{isa_of, Path};
use crate::error::{KernelError, Result};

/// Prepacked weights of a linear layer: s8 codes `w[n, k]`, per-tensor or per-output-channel scales, and
/// optional zero points (affine weights); `w ≈ (q - zero_point) * scale`.
#[derive(Clone, Debug, PartialEq)]
pub struct PackedLinear {
    b: PackedB,
    /// One scale per (padded) output channel.
    scale: Vec<f32>,
    /// One zero point per (padded) output channel, or empty when all are 0.
    zero: Vec<i32>,
    per_channel: bool,
}

impl PackedLinear {
    /// Packs `w` (row-major `[n, k]`, s8) with `scale` (1 or `n` values, finite and > 0) and `zero_point`
    /// (empty, 1 or `n` values in [-128, 127]).
    pub fn new(w: &[i8], n: usize, k: usize, scale: &[f32], zero_point: &[i32]) -> Result<PackedLinear> {
        let b = PackedB::from_nk(w, n, k)?;
        let np = panels::round_up(n.max(1), NR);
        let per_channel = scale.len() != 1;
        if scale.len() != 1 && scale.len() != n {
            return Err(KernelError::Mismatch {
                what: format!("scale needs 1 or {n} (output channels) values, got {}", scale.len()),
            });
        }
        if !zero_point.is_empty() && zero_point.len() != 1 && zero_point.len() != n {
            return Err(KernelError::Mismatch {
                what: format!("zero_point needs 0, 1 or {n} (output channels) values, got {}", zero_point.len()),
            });
        }
        for (c, &s) in scale.iter().enumerate() {
            if !(s.is_finite() && s > 0.0) {
                return Err(KernelError::BadScale { channel: per_channel.then_some(c), value: s });
            }
        }
        for (c, &z) in zero_point.iter().enumerate() {
            if !(-128..=127).contains(&z) {
                return Err(KernelError::BadZeroPoint {
                    channel: (zero_point.len() > 1).then_some(c),
                    value: z,
                    qmin: -128,
                    qmax: 127,
                });
            }
        }
        let expand = |v: &[f32]| (0..np).map(|j| if j < n { v[if v.len() == 1 { 0 } else { j }] } else { 0.0 }).collect();
        let zero = if zero_point.iter().all(|&z| z == 0) {
            Vec::new()
        } else {
            (0..np).map(|j| if j < n { zero_point[if zero_point.len() == 1 { 0 } else { j }] } else { 0 }).collect()
        };
        Ok(PackedLinear { b, scale: expand(scale), zero, per_channel })
    }

    pub fn in_features(&self) -> usize {
        self.b.k()
    }
    pub fn out_features(&self) -> usize {
        self.b.n()
    }
    pub fn packed(&self) -> &PackedB {
        &self.b
    }
    /// Per-channel scales (`n` values) or the per-tensor one.
    pub fn scale(&self) -> Vec<f32> {
        if self.per_channel { self.scale[..self.b.n()].to_vec() } else { vec![self.scale[0]] }
    }
    /// Zero points (`n` values, or empty when all are 0).
    pub fn zero_point(&self) -> Vec<i32> {
        if self.zero.is_empty() { Vec::new() } else { self.zero[..self.b.n()].to_vec() }
    }
    /// The s8 codes `[n, k]`.
    pub fn weight(&self) -> Vec<i8> {
        self.b.to_nk()
    }
    /// Bytes held.
    pub fn nbytes(&self) -> usize {
        self.b.nbytes() + 4 * (self.scale.len() + self.zero.len())
    }
}

/// `out[m, n] = f(dequant(quant(x) · qᵀ) + bias)` for `x[m, k]` (f32), with activations quantized on the fly
/// as `act` says and `f` the `activation`. Exact in the integer part: `out = f(sa_i · sw_j · sum_k (qa - za_i)
/// (qw - zw_j) + bias_j)`.
#[allow(clippy::too_many_arguments)]
pub fn int8_linear(
    path: Path,
    x: &[f32],
    m: usize,
    w: &PackedLinear,
    bias: Option<&[f32]>,
    act: ActQuant,
    activation: Activation,
    out: &mut [f32],
) -> Result<()> {
    path.check()?;
    let k = w.b.k();
    check_out("x", x, m * k)?;
    check_linear(m, w, bias, act, out)?;
    let pa = act_pack::pack_f32(path, path.mr_for(m), x, m, k, w.b.kp(), act, !w.zero.is_empty())?;
    finish_linear(path, m, pa, w, bias, activation, out, true);
    Ok(())
}

/// Output, bias, activation and exact-accumulation checks of the float paths.
pub(crate) fn check_linear(m: usize, w: &PackedLinear, bias: Option<&[f32]>, act: ActQuant, out: &[f32]) -> Result<()> {
    let (k, n) = (w.b.k(), w.b.n());
    check_out("out", out, m * n)?;
    if let Some(b) = bias {
        check_out("bias", b, n)?;
    }
    act.check()?;
    let amax: i64 = if act.is_symmetric() { 128 } else { 255 };
    let wmax: i64 = if w.zero.is_empty() { 128 } else { 255 };
    if amax * wmax * k as i64 > i32::MAX as i64 {
        return Err(KernelError::Invalid {
            what: format!(
                "K = {k} is too large for exact int32 accumulation with {} activations{}: need K <= {}; use symmetric \
                 activation quantization",
                if amax == 128 { "symmetric" } else { "asymmetric" },
                if wmax == 255 { " and weight zero points" } else { "" },
                i32::MAX as i64 / (amax * wmax)
            ),
        });
    }
    Ok(())
}

/// The GEMM and float epilogue (with `activation`) of packed activations `pa` (`m` rows) with `w`, into
/// `out[m, n]`; `in_tiles`: the VNNI tiles apply the epilogue to their registers where they can (see [`drive`]),
/// else it runs on each finished block (the same bits; `false` only to measure the difference).
#[allow(clippy::too_many_arguments)]
pub(crate) fn finish_linear(
    path: Path,
    m: usize,
    pa: PackedA,
    w: &PackedLinear,
    bias: Option<&[f32]>,
    activation: Activation,
    out: &mut [f32],
    in_tiles: bool,
) {
    let (k, n) = (w.b.k(), w.b.n());
    let colsum = w.b.colsum();
    let kk = k as i32;
    // SAFETY (below): an f32 and an i32 have the same size and alignment; the buffer holds i32 partial sums
    // until the epilogue turns each block into f32.
    let c: &mut [i32] = unsafe { std::slice::from_raw_parts_mut(out.as_mut_ptr() as *mut i32, out.len()) };
    let finish = |blk: Block, c: *mut i32| {
        let cols = blk.j0..blk.j1;
        for i in blk.i0..blk.i1 {
            // SAFETY: row `i` of the block belongs to this task.
            let row = unsafe { std::slice::from_raw_parts_mut(c.add(i * n + blk.j0), blk.j1 - blk.j0) };
            let za = pa.zero[i];
            let r = kk.wrapping_mul(za).wrapping_sub(pa.rowsum[i]);
            let zw = if w.zero.is_empty() { None } else { Some(&w.zero[cols.clone()]) };
            epilogue_f32(
                isa_of(path),
                row,
                &colsum[cols.clone()],
                za,
                zw,
                r,
                pa.scale[i],
                &w.scale[cols.clone()],
                bias.map(|b| &b[cols.clone()]),
                activation,
            );
        }
    };
    let np = colsum.len();
    let epi = TileEpilogue {
        colsum,
        sw: &w.scale,
        zw: (!w.zero.is_empty()).then_some(&w.zero[..]),
        bias: bias.map(|b| (0..np).map(|j| if j < n { b[j] } else { 0.0 }).collect()),
        za: &pa.zero,
        r: (0..m).map(|i| kk.wrapping_mul(pa.zero[i]).wrapping_sub(pa.rowsum[i])).collect(),
        sa: &pa.scale,
        act: activation,
    };
    drive(path, m, &pa, &w.b, c, &finish, in_tiles.then_some(&epi));
    act_pack::release(pa);
}
