//! int8 2-D convolution on NHWC (channels-last) float input: activations quantized per tensor into u8, then
//! im2col straight into the
//! packed activation panels (no float im2col matrix), then the GEMM and float epilogue of [`super::int8_linear`].
//!
//! The weights are a [`PackedLinear`] of shape `[c_out, kh * kw * c_in]` with K ordered `(dy, dx, c)` (i.e.
//! the conv weight permuted to `[c_out, kh, kw, c_in]`). Zero padding is the activation zero point (the code
//! of 0.0). The output is `[n * ho * wo, c_out]` (NHWC).
use super::act_pack::{self, ActQuant, RowCode};
use super::{check_linear, finish_linear, isa_of, Activation, PackedLinear, Path};
use crate::error::{KernelError, Result};
use crate::pool;

/// Shape and hyper-parameters of a convolution (groups = 1).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct ConvGeom {
    pub n: usize,
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub kh: usize,
    pub kw: usize,
    pub stride: (usize, usize),
    pub padding: (usize, usize),
    pub dilation: (usize, usize),
}

impl ConvGeom {
    /// Output height and width.
    pub fn out_hw(&self) -> Result<(usize, usize)> {
        let out = |size: usize, k: usize, s: usize, p: usize, d: usize| -> Option<usize> {
            let span = d.checked_mul(k.checked_sub(1)?)? + 1;
            (s > 0 && size + 2 * p >= span).then(|| (size + 2 * p - span) / s + 1)
        };
        let (sh, sw) = self.stride;
        let (ph, pw) = self.padding;
        let (dh, dw) = self.dilation;
        match (out(self.h, self.kh, sh, ph, dh), out(self.w, self.kw, sw, pw, dw)) {
            (Some(ho), Some(wo)) if dh > 0 && dw > 0 => Ok((ho, wo)),
            _ => Err(KernelError::Invalid { what: format!("invalid convolution geometry {self:?}") }),
        }
    }
}

#[inline(always)]
fn quant_body(x: &[f32], q: RowCode, out: &mut [u8]) {
    for (o, &v) in out.iter_mut().zip(x) {
        *o = q.of(v);
    }
}
crate::simd::multiversion!(fn quant(x: &[f32], q: RowCode, out: &mut [u8]) = quant_body;);

