"""Fast CPU kernels for pruning and quantization (Rust, multithreaded, SIMD), for torch tensors and numpy arrays.

Conventions shared by every function:

- Inputs are ``torch.Tensor`` or ``numpy.ndarray``; outputs have the kind of the (first) input: torch in,
  torch out (on the same device); numpy in, numpy out.
- CPU tensors are handed to Rust without a copy (``t.detach().numpy()``) when they are C-contiguous;
  non-contiguous inputs are copied to a contiguous buffer first. In-place kernels (``apply_mask_``,
  ``prune_by_threshold_``) also accept non-contiguous tensors and views: they work on a contiguous copy and
  write it back. Autograd is bypassed (the data is changed in place like ``w.data``).
- Tensors on other devices (CUDA) run equivalent torch operations with the same semantics
  (:mod:`nnic._kernels_torch`).
- Float kernels take float32 only; float16/bfloat16/float64 raise ``TypeError`` (convert with ``.float()``
  or ``.astype(np.float32)``).
- Bad input raises ``ValueError`` or ``TypeError`` naming the argument, what was expected and what was given;
  NaN inputs raise ``ValueError`` naming the flat (C-order) index of the first NaN.
- The GIL is released while a Rust kernel runs; kernels use their own thread pool (:func:`set_num_threads`).

Environment variables, read when this module is imported:

- ``NNIC_KERNEL_ISA=scalar|avx2|avx512`` forces a code path (:func:`set_isa`);
- ``NNIC_NUM_THREADS=n`` sets the kernel thread count (default: the CPU count).
"""

from __future__ import annotations

import operator
import os
from collections.abc import Sequence
from typing import Any, Union

import numpy as np
import torch

from nnic import _kernels as _k
from nnic import _kernels_torch as _tk
from nnic.gemm import (  # noqa: F401  (the GEMM kernels live in nnic.gemm; nnic.kernels is the one front door)
    MAX_K,
    gemm_backend,
    gemm_path,
    gemm_paths,
    int4_linear,
    int8_conv2d,
    int8_linear,
    int8_matmul,
    pack_int4_weight,
    pack_int8_weight,
    quantize_int4_weight,
    quantize_int8_weight,
)

Array = Union[torch.Tensor, np.ndarray]

__all__ = [
    "MAX_K", "gemm_backend", "gemm_path", "gemm_paths", "int4_linear", "int8_conv2d", "int8_linear", "int8_matmul",
    "pack_int4_weight", "pack_int8_weight", "quantize_int4_weight", "quantize_int8_weight",
    "abs_max", "active_isa", "apply_mask_", "cpu_features", "dequantize", "get_num_threads",
    "global_kth_smallest_abs", "global_smallest_abs_masks", "kth_smallest_abs", "min_max", "pack_int4",
    "prune_by_threshold_", "quantize", "set_isa", "set_num_threads", "smallest_abs_mask", "supported_isas",
    "unpack_int4",
]

# --------------------------------------------------------------------------- argument helpers
def _is_torch(x: Any) -> bool:
    return isinstance(x, torch.Tensor)


def _on_device(x: Any) -> bool:
    """True for torch tensors that are not on the CPU: those use the torch implementation."""
    return _is_torch(x) and x.device.type != "cpu"


def _dtype_name(x: Array) -> str:
    return str(x.dtype).removeprefix("torch.")


def _check_array(x: Any, name: str) -> None:
    if not isinstance(x, (torch.Tensor, np.ndarray)):
        raise TypeError(f"{name} must be a torch.Tensor or numpy.ndarray, got {type(x).__name__}")


def _check_dtype(x: Array, name: str, allowed: tuple[str, ...]) -> None:
    _check_array(x, name)
    if _dtype_name(x) not in allowed:
        want = " or ".join(allowed)
        hint = " (convert with .float() or .astype(np.float32))" if allowed == ("float32",) else ""
        raise TypeError(f"{name} must have dtype {want}, got {_dtype_name(x)}{hint}")


