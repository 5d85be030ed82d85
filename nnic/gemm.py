"""int8 / int4 GEMM for torch tensors and numpy arrays: the Rust kernels on CPU, torch ops on CUDA.

- :func:`int8_matmul` is the exact ``int32 = int8 @ int8`` product (like ``torch._int_mm``, any M).
- :func:`pack_int8_weight` packs linear weights once; :func:`int8_linear` then computes
  ``dequant(quant(x) @ w_q.T) + bias`` with activations quantized on the fly (dynamic per token or per
  tensor, or static from a calibrated scale/zero point) and a fused float epilogue.
- :func:`quantize_int4_weight`, :func:`pack_int4_weight`, :func:`int4_linear`: int4 weights (two per byte,
  per-group scales) with int8 activations quantized per token, for small batches.

Activation quantization (float32, ``x * (1 / s)`` rounded half to even): symmetric ``s = max|x| / 127`` with
codes in [-127, 127]; asymmetric ``s = (max(x,0) - min(x,0)) / 255`` with u8 codes and zero point
``z = clamp(-round(min(x,0) / s), 0, 255)``. Static: ``act_scale`` and ``act_zero_point`` in the u8 domain.

The code path follows ``nnic.kernels.set_isa`` / ``NNIC_KERNEL_ISA`` (``avx512`` uses AVX512-VNNI when the
CPU has it); ``path=`` forces one per call (``"scalar"``, ``"avx2"``, ``"avx512vnni"``). The GIL is released
while the kernels run.
"""

from __future__ import annotations

from typing import Any, Union

import numpy as np
import torch

from nnic import _kernels as _k

Array = Union[torch.Tensor, np.ndarray]
PackedInt8Weight = _k.PackedInt8Weight
PackedInt4Weight = _k.PackedInt4Weight

#: Largest K for which int32 accumulation of int8 products is exact.
MAX_K = 131_071
ACT_MODES = ("per_token", "per_tensor", "static")

__all__ = [
    "ACT_MODES", "MAX_K", "PackedInt4Weight", "PackedInt8Weight", "gemm_backend", "gemm_path", "gemm_paths", "int4_linear",
    "int8_conv2d", "int8_linear", "int8_matmul", "pack_int4_weight", "pack_int8_weight", "quantize_int4_weight",
    "quantize_int8_weight",
]


def gemm_paths() -> list[str]:
    """GEMM code paths this CPU supports, slowest first (e.g. ``["scalar", "avx2", "avx512vnni"]``)."""
    return list(_k.gemm_paths())


def gemm_backend() -> str:
    """Where the GEMM's threads come from: ``"openmp"`` (PyTorch's OpenMP team, found at run time: no
    contention with torch's spinning workers) or ``"rayon"`` (the kernels' own pool;
    ``NNIC_GEMM_BACKEND=rayon`` forces it)."""
    return _k.gemm_backend()


def gemm_path() -> str:
    """The GEMM code path used now."""
    return _k.gemm_path()


def _name(x: Array) -> str:
    return str(x.dtype).removeprefix("torch.")


def _check(x: Any, name: str, dtype: str, ndim: int | None = 2) -> None:
    if not isinstance(x, (torch.Tensor, np.ndarray)):
        raise TypeError(f"{name} must be a torch.Tensor or numpy.ndarray, got {type(x).__name__}")
    if _name(x) != dtype:
        raise TypeError(f"{name} must have dtype {dtype}, got {_name(x)}")
    if ndim is not None and x.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {tuple(x.shape)}")


def _np(x: Array, name: str) -> np.ndarray:
    """A C-contiguous numpy view (or copy) of a CPU tensor / array."""
    if isinstance(x, torch.Tensor):
        if x.device.type != "cpu":
            raise ValueError(f"{name} is on {x.device}; the packed kernels run on CPU tensors")
        return x.detach().contiguous().numpy()
    return np.ascontiguousarray(x)


def _check_k(k: int) -> None:
    if k > MAX_K:
        raise ValueError(f"K = {k} is too large: int32 accumulation is exact only for K <= {MAX_K}")


