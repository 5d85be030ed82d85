"""Threshold selection and masks: exact k-th smallest ``|x|``, keep-masks with exactly k pruned, in-place
masking and fused threshold pruning (what the magnitude pruners run on). Conventions: :mod:`nnic.kernels`."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from nnic.kernels import twins
from nnic.kernels.adapters import (
    Array,
    as_float32_list,
    check_dtype,
    check_k,
    dtype_name,
    empty_like,
    is_torch,
    list_on_device,
    numpy_out,
    on_device,
    to_numpy,
    writable,
    write_back,
)
from nnic.kernels.runtime import native

__all__ = ["apply_mask_", "global_kth_smallest_abs", "global_smallest_abs_masks", "kth_smallest_abs",
           "prune_by_threshold_", "smallest_abs_mask"]


def kth_smallest_abs(x: Array, k: int) -> float:
    """The k-th smallest ``|x|`` (1-based) over all elements: ``torch.kthvalue(x.abs().flatten(), k)``, exactly.

    Policy: ``+0.0`` and ``-0.0`` are both 0 (the result is never negative), ``±inf`` are the largest values.
    Algorithm: an O(n) two-pass radix select on the bit pattern of ``|x|``, multithreaded.

    :param x: float32 tensor/array of any shape (read only).
    :param k: integer in ``[1, x.numel()]``.
    :raises TypeError: x is not a float32 tensor/array, k is not an integer.
    :raises ValueError: x is empty, k is out of range, x contains NaN (the message names the flat index).
    """
    check_dtype(x, "x", ("float32",))
    n = int(np.prod(x.shape))
    if n == 0:
        raise ValueError("x is empty: expected at least one element")
    k = check_k(k, n, 1)
    if on_device(x):
        return twins.kth_smallest_abs(x, k)
    return float(native.kth_smallest_abs(to_numpy(x), k))


def global_kth_smallest_abs(xs: Sequence[Array], k: int) -> float:
    """The k-th smallest ``|x|`` over all tensors of ``xs`` together, as if flattened and concatenated.

    Nothing is concatenated: the histograms stream over the list. Same policy as :func:`kth_smallest_abs`.

    :param xs: list/tuple of float32 tensors/arrays (any shapes, all on one device).
    :param k: integer in ``[1, total number of elements]``.
    :raises TypeError: xs is not a list of float32 tensors/arrays.
    :raises ValueError: no elements, k out of range, a NaN (the message names ``xs[i]`` and the flat index),
        tensors on different devices.
    """
    xs = as_float32_list(xs, "xs")
    n = sum(int(np.prod(x.shape)) for x in xs)
    if n == 0:
        raise ValueError("xs is empty: expected at least one element")
    k = check_k(k, n, 1)
    if list_on_device(xs, "xs"):
        return twins.global_kth_smallest_abs(xs, k)
    return float(native.global_kth_smallest_abs([to_numpy(x) for x in xs], k))


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
    check_dtype(x, "x", ("float32",))
    k = check_k(k, int(np.prod(x.shape)), 0)
    if on_device(x):
        return twins.smallest_abs_mask(x, k)
    out = empty_like(x, tuple(x.shape), np.bool_, torch.bool)
    native.smallest_abs_mask(to_numpy(x), k, numpy_out(out))
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
    xs = as_float32_list(xs, "xs")
    k = check_k(k, sum(int(np.prod(x.shape)) for x in xs), 0)
    if list_on_device(xs, "xs"):
        return twins.global_smallest_abs_masks(xs, k)
    outs = [empty_like(x, tuple(x.shape), np.bool_, torch.bool) for x in xs]
    native.global_smallest_abs_masks([to_numpy(x) for x in xs], k, [numpy_out(o) for o in outs])
    return outs


def apply_mask_(w: Array, mask: Array) -> Array:
    """In place ``w[~mask] = 0`` (pruned entries become +0.0); returns ``w``.

    :param w: float32 tensor/array, modified in place (non-contiguous tensors and views work too).
    :param mask: bool, or uint8 holding only 0/1 (1 = keep), of exactly ``w.shape``; torch or numpy.
    :raises TypeError: w is not float32, mask is not bool/uint8.
    :raises ValueError: shapes differ (both are named), a uint8 mask holds another value (the message
        names its flat index; ``w`` is left unchanged), w is a read-only array.
    """
    check_dtype(w, "w", ("float32",))
    check_dtype(mask, "mask", ("bool", "uint8"))
    if tuple(mask.shape) != tuple(w.shape):
        raise ValueError(f"mask must have w's shape {tuple(w.shape)}, got {tuple(mask.shape)}")
    binary_check = dtype_name(mask) == "uint8"
    if on_device(w):
        m = mask if is_torch(mask) else torch.from_numpy(np.ascontiguousarray(mask))
        return twins.apply_mask_(w, m.to(w.device), check=binary_check)
    buf, copied = writable(w, "w")
    m = to_numpy(mask)
    native.apply_mask(buf, m.view(np.uint8), binary_check)
    if copied:
        write_back(w, buf)
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
    check_dtype(w, "w", ("float32",))
    try:
        if isinstance(t, (str, bytes, bool, np.bool_)):
            raise TypeError
        t = float(t)
    except (TypeError, ValueError):
        raise TypeError(f"t must be a real number, got {type(t).__name__}") from None
    if t != t:
        raise ValueError("t must not be NaN")
    if on_device(w):
        return twins.prune_by_threshold_(w, t)
    buf, copied = writable(w, "w")
    kept = native.prune_by_threshold(buf, np.float32(t))
    if copied:
        write_back(w, buf)
    return int(kept)
