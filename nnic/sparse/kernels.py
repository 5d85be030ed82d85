"""Sparse Linear kernels for torch tensors and numpy arrays (Rust on CPU; see :mod:`nnic.sparse.modules` for CUDA).

- :func:`pack_sparse_weight` builds a :class:`SparseWeight` (unstructured CSR, or N:M) from a dense weight and a
  keep-mask, with float32 values or int8 codes and one scale per output row.
- :func:`sparse_linear` computes ``act(x) @ W.T (· scales) + bias`` over the stored entries only.

The code path follows ``nnic.kernels.set_isa`` / ``NNIC_KERNEL_ISA``; threads follow ``nnic.kernels.set_num_threads``
(and run on PyTorch's OpenMP team when torch is loaded, as the int8 GEMM does). The GIL is released while the
kernels run. See the Rust crate's ``sparse`` module for the layouts and the non-finite input policy.
"""

from __future__ import annotations

from typing import Any, Union

import numpy as np
import torch

from nnic import _kernels as _k
from nnic.sparse import layout

Array = Union[torch.Tensor, np.ndarray]
SparseWeight = _k.SparseWeight
#: Activation modes of :func:`sparse_linear`: float (None), or quantized on the fly as the int8 GEMM does.
ACT_MODES = (None, "per_token", "per_token_symmetric", "per_tensor", "per_tensor_symmetric", "static")

__all__ = ["ACT_MODES", "SparseWeight", "pack_sparse_weight", "sparse_linear"]


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().contiguous().numpy()


def pack_sparse_weight(weight: torch.Tensor, keep: torch.Tensor | None = None, *, nm: tuple[int, int] | None = None,
                       scale: Any = None) -> SparseWeight:
    """Packs ``weight[out, in]`` (float32, or int8 codes with ``scale``: one float per output row) where ``keep``
    (default: ``weight != 0``) into the CSR layout, or into the N:M layout when ``nm=(n, m)`` is given."""
    layout._check_2d(weight, "weight")
    if weight.dtype not in (torch.float32, torch.int8):
        raise TypeError(f"weight must be float32 (or int8 codes with scale), got {weight.dtype}")
    if (weight.dtype == torch.int8) != (scale is not None):
        raise ValueError("int8 weight codes need scale (one per output row); float32 weights take none")
    keep = weight != 0 if keep is None else keep
    if keep.shape != weight.shape:
        raise ValueError(f"keep has shape {tuple(keep.shape)}, expected the weight's {tuple(weight.shape)}")
    keep = keep.to(device=weight.device, dtype=torch.bool)
    s = None if scale is None else np.ascontiguousarray(torch.as_tensor(scale, dtype=torch.float32).reshape(-1).cpu().numpy())
    rows, k = weight.shape
    if k > layout.MAX_IN_FEATURES:
        raise ValueError(f"in_features = {k} is too large for the sparse kernels (at most {layout.MAX_IN_FEATURES})")
    if nm is None:
        bits = layout.pack_bitmask(keep)
        return SparseWeight.csr(_np(bits), k, _np(weight[keep]), s)
    values, index = layout.pack_nm(weight, keep, *nm)
    return SparseWeight.nm(_np(index), k, nm[0], nm[1], _np(values), s)


def sparse_linear(x: Array, weight: SparseWeight, bias: Array | None = None, *, act: str | None = None,
                  act_scale: float | None = None, act_zero_point: int | None = None) -> Array:
    """``act(x)[M, in] @ W.T (· scales) + bias`` as float32 (numpy in, numpy out; torch in, torch out).

    ``act`` quantizes the activations on the fly exactly as :func:`nnic.kernels.int8_linear` does
    (``"per_token"`` / ``"per_tensor"``, ``_symmetric`` variants, or ``"static"`` with ``act_scale`` and
    ``act_zero_point`` in the u8 domain); None keeps them float."""
    if not isinstance(weight, SparseWeight):
        raise TypeError(f"weight must be a SparseWeight (from pack_sparse_weight), got {type(weight).__name__}")
    if act not in ACT_MODES:
        raise ValueError(f"act must be one of {ACT_MODES}, got {act!r}")
    is_torch = isinstance(x, torch.Tensor)
    if not is_torch and not isinstance(x, np.ndarray):
        raise TypeError(f"x must be a torch.Tensor or numpy.ndarray, got {type(x).__name__}")
    if str(x.dtype).removeprefix("torch.") != "float32":
        raise TypeError(f"x must have dtype float32, got {str(x.dtype).removeprefix('torch.')}")
    if x.ndim != 2:
        raise ValueError(f"x must be 2-D [batch, in_features], got shape {tuple(x.shape)}")
    if is_torch and x.device.type != "cpu":
        raise ValueError(f"x is on {x.device}; the sparse kernels run on CPU tensors (SparseLinear falls back to "
                         f"torch sparse ops on CUDA)")
    xn = _np(x) if is_torch else np.ascontiguousarray(x)
    b = None if bias is None else (_np(bias) if isinstance(bias, torch.Tensor) else np.ascontiguousarray(bias, np.float32))
    if b is not None and b.dtype != np.float32:
        b = b.astype(np.float32)
    out_t = torch.empty((xn.shape[0], weight.out_features), dtype=torch.float32) if is_torch else None
    out = out_t.numpy() if out_t is not None else np.empty((xn.shape[0], weight.out_features), np.float32)
    weight.linear(xn, out, b, act, act_scale, act_zero_point)
    return out_t if out_t is not None else out
