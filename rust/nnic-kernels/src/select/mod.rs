//! Exact k-th smallest |x| by a two-pass radix (histogram) select on the bit pattern of |x|.
//!
//! With the sign bit cleared, the u32 order of the bits is the float order (±0.0 are both 0, +inf is the
//! largest number, NaN bits lie above +inf). Pass 1 histograms the high 16 bits (32768 bins) and finds the
//! bin of the k-th value; pass 2 histograms the low 16 bits of the entries in that bin. Both passes run
//! per group of the input (one histogram per group, merged), so the work is O(n) and parallel, and a list
//! of slices is handled like their concatenation without building it. Inputs below `SMALL` elements use
//! `select_nth_unstable` on a copy instead.
//!
//! Large inputs first try a sampled select: the k/n quantile of a strided sample bounds the answer to a
//! narrow range `(lo, hi]` (±3 standard deviations of the sample quantile), and the histogram passes then
//! only scatter the ~2% of entries inside it (`range.rs`), which makes them memory-bound.
//! The in-range entries are also kept (while they are few), so the k-th value is then picked among them
//! without a second pass. If the k-th value is not inside the range (an unlucky or adversarial sample),
//! the full passes run.
use crate::cpu::{self, Isa};
use crate::error::{KernelError, Result};
use crate::simd::{abs_bits, first_nan, multiversion, INF_BITS};
mod hist_lo;
mod range;

use crate::{pool, split};
use hist_lo::{hist_lo, LO_BINS};
use range::{hist_range, Candidates, Counts, BINS};
use rayon::prelude::*;
use std::cell::RefCell;

pub(crate) const HI_BINS: usize = 1 << 15;
const SMALL: usize = 1 << 14;

/// The outcome of a selection: the threshold and how many entries lie below / on it.
#[derive(Clone, Debug)]
pub struct Selection {
    /// The k-th smallest |x| (never negative, never NaN).
    pub threshold: f32,
    /// `threshold.to_bits()`.
    pub bits: u32,
    /// Entries with |x| < threshold.
    pub below: u64,
    /// Entries with |x| == threshold (`below < k <= below + equal`).
    pub equal: u64,
    /// The groups the data was split into, and the entries equal to the threshold in each.
    pub(crate) bounds: Vec<(usize, usize)>,
    pub(crate) equal_per_group: Vec<u64>,
}

/// The k-th smallest |x| (1-based), exactly `torch.kthvalue(x.abs().flatten(), k)`.
///
/// Errors: empty `x`, `k` outside `[1, n]`, a NaN anywhere (the error names its flat index).
pub fn kth_smallest_abs(x: &[f32], k: u64) -> Result<f32> {
    select(&[x], k, false).map(|s| s.threshold)
}

/// The k-th smallest |x| over all slices of `xs` together, as if concatenated (nothing is copied).
pub fn global_kth_smallest_abs(xs: &[&[f32]], k: u64) -> Result<f32> {
    select(xs, k, true).map(|s| s.threshold)
}

pub(crate) fn nan_error(xs: &[&[f32]], list: bool) -> KernelError {
    for (t, x) in xs.iter().enumerate() {
        if let Some(index) = first_nan(x) {
            let (arg, tensor) = if list { ("xs", Some(t)) } else { ("x", None) };
            return KernelError::Nan { arg, tensor, index };
        }
    }
    unreachable!("nan_error called without a NaN")
}

