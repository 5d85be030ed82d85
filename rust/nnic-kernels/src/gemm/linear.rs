//! [`PackedLinear`]: prepacked int8 weights of a linear layer with scales and zero points, and the float
//! path [`int8_linear`] `f32 = dequant(quant(x) · W_s8ᵀ) + bias` built on the driver and the f32 epilogue.
use super::act_pack::{self, ActQuant};
use super::driver::{check_out, drive, Block, Hooks};
use super::epilogue::{epilogue_f32, Activation, RowTerms, TileEpilogue};
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
    run_linear(path, x, m, w, bias, act, activation, out, None)
}

/// Quantizes and packs `x` and runs the GEMM with its epilogue (and `rows_done`: see [`Hooks::rows_done`]).
/// Activations of at least [`act_pack::PACK_PAR_MIN`] values are packed inside the GEMM's region
/// ([`Hooks::pack`]); smaller ones on the calling thread first, as before. Why: packing them takes microseconds,
/// and a helper that took the only panel (M = 1) and was then descheduled by another process would hold up every
/// block until it ran again, where the caller packing it itself cannot be held up.
#[allow(clippy::too_many_arguments)]
fn run_linear(
    path: Path,
    x: &[f32],
    m: usize,
    w: &PackedLinear,
    bias: Option<&[f32]>,
    act: ActQuant,
    activation: Activation,
    out: &mut [f32],
    rows_done: Option<&(dyn Fn(usize, usize, *mut i32) + Sync)>,
) -> Result<()> {
    let k = w.b.k();
    let (pa, panels) = act_pack::F32Panels::new(path, path.mr_for(m), x, m, k, w.b.kp(), act, !w.zero.is_empty())?;
    let in_region = m * k >= act_pack::PACK_PAR_MIN;
    if !in_region {
        // SAFETY: `pa` is not otherwise touched until the GEMM, and no panel is packed yet.
        unsafe { panels.pack_all(1) }?;
    }
    finish_linear(path, m, pa, w, bias, activation, out, true, in_region.then_some(&panels), rows_done);
    panels.check()
}

