"""Quantization parameters: integer ranges, scales and zero points, and simulated (fake) quantization.

Conventions, shared by every quantizer and by the calibration file:
    q = clamp(round_half_even(x / scale) + zero_point, qmin, qmax),   x_hat = (q - zero_point) * scale
with [qmin, qmax] = [-2^(b-1), 2^(b-1) - 1] for ``int`` and [0, 2^b - 1] for ``uint``. Symmetric schemes use
scale = max|x| / (2^(b-1) - 1) and a zero point of 0 (``int``) or 2^(b-1) (``uint``); affine schemes map
[min(x, 0), max(x, 0)] onto the whole range. Either way every x inside the observed range comes back within
scale / 2.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from nnic.config import QUANT_SCHEMES as SCHEMES  # one list, owned by the config schema


@dataclass(frozen=True)
class QuantSpec:
    """How one tensor is quantized."""

    bits: int = 8
    signed: bool = True
    symmetric: bool = True
    per_channel: bool = False
    axis: int = 0

    @classmethod
    def from_config(cls, bits: int, dtype: str = "int", scheme: str = "per_tensor_symmetric", axis: int = 0) -> QuantSpec:
        if scheme not in SCHEMES:
            raise ValueError(f"quant_scheme: expected one of {SCHEMES}, got {scheme!r}")
        return cls(bits, dtype == "int", scheme.endswith("symmetric"), scheme.startswith("per_channel"), axis)

    @property
    def scheme(self) -> str:
        return f"{'per_channel' if self.per_channel else 'per_tensor'}_{'symmetric' if self.symmetric else 'affine'}"

    @property
    def qmin(self) -> int:
        return -(1 << (self.bits - 1)) if self.signed else 0

    @property
    def qmax(self) -> int:
        return (1 << (self.bits - 1)) - 1 if self.signed else (1 << self.bits) - 1


_TINY = torch.finfo(torch.float32).tiny


def qparams_from_range(lo: torch.Tensor, hi: torch.Tensor, spec: QuantSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale (float32) and zero point (int32) for observed minima ``lo`` and maxima ``hi`` (0-d or per channel)."""
    lo = torch.clamp(lo.float(), max=0.0)
    hi = torch.clamp(hi.float(), min=0.0)
    if spec.symmetric:
        half = (1 << (spec.bits - 1)) - 1
        scale = torch.maximum(-lo, hi) / half
        zero = torch.full_like(scale, 0 if spec.signed else 1 << (spec.bits - 1), dtype=torch.int32)
    else:
        scale = (hi - lo) / (spec.qmax - spec.qmin)
        zero = (spec.qmin - torch.round(lo / torch.clamp(scale, min=_TINY))).to(torch.int32)
    empty = scale == 0
    scale = torch.where(empty, torch.ones_like(scale), torch.clamp(scale, min=_TINY))
    zero = torch.clamp(zero, spec.qmin, spec.qmax)
    return scale, zero


def observe(x: torch.Tensor, spec: QuantSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """Minimum and maximum of ``x``, over the whole tensor or per slice along ``spec.axis``."""
    from nnic import kernels

    x = x.detach().float()
    axis = spec.axis if spec.per_channel else None
    if spec.symmetric:
        amax = torch.as_tensor(kernels.abs_max(x, axis=axis), dtype=torch.float32, device=x.device)
        return -amax, amax
    lo, hi = kernels.min_max(x, axis=axis)
    return (torch.as_tensor(lo, dtype=torch.float32, device=x.device),
            torch.as_tensor(hi, dtype=torch.float32, device=x.device))


def _broadcast(v: torch.Tensor, x: torch.Tensor, spec: QuantSpec) -> torch.Tensor:
    if not spec.per_channel:
        return v
    shape = [1] * x.dim()
    shape[spec.axis] = -1
    return v.reshape(shape)


def fake_quantize(x: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, spec: QuantSpec) -> torch.Tensor:
    """Quantize and dequantize ``x`` in float, with a straight-through gradient (d x_hat / d x = 1)."""
    s = _broadcast(scale.to(x.device), x, spec)
    z = _broadcast(zero.to(x.device, torch.float32), x, spec)
    q = torch.clamp(torch.round(x.detach() / s) + z, spec.qmin, spec.qmax)
    x_hat = (q - z) * s
    return x + (x_hat - x).detach()
