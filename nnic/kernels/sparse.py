"""Sparse Linear kernels: products over the stored weights only (Rust on CPU; ``SparseLinear`` falls back to torch
sparse ops on other devices).

- :func:`sparse_weight_csr` / :func:`sparse_weight_nm` build a :class:`SparseWeight` from the storage forms of
  :mod:`nnic.sparse.layout` (a row-major bitmask and its values; or N:M values and nibble indices), float32
  values or int8 codes with one scale per output row. Building checks the layout once (bits past
  ``in_features``, index range, value count, NaN values, scales), so products need no per-call checks.
- :func:`sparse_linear` computes ``act(x) @ W.T (· scales) + bias`` as float32.

The code path follows :func:`set_isa` / ``NNIC_KERNEL_ISA``: AVX-512 gathers, bitmask expansion and N:M
permutes; AVX2 gathers; portable loops. Threads follow :func:`set_num_threads` (on PyTorch's OpenMP team when
torch is loaded, as the GEMM). The GIL is released. See the Rust crate's ``sparse`` module for the non-finite
input policy (what the dense product of the zero-filled weight gives).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from nnic.kernels.adapters import Array, check_dtype, cpu_numpy, is_torch
from nnic.kernels.gemm import ACTIVATIONS
from nnic.kernels.runtime import native

SparseWeight = native.SparseWeight
#: Activation modes of :func:`sparse_linear`: float (None), or quantized on the fly exactly as
#: :func:`int8_linear` does (``per_token`` / ``per_tensor``, asymmetric u8 or ``_symmetric``; ``static``).
SPARSE_ACT_MODES = (None, "per_token", "per_token_symmetric", "per_tensor", "per_tensor_symmetric", "static")

__all__ = ["SPARSE_ACT_MODES", "SparseWeight", "flush_caches", "set_sparse_bitmask_break_even", "sparse_bitmask_break_even",
           "sparse_linear", "sparse_weight_csr", "sparse_weight_nm"]


def sparse_bitmask_break_even() -> float:
    """The density from which batch-1 products of unstructured (CSR) weights read the bitmask and expand the
    values instead of gathering ``x`` at their column indices (``inf``: never, as off AVX-512). 1/8 unless set
    with :func:`set_sparse_bitmask_break_even`: where the two kernels break even when the weight comes from
    memory, as in a model (with one small layer hot in cache the gathers are cheaper, up to ~0.3; see
    docs/sparse.md). ``SparseWeight.gemv_kernel()`` names the kernel a weight runs."""
    return float(native.sparse_bitmask_break_even())


def set_sparse_bitmask_break_even(density: float | None = None) -> None:
    """Sets the density of :func:`sparse_bitmask_break_even` (a float >= 0; above 1: never the bitmask), or with
    None restores the default 1/8; process-wide, read at every product (e.g. to compare the kernels on a weight).

    :raises TypeError: not a number. :raises ValueError: negative or NaN.
    """
    if density is not None and (isinstance(density, bool) or not isinstance(density, (int, float))):
        raise TypeError(f"density must be a number or None, got {type(density).__name__}")
    if density is not None and not density >= 0:  # also refuses NaN
        raise ValueError(f"density must be >= 0, got {density}")
    native.set_sparse_bitmask_break_even(None if density is None else float(density))


def flush_caches(*objs: Any) -> None:
    """Evicts the memory of each object from the CPU caches (all levels), so that the next call reading it reads
    it from memory: what a layer meets inside a model whose weights do not fit in the caches (a decode step).

    Takes torch tensors (their whole CPU storage, any layout), numpy arrays, :class:`SparseWeight` (its values,
    index, scales and derived layouts), and ``nn.Module`` (every parameter and buffer, and the ``SparseWeight`` of
    an :class:`nnic.sparse.SparseLinear`, through its ``_flush_native_caches``). Other native objects (e.g. the packed dense int8 weight) are not
    reachable and stay cached. A no-op off x86-64.

    :raises TypeError: an object of another type. :raises ValueError: a numpy array that is not C-contiguous.
    """
    for i, obj in enumerate(objs):
        if isinstance(obj, SparseWeight):
            obj.flush_caches()
        elif isinstance(obj, torch.Tensor):
            if obj.device.type == "cpu" and obj.untyped_storage().nbytes():
                raw = torch.empty(0, dtype=torch.uint8).set_(obj.untyped_storage())
                native.flush_caches(raw.numpy())
        elif isinstance(obj, np.ndarray):
            if not obj.flags.c_contiguous:
                raise ValueError(f"flush_caches: argument {i}: a numpy array must be C-contiguous (a copy would be "
                                 "flushed instead of it)")
            if obj.nbytes:
                native.flush_caches(obj.reshape(-1).view(np.uint8))
        elif isinstance(obj, torch.nn.Module):
            flush_caches(*obj.parameters(), *(b for b in obj.buffers() if b is not None))
            for m in obj.modules():  # native weights the module keeps beside its tensors (SparseLinear's)
                native_flush = getattr(m, "_flush_native_caches", None)
                if native_flush is not None:
                    native_flush()
        else:
            raise TypeError(f"flush_caches: argument {i} must be a torch tensor, numpy array, SparseWeight or "
                            f"nn.Module, got {type(obj).__name__}")


def _values(values: Array) -> np.ndarray:
    check_dtype(values, "values", ("float32", "int8"), ndim=1)
    return cpu_numpy(values, "values")


def _scale(scale: Any, values: np.ndarray) -> np.ndarray | None:
    if (values.dtype == np.int8) != (scale is not None):
        raise ValueError("int8 values need scale (one per output row); float32 values take none")
    if scale is None:
        return None
    return np.ascontiguousarray(torch.as_tensor(scale, dtype=torch.float32).detach().cpu().reshape(-1).numpy())


def sparse_weight_csr(bits: Array, in_features: int, values: Array, scale: Any = None) -> SparseWeight:
    """A CSR weight from its bitmask ``bits[out, ceil(in / 8)]`` (uint8, least significant bit first) and the
    stored values in row-major order (float32, or int8 codes with ``scale``: one per output row)."""
    check_dtype(bits, "bits", ("uint8",), ndim=2)
    v = _values(values)
    return SparseWeight.csr(cpu_numpy(bits, "bits"), int(in_features), v, _scale(scale, v))


def sparse_weight_nm(index: Array, in_features: int, n: int, m: int, values: Array, scale: Any = None) -> SparseWeight:
    """An N:M weight from its nibble indices ``index[out, ceil(L / 2)]`` (uint8) and values ``[out * L]``,
    ``L = in / m * n``."""
    check_dtype(index, "index", ("uint8",), ndim=2)
    v = _values(values)
    return SparseWeight.nm(cpu_numpy(index, "index"), int(in_features), int(n), int(m), v, _scale(scale, v))


def sparse_linear(x: Array, weight: SparseWeight, bias: Array | None = None, *, act: str | None = None,
                  act_scale: float | None = None, act_zero_point: int | None = None,
                  activation: str | None = None) -> Array:
    """``activation(act(x)[M, in] @ W.T (· scales) + bias)`` as float32 (numpy in, numpy out; torch in, torch out).

    ``act`` quantizes activations on the fly exactly as :func:`int8_linear` does (see :data:`SPARSE_ACT_MODES`;
    ``static`` takes ``act_scale`` and ``act_zero_point`` in the u8 domain); None keeps them float.
    ``activation`` (None, ``"relu"`` or ``"gelu"``, the exact erf form) runs in the epilogue, on each task's
    outputs while they are in cache."""
    if not isinstance(weight, SparseWeight):
        raise TypeError(f"weight must be a SparseWeight (sparse_weight_csr / sparse_weight_nm), got "
                        f"{type(weight).__name__}")
    if act not in SPARSE_ACT_MODES:
        raise ValueError(f"act must be one of {SPARSE_ACT_MODES}, got {act!r}")
    if activation not in (None, *ACTIVATIONS[1:]):
        raise ValueError(f"activation must be None, 'relu' or 'gelu', got {activation!r}")
    check_dtype(x, "x", ("float32",), ndim=2)
    xn = cpu_numpy(x, "x")
    b = None
    if bias is not None:
        check_dtype(bias, "bias", ("float32",), ndim=1)
        b = cpu_numpy(bias, "bias")
    out_t = torch.empty((xn.shape[0], weight.out_features), dtype=torch.float32) if is_torch(x) else None
    out = out_t.numpy() if out_t is not None else np.empty((xn.shape[0], weight.out_features), np.float32)
    weight.linear(xn, out, b, act, act_scale, act_zero_point, activation)
    return out_t if out_t is not None else out