/// `out[m, n] = LayerNorm(dequant(quant(x) · qᵀ) + bias + residual) * gamma + beta` per row: [`int8_linear`]
/// followed by [`crate::norm::skip_layer_norm`] of its output and `residual` (`[m, n]`; `gamma`, `beta`: `n`
/// values), the same bits as the two calls. A BERT-style block ending (`BertSelfOutput`, `BertOutput`: the
/// projection back to the hidden size, the residual add and the LayerNorm) in one parallel region: each row block
/// is normalised by the thread that finished its last column block, while its rows are in cache, where the
/// separate LayerNorm was a region of its own that read the output back (in the forward: 0.77 ms a call against
/// 0.27 ms on data just written, one thread) and scaled worst of the encoder's stages at two threads.
#[allow(clippy::too_many_arguments)]
pub fn int8_linear_skip_layer_norm(
    path: Path,
    x: &[f32],
    m: usize,
    w: &PackedLinear,
    bias: Option<&[f32]>,
    act: ActQuant,
    residual: &[f32],
    gamma: &[f32],
    beta: &[f32],
    eps: f32,
    out: &mut [f32],
) -> Result<()> {
    path.check()?;
    let (k, n) = (w.b.k(), w.b.n());
    check_out("x", x, m * k)?;
    check_linear(m, w, bias, act, out)?;
    check_out("residual", residual, m * n)?;
    if crate::norm::check_norm(gamma, beta, eps)? != n {
        return Err(KernelError::Mismatch {
            what: format!("gamma has {} values, the layer has {n} outputs", gamma.len()),
        });
    }
    let isa = crate::cpu::active();
    let rows_done = |i0: usize, i1: usize, c: *mut i32| {
        // SAFETY: rows [i0, i1) are finished (f32 by now) and belong to this call alone.
        let rows = unsafe { std::slice::from_raw_parts_mut((c as *mut f32).add(i0 * n), (i1 - i0) * n) };
        crate::norm::skip_layer_norm_rows_in_place(isa, &residual[i0 * n..i1 * n], gamma, beta, eps, rows);
    };
    run_linear(path, x, m, w, bias, act, Activation::Identity, out, Some(&rows_done))
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

/// The rows' `K·za - rowsum` terms (written by the task that packs their panel: see [`RowTerms`]) and the byte
/// sums they come from.
#[derive(Copy, Clone)]
struct RowR {
    r: *mut i32,
    rowsum: *const i32,
}
// SAFETY: each row's term is written once, by its panel's task, after the panel's sums and before any task
// reads it.
unsafe impl Send for RowR {}
unsafe impl Sync for RowR {}

/// The GEMM and float epilogue (with `activation`) of packed activations `pa` (`m` rows) with `w`, into
/// `out[m, n]`; `in_tiles`: the VNNI tiles apply the epilogue to their registers where they can (see [`drive`]),
/// else it runs on each finished block (the same bits; `false` only to measure the difference). With `panels`,
/// `pa` is not packed yet: the GEMM's region packs its panels first ([`Hooks::pack`]); `rows_done` runs on each
/// finished row block ([`Hooks::rows_done`]).
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
    panels: Option<&act_pack::F32Panels>,
    rows_done: Option<&(dyn Fn(usize, usize, *mut i32) + Sync)>,
) {
    let (k, n) = (w.b.k(), w.b.n());
    let colsum = w.b.colsum();
    let kk = k as i32;
    // SAFETY (below): an f32 and an i32 have the same size and alignment; the buffer holds i32 partial sums
    // until the epilogue turns each block into f32.
    let c: &mut [i32] = unsafe { std::slice::from_raw_parts_mut(out.as_mut_ptr() as *mut i32, out.len()) };
    let (za, sa, rowsum) = (pa.zero.as_ptr(), pa.scale.as_ptr(), pa.rowsum.as_ptr());
    assert!(pa.zero.len() == m && pa.scale.len() == m && pa.rowsum.len() == m);
    let mut r_of = vec![0i32; m];
    let r_at = RowR { r: r_of.as_mut_ptr(), rowsum };
    let row = RowTerms { za, r: r_at.r, sa, rows: m };
    // Row `i`'s term, once its panel is packed (callers: `i < m`).
    let set_r = |i: usize| {
        #[allow(clippy::redundant_locals)] // captures the Sync wrappers, not their raw pointer fields
        let (r_at, row) = (r_at, row);
        // SAFETY: `i < m`, the row's panel is packed, and row `i`'s term is written by one task only.
        unsafe { *r_at.r.add(i) = kk.wrapping_mul(*row.za.add(i)).wrapping_sub(*r_at.rowsum.add(i)) }
    };
    let mr = pa.mr;
    let pack = panels.map(|panels| {
        assert_eq!(panels.mr(), mr);
        move |p: usize| {
            // SAFETY: `drive` runs each panel's task once, before any block that reads its rows.
            unsafe { panels.pack(p) };
            (p * mr..((p + 1) * mr).min(m)).for_each(set_r);
        }
    });
    if pack.is_none() {
        (0..m).for_each(set_r);
    }
    let finish = |blk: Block, c: *mut i32| {
        let cols = blk.j0..blk.j1;
        for i in blk.i0..blk.i1 {
            // SAFETY: row `i` of the block belongs to this task, and its panel is packed.
            let row_out = unsafe { std::slice::from_raw_parts_mut(c.add(i * n + blk.j0), blk.j1 - blk.j0) };
            let (za, r, sa) = unsafe { row.get(i) };
            let zw = if w.zero.is_empty() { None } else { Some(&w.zero[cols.clone()]) };
            epilogue_f32(
                isa_of(path),
                row_out,
                &colsum[cols.clone()],
                za,
                zw,
                r,
                sa,
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
        row,
        act: activation,
    };
    let pack = pack.as_ref().map(|f| f as &(dyn Fn(usize) + Sync));
    drive(path, m, &pa, &w.b, c, &finish, in_tiles.then_some(&epi), Hooks { pack, rows_done });
    drop(r_of);
    act_pack::release(pa);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The activations packed as the first tasks of the GEMM's region ([`int8_linear`] from
    /// [`act_pack::PACK_PAR_MIN`] values, on the caller first below) give the bits of packing them in a region of
    /// their own first: on every path, for per-row, per-tensor and static activations, with
    /// and without weight zero points, with GELU, from one row to several row blocks, K inside one slice and
    /// beyond it (the epilogue on finished blocks), N not a multiple of 32 and N = 0; a non-finite input is the
    /// same error.
    #[test]
    fn packing_inside_the_gemm_region_gives_the_bits_of_packing_first() {
        let mut seed = 11u64;
        let mut next = move || {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (seed >> 33) as f32 / (1u64 << 31) as f32 - 0.5
        };
        let acts = [
            ActQuant::DynamicPerRow { symmetric: false, reduce_range: false },
            ActQuant::DynamicPerTensor { symmetric: true, reduce_range: false },
            ActQuant::Static { scale: 0.01, zero_point: 120 },
        ];
        let shapes = [(1, 3, 33), (13, 770, 200), (100, 64, 33), (100, 4100, 40), (400, 770, 200), (700, 400, 0)];
        for (case, &(m, k, n)) in shapes.iter().enumerate() {
            let x: Vec<f32> = (0..m * k).map(|_| next() * 8.0).collect();
            let codes: Vec<i8> = (0..n * k).map(|_| (next() * 255.0) as i8).collect();
            let scale: Vec<f32> = (0..n).map(|_| 0.01 + next().abs() * 0.01).collect();
            let zero: Vec<i32> = (0..n).map(|j| j as i32 % 5 - 2).collect();
            let bias: Vec<f32> = (0..n).map(|_| next()).collect();
            let plain = PackedLinear::new(&codes, n, k, &scale, &[]).unwrap();
            let affine = PackedLinear::new(&codes, n, k, &scale, &zero).unwrap();
            for (w, zp) in [(plain, false), (affine, true)] {
                for (a, &act) in acts.iter().enumerate() {
                    let activation = if (case + a) % 2 == 0 { Activation::Gelu } else { Activation::Identity };
                    for path in Path::ALL.into_iter().filter(|p| p.is_supported()) {
                        let what = format!("{path:?} {m}x{k}x{n} {act:?} zero points {zp} {activation:?}");
                        let mut got = vec![f32::NAN; m * n];
                        int8_linear(path, &x, m, &w, Some(&bias), act, activation, &mut got).unwrap();
                        let mut want = vec![f32::NAN; m * n];
                        let pa = act_pack::pack_f32(path, path.mr_for(m), &x, m, k, w.b.kp(), act, zp).unwrap();
                        finish_linear(path, m, pa, &w, Some(&bias), activation, &mut want, true, None, None);
                        let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
                        assert_eq!(bits(&got), bits(&want), "{what}");
                        assert!(got.iter().all(|v| v.is_finite()), "{what}");
                    }
                }
            }
            if m * k > 0 && n > 0 {
                let mut bad = x.clone();
                bad[m * k - 1] = f32::INFINITY;
                let w = PackedLinear::new(&codes, n, k, &scale, &[]).unwrap();
                let mut out = vec![0.0; m * n];
                let err = int8_linear(Path::active(), &bad, m, &w, None, acts[0], Activation::Identity, &mut out);
                let msg = format!("{}", err.unwrap_err());
                assert!(msg.contains(&format!("flat index {}", m * k - 1)), "{msg}");
            }
        }
    }

    /// The block ending in one region ([`int8_linear_skip_layer_norm`]) gives the bits of [`int8_linear`] followed
    /// by [`crate::norm::skip_layer_norm`] on every GEMM path (the LayerNorm's ISA paths: the Python tests): one
    /// row to several row blocks (each normalised by the thread that finishes it), column counts of one and of
    /// several blocks, K beyond one slice; a LayerNorm that does not fit the outputs is an error.
    #[test]
    fn the_block_ending_in_one_region_gives_the_bits_of_the_linear_then_the_skip_layer_norm() {
        let mut seed = 5u64;
        let mut next = move || {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (seed >> 33) as f32 / (1u64 << 31) as f32 - 0.5
        };
        for &(m, k, n) in &[(1, 40, 24), (13, 64, 100), (400, 700, 768), (301, 4100, 96)] {
            let x: Vec<f32> = (0..m * k).map(|_| next() * 4.0).collect();
            let residual: Vec<f32> = (0..m * n).map(|_| next() * 2.0).collect();
            let codes: Vec<i8> = (0..n * k).map(|_| (next() * 255.0) as i8).collect();
            let scale: Vec<f32> = (0..n).map(|_| 0.001 + next().abs() * 0.01).collect();
            let bias: Vec<f32> = (0..n).map(|_| next()).collect();
            let gamma: Vec<f32> = (0..n).map(|_| 1.0 + next()).collect();
            let beta: Vec<f32> = (0..n).map(|_| next()).collect();
            let w = PackedLinear::new(&codes, n, k, &scale, &[]).unwrap();
            let act = ActQuant::DynamicPerRow { symmetric: false, reduce_range: false };
            for path in Path::ALL.into_iter().filter(|p| p.is_supported()) {
                let mut y = vec![0.0; m * n];
                int8_linear(path, &x, m, &w, Some(&bias), act, Activation::Identity, &mut y).unwrap();
                let mut want = vec![0.0; m * n];
                crate::norm::skip_layer_norm(&y, &residual, &gamma, &beta, 1e-12, &mut want).unwrap();
                let mut got = vec![f32::NAN; m * n];
                let r = &residual;
                let (g, b) = (&gamma, &beta);
                int8_linear_skip_layer_norm(path, &x, m, &w, Some(&bias), act, r, g, b, 1e-12, &mut got).unwrap();
                let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&got), bits(&want), "{path:?} {m}x{k}x{n}");
            }
            let mut out = vec![0.0; m * n];
            let short = &gamma[..n - 1];
            let r = &residual;
            let p = Path::active();
            let err = int8_linear_skip_layer_norm(p, &x, m, &w, None, act, r, short, short, 1e-12, &mut out);
            assert!(format!("{}", err.unwrap_err()).contains("outputs"), "gamma of {} values", n - 1);
        }
    }
}