def _to_numpy(x: Array) -> np.ndarray:
    """A C-contiguous numpy array with x's data (a zero-copy view when possible)."""
    if _is_torch(x):
        t = x.detach()
        if t.device.type != "cpu":
            t = t.cpu()
        return t.contiguous().resolve_conj().resolve_neg().numpy()
    return np.ascontiguousarray(x)


def _int(v: Any, name: str) -> int:
    if isinstance(v, (bool, np.bool_)) or (_is_torch(v) and v.dtype == torch.bool):
        raise TypeError(f"{name} must be an integer, got bool")
    try:
        return operator.index(v)
    except TypeError:
        raise TypeError(f"{name} must be an integer, got {type(v).__name__}") from None


def _check_k(k: Any, n: int, lo: int) -> int:
    k = _int(k, "k")
    if not lo <= k <= n:
        raise ValueError(f"k must be in [{lo}, {n}] (the number of elements), got {k}")
    return k


def _as_list(xs: Any, name: str) -> list:
    if isinstance(xs, (torch.Tensor, np.ndarray)) or not isinstance(xs, Sequence):
        raise TypeError(f"{name} must be a list or tuple of tensors/arrays, got {type(xs).__name__}")
    xs = list(xs)
    for i, x in enumerate(xs):
        _check_dtype(x, f"{name}[{i}]", ("float32",))
    return xs


def _list_device(xs: list, name: str) -> bool:
    """Whether the list runs on the torch path; a list must not mix devices."""
    devices = {str(x.device) if _is_torch(x) else "cpu" for x in xs}
    if len(devices) > 1:
        raise ValueError(f"{name} must all be on one device, got {sorted(devices)}")
    return bool(xs) and _on_device(xs[0])


def _normalize_axis(axis: Any, ndim: int) -> int | None:
    if axis is None:
        return None
    a = _int(axis, "axis")
    if not -ndim <= a < ndim:
        raise ValueError(f"axis must be in [{-ndim}, {ndim}) for a {ndim}-d input, got {a}")
    return a % ndim


def _empty_like(x: Array, shape: tuple, np_dtype: type, torch_dtype: torch.dtype) -> Array:
    if _is_torch(x):
        return torch.empty(shape, dtype=torch_dtype, device=x.device)
    return np.empty(shape, dtype=np_dtype)


# --------------------------------------------------------------------------- thresholds and masks
def kth_smallest_abs(x: Array, k: int) -> float:
    """The k-th smallest ``|x|`` (1-based) over all elements: ``torch.kthvalue(x.abs().flatten(), k)``, exactly.

    Policy: ``+0.0`` and ``-0.0`` are both 0 (the result is never negative), ``±inf`` are the largest values.
    Algorithm: an O(n) two-pass radix select on the bit pattern of ``|x|``, multithreaded.

    :param x: float32 tensor/array of any shape (read only).
    :param k: integer in ``[1, x.numel()]``.
    :raises TypeError: x is not a float32 tensor/array, k is not an integer.
    :raises ValueError: x is empty, k is out of range, x contains NaN (the message names the flat index).
    """
    _check_dtype(x, "x", ("float32",))
    n = int(np.prod(x.shape))
    if n == 0:
        raise ValueError("x is empty: expected at least one element")
    k = _check_k(k, n, 1)
    if _on_device(x):
        return _tk.kth_smallest_abs(x, k)
    return float(_k.kth_smallest_abs(_to_numpy(x), k))


