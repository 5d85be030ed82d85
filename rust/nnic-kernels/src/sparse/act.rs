//! Activation quantization for int8 sparse layers, with the int8 GEMM's exact formulas
//! ([`crate::gemm::act_qparams`]): the codes are returned centred, `q - z`, as floats (exact integers), with one
//! scale per row, so that the sparse kernels sum `c · (q - z)` and the epilogue multiplies by `s_a · s_w` once.
use crate::error::{KernelError, Result};
use crate::gemm::{act_qparams, ActQuant};

/// Centred codes `[m, k]`, one activation scale and zero point per row.
pub struct Quantized {
    pub codes: Vec<f32>,
    pub scale: Vec<f32>,
    pub zero: Vec<i32>,
}

impl Quantized {
    /// The stored (uncentred) u8 codes `q = c + z` of rows `0..m`, for integer dot products.
    pub fn u8_codes(&self, k: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.codes.len());
        for (i, &z) in self.zero.iter().enumerate() {
            out.extend(self.codes[i * k..(i + 1) * k].iter().map(|&c| (c as i32 + z) as u8));
        }
        out
    }
}

fn range(x: &[f32]) -> (f32, f32) {
    x.iter().fold((0f32, 0f32), |(lo, hi), &v| (lo.min(v), hi.max(v)))
}

/// Quantizes `x[m, k]` as `act` says (dynamic per row or per tensor, or static).
pub fn fake_quant(x: &[f32], m: usize, k: usize, act: ActQuant) -> Result<Quantized> {
    if let Some(i) = x.iter().position(|v| !v.is_finite()) {
        return Err(KernelError::Invalid {
            what: format!("x contains a non-finite value ({}) at flat index {i}: int8 activations need finite inputs", x[i]),
        });
    }
    act.check()?;
    let params: Vec<(f32, i32)> = match act {
        ActQuant::Static { scale, zero_point } => vec![(scale, zero_point); m],
        ActQuant::DynamicPerTensor { symmetric } => {
            let (lo, hi) = range(x);
            vec![act_qparams(lo, hi, symmetric); m]
        }
        ActQuant::DynamicPerRow { symmetric } => {
            (0..m).map(|i| { let (lo, hi) = range(&x[i * k..(i + 1) * k]); act_qparams(lo, hi, symmetric) }).collect()
        }
    };
    let mut codes = vec![0f32; m * k];
    for i in 0..m {
        let (s, z) = params[i];
        let (inv, zf) = (1.0 / s, z as f32);
        for (c, &v) in codes[i * k..(i + 1) * k].iter_mut().zip(&x[i * k..(i + 1) * k]) {
            *c = ((v * inv).round_ties_even() + zf).clamp(0.0, 255.0) - zf;
        }
    }
    Ok(Quantized { codes, scale: params.iter().map(|p| p.0).collect(), zero: params.iter().map(|p| p.1).collect() })
}
