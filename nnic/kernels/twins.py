"""The torch twins of the Rust kernels: what :mod:`nnic.kernels` and the low-bit modules run for tensors
on other devices (CUDA), with the same semantics. Every torch/CUDA code path of the kernels lives here.

Arguments arrive validated by the front door (dtypes, shapes, k ranges, quantization parameters as numpy
arrays); these functions only compute. They work on any device, so the tests run them on CPU tensors and
compare them with the same numpy references as the Rust kernels.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def _check_nan(x: torch.Tensor, name: str) -> None:
    nan = torch.isnan(x.reshape(-1))
    if bool(nan.any()):
        raise ValueError(f"{name} contains NaN at flat index {int(nan.nonzero()[0, 0])}")


def _flat_abs(xs: list[torch.Tensor], name: str) -> torch.Tensor:
    for i, x in enumerate(xs):
        _check_nan(x, name if len(xs) == 1 and name == "x" else f"{name}[{i}]")
    return torch.cat([x.detach().reshape(-1).abs() for x in xs]) if xs else torch.empty(0)


def kth_smallest_abs(x: torch.Tensor, k: int) -> float:
    a = _flat_abs([x], "x")
    return float(torch.kthvalue(a, k).values)


def global_kth_smallest_abs(xs: list[torch.Tensor], k: int) -> float:
    a = _flat_abs(xs, "xs")
    return float(torch.kthvalue(a, k).values)


def _keep_flat(a: torch.Tensor, k: int) -> torch.Tensor:
    """Keep-mask of the flat |x| vector ``a`` with exactly k pruned, ties in index order."""
    if k == 0:
        return torch.ones_like(a, dtype=torch.bool)
    t = torch.kthvalue(a, k).values
    below = a < t
    equal = a == t
    need = k - int(below.sum())
    tie_rank = torch.cumsum(equal.to(torch.int64), 0)
    return ~(below | (equal & (tie_rank <= need)))


def smallest_abs_mask(x: torch.Tensor, k: int) -> torch.Tensor:
    a = _flat_abs([x], "x")
    return _keep_flat(a, k).reshape(x.shape)


def global_smallest_abs_masks(xs: list[torch.Tensor], k: int) -> list[torch.Tensor]:
    a = _flat_abs(xs, "xs")
    keep = _keep_flat(a, k)
    return [m.reshape(x.shape) for m, x in zip(keep.split([x.numel() for x in xs]), xs)]


def apply_mask_(w: torch.Tensor, mask: torch.Tensor, check: bool) -> torch.Tensor:
    if check:
        bad = (mask > 1).reshape(-1)
        if bool(bad.any()):
            i = int(bad.nonzero()[0, 0])
            raise ValueError(f"mask values must be in [0, 1], got {int(mask.reshape(-1)[i])} at flat index {i}")
    with torch.no_grad():
        w.detach().masked_fill_(mask == 0, 0.0)
    return w


def prune_by_threshold_(w: torch.Tensor, t: float) -> int:
    t32 = float(np.float32(t))
    with torch.no_grad():
        prune = w.detach().abs() <= t32
        w.detach().masked_fill_(prune, 0.0)
    return w.numel() - int(prune.sum())


def _channel_view(v: np.ndarray, axis: int | None, ndim: int, device, dtype) -> torch.Tensor:
    """Parameters as a device tensor that broadcasts against x (a tensor, never a CPU scalar, so that
    CUDA divides element-wise instead of multiplying by a reciprocal)."""
    t = torch.as_tensor(v, device=device, dtype=dtype)
    shape = [1] * max(ndim, 1)
    if axis is not None:
        shape[axis] = -1
    return t.reshape(shape)


def quantize(x, scale: np.ndarray, zero_point: np.ndarray, axis, qmin: int, qmax: int, out: torch.Tensor):
    _check_nan(x, "x")
    s = _channel_view(scale, axis, x.dim(), x.device, torch.float32)
    z = _channel_view(zero_point, axis, x.dim(), x.device, torch.float32)
    q = torch.clamp(torch.round(x.detach() / s) + z, qmin, qmax)
    out.copy_(q.reshape(out.shape).to(out.dtype))
    return out


def dequantize(q, scale: np.ndarray, zero_point: np.ndarray, axis, out: torch.Tensor):
    s = _channel_view(scale, axis, q.dim(), q.device, torch.float32)
    z = _channel_view(zero_point, axis, q.dim(), q.device, torch.int32)
    out.copy_(((q.to(torch.int32) - z).to(torch.float32) * s).reshape(out.shape))
    return out


def pack_int4(q: torch.Tensor) -> torch.Tensor:
    flat = q.reshape(-1)
    bad = (flat < -8) | (flat > 7)
    if bool(bad.any()):
        i = int(bad.nonzero()[0, 0])
        raise ValueError(f"q values must be in [-8, 7], got {int(flat[i])} at flat index {i}")
    if flat.numel() % 2:
        flat = torch.cat([flat, flat.new_zeros(1)])
    u = flat.to(torch.uint8) & 0x0F
    return u[0::2] | (u[1::2] << 4)


def unpack_int4(p: torch.Tensor, n: int) -> torch.Tensor:
    b = p.reshape(-1).to(torch.int16)
    lo = ((b & 0x0F) ^ 8) - 8
    hi = (((b >> 4) & 0x0F) ^ 8) - 8
    return torch.stack([lo, hi], 1).reshape(-1)[:n].to(torch.int8)


def _reduce_dims(x: torch.Tensor, axis: int) -> list[int]:
    return [d for d in range(x.dim()) if d != axis]


def _check_reducible(x: torch.Tensor, axis) -> None:
    channels = 1 if axis is None else x.shape[axis]
    if x.numel() == 0 and channels > 0:
        raise ValueError("x is empty: expected at least one element")


def abs_max(x: torch.Tensor, axis):
    _check_reducible(x, axis)
    _check_nan(x, "x")
    a = x.detach().abs()
    if axis is None:
        return float(a.max())
    if x.shape[axis] == 0:
        return torch.empty(0, dtype=torch.float32, device=x.device)
    return a.amax(dim=_reduce_dims(x, axis)) if x.dim() > 1 else a


def min_max(x: torch.Tensor, axis):
    _check_reducible(x, axis)
    _check_nan(x, "x")
    x = x.detach()
    if axis is None:
        lo, hi = torch.aminmax(x)
        return float(lo), float(hi)
    if x.shape[axis] == 0:
        e = torch.empty(0, dtype=torch.float32, device=x.device)
        return e, e.clone()
    if x.dim() == 1:
        return x.clone(), x.clone()
    dims = _reduce_dims(x, axis)
    return x.amin(dim=dims), x.amax(dim=dims)


# --------------------------------------------------------------------------- integer GEMM
def int_mm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Exact integer product of integer-valued ``a[M, K]`` (int8 codes, or float codes such as centred u8
    ones in [-255, 255]) and int8 ``b[K, N]``.

    ``torch._int_mm`` (int32) where it applies (codes fit int8, M > 16, K and N multiples of 8), else a
    float64 matmul (int64): exact, since every partial sum stays far below 2**53 for K <= 131071.
    """
    m, k = a.shape
    n = b.shape[1]
    if m > 16 and k % 8 == 0 and n % 8 == 0 and (a.dtype == torch.int8 or bool(a.abs().max() <= 127)):
        return torch._int_mm(a.to(torch.int8).contiguous(), b.contiguous())
    return (a.to(torch.float64) @ b.to(torch.float64)).round().to(torch.int64)