/// Full selection; `list` only changes how errors name the input (`xs[i]` vs `x`).
pub fn select(xs: &[&[f32]], k: u64, list: bool) -> Result<Selection> {
    let n: usize = xs.iter().map(|x| x.len()).sum();
    if n == 0 {
        return Err(KernelError::Empty { arg: if list { "xs" } else { "x" } });
    }
    if k < 1 || k > n as u64 {
        return Err(KernelError::KOutOfRange { k, lo: 1, n: n as u64 });
    }
    if n < SMALL {
        return select_small(xs, k, list, n);
    }
    let isa = cpu::active();
    let bounds = split::plan(n);
    let groups = split::split_ref(xs, &bounds);
    let par = groups.len() > 1;
    if n >= SAMPLE_MIN {
        if let Some(sel) = select_sampled(xs, k, list, n, isa, &bounds, &groups)? {
            return Ok(sel);
        }
    }

    // Pass 1: high 16 bits.
    let first: Vec<(Vec<u32>, u32)> = run_groups(par, &groups, |ps| pass_hi(isa, ps));
    if first.iter().any(|(_, mx)| *mx > INF_BITS) {
        return Err(nan_error(xs, list));
    }
    let mut hist = vec![0u64; HI_BINS];
    for (h, _) in &first {
        hist.iter_mut().zip(h).for_each(|(a, &b)| *a += b as u64);
    }
    let (hi, below_hi) = find_bin(&hist, k);
    drop(first);

    // Pass 2: low 16 bits of the entries in bin `hi`.
    let second: Vec<Vec<u32>> = run_groups(par, &groups, |ps| pass_lo(isa, ps, hi));
    let mut hist = vec![0u64; LO_BINS];
    for h in &second {
        hist.iter_mut().zip(h).for_each(|(a, &b)| *a += b as u64);
    }
    let (lo, below_lo) = find_bin(&hist, k - below_hi);
    let bits = (hi << 16) | lo;
    Ok(Selection {
        threshold: f32::from_bits(bits),
        bits,
        below: below_hi + below_lo,
        equal: hist[lo as usize],
        bounds,
        equal_per_group: second.iter().map(|h| h[lo as usize] as u64).collect(),
    })
}

/// Inputs at least this large try the sampled select first.
const SAMPLE_MIN: usize = 1 << 20;
/// The sample: this many blocks of `SAMPLE_BLOCK` consecutive entries (one cache line), evenly spaced.
const SAMPLE_BLOCKS: usize = 4096;
const SAMPLE_BLOCK: usize = 16;
/// In-range entries are kept (to skip the second pass) while they are at most 1/CANDIDATE_SHARE of a group.
const CANDIDATE_SHARE: usize = 16;

/// |x| bits of `SAMPLE_BLOCKS` evenly spaced blocks of the concatenation of `xs` (`n` entries in all).
fn gather_sample(xs: &[&[f32]], n: usize) -> Vec<u32> {
    let mut out = Vec::with_capacity(SAMPLE_BLOCKS * SAMPLE_BLOCK);
    let (mut t, mut start) = (0, 0);
    for j in 0..SAMPLE_BLOCKS {
        let pos = j * n / SAMPLE_BLOCKS;
        while start + xs[t].len() <= pos {
            start += xs[t].len();
            t += 1;
        }
        let off = pos - start;
        let end = (off + SAMPLE_BLOCK).min(xs[t].len());
        out.extend(xs[t][off..end].iter().map(|&v| abs_bits(v)));
    }
    out
}

