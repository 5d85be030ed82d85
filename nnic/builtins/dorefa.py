"""DoReFa-Net weight quantization (Zhou et al. 2016): quantize ``tanh(w)`` normalised to [-1, 1].

``w_hat = round(qmax * tanh(w) / max|tanh(w)|) / qmax`` with a straight-through rounding (qmax = 2^(b-1) - 1).
The weight's magnitude is discarded (a following BatchNorm, or the training, absorbs it); the tanh squashes
outliers before the uniform grid. Deviation from the paper, for an integer calibration: the grid is symmetric
(``2^b - 1`` levels, zero included) so every quantized weight is exactly ``q / qmax`` with an int ``q``; the
calibration says so (scale ``1 / qmax``, zero point 0). Needs training from (or fine-tuning of) the model.
"""

from __future__ import annotations

import torch
from torch import nn

import nnic
from nnic.builtins._quant import round_ste
from nnic.quantization.base import Quantizer, WeightFakeQuant
from nnic.quantization.qparams import QuantSpec

__all__ = ["DoReFaQuantizer", "DoReFaWeightFakeQuant"]


class DoReFaWeightFakeQuant(WeightFakeQuant):
    """``w -> round(qmax * tanh(w) / max|tanh(w)|) / qmax`` (per tensor, or per output channel)."""

    def qparams(self, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        shape = (weight.shape[self.spec.axis],) if self.spec.per_channel else ()
        return torch.full(shape, 1.0 / self.spec.qmax), torch.zeros(shape, dtype=torch.int32)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        t = torch.tanh(weight)
        if self.spec.per_channel:
            rows = t.detach().abs().movedim(self.spec.axis, 0).reshape(t.shape[self.spec.axis], -1)
            shape = [1] * t.dim()
            shape[self.spec.axis] = -1
            top = rows.max(dim=1).values.reshape(shape)
        else:
            top = t.detach().abs().max()
        normalised = t / torch.clamp(top, min=1e-12)
        return round_ste(normalised * self.spec.qmax) / self.spec.qmax


class DoReFaQuantizer(Quantizer):
    """DoReFa weight quantization, 2-8 bits, for quantization-aware training.

    Config keys: ``quant_types: ["weight"]``, ``quant_bits`` (2-8), ``quant_scheme`` (``per_tensor_symmetric``
    or ``per_channel_symmetric``), ``quant_dtype: "int"``.

    Example::

        q = nnic.quantizer("dorefa", model, [{"quant_types": ["weight"], "quant_bits": 4, "op_types": ["Conv2d"]}])
        q.compress()
        evaluator.train(model, max_epochs=3)
    """

    name = "dorefa"
    supported_bits = (2, 8)
    supported_quant_types = ("weight",)

    def __init__(self, model: nn.Module, config_list: list[dict]) -> None:
        super().__init__(model, config_list)
        for cfg in self.layers.values():
            if not cfg.config["quant_scheme"]["weight"].endswith("symmetric") or cfg.config["quant_dtype"]["weight"] != "int":
                raise ValueError(f"config_list[{cfg.entry_index}]['quant_scheme']: DoReFa's grid is symmetric: "
                                 f"use an int dtype and a *_symmetric scheme")

    def weight_fake_quant(self, layer: str) -> DoReFaWeightFakeQuant:
        spec = self.weight_spec(layer)
        return DoReFaWeightFakeQuant(QuantSpec(spec.bits, True, True, spec.per_channel, 0))


@nnic.hookimpl
def register_quantizers(register) -> None:
    register(DoReFaQuantizer)
