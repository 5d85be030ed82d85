"""Affine quantization and dequantization, int4 nibble packing, and the reductions that give scales
(``abs_max``, ``min_max``). Conventions: :mod:`nnic.kernels`."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from nnic.kernels import twins
from nnic.kernels.adapters import (
    Array,
    as_int,
    check_dtype,
    check_out,
    dtype_name,
    empty_like,
    is_torch,
    normalize_axis,
    numpy_out,
    on_device,
    plain,
    to_numpy,
)
from nnic.kernels.runtime import native

__all__ = ["abs_max", "dequantize", "min_max", "pack_int4", "quantize", "unpack_int4"]


def _qrange(bits: Any, signed: bool) -> tuple[int, int]:
    b = as_int(bits, "bits")
    if not 2 <= b <= 8:
        raise ValueError(f"bits must be in [2, 8], got {b}")
    return (-(1 << (b - 1)), (1 << (b - 1)) - 1) if signed else (0, (1 << b) - 1)


def _params(scale: Any, zero_point: Any, axis: int | None, shape: tuple, qmin: int, qmax: int):
    """scale/zero_point as 1-D float32/int32 arrays of one value (per tensor) or one per channel."""
    if axis is None and type(scale) is float and type(zero_point) is int:  # fast path: plain Python scalars
        with np.errstate(over="ignore"):  # a scale beyond float32 becomes inf and is rejected below
            s32 = np.float32(scale)
        if not (np.isfinite(s32) and s32 > 0):
            raise ValueError(f"scale must be finite and > 0, got {s32}")
        if not qmin <= zero_point <= qmax:
            raise ValueError(f"zero_point must be in [{qmin}, {qmax}], got {zero_point}")
        return np.array([s32], np.float32), np.array([zero_point], np.int32)
    channels = 1 if axis is None else shape[axis]
    what = "a scalar" if axis is None else f"1-D with {channels} values (x.shape[{axis}])"
    s = np.asarray(plain(scale))
    if s.dtype.kind not in "fiu":
        raise TypeError(f"scale must be real, got dtype {s.dtype}")
    z = np.asarray(plain(zero_point))
    if z.dtype.kind not in "iu":
        raise TypeError(f"zero_point must be an integer or integer array, got dtype {z.dtype}")
    for arr, name in ((s, "scale"), (z, "zero_point")):
        ok = arr.size == 1 and arr.ndim <= 1 if axis is None else arr.ndim == 1 and arr.size == channels
        if not ok and not (axis is not None and name == "zero_point" and arr.ndim == 0):
            raise ValueError(f"{name} must be {what}, got shape {arr.shape}")
    with np.errstate(over="ignore"):
        s = s.astype(np.float32).reshape(-1)
    z = np.broadcast_to(z.reshape(-1), (channels,)) if z.size == 1 and channels != 1 else z.reshape(-1)
    bad = np.flatnonzero(~(np.isfinite(s) & (s > 0)))
    if bad.size:
        where = "" if axis is None else f" for channel {bad[0]}"
        raise ValueError(f"scale must be finite and > 0, got {s[bad[0]]}{where}")
    zi = z.astype(np.int64)
    bad = np.flatnonzero((zi < qmin) | (zi > qmax))
    if bad.size:
        where = "" if axis is None else f" for channel {bad[0]}"
        raise ValueError(f"zero_point must be in [{qmin}, {qmax}], got {zi[bad[0]]}{where}")
    return np.ascontiguousarray(s), np.ascontiguousarray(zi.astype(np.int32))


def quantize(x: Array, scale: Any, zero_point: Any = 0, axis: int | None = None, bits: int = 8,
             signed: bool = True, out: Array | None = None) -> Array:
    """Affine quantization ``clamp(round_half_even(x / scale) + zero_point, qmin, qmax)``.

    The division is done in float32 (a true division, not a multiplication by ``1/scale``), so the result
    equals ``np.rint(x / np.float32(scale))`` exactly. ``qmin, qmax`` are ``[-2^(bits-1), 2^(bits-1)-1]``
    when ``signed`` else ``[0, 2^bits - 1]``. ``±inf`` clamp to ``qmin``/``qmax``.

    :param x: float32 tensor/array.
    :param scale: per tensor a scalar (or one-element array/tensor); per channel (``axis`` given) a 1-D
        array/tensor of ``x.shape[axis]`` values. Values must be finite and > 0; they are rounded to float32.
    :param zero_point: integer in ``[qmin, qmax]``; per channel also a 1-D integer array like ``scale``
        (a scalar is then used for every channel).
    :param axis: ``None`` for per-tensor parameters, else the channel axis (negative counts from the end).
    :param bits: 2 to 8.
    :param signed: int8 output (True) or uint8 output (False).
    :param out: optional preallocated C-contiguous output of x's shape, kind and device and the output dtype.
    :returns: int8 (or uint8) tensor/array of x's shape.
    :raises TypeError: x not float32, non-integer zero_point or bits, wrong ``out`` dtype or kind.
    :raises ValueError: bits/axis out of range, scale not finite > 0 or zero_point out of range (naming the
        channel), wrong parameter shapes, x contains NaN (naming the flat index).
    """
    check_dtype(x, "x", ("float32",))
    qmin, qmax = _qrange(bits, bool(signed))
    shape = tuple(x.shape)
    ax = normalize_axis(axis, len(shape))
    s, z = _params(scale, zero_point, ax, shape, qmin, qmax)
    dtype = "int8" if signed else "uint8"
    if out is None:
        out = empty_like(x, shape, np.int8 if signed else np.uint8, torch.int8 if signed else torch.uint8)
    else:
        check_out(out, x, shape, dtype, "x")
    if on_device(x):
        return twins.quantize(x, s, z, ax, qmin, qmax, out)
    native.quantize(to_numpy(x), numpy_out(out).view(np.uint8), s, z, ax, qmin, qmax)
    return out


def dequantize(q: Array, scale: Any, zero_point: Any = 0, axis: int | None = None, out: Array | None = None) -> Array:
    """``(q - zero_point) * scale`` in float32 (exactly ``(q.astype(int32) - zp).astype(float32) * float32(scale)``).

    :param q: int8 or uint8 tensor/array.
    :param scale, zero_point, axis: as in :func:`quantize`; zero_point must fit q's dtype.
    :param out: optional preallocated float32 C-contiguous output of q's shape, kind and device.
    :returns: float32 tensor/array of q's shape.
    :raises TypeError, ValueError: as :func:`quantize`.
    """
    check_dtype(q, "q", ("int8", "uint8"))
    signed = dtype_name(q) == "int8"
    qmin, qmax = (-128, 127) if signed else (0, 255)
    shape = tuple(q.shape)
    ax = normalize_axis(axis, len(shape))
    s, z = _params(scale, zero_point, ax, shape, qmin, qmax)
    if out is None:
        out = empty_like(q, shape, np.float32, torch.float32)
    else:
        check_out(out, q, shape, "float32", "q")
    if on_device(q):
        return twins.dequantize(q, s, z, ax, out)
    native.dequantize(to_numpy(q).view(np.uint8), signed, numpy_out(out), s, z, ax)
    return out


def pack_int4(q: Array) -> Array:
    """Packs signed 4-bit values two per byte, low nibble first: ``byte = (q[2i] & 15) | (q[2i+1] << 4)``.

    The flattened C-order array is packed; an odd length pads the last high nibble with 0.

    :param q: int8 tensor/array with values in [-8, 7].
    :returns: 1-D uint8 of ``ceil(q.numel() / 2)`` bytes.
    :raises TypeError: q is not int8.
    :raises ValueError: a value outside [-8, 7] (the message names its flat index).
    """
    check_dtype(q, "q", ("int8",))
    n = int(np.prod(q.shape))
    if on_device(q):
        return twins.pack_int4(q)
    out = empty_like(q, ((n + 1) // 2,), np.uint8, torch.uint8)
    native.pack_int4(to_numpy(q).reshape(-1), numpy_out(out))
    return out


def unpack_int4(p: Array, n: int) -> Array:
    """Inverse of :func:`pack_int4`: ``n`` sign-extended int4 values as a 1-D int8 tensor/array.

    :param p: uint8 tensor/array (flattened) of exactly ``ceil(n / 2)`` bytes.
    :param n: number of values (>= 0).
    :raises TypeError: p is not uint8, n is not an integer.
    :raises ValueError: n < 0 or ``p`` has the wrong number of bytes.
    """
    check_dtype(p, "p", ("uint8",))
    n = as_int(n, "n")
    size = int(np.prod(p.shape))
    if n < 0 or size != (n + 1) // 2:
        raise ValueError(f"n = {n} int4 values need {max(n + 1, 0) // 2} packed bytes, p has {size}")
    if on_device(p):
        return twins.unpack_int4(p, n)
    out = empty_like(p, (n,), np.int8, torch.int8)
    native.unpack_int4(to_numpy(p).reshape(-1), numpy_out(out))
    return out


def _reduce_result(x: Array, v: np.ndarray, axis: int | None):
    if axis is None:
        return float(v[0])
    return torch.from_numpy(v).to(x.device) if is_torch(x) else v


def abs_max(x: Array, axis: int | None = None) -> Any:
    """max ``|x|``: a float per tensor, or a 1-D float32 tensor/array of ``x.shape[axis]`` values with
    ``axis`` (each the max over all other dims). Used for symmetric scales.

    :raises TypeError: x is not float32.
    :raises ValueError: nothing to reduce (x empty, or a reduced dim of size 0), axis out of range, a NaN
        (naming the flat index).
    """
    check_dtype(x, "x", ("float32",))
    ax = normalize_axis(axis, x.ndim if not is_torch(x) else x.dim())
    if on_device(x):
        return twins.abs_max(x, ax)
    return _reduce_result(x, native.abs_max(to_numpy(x), ax), ax)


def min_max(x: Array, axis: int | None = None) -> tuple[Any, Any]:
    """``(min, max)`` of x: floats per tensor, or two 1-D float32 tensors/arrays with ``axis`` (as
    :func:`abs_max`). Used for affine scales. Same errors as :func:`abs_max`."""
    check_dtype(x, "x", ("float32",))
    ax = normalize_axis(axis, x.ndim if not is_torch(x) else x.dim())
    if on_device(x):
        return twins.min_max(x, ax)
    lo, hi = native.min_max(to_numpy(x), ax)
    return _reduce_result(x, lo, ax), _reduce_result(x, hi, ax)