/// The sampled select (see the module docs); `None` when the k-th value is outside the sampled range.
fn select_sampled(
    xs: &[&[f32]],
    k: u64,
    list: bool,
    n: usize,
    isa: Isa,
    bounds: &[(usize, usize)],
    groups: &[Vec<&[f32]>],
) -> Result<Option<Selection>> {
    let par = groups.len() > 1;
    let mut sample = gather_sample(xs, n);
    let m = sample.len();
    let pos = k as f64 / n as f64 * m as f64;
    let half = 3.0 * (m as f64).sqrt();
    let (lo_i, hi_i) = ((pos - half).floor(), (pos + half).ceil());
    let lo = if lo_i < 0.0 { 0 } else { *sample.select_nth_unstable(lo_i as usize).1 };
    let hi = if hi_i >= m as f64 { 0x7fff_ffff } else { *sample.select_nth_unstable(hi_i as usize).1 };
    let width = hi - lo;
    let shift = if width <= 1 { 0 } else { (32 - (width - 1).leading_zeros()).saturating_sub(16) };

    // Pass 1: counts below / at `lo`, histogram of (lo, hi].
    let first: Vec<(Counts, Vec<u32>, Candidates)> = run_groups(par, groups, |ps| {
        let (mut c, mut h) = (Counts::default(), vec![0u32; BINS]);
        let len: usize = ps.iter().map(|p| p.len()).sum();
        let mut cand = Candidates::with_cap(len / CANDIDATE_SHARE);
        for p in ps {
            hist_range(isa, p, lo, hi, shift, &mut h, &mut c, &mut cand);
        }
        (c, h, cand)
    });
    if first.iter().any(|(c, _, _)| c.max > INF_BITS) {
        return Err(nan_error(xs, list));
    }
    let below: u64 = first.iter().map(|(c, _, _)| c.below).sum();
    let at_lo: u64 = first.iter().map(|(c, _, _)| c.at_lo).sum();
    if k <= below {
        return Ok(None);
    }
    let done = |bits: u32, below: u64, equal: u64, per_group: Vec<u64>| Selection {
        threshold: f32::from_bits(bits),
        bits,
        below,
        equal,
        bounds: bounds.to_vec(),
        equal_per_group: per_group,
    };
    if k <= below + at_lo {
        return Ok(Some(done(lo, below, at_lo, first.iter().map(|(c, _, _)| c.at_lo).collect())));
    }
    let mut hist = vec![0u64; BINS];
    for (_, h, _) in &first {
        hist.iter_mut().zip(h).for_each(|(a, &b)| *a += b as u64);
    }
    let rest = k - below - at_lo;
    if rest > hist.iter().sum::<u64>() {
        return Ok(None);
    }
    let (bin, before) = find_bin(&hist, rest);
    let below = below + at_lo + before;
    if shift == 0 {
        let per_group = first.iter().map(|(_, h, _)| h[bin as usize] as u64).collect();
        return Ok(Some(done(lo + 1 + bin, below, hist[bin as usize], per_group)));
    }
    if first.iter().all(|(_, _, cand)| !cand.overflow) {
        // The bin's entries were kept: pick the k-th among them, no second pass over the data.
        let in_bin = |b: u32| ((b - lo - 1) >> shift) == bin;
        let mut pool: Vec<u32> = first.iter().flat_map(|(_, _, c)| c.bits.iter().copied().filter(|&b| in_bin(b))).collect();
        let t = *pool.select_nth_unstable((k - below - 1) as usize).1;
        let before = pool.iter().filter(|&&b| b < t).count() as u64;
        let per_group: Vec<u64> = first.iter().map(|(_, _, c)| c.bits.iter().filter(|&&b| b == t).count() as u64).collect();
        let equal = per_group.iter().sum();
        return Ok(Some(done(t, below + before, equal, per_group)));
    }
    drop(first);

    // Pass 2: the values of bin `bin`, one histogram bin each.
    let base = lo + 1 + (bin << shift);
    let top = (base + ((1u32 << shift) - 1)).min(hi);
    let second: Vec<Vec<u32>> = run_groups(par, groups, |ps| {
        let (mut c, mut h, mut cand) = (Counts::default(), vec![0u32; BINS], Candidates::with_cap(0));
        for p in ps {
            hist_range(isa, p, base - 1, top, 0, &mut h, &mut c, &mut cand);
        }
        h
    });
    let mut hist = vec![0u64; BINS];
    for h in &second {
        hist.iter_mut().zip(h).for_each(|(a, &b)| *a += b as u64);
    }
    let (low, before) = find_bin(&hist, k - below);
    let per_group = second.iter().map(|h| h[low as usize] as u64).collect();
    Ok(Some(done(base + low, below + before, hist[low as usize], per_group)))
}

