"""Group-wise weight quantization: one scale (and zero point) per row and per group of consecutive inputs.

The grid follows nnic's conventions (:mod:`nnic.quantization.qparams`): symmetric groups use
``scale = max|w| / (2^(b-1) - 1)`` and zero point 0 (signed codes); affine groups map ``[min(w, 0), max(w, 0)]``
onto ``[0, 2^b - 1]``. ``group_size = 0`` means one group per row (per channel).
:class:`GroupQuant` is the in-memory description of a quantized layer that the quantizers keep and export.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from nnic.quantization.qparams import QuantSpec, qparams_from_range

__all__ = ["GroupGrid", "GroupQuant"]


@dataclass(frozen=True)
class GroupGrid:
    """How a layer's ``[out, in]`` weight is quantized: bits, symmetric or affine, group size."""

    bits: int
    symmetric: bool = True
    group_size: int = 128

    @property
    def spec(self) -> QuantSpec:
        # Symmetric codes are signed with zero point 0; affine codes are unsigned with a zero point.
        return QuantSpec(self.bits, signed=self.symmetric, symmetric=self.symmetric, per_channel=True, axis=0)

    def size(self, columns: int) -> int:
        return self.group_size or columns

    def _from_range(self, lo: torch.Tensor, hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.symmetric:
            amax = torch.maximum(-lo, hi)
            lo, hi = -amax, amax
        return qparams_from_range(lo, hi, self.spec)

    def params(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Scales and zero points ``[rows]`` from the range of each row of ``w`` (one group's columns)."""
        return self._from_range(w.amin(dim=1), w.amax(dim=1))

    def all_params(self, w: torch.Tensor, clip: torch.Tensor | float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
        """Scales and zero points ``[rows, groups]`` for every group of ``w``, ranges shrunk by ``clip``."""
        rows, cols = w.shape
        w3 = w.reshape(rows, cols // self.size(cols), -1)
        return self._from_range(w3.amin(-1) * clip, w3.amax(-1) * clip)

    def fake(self, w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
        """Quantize then dequantize ``w`` with scales/zero points broadcast against it."""
        spec = self.spec
        z = zero.to(w.dtype)
        q = torch.clamp(torch.round(w / scale) + z, spec.qmin, spec.qmax)
        return (q - z) * scale

    def expand(self, t: torch.Tensor, columns: int) -> torch.Tensor:
        """``[rows, groups]`` -> ``[rows, columns]``, each group's value repeated over its columns."""
        return t.repeat_interleave(self.size(columns), dim=1)[:, :columns]

    def fake_all(self, w: torch.Tensor) -> torch.Tensor:
        """Round-to-nearest of the whole matrix with its own group ranges."""
        s, z = self.all_params(w)
        return self.fake(w, self.expand(s, w.shape[1]), self.expand(z, w.shape[1]))


@dataclass
class GroupQuant:
    """One quantized layer: its grid and its ``[out, groups]`` scales and zero points (plus extra entries).

    The simulated float layer holds exactly ``dequantize(codes)``, so the codes come back as
    ``round(W / scale) + zero_point``.
    """

    grid: GroupGrid
    scale: torch.Tensor
    zero_point: torch.Tensor
    extra: dict[str, Any] = field(default_factory=dict)

    def calibration(self) -> dict[str, Any]:
        """The layer's calibration entry (JSON-ready): per channel, with ``weight_group_size`` when group-wise."""
        g = self.grid
        out: dict[str, Any] = {
            "weight_bits": g.bits,
            "weight_dtype": "int" if g.symmetric else "uint",
            "weight_scheme": f"per_channel_{'symmetric' if g.symmetric else 'affine'}",
            "weight_axis": 0,
            "weight_scale": (self.scale if g.group_size else self.scale[:, 0]).tolist(),
            "weight_zero_point": (self.zero_point if g.group_size else self.zero_point[:, 0]).tolist(),
        }
        if g.group_size:
            out["weight_group_size"] = g.group_size
        out.update(self.extra)
        return out
