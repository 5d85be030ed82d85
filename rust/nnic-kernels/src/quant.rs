//! Affine quantization `q = clamp(round_half_even(x / scale) + zero_point, qmin, qmax)` into bytes
//! (int8 or uint8 two's-complement bytes), and dequantization `(q - zero_point) * scale`, per tensor or
//! per channel. All arithmetic is float32 with a true division, so results equal
//! `np.rint(x / np.float32(scale))` exactly.
use crate::cpu;
use crate::error::{KernelError, Result};
use crate::layout::{Layout, Walk};
use crate::pool::{self, PAR_MIN};
use crate::nt;
use crate::simd::{first_nan, multiversion};
use rayon::prelude::*;

/// Quantization parameters: one scale/zero point per channel of the layout (one for per tensor).
#[derive(Copy, Clone, Debug)]
pub struct Params<'a> {
    pub scale: &'a [f32],
    pub zero_point: &'a [i32],
    pub qmin: i32,
    pub qmax: i32,
}

impl Params<'_> {
    fn check(&self, layout: Layout) -> Result<()> {
        if !(-128..=255).contains(&self.qmin) || !(-128..=255).contains(&self.qmax) || self.qmin >= self.qmax {
            return Err(KernelError::Invalid {
                what: format!("quantization range [{}, {}] does not fit a byte", self.qmin, self.qmax),
            });
        }
        if self.scale.len() != layout.channels || self.zero_point.len() != layout.channels {
            return Err(KernelError::Mismatch {
                what: format!(
                    "scale and zero_point need {} values (one per channel), got {} and {}",
                    layout.channels,
                    self.scale.len(),
                    self.zero_point.len()
                ),
            });
        }
        let per_channel = layout.channels != 1 || layout.outer != 1;
        let name = |c: usize| per_channel.then_some(c);
        for (c, (&s, &z)) in self.scale.iter().zip(self.zero_point).enumerate() {
            if !(s.is_finite() && s > 0.0) {
                return Err(KernelError::BadScale { channel: name(c), value: s });
            }
            if !(self.qmin..=self.qmax).contains(&z) {
                return Err(KernelError::BadZeroPoint { channel: name(c), value: z, qmin: self.qmin, qmax: self.qmax });
            }
        }
        Ok(())
    }
}

fn check_len(what: &str, got: usize, layout: Layout) -> Result<()> {
    if got != layout.len() {
        return Err(KernelError::Mismatch {
            what: format!("{what} has {got} elements, expected {} for layout {layout:?}", layout.len()),
        });
    }
    Ok(())
}

/// Splits `[0, n)` into chunks aligned to the layout's walk and runs `job(start, in_chunk, out_chunk)`
/// on each (in parallel when large); returns the OR of the jobs' results.
fn drive<I: Sync, O: Send>(
    x: &[I],
    out: &mut [O],
    layout: Layout,
    job: impl Fn(usize, &[I], &mut [O]) -> bool + Sync + Send,
) -> bool {
    if x.len() < PAR_MIN {
        return job(0, x, out);
    }
    let align = match layout.walk() {
        Walk::Blocks => 64,
        Walk::Pattern { row } => row,
    };
    let c = pool::chunk_len(x.len(), align);
    pool::install(|| {
        out.par_chunks_mut(c).zip(x.par_chunks(c)).enumerate().map(|(i, (o, x))| job(i * c, x, o)).reduce(|| false, |a, b| a | b)
    })
}

/// Quantizes `x` (C-order, `layout`) into `out` (bytes; reinterpret as int8 when `qmin < 0`).
/// Errors: bad parameters (scale not finite > 0, zero point outside `[qmin, qmax]`, naming the channel),
/// length mismatch, a NaN in `x` (named by flat index; `out` is then unspecified). ±inf clamp.
pub fn quantize(x: &[f32], layout: Layout, p: Params<'_>, out: &mut [u8]) -> Result<()> {
    check_len("x", x.len(), layout)?;
    check_len("out", out.len(), layout)?;
    p.check(layout)?;
    let isa = cpu::active();
    let (lo, hi) = (p.qmin as f32, p.qmax as f32);
    let zf: Vec<f32> = p.zero_point.iter().map(|&z| z as f32).collect();
    let stream = nt::wanted(isa, out.len());
    let nan = match layout.walk() {
        Walk::Blocks => drive(x, out, layout, |start, x, o| {
            let mut nan = false;
            let mut run = |x: &[f32], o: &mut [u8], base: usize| {
                layout.for_each_run(base, base + x.len(), |c, a, b| {
                    let (xs, os) = (&x[a - base..b - base], &mut o[a - base..b - base]);
                    nan |= quant_run(isa, xs, os, p.scale[c], zf[c], lo, hi);
                });
            };
            if stream {
                nt::staged(isa, o, nt::block_len::<u8>(1), |a, b, buf| run(&x[a..b], buf, start + a));
            } else {
                run(x, o, start);
            }
            nan
        }),
        Walk::Pattern { row } => {
            let (s, z) = (layout.pattern(p.scale, row), layout.pattern(&zf, row));
            drive(x, out, layout, |_, x, o| {
                let mut nan = false;
                let mut rows = |x: &[f32], o: &mut [u8]| {
                    for (xr, or) in x.chunks(row).zip(o.chunks_mut(row)) {
                        nan |= quant_rows(isa, xr, or, &s[..xr.len()], &z[..xr.len()], lo, hi);
                    }
                };
                if stream {
                    // Staging blocks hold whole rows, so every block starts at channel 0.
                    nt::staged(isa, o, nt::block_len::<u8>(row), |a, b, buf| rows(&x[a..b], buf));
                } else {
                    rows(x, o);
                }
                nan
            })
        }
    };
    if nan {
        return Err(KernelError::Nan { arg: "x", tensor: None, index: first_nan(x).expect("NaN") });
    }
    Ok(())
}