# --------------------------------------------------------------------------- exact int8 product
def int8_matmul(a: Array, b: Array, *, path: str | None = None) -> Array:
    """Exact ``a @ b`` in int32 for int8 ``a[M, K]`` and ``b[K, N]`` (numpy in, numpy out; torch in, torch out).

    CUDA tensors use ``torch._int_mm`` (which needs M > 16 and K, N multiples of 8 there; other shapes fall
    back to an int32 matmul on the device).
    """
    _check(a, "a", "int8")
    _check(b, "b", "int8")
    (m, k), (k2, n) = a.shape, b.shape
    if k != k2:
        raise ValueError(f"a is [{m}, {k}] but b is [{k2}, {n}]: inner dimensions differ")
    _check_k(k)
    if isinstance(a, torch.Tensor) and a.device.type == "cuda":
        return _int_mm_cuda(a, torch.as_tensor(b, device=a.device))
    if isinstance(a, torch.Tensor) != isinstance(b, torch.Tensor):
        raise TypeError("a and b must both be torch tensors or both numpy arrays")
    out_t = torch.empty((m, n), dtype=torch.int32) if isinstance(a, torch.Tensor) else None
    out = out_t.numpy() if out_t is not None else np.empty((m, n), np.int32)
    _k.int8_matmul(_np(a, "a"), _np(b, "b"), out, path)
    return out_t if out_t is not None else out


