//! Per-channel layout: a C-order array seen as `(outer, channels, inner)` around one axis.
use crate::error::{KernelError, Result};

/// `x.shape == (outer, channels, inner)` after merging the dims before and after the channel axis.
/// Channel of flat index `i` is `(i / inner) % channels`.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    pub outer: usize,
    pub channels: usize,
    pub inner: usize,
}

/// Contiguous runs of one channel at least this long are processed run by run ("block" mode);
/// shorter ones use a repeated scale pattern ("pattern" mode).
const BLOCK_MIN: usize = 64;
/// Minimum pattern row length in pattern mode.
const PATTERN_MIN: usize = 512;

/// How a per-channel kernel walks the data.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(crate) enum Walk {
    /// Runs of `inner` elements with one channel each.
    Blocks,
    /// Rows of `row` elements (a multiple of `channels * inner`, so every row starts at channel 0).
    Pattern { row: usize },
}

impl Layout {
    /// The whole array as one channel.
    pub fn per_tensor(n: usize) -> Layout {
        Layout { outer: 1, channels: 1, inner: n }
    }

    /// Layout of a C-order array of `shape` around `axis` (`None`: per tensor).
    pub fn from_shape(shape: &[usize], axis: Option<usize>) -> Result<Layout> {
        let n: usize = shape.iter().product();
        let Some(axis) = axis else { return Ok(Layout::per_tensor(n)) };
        if axis >= shape.len() {
            return Err(KernelError::Invalid {
                what: format!("axis must be in [0, {}) for an array of shape {shape:?}, got {axis}", shape.len()),
            });
        }
        Ok(Layout {
            outer: shape[..axis].iter().product(),
            channels: shape[axis],
            inner: shape[axis + 1..].iter().product(),
        })
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.outer * self.channels * self.inner
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub(crate) fn walk(&self) -> Walk {
        if self.channels <= 1 || self.inner >= BLOCK_MIN || self.is_empty() {
            Walk::Blocks
        } else {
            let period = self.channels * self.inner;
            Walk::Pattern { row: period * PATTERN_MIN.div_ceil(period) }
        }
    }

    /// Calls `f(channel, lo, hi)` for each single-channel run of the flat range `[start, end)`.
    pub(crate) fn for_each_run(&self, start: usize, end: usize, mut f: impl FnMut(usize, usize, usize)) {
        if self.channels == 1 {
            if start < end {
                f(0, start, end);
            }
            return;
        }
        let mut i = start;
        while i < end {
            let block = i / self.inner;
            let hi = ((block + 1) * self.inner).min(end);
            f(block % self.channels, i, hi);
            i = hi;
        }
    }

    /// Expands per-channel values into one pattern row of `row` elements (see [`Walk::Pattern`]).
    pub(crate) fn pattern<T: Copy>(&self, per_channel: &[T], row: usize) -> Vec<T> {
        (0..row).map(|j| per_channel[(j / self.inner) % self.channels]).collect()
    }
}
