//! max |x| and (min, max), per tensor or per channel, with NaN detection fused in.
//!
//! Both work on integer keys of the float bits, which vectorise without NaN special cases:
//! |x| bits (u32 order = float order) and the signed "total order" key for min/max.
use crate::cpu::{self, Isa};
use crate::error::{KernelError, Result};
use crate::layout::{Layout, Walk};
use crate::pool::{self, PAR_MIN};
use crate::simd::{abs_bits, first_nan, multiversion, INF_BITS};
use rayon::prelude::*;

/// Monotone signed key of a float's bits: key order == float order for non-NaN values (-0.0 < +0.0).
/// It is its own inverse.
#[inline(always)]
fn key(bits: u32) -> i32 {
    let i = bits as i32;
    i ^ ((((i >> 31) as u32) >> 1) as i32)
}

const KEY_POS_INF: i32 = 0x7f80_0000;
const KEY_NEG_INF: i32 = 0x807f_ffff_u32 as i32;

fn from_key(k: i32) -> f32 {
    f32::from_bits(key(k as u32) as u32)
}

/// Whether any slice contains a NaN.
pub(crate) fn any_nan(isa: Isa, xs: &[&[f32]]) -> bool {
    xs.iter().any(|x| par_max_abs(isa, x) > INF_BITS)
}

fn par_max_abs(isa: Isa, x: &[f32]) -> u32 {
    if x.len() < PAR_MIN {
        return max_abs_run(isa, x);
    }
    let c = pool::chunk_len(x.len(), 64);
    pool::install(|| x.par_chunks(c).map(|x| max_abs_run(isa, x)).max().unwrap_or(0))
}

multiversion! {
    fn max_abs_run(x: &[f32]) -> u32 = max_abs_body;
}
multiversion! {
    fn min_max_run(x: &[f32]) -> (i32, i32) = min_max_body;
}
multiversion! {
    fn max_abs_rows(x: &[f32], acc: &mut [u32]) = max_abs_rows_body;
}
multiversion! {
    fn min_max_rows(x: &[f32], lo: &mut [i32], hi: &mut [i32]) = min_max_rows_body;
}

#[inline(always)]
fn max_abs_body(x: &[f32]) -> u32 {
    x.iter().fold(0u32, |m, &v| m.max(abs_bits(v)))
}

#[inline(always)]
fn min_max_body(x: &[f32]) -> (i32, i32) {
    x.iter().fold((i32::MAX, i32::MIN), |(lo, hi), &v| {
        let k = key(v.to_bits());
        (lo.min(k), hi.max(k))
    })
}

/// Element-wise max of |x| bits over the rows of `x` (row length `acc.len()`, last row may be partial).
#[inline(always)]
fn max_abs_rows_body(x: &[f32], acc: &mut [u32]) {
    for row in x.chunks(acc.len()) {
        acc.iter_mut().zip(row).for_each(|(a, &v)| *a = (*a).max(abs_bits(v)));
    }
}

#[inline(always)]
fn min_max_rows_body(x: &[f32], lo: &mut [i32], hi: &mut [i32]) {
    for row in x.chunks(lo.len()) {
        for ((l, h), &v) in lo.iter_mut().zip(hi.iter_mut()).zip(row) {
            let k = key(v.to_bits());
            *l = (*l).min(k);
            *h = (*h).max(k);
        }
    }
}