def global_kth_smallest_abs(xs: Sequence[Array], k: int) -> float:
    """The k-th smallest ``|x|`` over all tensors of ``xs`` together, as if flattened and concatenated.

    Nothing is concatenated: the histograms stream over the list. Same policy as :func:`kth_smallest_abs`.

    :param xs: list/tuple of float32 tensors/arrays (any shapes, all on one device).
    :param k: integer in ``[1, total number of elements]``.
    :raises TypeError: xs is not a list of float32 tensors/arrays.
    :raises ValueError: no elements, k out of range, a NaN (the message names ``xs[i]`` and the flat index),
        tensors on different devices.
    """
    xs = _as_list(xs, "xs")
    n = sum(int(np.prod(x.shape)) for x in xs)
    if n == 0:
        raise ValueError("xs is empty: expected at least one element")
    k = _check_k(k, n, 1)
    if _list_device(xs, "xs"):
        return _tk.global_kth_smallest_abs(xs, k)
    return float(_k.global_kth_smallest_abs([_to_numpy(x) for x in xs], k))


def smallest_abs_mask(x: Array, k: int) -> Array:
    """A keep-mask of x's shape with exactly ``k`` entries ``False`` (pruned): the k smallest ``|x|``.

    With ``t = kth_smallest_abs(x, k)``, every entry with ``|x| < t`` is pruned, plus the first entries in
    C-order flat index with ``|x| == t`` (deterministic tie-breaking), so the count is exact even with ties.
    ``k = 0`` keeps everything. This is what the Level pruner uses.

    :param x: float32 tensor/array (read only).
    :param k: integer in ``[0, x.numel()]``.
    :returns: bool tensor (torch in, on x's device) or bool array (numpy in) of ``x.shape``.
    :raises TypeError: x is not float32, k is not an integer.
    :raises ValueError: k out of range, x contains NaN (even for ``k = 0``; the message names the flat index).
    """
    _check_dtype(x, "x", ("float32",))
    k = _check_k(k, int(np.prod(x.shape)), 0)
    if _on_device(x):
        return _tk.smallest_abs_mask(x, k)
    out = _empty_like(x, tuple(x.shape), np.bool_, torch.bool)
    _k.smallest_abs_mask(_to_numpy(x), k, out.numpy() if _is_torch(out) else out)
    return out


def global_smallest_abs_masks(xs: Sequence[Array], k: int) -> list[Array]:
    """Keep-masks for every tensor of ``xs`` with exactly ``k`` entries pruned in total (global threshold).

    Entries equal to the threshold are pruned in (list position, flat index) order. An empty list gives
    ``[]`` (k must then be 0).

    :param xs: list/tuple of float32 tensors/arrays, all on one device.
    :param k: integer in ``[0, total number of elements]``.
    :returns: list of bool masks, each of its input's shape and kind.
    :raises TypeError, ValueError: as :func:`global_kth_smallest_abs` (k may be 0 here).
    """
    xs = _as_list(xs, "xs")
    k = _check_k(k, sum(int(np.prod(x.shape)) for x in xs), 0)
    if _list_device(xs, "xs"):
        return _tk.global_smallest_abs_masks(xs, k)
    outs = [_empty_like(x, tuple(x.shape), np.bool_, torch.bool) for x in xs]
    _k.global_smallest_abs_masks([_to_numpy(x) for x in xs], k, [o.numpy() if _is_torch(o) else o for o in outs])
    return outs


# --------------------------------------------------------------------------- in-place kernels
def _writable(w: Array, name: str) -> tuple[np.ndarray, bool]:
    """A writable contiguous numpy array for w and whether it is a copy that must be written back."""
    if _is_torch(w):
        t = w.detach()
        if t.is_contiguous() and not t.is_conj() and not t.is_neg():
            return t.numpy(), False
        return t.contiguous().resolve_conj().resolve_neg().numpy().copy(), True
    if not w.flags.writeable:
        raise ValueError(f"{name} is read-only: expected a writable array")
    if w.flags.c_contiguous:
        return w, False
    return np.ascontiguousarray(w), True


def _write_back(w: Array, buf: np.ndarray) -> None:
    if _is_torch(w):
        with torch.no_grad():
            w.detach().copy_(torch.from_numpy(buf))
    else:
        w[...] = buf