def int8_linear(x: torch.Tensor, w_codes: torch.Tensor, w_scale: torch.Tensor, w_zero_point: torch.Tensor,
                bias: torch.Tensor | None, act: str, symmetric: bool = True, act_scale: torch.Tensor | None = None,
                act_zero_point: torch.Tensor | None = None, *, reduce_range: bool = False) -> torch.Tensor:
    """Twin of ``PackedInt8Weight.linear`` for float32 ``x[M, K]`` and int8 codes ``w_codes[N, K]``.

    Dynamic activations are quantized symmetrically (per token or per tensor; ``symmetric`` is accepted for
    the CPU signature, the integer product is the same), to codes in [-127, 127], or [-63, 63] with
    ``reduce_range``; static ones with the calibrated u8 scale and zero point; then :func:`int_mm` and the float
    epilogue (weight zero points, scales, bias).
    """
    w_t = w_codes.t().to(x.device)
    if act == "static":
        s = act_scale.to(x.device)
        z = act_zero_point.to(x.device).float() - 128
        q = torch.clamp(torch.round(x / s) + z, -128, 127)
        q = q - z  # centred codes in [-255, 255]: exact in int_mm's float64 fallback
    else:
        amax = x.abs().amax(dim=1, keepdim=True) if act == "per_token" else x.abs().amax()
        top = 63 if reduce_range else 127
        s = torch.where(amax > 0, amax / top, torch.ones_like(amax))
        q = torch.clamp(torch.round(x / s), -top, top)
    acc = int_mm(q, w_t)
    zw = w_zero_point.to(x.device)
    if bool(zw.any()):
        acc = acc - q.sum(dim=1, keepdim=True) * zw.to(acc.dtype)
    y = acc.float() * s * w_scale.to(x.device)
    return y if bias is None else y + bias