fn run_groups<'a, R: Send>(
    par: bool,
    groups: &[Vec<&'a [f32]>],
    f: impl Fn(&[&'a [f32]]) -> R + Sync + Send,
) -> Vec<R> {
    if par {
        pool::install(|| groups.par_iter().map(|g| f(g)).collect())
    } else {
        groups.iter().map(|g| f(g)).collect()
    }
}

/// The bin holding the k-th entry (1-based) and the number of entries in the bins before it.
fn find_bin(hist: &[u64], k: u64) -> (u32, u64) {
    let mut below = 0u64;
    for (b, &c) in hist.iter().enumerate() {
        if below + c >= k {
            return (b as u32, below);
        }
        below += c;
    }
    unreachable!("k <= total count")
}

fn select_small(xs: &[&[f32]], k: u64, list: bool, n: usize) -> Result<Selection> {
    let mut bits: Vec<u32> = Vec::with_capacity(n);
    for x in xs {
        bits.extend(x.iter().map(|&v| abs_bits(v)));
    }
    if bits.iter().any(|&b| b > INF_BITS) {
        return Err(nan_error(xs, list));
    }
    let (_, &mut t, _) = bits.select_nth_unstable((k - 1) as usize);
    let below = bits.iter().filter(|&&b| b < t).count() as u64;
    let equal = bits.iter().filter(|&&b| b == t).count() as u64;
    Ok(Selection {
        threshold: f32::from_bits(t),
        bits: t,
        below,
        equal,
        bounds: vec![(0, n)],
        equal_per_group: vec![equal],
    })
}

thread_local! {
    /// Per-thread scratch histogram, reused across calls (the pool's threads live on), so that no pass
    /// allocates or page-faults a fresh buffer.
    static SCRATCH: RefCell<Vec<u32>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` on this thread's zeroed scratch histogram of `len` bins.
fn with_scratch<R>(len: usize, f: impl FnOnce(&mut [u32]) -> R) -> R {
    SCRATCH.with(|s| {
        let mut s = s.borrow_mut();
        s.clear();
        s.resize(len, 0);
        f(&mut s)
    })
}

fn pass_hi(isa: Isa, pieces: &[&[f32]]) -> (Vec<u32>, u32) {
    with_scratch(HI_BINS * HI_COPIES, |h| {
        let mut mx = 0;
        for p in pieces {
            mx = mx.max(hist_hi(isa, p, h));
        }
        // Fold the interleaved copies into the result.
        let mut out = h[..HI_BINS].to_vec();
        for copy in h[HI_BINS..].chunks_exact(HI_BINS) {
            out.iter_mut().zip(copy).for_each(|(a, &b)| *a += b);
        }
        (out, mx)
    })
}

fn pass_lo(isa: Isa, pieces: &[&[f32]], hi: u32) -> Vec<u32> {
    with_scratch(LO_BINS, |h| {
        for p in pieces {
            hist_lo(isa, p, hi, h);
        }
        h.to_vec()
    })
}

/// Interleaved histogram copies in pass 1: neighbouring entries of the same bin then update different
/// counters, which removes most store-to-load dependencies.
const HI_COPIES: usize = 2;

multiversion! {
    fn hist_hi(x: &[f32], h: &mut [u32]) -> u32 = hist_hi_body;
}

/// Adds the high 16 bits of |x| to `h` (HI_COPIES interleaved histograms); returns max |x| bits.
#[inline(always)]
fn hist_hi_body(x: &[f32], h: &mut [u32]) -> u32 {
    let h: &mut [u32; HI_BINS * HI_COPIES] = h.try_into().expect("histogram size");
    let mut mx = 0u32;
    for blk in x.chunks(2048) {
        // Vectorised max (NaN detection), then the scatter while the block is in L1.
        mx = mx.max(blk.iter().fold(0u32, |m, &v| m.max(abs_bits(v))));
        let mut quads = blk.chunks_exact(HI_COPIES);
        for q in &mut quads {
            for (c, &v) in q.iter().enumerate() {
                h[c * HI_BINS + (abs_bits(v) >> 16) as usize] += 1;
            }
        }
        for &v in quads.remainder() {
            h[(abs_bits(v) >> 16) as usize] += 1;
        }
    }
    mx
}