/// `out[n*ho*wo, c_out] = conv2d(x, w) + bias` for NHWC `x[n, h, w, c]`, with int8 weights and activations
/// quantized per tensor (`act` must be per tensor or static).
pub fn int8_conv2d(
    path: Path,
    x: &[f32],
    g: ConvGeom,
    w: &PackedLinear,
    bias: Option<&[f32]>,
    act: ActQuant,
    out: &mut [f32],
) -> Result<()> {
    path.check()?;
    let (ho, wo) = g.out_hw()?;
    let k = g.kh * g.kw * g.c;
    if w.in_features() != k {
        return Err(KernelError::Mismatch {
            what: format!("the weight has {} inputs, the convolution needs kh*kw*c = {k}", w.in_features()),
        });
    }
    if x.len() != g.n * g.c * g.h * g.w {
        return Err(KernelError::Mismatch {
            what: format!("x has {} elements, expected n*c*h*w = {}", x.len(), g.n * g.c * g.h * g.w),
        });
    }
    let m = g.n * ho * wo;
    check_linear(m, w, bias, act, out)?;
    let isa = isa_of(path);
    let (s, z) = match act {
        ActQuant::DynamicPerTensor { .. } if !x.is_empty() => {
            let (lo, hi) = act_pack::tensor_range(isa, x)?;
            act.params(lo, hi)
        }
        ActQuant::Static { .. } | ActQuant::DynamicPerTensor { .. } => act.params(0.0, 0.0),
        ActQuant::DynamicPerRow { .. } => {
            return Err(KernelError::Invalid {
                what: "convolutions quantize activations per tensor (or statically), not per row".into(),
            })
        }
    };
    // 1. Quantize into u8 (same NHWC layout).
    let mut q = vec![0u8; x.len()];
    let code = RowCode::new(s, z, act.qmax());
    if x.len() < pool::PAR_MIN {
        quant(isa, x, code, &mut q);
    } else {
        let c = pool::chunk_len(x.len(), 64);
        let qs: Vec<std::sync::Mutex<&mut [u8]>> = q.chunks_mut(c).map(std::sync::Mutex::new).collect();
        let task = |i: usize| {
            let mut qi = qs[i].lock().unwrap_or_else(|e| e.into_inner());
            quant(isa, &x[i * c..((i + 1) * c).min(x.len())], code, &mut qi);
        };
        super::par::for_each(qs.len(), pool::num_threads(), &task);
    }
    // 2. im2col from the u8 NHWC codes into the packed panels.
    let mut pa = act_pack::packed(m, w.packed().kp(), path.mr_for(m));
    let mr = pa.mr;
    let need_sum = !w.zero_point().is_empty();
    let zb = z as u8;
    pa.scale = vec![s; m];
    pa.zero = vec![z; m];
    pa.narrow = act.qmax() <= 127;
    act_pack::for_panels(&mut pa, m * k, |p, pn| {
        let rows = pn.sums.len();
        let d = pn.data;
        let mut buf = vec![0u8; k];
        for (r, sum) in pn.sums.iter_mut().enumerate() {
            let i = p * mr + r;
            let (img, rest) = (i / (ho * wo), i % (ho * wo));
            let (oy, ox) = (rest / wo, rest % wo);
            for dy in 0..g.kh {
                let iy = (oy * g.stride.0 + dy * g.dilation.0) as isize - g.padding.0 as isize;
                for dx in 0..g.kw {
                    let ix = (ox * g.stride.1 + dx * g.dilation.1) as isize - g.padding.1 as isize;
                    let seg = &mut buf[(dy * g.kw + dx) * g.c..(dy * g.kw + dx + 1) * g.c];
                    if iy >= 0 && (iy as usize) < g.h && ix >= 0 && (ix as usize) < g.w {
                        let at = ((img * g.h + iy as usize) * g.w + ix as usize) * g.c;
                        seg.copy_from_slice(&q[at..at + g.c]);
                    } else {
                        seg.fill(zb);
                    }
                }
            }
            for (c, chunk) in buf.chunks(64).enumerate() {
                act_pack::scatter(d, rows, r, c * 64, chunk);
            }
            act_pack::zero_tail(d, rows, r, k.div_ceil(4));
            *sum = if need_sum { buf.iter().map(|&v| v as i32).sum() } else { 0 };
        }
    });
    finish_linear(path, m, pa, w, bias, Activation::Identity, out, true, None, None);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn geometry() {
        let g = ConvGeom { n: 1, c: 3, h: 7, w: 5, kh: 3, kw: 3, stride: (2, 1), padding: (1, 0), dilation: (1, 2) };
        assert_eq!(g.out_hw().unwrap(), (4, 1));
        let bad = ConvGeom { kh: 10, ..g };
        assert!(bad.out_hw().is_err());
    }

    #[test]
    fn one_by_one_equals_linear() {
        // 1x1 conv on NHWC data is a linear layer over channels.
        let (n, c, h, w, co) = (2, 5, 3, 4, 7);
        let x: Vec<f32> = (0..n * c * h * w).map(|i| ((i * 37 % 101) as f32 - 50.0) / 25.0).collect();
        let wq: Vec<i8> = (0..co * c).map(|i| ((i * 53 % 255) as i32 - 127) as i8).collect();
        let pw = PackedLinear::new(&wq, co, c, &[0.01], &[]).unwrap();
        let g = ConvGeom { n, c, h, w, kh: 1, kw: 1, stride: (1, 1), padding: (0, 0), dilation: (1, 1) };
        let act = ActQuant::DynamicPerTensor { symmetric: false, reduce_range: false };
        let mut out = vec![0f32; n * h * w * co];
        int8_conv2d(Path::Scalar, &x, g, &pw, None, act, &mut out).unwrap();
        // the same through int8_linear: NHWC rows are the linear layer's rows
        let rows = x.clone();
        let mut want = vec![0f32; n * h * w * co];
        super::super::int8_linear(Path::Scalar, &rows, n * h * w, &pw, None, act, Activation::Identity, &mut want).unwrap();
        assert_eq!(out, want);
    }
}