multiversion! {
    fn quant_run(x: &[f32], out: &mut [u8], s: f32, z: f32, lo: f32, hi: f32) -> bool = quant_run_body;
}
multiversion! {
    fn quant_rows(x: &[f32], out: &mut [u8], s: &[f32], z: &[f32], lo: f32, hi: f32) -> bool = quant_rows_body;
}

/// One element: rint(v / s) + z clamped to [lo, hi] (NaN -> lo; reported separately), as a byte.
#[inline(always)]
fn quant_one(v: f32, s: f32, z: f32, lo: f32, hi: f32) -> u8 {
    // |rint(v/s)| < 2^24 makes `+ z` exact; beyond that the sum saturates in the clamp either way.
    let r = (v / s).round_ties_even() + z;
    let r = if r > lo { r } else { lo };
    let r = if r < hi { r } else { hi };
    // SAFETY: r is finite and inside [lo, hi] ⊂ [-128, 255] (the comparisons map NaN to lo).
    (unsafe { r.to_int_unchecked::<i32>() }) as u8
}

#[inline(always)]
fn quant_run_body(x: &[f32], out: &mut [u8], s: f32, z: f32, lo: f32, hi: f32) -> bool {
    let mut nan = false;
    for (o, &v) in out.iter_mut().zip(x) {
        nan |= v.is_nan();
        *o = quant_one(v, s, z, lo, hi);
    }
    nan
}

#[inline(always)]
fn quant_rows_body(x: &[f32], out: &mut [u8], s: &[f32], z: &[f32], lo: f32, hi: f32) -> bool {
    let mut nan = false;
    for (((o, &v), &s), &z) in out.iter_mut().zip(x).zip(s).zip(z) {
        nan |= v.is_nan();
        *o = quant_one(v, s, z, lo, hi);
    }
    nan
}

/// Dequantizes bytes `q` (int8 when `signed`, else uint8) into `out`: `(q - zero_point) * scale` in
/// float32. `qmin/qmax` in `p` are ignored except for the zero-point check (the dtype's range is used).
pub fn dequantize(q: &[u8], signed: bool, layout: Layout, scale: &[f32], zero_point: &[i32], out: &mut [f32]) -> Result<()> {
    check_len("q", q.len(), layout)?;
    check_len("out", out.len(), layout)?;
    let (qmin, qmax) = if signed { (-128, 127) } else { (0, 255) };
    Params { scale, zero_point, qmin, qmax }.check(layout)?;
    let isa = cpu::active();
    let stream = nt::wanted(isa, std::mem::size_of_val(out));
    match layout.walk() {
        Walk::Blocks => drive(q, out, layout, |start, q, o| {
            let run = |q: &[u8], o: &mut [f32], base: usize| {
                layout.for_each_run(base, base + q.len(), |c, a, b| {
                    let (q, o) = (&q[a - base..b - base], &mut o[a - base..b - base]);
                    if signed {
                        deq_run_i8(isa, q, o, scale[c], zero_point[c])
                    } else {
                        deq_run_u8(isa, q, o, scale[c], zero_point[c])
                    }
                });
            };
            if stream {
                nt::staged(isa, o, nt::block_len::<f32>(1), |a, b, buf| run(&q[a..b], buf, start + a));
            } else {
                run(q, o, start);
            }
            false
        }),
        Walk::Pattern { row } => {
            let (s, z) = (layout.pattern(scale, row), layout.pattern(zero_point, row));
            drive(q, out, layout, |_, q, o| {
                let rows = |q: &[u8], o: &mut [f32]| {
                    for (qr, or) in q.chunks(row).zip(o.chunks_mut(row)) {
                        let (s, z) = (&s[..qr.len()], &z[..qr.len()]);
                        if signed {
                            deq_rows_i8(isa, qr, or, s, z)
                        } else {
                            deq_rows_u8(isa, qr, or, s, z)
                        }
                    }
                };
                if stream {
                    nt::staged(isa, o, nt::block_len::<f32>(row), |a, b, buf| rows(&q[a..b], buf));
                } else {
                    rows(q, o);
                }
                false
            })
        }
    };
    Ok(())
}

multiversion! {
    fn deq_run_i8(q: &[u8], out: &mut [f32], s: f32, z: i32) = deq_run_body::<true>;
}
multiversion! {
    fn deq_run_u8(q: &[u8], out: &mut [f32], s: f32, z: i32) = deq_run_body::<false>;
}
multiversion! {
    fn deq_rows_i8(q: &[u8], out: &mut [f32], s: &[f32], z: &[i32]) = deq_rows_body::<true>;
}
multiversion! {
    fn deq_rows_u8(q: &[u8], out: &mut [f32], s: &[f32], z: &[i32]) = deq_rows_body::<false>;
}

#[inline(always)]
fn widen<const SIGNED: bool>(b: u8) -> i32 {
    if SIGNED {
        b as i8 as i32
    } else {
        b as i32
    }
}

#[inline(always)]
fn deq_run_body<const SIGNED: bool>(q: &[u8], out: &mut [f32], s: f32, z: i32) {
    out.iter_mut().zip(q).for_each(|(o, &b)| *o = (widen::<SIGNED>(b) - z) as f32 * s);
}

#[inline(always)]
fn deq_rows_body<const SIGNED: bool>(q: &[u8], out: &mut [f32], s: &[f32], z: &[i32]) {
    for (((o, &b), &s), &z) in out.iter_mut().zip(q).zip(s).zip(z) {
        *o = (widen::<SIGNED>(b) - z) as f32 * s;
    }
}
