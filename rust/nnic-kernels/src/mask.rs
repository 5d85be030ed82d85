//! Masks with exactly k pruned entries, mask application and fused threshold pruning (all in place or
//! into caller-provided outputs; no allocation proportional to the data).
use crate::cpu;
use crate::error::{KernelError, Result};
use crate::pool::{self, PAR_MIN};
use crate::simd::{abs_bits, multiversion, INF_BITS};
use crate::split;
use crate::select::{nan_error, select};
use rayon::prelude::*;

/// Writes into `out` a keep-mask of `x` with exactly `k` entries `false` (pruned): every entry with
/// |x| < t plus the first entries in flat order with |x| == t, where t = k-th smallest |x|.
/// `k == 0` keeps everything. Errors: `k > n`, a NaN anywhere, `out.len() != x.len()`.
pub fn smallest_abs_mask(x: &[f32], k: u64, out: &mut [bool]) -> Result<()> {
    masks(&[x], k, vec![out], false)
}

/// Keep-masks of every slice of `xs` with exactly `k` pruned entries in total; ties at the threshold are
/// pruned in (list position, flat index) order.
pub fn global_smallest_abs_masks(xs: &[&[f32]], k: u64, outs: Vec<&mut [bool]>) -> Result<()> {
    masks(xs, k, outs, true)
}

fn masks(xs: &[&[f32]], k: u64, outs: Vec<&mut [bool]>, list: bool) -> Result<()> {
    if xs.len() != outs.len() {
        return Err(KernelError::Mismatch {
            what: format!("got {} inputs but {} output masks", xs.len(), outs.len()),
        });
    }
    for (i, (x, o)) in xs.iter().zip(&outs).enumerate() {
        if x.len() != o.len() {
            return Err(KernelError::Mismatch {
                what: format!("output mask {i} has {} elements, its input has {}", o.len(), x.len()),
            });
        }
    }
    let n: usize = xs.iter().map(|x| x.len()).sum();
    let isa = cpu::active();
    if k == 0 {
        if crate::reduce::any_nan(isa, xs) {
            return Err(nan_error(xs, list));
        }
        for o in outs {
            o.fill(true);
        }
        return Ok(());
    }
    if k > n as u64 {
        return Err(KernelError::KOutOfRange { k, lo: 0, n: n as u64 });
    }
    let sel = select(xs, k, list)?;
    // Entries equal to the threshold that must still be pruned, in flat order: 1..=equal.
    let need = k - sel.below;
    let ins = split::split_ref(xs, &sel.bounds);
    let outs = split::split_mut(outs, &sel.bounds);
    let mut jobs = Vec::with_capacity(ins.len());
    let mut before = 0u64;
    for ((pieces, outs), &eq) in ins.into_iter().zip(outs).zip(&sel.equal_per_group) {
        let ties = if before + eq <= need {
            Ties::PruneAll
        } else if before >= need {
            Ties::KeepAll
        } else {
            Ties::PruneFirst(need - before)
        };
        before += eq;
        jobs.push((pieces, outs, ties));
    }
    let t = sel.bits;
    let work = |(pieces, outs, ties): (Vec<&[f32]>, Vec<&mut [bool]>, Ties)| {
        let mut ties = ties;
        for (p, o) in pieces.iter().zip(outs) {
            match ties {
                Ties::PruneAll => keep_gt(isa, p, o, t),
                Ties::KeepAll => keep_ge(isa, p, o, t),
                Ties::PruneFirst(left) => {
                    let left = keep_ties(p, o, t, left);
                    ties = if left == 0 { Ties::KeepAll } else { Ties::PruneFirst(left) };
                }
            }
        }
    };
    if jobs.len() > 1 {
        pool::install(|| jobs.into_par_iter().for_each(work));
    } else {
        jobs.into_iter().for_each(work);
    }
    Ok(())
}

#[derive(Copy, Clone)]
enum Ties {
    PruneAll,
    KeepAll,
    /// Prune this many more entries equal to the threshold, then keep the rest.
    PruneFirst(u64),
}

multiversion! {
    fn keep_gt(x: &[f32], out: &mut [bool], t: u32) = keep_gt_body;
}
multiversion! {
    fn keep_ge(x: &[f32], out: &mut [bool], t: u32) = keep_ge_body;
}