def apply_mask_(w: Array, mask: Array) -> Array:
    """In place ``w[~mask] = 0`` (pruned entries become +0.0); returns ``w``.

    :param w: float32 tensor/array, modified in place (non-contiguous tensors and views work too).
    :param mask: bool, or uint8 holding only 0/1 (1 = keep), of exactly ``w.shape``; torch or numpy.
    :raises TypeError: w is not float32, mask is not bool/uint8.
    :raises ValueError: shapes differ (both are named), a uint8 mask holds another value (the message
        names its flat index; ``w`` is left unchanged), w is a read-only array.
    """
    _check_dtype(w, "w", ("float32",))
    _check_dtype(mask, "mask", ("bool", "uint8"))
    if tuple(mask.shape) != tuple(w.shape):
        raise ValueError(f"mask must have w's shape {tuple(w.shape)}, got {tuple(mask.shape)}")
    binary_check = _dtype_name(mask) == "uint8"
    if _on_device(w):
        m = mask if _is_torch(mask) else torch.from_numpy(np.ascontiguousarray(mask))
        return _tk.apply_mask_(w, m.to(w.device), check=binary_check)
    buf, copied = _writable(w, "w")
    m = _to_numpy(mask)
    _k.apply_mask(buf, m.view(np.uint8), binary_check)
    if copied:
        _write_back(w, buf)
    return w


def prune_by_threshold_(w: Array, t: float) -> int:
    """In place ``w[|w| <= t] = 0`` in one fused pass; returns the number of weights kept.

    Kept means ``|w| > t``; NaN entries are left as they are and counted as kept. ``t < 0`` prunes nothing.
    ``t`` is rounded to float32 first (as numpy does when comparing a float32 array with a Python float).

    :param w: float32 tensor/array, modified in place (non-contiguous tensors and views work too).
    :param t: a real number (Python/numpy scalar or a one-element tensor); NaN is a ``ValueError``.
    :raises TypeError: w is not float32, t is not a real number.
    :raises ValueError: t is NaN, w is a read-only array.
    """
    _check_dtype(w, "w", ("float32",))
    try:
        if isinstance(t, (str, bytes, bool, np.bool_)):
            raise TypeError
        t = float(t)
    except (TypeError, ValueError):
        raise TypeError(f"t must be a real number, got {type(t).__name__}") from None
    if t != t:
        raise ValueError("t must not be NaN")
    if _on_device(w):
        return _tk.prune_by_threshold_(w, t)
    buf, copied = _writable(w, "w")
    kept = _k.prune_by_threshold(buf, np.float32(t))
    if copied:
        _write_back(w, buf)
    return int(kept)


# --------------------------------------------------------------------------- quantization
def _qrange(bits: Any, signed: bool) -> tuple[int, int]:
    b = _int(bits, "bits")
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
    s = scale.detach().cpu().numpy() if _is_torch(scale) else np.asarray(scale)
    if s.dtype.kind not in "fiu":
        raise TypeError(f"scale must be real, got dtype {s.dtype}")
    z = zero_point.detach().cpu().numpy() if _is_torch(zero_point) else np.asarray(zero_point)
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