def activation(y: torch.Tensor, kind: str | None) -> torch.Tensor:
    """Twin of the kernels' fused activation (``int8_linear``'s and the sparse kernels' ``activation``): None,
    ``"relu"`` or ``"gelu"`` (the exact erf form)."""
    return F.relu(y) if kind == "relu" else F.gelu(y) if kind == "gelu" else y


def im2col(x: torch.Tensor, kernel_size: tuple[int, int], stride: tuple[int, int], padding: tuple[int, int],
           dilation: tuple[int, int]) -> tuple[torch.Tensor, int, int]:
    """Float im2col of ``x[N, C, H, W]``: ``(cols[N*Ho*Wo, C*kh*kw], Ho, Wo)`` with K ordered (c, dy, dx)."""
    n, c, h, w = x.shape
    kh, kw = kernel_size
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    ho = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    wo = (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    if (kh, kw) == (1, 1) and (ph, pw) == (0, 0):
        xs = x[:, :, ::sh, ::sw] if (sh, sw) != (1, 1) else x
        return xs.permute(0, 2, 3, 1).reshape(-1, c), ho, wo
    cols = F.unfold(x, (kh, kw), (dh, dw), (ph, pw), (sh, sw)).transpose(1, 2).reshape(-1, c * kh * kw)
    return cols, ho, wo


def skip_layer_norm(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                    eps: float) -> torch.Tensor:
    return F.layer_norm(x.float() + residual.float(), (weight.numel(),), weight.float(), bias.float(), eps)


def embed_layer_norm(lookups: list[tuple[torch.Tensor, torch.Tensor]], weight: torch.Tensor, bias: torch.Tensor,
                     eps: float) -> torch.Tensor:
    (table, ids), *rest = lookups
    h = F.embedding(ids.to(table.device), table.float())
    for t, i in rest:
        h = h + F.embedding(i.to(t.device), t.float())
    return F.layer_norm(h, (weight.numel(),), weight.float(), bias.float(), eps)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int, scale: float,
              mask: torch.Tensor | None) -> torch.Tensor:
    b, s, hidden = q.shape
    q4, k4, v4 = (t.float().reshape(b, s, heads, hidden // heads).transpose(1, 2) for t in (q, k, v))
    m = None if mask is None else mask.to(q4.device)[:, None, None, :]
    out = F.scaled_dot_product_attention(q4, k4, v4, attn_mask=m, scale=scale)
    return out.transpose(1, 2).reshape(b, s, hidden).contiguous()
