"""Quantization parameters: integer ranges, scales and zero points, and simulated (fake) quantization.

Conventions, shared by every quantizer and by the calibration file:
    q = clamp(round_half_even(x / scale) + zero_point, qmin, qmax),   x_hat = (q - zero_point) * scale
with [qmin, qmax] = [-2^(b-1), 2^(b-1) - 1] for ``int`` and [0, 2^b - 1] for ``uint``. Symmetric schemes use
scale = max|x| / (2^(b-1) - 1) and a zero point of 0 (``int``) or 2^(b-1) (``uint``); affine schemes map
[min(x, 0), max(x, 0)] onto the whole range. Either way every x inside the observed range comes back within
scale / 2.

This module is the one owner of those formulas: integer ranges (:class:`QuantSpec`), scales and zero points from
a range (:func:`qparams_from_range`, which also gives the static activation parameters of the int8 modules,
:func:`static_activation_qparams`), and codes (:func:`quantize_codes`, which :func:`fake_quantize` dequantizes).
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
    def dtype(self) -> str:
        """``"int"`` or ``"uint"``, as the config list and the calibration spell it."""
        return "int" if self.signed else "uint"

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
    if spec.symmetric and spec.bits < 2:  # its grid is {-1, 0}: the scale would be x / 0, the weights NaN
        raise ValueError(f"a symmetric {spec.bits}-bit grid has no positive level: use 2 bits or more, or a binary "
                         f"(sign) quantizer such as 'bnn'")
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


def broadcast(v: torch.Tensor, x: torch.Tensor, spec: QuantSpec, group_size: int | None = None) -> torch.Tensor:
    """Per-tensor, per-channel (along ``spec.axis``) or group-wise ``v`` shaped to broadcast against ``x``.

    Group-wise values are ``[channels, groups]`` for a 2-D ``x`` ``[channels, K]``: group ``g`` covers columns
    ``g * group_size`` to ``(g + 1) * group_size - 1``.
    """
    if group_size is not None:
        if x.dim() != 2 or v.dim() != 2:
            raise ValueError(f"group-wise parameters need a 2-D tensor and [channels, groups] values, got "
                             f"{tuple(x.shape)} and {tuple(v.shape)}")
        return v.repeat_interleave(group_size, dim=1)[:, : x.shape[1]]
    if not spec.per_channel:
        return v.reshape(())
    shape = [1] * x.dim()
    shape[spec.axis] = -1
    return v.reshape(shape)


def _float_codes(x: torch.Tensor, s: torch.Tensor, z: torch.Tensor, spec: QuantSpec) -> torch.Tensor:
    return torch.clamp(torch.round(x / s) + z, spec.qmin, spec.qmax)


def quantize_codes(x: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, spec: QuantSpec,
                   group_size: int | None = None) -> torch.Tensor:
    """The integer codes ``clamp(round_half_even(x / scale) + zero_point, qmin, qmax)`` of ``x`` (int64)."""
    x = x.detach().float()
    s = broadcast(scale.to(x.device, torch.float32), x, spec, group_size)
    z = broadcast(zero.to(x.device, torch.float32), x, spec, group_size)
    return _float_codes(x, s, z, spec).to(torch.int64)


def static_activation_qparams(lo: float, hi: float) -> tuple[float, int]:
    """Scale and zero point (u8 domain, [0, 255]) of the int8 modules' static activation quantization, from a
    calibrated range: the affine 8-bit ``uint`` parameters of ``[min(lo, 0), max(hi, 0)]``."""
    scale, zero = qparams_from_range(torch.tensor(float(lo)), torch.tensor(float(hi)), _U8_AFFINE)
    return float(scale), int(zero)


_U8_AFFINE = QuantSpec(8, signed=False, symmetric=False)


def fake_quantize(x: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, spec: QuantSpec) -> torch.Tensor:
    """Quantize and dequantize ``x`` in float, with a straight-through gradient (d x_hat / d x = 1)."""
    s = broadcast(scale.to(x.device), x, spec)
    z = broadcast(zero.to(x.device, torch.float32), x, spec)
    x_hat = (_float_codes(x.detach(), s, z, spec) - z) * s
    return x + (x_hat - x).detach()