def _check_out(out: Any, like: Array, shape: tuple, dtype: str) -> None:
    _check_dtype(out, "out", (dtype,))
    if _is_torch(out) != _is_torch(like):
        raise TypeError(f"out must be a {'torch.Tensor' if _is_torch(like) else 'numpy.ndarray'} like the input")
    if tuple(out.shape) != shape:
        raise ValueError(f"out must have shape {shape}, got {tuple(out.shape)}")
    contiguous = out.is_contiguous() if _is_torch(out) else out.flags.c_contiguous and out.flags.writeable
    if not contiguous or (_is_torch(out) and out.device != like.device):
        raise ValueError("out must be a writable C-contiguous tensor/array on the input's device")


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
    _check_dtype(x, "x", ("float32",))
    qmin, qmax = _qrange(bits, bool(signed))
    shape = tuple(x.shape)
    ax = _normalize_axis(axis, len(shape))
    s, z = _params(scale, zero_point, ax, shape, qmin, qmax)
    dtype = "int8" if signed else "uint8"
    if out is None:
        out = _empty_like(x, shape, np.int8 if signed else np.uint8, torch.int8 if signed else torch.uint8)
    else:
        _check_out(out, x, shape, dtype)
    if _on_device(x):
        return _tk.quantize(x, s, z, ax, qmin, qmax, out)
    o = out.numpy() if _is_torch(out) else out
    _k.quantize(_to_numpy(x), o.view(np.uint8), s, z, ax, qmin, qmax)
    return out


def dequantize(q: Array, scale: Any, zero_point: Any = 0, axis: int | None = None, out: Array | None = None) -> Array:
    """``(q - zero_point) * scale`` in float32 (exactly ``(q.astype(int32) - zp).astype(float32) * float32(scale)``).

    :param q: int8 or uint8 tensor/array.
    :param scale, zero_point, axis: as in :func:`quantize`; zero_point must fit q's dtype.
    :param out: optional preallocated float32 C-contiguous output of q's shape, kind and device.
    :returns: float32 tensor/array of q's shape.
    :raises TypeError, ValueError: as :func:`quantize`.
    """
    _check_dtype(q, "q", ("int8", "uint8"))
    signed = _dtype_name(q) == "int8"
    qmin, qmax = (-128, 127) if signed else (0, 255)
    shape = tuple(q.shape)
    ax = _normalize_axis(axis, len(shape))
    s, z = _params(scale, zero_point, ax, shape, qmin, qmax)
    if out is None:
        out = _empty_like(q, shape, np.float32, torch.float32)
    else:
        _check_out(out, q, shape, "float32")
    if _on_device(q):
        return _tk.dequantize(q, s, z, ax, out)
    _k.dequantize(_to_numpy(q).view(np.uint8), signed, out.numpy() if _is_torch(out) else out, s, z, ax)
    return out


