//! Splitting a list of slices into contiguous groups of the concatenated index space, without copying.
use crate::pool;

/// Global `[start, end)` ranges that cover `total` elements: one when it is small, else one per pool
/// thread (each group costs a histogram to zero and merge; each stays below 2^31 elements so that u32
/// histograms cannot overflow).
pub(crate) fn plan(total: usize) -> Vec<(usize, usize)> {
    if total < pool::PAR_MIN {
        return vec![(0, total)];
    }
    let groups = pool::num_threads().max(total.div_ceil(u32::MAX as usize >> 1)).min(total / (pool::PAR_MIN / 2)).max(1);
    (0..groups).map(|g| (total * g / groups, total * (g + 1) / groups)).collect()
}

/// The pieces of `xs` inside each group of `bounds` (groups in order, pieces in list order).
pub(crate) fn split_ref<'a, T>(xs: &[&'a [T]], bounds: &[(usize, usize)]) -> Vec<Vec<&'a [T]>> {
    let mut out: Vec<Vec<&'a [T]>> = bounds.iter().map(|_| Vec::new()).collect();
    let mut g = 0;
    let mut pos = 0;
    for &x in xs {
        let mut offset = 0;
        while offset < x.len() {
            while pos >= bounds[g].1 {
                g += 1;
            }
            let take = (x.len() - offset).min(bounds[g].1 - pos);
            out[g].push(&x[offset..offset + take]);
            offset += take;
            pos += take;
        }
    }
    out
}

/// The same split for mutable outputs of the same lengths as the inputs.
pub(crate) fn split_mut<'a, T>(outs: Vec<&'a mut [T]>, bounds: &[(usize, usize)]) -> Vec<Vec<&'a mut [T]>> {
    let mut res: Vec<Vec<&'a mut [T]>> = bounds.iter().map(|_| Vec::new()).collect();
    let mut g = 0;
    let mut pos = 0;
    for out in outs {
        let mut rest = out;
        while !rest.is_empty() {
            while pos >= bounds[g].1 {
                g += 1;
            }
            let take = rest.len().min(bounds[g].1 - pos);
            let (a, b) = std::mem::take(&mut rest).split_at_mut(take);
            res[g].push(a);
            rest = b;
            pos += take;
        }
    }
    res
}