#[inline(always)]
fn keep_gt_body(x: &[f32], out: &mut [bool], t: u32) {
    out.iter_mut().zip(x).for_each(|(o, &v)| *o = abs_bits(v) > t);
}

#[inline(always)]
fn keep_ge_body(x: &[f32], out: &mut [bool], t: u32) {
    out.iter_mut().zip(x).for_each(|(o, &v)| *o = abs_bits(v) >= t);
}

/// The one group where the tie cut falls: prunes the first `left` entries equal to `t`; returns how many
/// are still to prune after this slice.
fn keep_ties(x: &[f32], out: &mut [bool], t: u32, mut left: u64) -> u64 {
    for (o, &v) in out.iter_mut().zip(x) {
        let b = abs_bits(v);
        let tie = b == t && left > 0;
        left -= tie as u64;
        *o = b > t || (b == t && !tie);
    }
    left
}

/// In place `w[mask == 0] = 0` (+0.0). With `check_binary`, mask values other than 0/1 are an error
/// (checked before anything is written); otherwise any nonzero byte keeps.
pub fn apply_mask(w: &mut [f32], mask: &[u8], check_binary: bool) -> Result<()> {
    if w.len() != mask.len() {
        return Err(KernelError::Mismatch {
            what: format!("mask has {} elements, w has {}", mask.len(), w.len()),
        });
    }
    let isa = cpu::active();
    if check_binary && max_u8(isa, mask) > 1 {
        let index = mask.iter().position(|&m| m > 1).expect("a value > 1 exists");
        return Err(KernelError::ValueOutOfRange { arg: "mask", index, value: mask[index] as i64, lo: 0, hi: 1 });
    }
    if w.len() < PAR_MIN {
        apply_mask_chunk(isa, w, mask);
    } else {
        let c = pool::chunk_len(w.len(), 64);
        pool::install(|| {
            w.par_chunks_mut(c).zip(mask.par_chunks(c)).for_each(|(w, m)| apply_mask_chunk(isa, w, m))
        });
    }
    Ok(())
}

multiversion! {
    fn apply_mask_chunk(w: &mut [f32], mask: &[u8]) = apply_mask_body;
}
multiversion! {
    fn max_u8(x: &[u8]) -> u8 = max_u8_body;
}

#[inline(always)]
fn apply_mask_body(w: &mut [f32], mask: &[u8]) {
    w.iter_mut().zip(mask).for_each(|(v, &m)| *v = if m != 0 { *v } else { 0.0 });
}

#[inline(always)]
fn max_u8_body(x: &[u8]) -> u8 {
    x.iter().fold(0u8, |a, &b| a.max(b))
}

/// In place `w[|w| <= t] = 0` (+0.0) in one pass; returns how many entries were kept (|w| > t, and
/// NaN entries, which are left as they are). `t < 0` prunes nothing. Errors: `t` is NaN.
pub fn prune_by_threshold(w: &mut [f32], t: f32) -> Result<u64> {
    if t.is_nan() {
        return Err(KernelError::Invalid { what: "t must not be NaN".into() });
    }
    if t < 0.0 {
        return Ok(w.len() as u64);
    }
    // Every NaN has abs bits above +inf >= t, so it is kept by the integer comparison.
    let tb = abs_bits(t).min(INF_BITS);
    let isa = cpu::active();
    if w.len() < PAR_MIN {
        return Ok(prune_chunk(isa, w, tb));
    }
    let c = pool::chunk_len(w.len(), 64);
    Ok(pool::install(|| w.par_chunks_mut(c).map(|w| prune_chunk(isa, w, tb)).sum()))
}

multiversion! {
    fn prune_chunk(w: &mut [f32], t: u32) -> u64 = prune_body;
}

#[inline(always)]
fn prune_body(w: &mut [f32], t: u32) -> u64 {
    let mut kept = 0u64;
    for blk in w.chunks_mut(1 << 16) {
        let mut k = 0u32;
        for v in blk.iter_mut() {
            let keep = abs_bits(*v) > t;
            k += keep as u32;
            *v = if keep { *v } else { 0.0 };
        }
        kept += k as u64;
    }
    kept
}