/// Reduces `x` per channel of `layout` with `run` (block walk) or `rows` (pattern walk) into per-channel
/// accumulators `A` (`merge` combines two), running chunks in parallel.
fn per_channel<A: Copy + Send + Sync>(
    x: &[f32],
    layout: Layout,
    init: A,
    run: impl Fn(&[f32]) -> A + Sync,
    rows: impl Fn(&[f32], usize) -> Vec<A> + Sync,
    merge: impl Fn(A, A) -> A + Sync,
) -> Vec<A> {
    let c = layout.channels;
    let walk = layout.walk();
    let chunk_job = |start: usize, xs: &[f32]| -> Vec<A> {
        let mut acc = vec![init; c];
        match walk {
            Walk::Blocks => layout.for_each_run(start, start + xs.len(), |ch, lo, hi| {
                acc[ch] = merge(acc[ch], run(&xs[lo - start..hi - start]));
            }),
            Walk::Pattern { row } => {
                for (j, a) in rows(xs, row).into_iter().enumerate() {
                    let ch = (j / layout.inner) % c;
                    acc[ch] = merge(acc[ch], a);
                }
            }
        }
        acc
    };
    let fold = |mut a: Vec<A>, b: Vec<A>| {
        a.iter_mut().zip(b).for_each(|(x, y)| *x = merge(*x, y));
        a
    };
    if x.len() < PAR_MIN {
        return chunk_job(0, x);
    }
    let align = match walk {
        Walk::Blocks => 64,
        Walk::Pattern { row } => row,
    };
    let cl = pool::chunk_len(x.len(), align);
    pool::install(|| {
        x.par_chunks(cl)
            .enumerate()
            .map(|(i, xs)| chunk_job(i * cl, xs))
            .reduce(|| vec![init; c], fold)
    })
}

fn check_reducible(x: &[f32], layout: Layout) -> Result<()> {
    if layout.len() != x.len() {
        return Err(KernelError::Mismatch {
            what: format!("layout {layout:?} does not match {} elements", x.len()),
        });
    }
    if x.is_empty() && layout.channels > 0 {
        return Err(KernelError::Empty { arg: "x" });
    }
    Ok(())
}

/// max |x| per channel of `layout` (one value per tensor for [`Layout::per_tensor`]).
/// Errors: nothing to reduce (empty `x` with at least one channel), a NaN (named by flat index).
pub fn abs_max(x: &[f32], layout: Layout) -> Result<Vec<f32>> {
    check_reducible(x, layout)?;
    let isa = cpu::active();
    let acc = per_channel(
        x,
        layout,
        0u32,
        |r| max_abs_run(isa, r),
        |xs, row| {
            let mut a = vec![0u32; row.min(xs.len())];
            max_abs_rows(isa, xs, &mut a);
            a
        },
        |a, b| a.max(b),
    );
    if acc.iter().any(|&m| m > INF_BITS) {
        return Err(KernelError::Nan { arg: "x", tensor: None, index: first_nan(x).expect("NaN") });
    }
    Ok(acc.into_iter().map(f32::from_bits).collect())
}

/// (min, max) of x per channel of `layout`. Same errors as [`abs_max`].
pub fn min_max(x: &[f32], layout: Layout) -> Result<(Vec<f32>, Vec<f32>)> {
    check_reducible(x, layout)?;
    let isa = cpu::active();
    let acc = per_channel(
        x,
        layout,
        (i32::MAX, i32::MIN),
        |r| min_max_run(isa, r),
        |xs, row| {
            let len = row.min(xs.len());
            let (mut lo, mut hi) = (vec![i32::MAX; len], vec![i32::MIN; len]);
            min_max_rows(isa, xs, &mut lo, &mut hi);
            lo.into_iter().zip(hi).collect()
        },
        |a, b| (a.0.min(b.0), a.1.max(b.1)),
    );
    if acc.iter().any(|&(lo, hi)| lo < KEY_NEG_INF || hi > KEY_POS_INF) {
        return Err(KernelError::Nan { arg: "x", tensor: None, index: first_nan(x).expect("NaN") });
    }
    Ok(acc.into_iter().map(|(lo, hi)| (from_key(lo), from_key(hi))).unzip())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_is_monotone_and_involutive() {
        let vals = [f32::NEG_INFINITY, -3.5, -1e-40, -0.0, 0.0, 1e-40, 2.0, f32::INFINITY];
        for w in vals.windows(2) {
            assert!(key(w[0].to_bits()) < key(w[1].to_bits()), "{w:?}");
        }
        for v in vals {
            assert_eq!(from_key(key(v.to_bits())).to_bits(), v.to_bits());
        }
        assert_eq!(key(f32::INFINITY.to_bits()), KEY_POS_INF);
        assert_eq!(key(f32::NEG_INFINITY.to_bits()), KEY_NEG_INF);
        assert!(key(f32::NAN.to_bits()) > KEY_POS_INF);
        assert!(key((-f32::NAN).to_bits()) < KEY_NEG_INF);
    }
}
