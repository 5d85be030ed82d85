"""Reference implementations of :mod:`nnic.kernels` in plain numpy: short, obviously correct, slow.

They define the semantics the Rust kernels must match: integer outputs and masks exactly, floats exactly
too (the kernels use the same float32 operations), except where a function says otherwise. Inputs are
numpy arrays; errors are not modelled here except the NaN policy (``ValueError`` naming the flat index).
"""

from __future__ import annotations

import numpy as np


def _flat_abs(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32).reshape(-1)
    nan = np.flatnonzero(np.isnan(x))
    if nan.size:
        raise ValueError(f"x contains NaN at flat index {nan[0]}")
    return np.abs(x)


def kth_smallest_abs(x: np.ndarray, k: int) -> float:
    """k-th smallest |x| (1-based) by a full sort; -0.0 sorts as 0, inf last."""
    return float(np.sort(_flat_abs(x))[k - 1])


def global_kth_smallest_abs(xs: list[np.ndarray], k: int) -> float:
    """k-th smallest |x| of the concatenation of all flattened arrays."""
    return kth_smallest_abs(np.concatenate([np.ravel(x) for x in xs]), k)


def smallest_abs_mask(x: np.ndarray, k: int) -> np.ndarray:
    """Keep-mask with the k smallest |x| pruned, ties by flat index: a stable argsort's first k."""
    a = _flat_abs(x)
    keep = np.ones(a.size, dtype=bool)
    keep[np.argsort(a, kind="stable")[:k]] = False
    return keep.reshape(np.shape(x))


def global_smallest_abs_masks(xs: list[np.ndarray], k: int) -> list[np.ndarray]:
    """Keep-masks over the concatenation (ties by list position, then flat index), split back."""
    if not xs:
        return []
    keep = smallest_abs_mask(np.concatenate([np.ravel(x) for x in xs]), k)
    bounds = np.cumsum([np.size(x) for x in xs])[:-1]
    return [m.reshape(np.shape(x)) for m, x in zip(np.split(keep, bounds), xs)]


def apply_mask(w: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``w`` with entries where ``mask`` is 0/False replaced by +0.0 (a new array)."""
    return np.where(np.asarray(mask).astype(bool), w, np.float32(0.0)).astype(np.float32)


def prune_by_threshold(w: np.ndarray, t: float) -> tuple[np.ndarray, int]:
    """(``w`` with ``|w| <= float32(t)`` set to +0.0, number kept); NaN entries are kept."""
    w = np.array(w, dtype=np.float32)
    prune = np.abs(w) <= np.float32(t)
    w[prune] = 0.0
    return w, int(w.size - prune.sum())


def qrange(bits: int, signed: bool) -> tuple[int, int]:
    """(qmin, qmax) of a ``bits``-bit signed or unsigned integer."""
    return (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)


def _channel(v, axis: int | None, ndim: int, dtype) -> np.ndarray:
    v = np.asarray(v, dtype=dtype)
    if axis is None:
        return v.reshape(())
    shape = [1] * ndim
    shape[axis] = -1
    return v.reshape(shape)


def quantize(x: np.ndarray, scale, zero_point=0, axis: int | None = None, bits: int = 8,
             signed: bool = True) -> np.ndarray:
    """``clip(rint(x / float32(scale)) + zero_point, qmin, qmax)`` with the division in float32."""
    x = np.asarray(x, dtype=np.float32)
    _flat_abs(x)
    qmin, qmax = qrange(bits, signed)
    s = _channel(scale, axis, x.ndim, np.float32)
    z = _channel(zero_point, axis, x.ndim, np.float64)
    with np.errstate(over="ignore"):  # x / tiny scale overflows to ±inf, which then clamps
        r = np.rint(x / s).astype(np.float64) + z
    return np.clip(r, qmin, qmax).astype(np.int8 if signed else np.uint8)


def dequantize(q: np.ndarray, scale, zero_point=0, axis: int | None = None) -> np.ndarray:
    """``(q - zero_point) * float32(scale)`` with the subtraction in int32 and the product in float32."""
    q = np.asarray(q)
    s = _channel(scale, axis, q.ndim, np.float32)
    z = _channel(zero_point, axis, q.ndim, np.int32)
    return ((q.astype(np.int32) - z).astype(np.float32) * s).astype(np.float32)


def pack_int4(q: np.ndarray) -> np.ndarray:
    """Two int4 per byte, low nibble first, of the flattened array; odd length pads a 0 nibble."""
    q = np.asarray(q, dtype=np.int64).reshape(-1)
    bad = np.flatnonzero((q < -8) | (q > 7))
    if bad.size:
        raise ValueError(f"q values must be in [-8, 7], got {q[bad[0]]} at flat index {bad[0]}")
    if q.size % 2:
        q = np.append(q, 0)
    u = (q & 0xF).astype(np.uint8)
    return (u[0::2] | (u[1::2] << 4)).astype(np.uint8)


def unpack_int4(p: np.ndarray, n: int) -> np.ndarray:
    """n sign-extended int4 values from packed bytes."""
    b = np.asarray(p, dtype=np.uint8).reshape(-1).astype(np.int16)
    nib = np.stack([b & 0xF, b >> 4], axis=1).reshape(-1)[:n]
    return np.where(nib >= 8, nib - 16, nib).astype(np.int8)


def _reduce_axes(ndim: int, axis: int) -> tuple[int, ...]:
    return tuple(d for d in range(ndim) if d != axis)


def abs_max(x: np.ndarray, axis: int | None = None):
    """max |x| (a float), or per slice along ``axis`` (1-D float32)."""
    x = np.asarray(x, dtype=np.float32)
    _flat_abs(x)
    if axis is None:
        return float(np.abs(x).max())
    if x.shape[axis] == 0:  # no channels: nothing to reduce, an empty result
        return np.zeros(0, np.float32)
    return np.abs(x).max(axis=_reduce_axes(x.ndim, axis)).astype(np.float32)


def min_max(x: np.ndarray, axis: int | None = None):
    """(min, max) as floats, or per slice along ``axis`` (two 1-D float32)."""
    x = np.asarray(x, dtype=np.float32)
    _flat_abs(x)
    if axis is None:
        return float(x.min()), float(x.max())
    if x.shape[axis] == 0:
        return np.zeros(0, np.float32), np.zeros(0, np.float32)
    axes = _reduce_axes(x.ndim, axis)
    return x.min(axis=axes).astype(np.float32), x.max(axis=axes).astype(np.float32)
