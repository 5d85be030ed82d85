//! The one error type of the kernels; the bindings map every variant to a Python `ValueError`.
use std::fmt;

/// Why a kernel refused its input. Messages name the argument, what was expected and what was given.
#[derive(Debug, Clone, PartialEq)]
pub enum KernelError {
    /// The input has no elements where at least one is needed.
    Empty { arg: &'static str },
    /// `k` is outside `[lo, n]`.
    KOutOfRange { k: u64, lo: u64, n: u64 },
    /// A NaN was found; `tensor` is the list position for list inputs, `index` the C-order flat index.
    Nan { arg: &'static str, tensor: Option<usize>, index: usize },
    /// A scale is not finite and > 0 (`channel` is `None` per tensor).
    BadScale { channel: Option<usize>, value: f32 },
    /// A zero point is outside `[qmin, qmax]`.
    BadZeroPoint { channel: Option<usize>, value: i32, qmin: i32, qmax: i32 },
    /// An integer input value is outside its allowed range.
    ValueOutOfRange { arg: &'static str, index: usize, value: i64, lo: i64, hi: i64 },
    /// Lengths or shapes that must agree do not.
    Mismatch { what: String },
    /// Any other invalid argument.
    Invalid { what: String },
}

impl fmt::Display for KernelError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use KernelError::*;
        match self {
            Empty { arg } => write!(f, "{arg} is empty: expected at least one element"),
            KOutOfRange { k, lo, n } => write!(f, "k must be in [{lo}, {n}] (the number of elements), got {k}"),
            Nan { arg, tensor: None, index } => write!(f, "{arg} contains NaN at flat index {index}"),
            Nan { arg, tensor: Some(t), index } => write!(f, "{arg}[{t}] contains NaN at flat index {index}"),
            BadScale { channel: None, value } => write!(f, "scale must be finite and > 0, got {value}"),
            BadScale { channel: Some(c), value } => {
                write!(f, "scale must be finite and > 0, got {value} for channel {c}")
            }
            BadZeroPoint { channel, value, qmin, qmax } => {
                write!(f, "zero_point must be in [{qmin}, {qmax}], got {value}")?;
                if let Some(c) = channel {
                    write!(f, " for channel {c}")?;
                }
                Ok(())
            }
            ValueOutOfRange { arg, index, value, lo, hi } => {
                write!(f, "{arg} values must be in [{lo}, {hi}], got {value} at flat index {index}")
            }
            Mismatch { what } | Invalid { what } => f.write_str(what),
        }
    }
}

impl std::error::Error for KernelError {}

pub type Result<T> = std::result::Result<T, KernelError>;