def _int_mm_cuda(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    m, k = a.shape
    n = b.shape[1]
    if m > 16 and k % 8 == 0 and n % 8 == 0:
        return torch._int_mm(a.contiguous(), b.contiguous())
    return (a.to(torch.int64) @ b.to(torch.int64)).to(torch.int32)


# --------------------------------------------------------------------------- int8 linear
def quantize_int8_weight(w: torch.Tensor, *, per_channel: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 codes (in [-127, 127]) and float32 scales (``[N]`` or ``[1]``) of a float ``w[N, ...]``."""
    w = w.detach().float().reshape(w.shape[0], -1)
    amax = w.abs().amax(dim=1) if per_channel else w.abs().amax().reshape(1)
    scale = torch.where(amax > 0, amax / 127, torch.ones_like(amax)).clamp_min(torch.finfo(torch.float32).tiny)
    s = scale[:, None] if per_channel else scale
    q = torch.clamp(torch.round(w / s), -127, 127).to(torch.int8)
    return q, scale


def pack_int8_weight(w_q: Array, scale: Any, zero_point: Any = None) -> PackedInt8Weight:
    """Packs int8 codes ``w_q[N, K]`` (``w ≈ (w_q - zero_point) * scale``) for :func:`int8_linear`.

    ``scale``: a float or 1 / N values (per output channel), finite and > 0; ``zero_point``: ``None``, an int
    or N ints in [-128, 127]. The zero-point compensation terms are precomputed here.
    """
    _check(w_q, "w_q", "int8")
    _check_k(w_q.shape[1])
    s = np.ascontiguousarray(np.asarray(_plain(scale), dtype=np.float32).reshape(-1))
    z = np.zeros(0, np.int32) if zero_point is None else np.asarray(_plain(zero_point), dtype=np.int64).reshape(-1)
    if z.size and (z.min() < -128 or z.max() > 127):
        raise ValueError(f"zero_point must be in [-128, 127], got values in [{z.min()}, {z.max()}]")
    return _k.PackedInt8Weight(_np(w_q, "w_q"), s, np.ascontiguousarray(z.astype(np.int32)))


def _plain(v: Any) -> Any:
    return v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else v


def _linear_args(x: Array, k: int, act: str) -> tuple[np.ndarray, tuple[int, ...]]:
    _check(x, "x", "float32", ndim=None)
    if x.ndim < 1 or x.shape[-1] != k:
        raise ValueError(f"x must have shape [..., {k}], got {tuple(x.shape)}")
    if act not in ACT_MODES:
        raise ValueError(f"act must be one of {ACT_MODES}, got {act!r}")
    lead = tuple(x.shape[:-1])
    return _np(x, "x").reshape(-1, k), lead


def _run_linear(packed: Any, x: Array, bias: Array | None, symmetric: bool, kw: dict) -> Array:
    k, n = packed.in_features, packed.out_features
    x2, lead = _linear_args(x, k, kw["act"])
    is_torch = isinstance(x, torch.Tensor)
    out_t = torch.empty((x2.shape[0], n), dtype=torch.float32) if is_torch else None
    out = out_t.numpy() if out_t is not None else np.empty((x2.shape[0], n), np.float32)
    b = None
    if bias is not None:
        _check(bias, "bias", "float32", ndim=1)
        if bias.shape[0] != n:
            raise ValueError(f"bias must have {n} values, got {bias.shape[0]}")
        b = _np(bias, "bias")
    packed.linear(x2, out, b, kw["act"], symmetric, kw.get("act_scale"), kw.get("act_zero_point"), kw.get("path"))
    res = out_t if out_t is not None else out
    return res.reshape(*lead, n)


def int8_linear(
    x: Array,
    packed: PackedInt8Weight,
    bias: Array | None = None,
    *,
    act: str = "per_token",
    symmetric: bool = False,
    act_scale: float | None = None,
    act_zero_point: int | None = None,
    path: str | None = None,
) -> Array:
    """``dequant(quant(x) @ w_q.T) + bias`` for float32 ``x[..., K]`` on CPU; returns float32 ``[..., N]``.

    ``act``: ``"per_token"`` (one scale per row of x), ``"per_tensor"``, or ``"static"`` (then ``act_scale``
    and ``act_zero_point`` in [0, 255] are required). ``symmetric`` selects symmetric dynamic quantization.
    """
    if not isinstance(packed, PackedInt8Weight):
        raise TypeError(f"packed must come from pack_int8_weight, got {type(packed).__name__}")
    kw = {"act": act, "act_scale": act_scale, "act_zero_point": act_zero_point, "path": path}
    return _run_linear(packed, x, bias, symmetric, kw)


def int8_conv2d(
    x: torch.Tensor,
    packed: PackedInt8Weight,
    bias: torch.Tensor | None = None,
    *,
    kernel_size: tuple[int, int],
    stride: tuple[int, int] = (1, 1),
    padding: tuple[int, int] = (0, 0),
    dilation: tuple[int, int] = (1, 1),
    act: str = "per_tensor",
    symmetric: bool = False,
    act_scale: float | None = None,
    act_zero_point: int | None = None,
    path: str | None = None,
) -> torch.Tensor:
    """int8 ``conv2d`` (groups = 1, zero padding) of a float32 CPU tensor ``x[N, C, H, W]``.

    ``packed`` holds the weight permuted to ``[C_out, kh, kw, C_in]`` and flattened (see
    ``Int8Conv2d``). Activations are quantized per tensor (``act="per_tensor"``) or statically; im2col runs on
    the int8 codes. Channels-last input is used without a copy; the result is ``[N, C_out, Ho, Wo]`` with
    channels-last strides.
    """
    _check(x, "x", "float32", ndim=4)
    if act not in ("per_tensor", "static"):
        raise ValueError(f"act must be 'per_tensor' or 'static' for convolutions, got {act!r}")
    n = x.shape[0]
    nhwc = x.detach().permute(0, 2, 3, 1)
    if not nhwc.is_contiguous():
        nhwc = nhwc.contiguous()
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = kernel_size, stride, padding, dilation
    ho = (x.shape[2] + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    wo = (x.shape[3] + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    cout = packed.out_features
    out = torch.empty((n * ho * wo, cout), dtype=torch.float32)
    b = None
    if bias is not None:
        _check(bias, "bias", "float32", ndim=1)
        b = _np(bias, "bias")
    packed.conv2d(nhwc.numpy(), out.numpy(), (kh, kw), (sh, sw), (ph, pw), (dh, dw), b, act, symmetric,
                  act_scale, act_zero_point, path)
    return out.reshape(n, ho, wo, cout).permute(0, 3, 1, 2)


# --------------------------------------------------------------------------- int4
def quantize_int4_weight(w: torch.Tensor, group_size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int4 codes ``[N, K]`` (int8 values in [-7, 7]) and scales ``[N, ceil(K / group_size)]``."""
    if group_size <= 0 or group_size % 8:
        raise ValueError(f"group_size must be a positive multiple of 8, got {group_size}")
    w = w.detach().float().reshape(w.shape[0], -1)
    n, k = w.shape
    g = -(-k // group_size)
    wp = torch.nn.functional.pad(w, (0, g * group_size - k)).reshape(n, g, group_size)
    amax = wp.abs().amax(dim=2)
    scale = torch.where(amax > 0, amax / 7, torch.ones_like(amax)).clamp_min(torch.finfo(torch.float32).tiny)
    q = torch.clamp(torch.round(wp / scale[..., None]), -7, 7).reshape(n, -1)[:, :k].to(torch.int8)
    return q.contiguous(), scale.contiguous()


def pack_int4_weight(q: Array, scales: Array, group_size: int) -> PackedInt4Weight:
    """Packs int4 codes ``q[N, K]`` (int8 values in [-8, 7]) with per-group scales ``[N, ceil(K/group_size)]``."""
    _check(q, "q", "int8")
    _check(scales, "scales", "float32")
    return _k.PackedInt4Weight(_np(q, "q"), _np(scales, "scales"), int(group_size))


def int4_linear(
    x: Array,
    packed: PackedInt4Weight,
    bias: Array | None = None,
    *,
    act: str = "per_token",
    symmetric: bool = True,
    act_scale: float | None = None,
    act_zero_point: int | None = None,
    path: str | None = None,
) -> Array:
    """``quant(x) @ dequant(w).T + bias`` with int4 weights; same activation options as :func:`int8_linear`."""
    if not isinstance(packed, PackedInt4Weight):
        raise TypeError(f"packed must come from pack_int4_weight, got {type(packed).__name__}")
    kw = {"act": act, "act_scale": act_scale, "act_zero_point": act_zero_point, "path": path}
    return _run_linear(packed, x, bias, symmetric, kw)