def pack_int4(q: Array) -> Array:
    """Packs signed 4-bit values two per byte, low nibble first: ``byte = (q[2i] & 15) | (q[2i+1] << 4)``.

    The flattened C-order array is packed; an odd length pads the last high nibble with 0.

    :param q: int8 tensor/array with values in [-8, 7].
    :returns: 1-D uint8 of ``ceil(q.numel() / 2)`` bytes.
    :raises TypeError: q is not int8.
    :raises ValueError: a value outside [-8, 7] (the message names its flat index).
    """
    _check_dtype(q, "q", ("int8",))
    n = int(np.prod(q.shape))
    if _on_device(q):
        return _tk.pack_int4(q)
    out = _empty_like(q, ((n + 1) // 2,), np.uint8, torch.uint8)
    _k.pack_int4(_to_numpy(q).reshape(-1), out.numpy() if _is_torch(out) else out)
    return out


def unpack_int4(p: Array, n: int) -> Array:
    """Inverse of :func:`pack_int4`: ``n`` sign-extended int4 values as a 1-D int8 tensor/array.

    :param p: uint8 tensor/array (flattened) of exactly ``ceil(n / 2)`` bytes.
    :param n: number of values (>= 0).
    :raises TypeError: p is not uint8, n is not an integer.
    :raises ValueError: n < 0 or ``p`` has the wrong number of bytes.
    """
    _check_dtype(p, "p", ("uint8",))
    n = _int(n, "n")
    size = int(np.prod(p.shape))
    if n < 0 or size != (n + 1) // 2:
        raise ValueError(f"n = {n} int4 values need {max(n + 1, 0) // 2} packed bytes, p has {size}")
    if _on_device(p):
        return _tk.unpack_int4(p, n)
    out = _empty_like(p, (n,), np.int8, torch.int8)
    _k.unpack_int4(_to_numpy(p).reshape(-1), out.numpy() if _is_torch(out) else out)
    return out


# --------------------------------------------------------------------------- reductions
def _reduce_result(x: Array, v: np.ndarray, axis: int | None):
    if axis is None:
        return float(v[0])
    return torch.from_numpy(v).to(x.device) if _is_torch(x) else v


def abs_max(x: Array, axis: int | None = None) -> Any:
    """max ``|x|``: a float per tensor, or a 1-D float32 tensor/array of ``x.shape[axis]`` values with
    ``axis`` (each the max over all other dims). Used for symmetric scales.

    :raises TypeError: x is not float32.
    :raises ValueError: nothing to reduce (x empty, or a reduced dim of size 0), axis out of range, a NaN
        (naming the flat index).
    """
    _check_dtype(x, "x", ("float32",))
    ax = _normalize_axis(axis, x.ndim if not _is_torch(x) else x.dim())
    if _on_device(x):
        return _tk.abs_max(x, ax)
    return _reduce_result(x, _k.abs_max(_to_numpy(x), ax), ax)


def min_max(x: Array, axis: int | None = None) -> tuple[Any, Any]:
    """``(min, max)`` of x: floats per tensor, or two 1-D float32 tensors/arrays with ``axis`` (as
    :func:`abs_max`). Used for affine scales. Same errors as :func:`abs_max`."""
    _check_dtype(x, "x", ("float32",))
    ax = _normalize_axis(axis, x.ndim if not _is_torch(x) else x.dim())
    if _on_device(x):
        return _tk.min_max(x, ax)
    lo, hi = _k.min_max(_to_numpy(x), ax)
    return _reduce_result(x, lo, ax), _reduce_result(x, hi, ax)


# --------------------------------------------------------------------------- CPU paths and threads
def cpu_features() -> list[str]:
    """Instruction-set extensions found on this CPU, e.g. ``["avx2", "fma", "avx512f", ...]``."""
    return list(_k.cpu_features())


def supported_isas() -> list[str]:
    """Kernel code paths this CPU can run, slowest first: a subset of ``["scalar", "avx2", "avx512"]``."""
    return list(_k.supported_isas())


def active_isa() -> str:
    """The code path the kernels use now: ``"avx512"``, ``"avx2"`` or ``"scalar"``."""
    return _k.active_isa()


def set_isa(name: str | None = None) -> None:
    """Forces a code path (``"scalar"``, ``"avx2"``, ``"avx512"``); ``None`` selects the best available.

    :raises ValueError: unknown name, or a path this CPU lacks (nothing changes then).
    """
    if name is not None and not isinstance(name, str):
        raise TypeError(f"name must be a str or None, got {type(name).__name__}")
    _k.set_isa(name)


def set_num_threads(n: int) -> None:
    """Sets the threads of the kernels' own pool (independent of torch's and rayon's global pools).

    :raises ValueError: n outside [1, 1024].
    """
    n = _int(n, "n")
    if not 1 <= n <= 1024:
        raise ValueError(f"n must be in [1, 1024], got {n}")
    _k.set_num_threads(n)


def get_num_threads() -> int:
    """Threads of the kernels' pool."""
    return int(_k.get_num_threads())


def _apply_env() -> None:
    isa = os.environ.get("NNIC_KERNEL_ISA", "").strip()
    if isa:
        try:
            set_isa(isa)
        except ValueError as exc:
            raise ValueError(f"NNIC_KERNEL_ISA={isa!r}: {exc}") from None
    threads = os.environ.get("NNIC_NUM_THREADS", "").strip()
    if threads:
        try:
            set_num_threads(int(threads))
        except ValueError as exc:
            raise ValueError(f"NNIC_NUM_THREADS={threads!r}: expected an integer in [1, 1024] ({exc})") from None


_apply_env()
