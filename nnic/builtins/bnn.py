"""BNN, binarized neural networks (Courbariaux, Hubara et al. 2016): weights and outputs become +1 or -1.

``sign(x)`` (with ``sign(0) = +1``) in the forward pass; in the backward pass the straight-through estimator
of the hard tanh: the gradient passes where ``|x| <= 1`` and is zero elsewhere. Train the model with it (from
scratch or fine-tuning); a BatchNorm after each binarized layer restores the scale.

Calibration: a binary tensor has ``*_bits: 1``, ``*_dtype: "binary"`` (values ``(2 * bit - 1) * scale``),
``*_scale: 1.0`` and ``*_zero_point: 0``; outputs also give ``tracked_min_output: -1`` and
``tracked_max_output: 1``.
"""

from __future__ import annotations

from typing import Any

import torch

import nnic
from nnic.quantization.activation import ActivationFakeQuant
from nnic.quantization.base import Quantizer, WeightFakeQuant
from nnic.quantization.observers import MinMaxObserver
from nnic.quantization.qparams import QuantSpec

__all__ = ["BNNQuantizer", "binarize"]


def binarize(x: torch.Tensor) -> torch.Tensor:
    """``sign(x)`` (+1 at 0) with the hard-tanh straight-through gradient."""
    hard = torch.clamp(x, -1.0, 1.0)
    return hard + (torch.where(x >= 0, 1.0, -1.0).to(x.dtype) - hard).detach()


class BinaryWeight(WeightFakeQuant):
    def qparams(self, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.tensor(1.0), torch.tensor(0, dtype=torch.int32)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return binarize(weight)


class BinaryActivation(ActivationFakeQuant):
    def __init__(self, spec: QuantSpec) -> None:
        super().__init__(spec, MinMaxObserver(spec))
        self.quantizing = True

    def qparams(self) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.tensor(1.0), torch.tensor(0, dtype=torch.int32)

    def tracked_range(self) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.tensor(-1.0), torch.tensor(1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return binarize(x) if isinstance(x, torch.Tensor) and x.is_floating_point() else x


class BNNQuantizer(Quantizer):
    """Binarize weights and/or outputs of the selected layers.

    Config keys: ``quant_types`` (``weight``, ``output``), ``quant_bits: 1``.

    Example::

        q = nnic.quantizer("bnn", model, [{"quant_types": ["weight", "output"], "quant_bits": 1,
                                           "op_types": ["Conv2d"]}])
        q.compress()
        evaluator.train(model, max_epochs=10)
    """

    name = "bnn"
    aliases = ("binary",)
    supported_bits = (1, 1)
    supported_quant_types = ("weight", "output")

    def weight_fake_quant(self, layer: str) -> BinaryWeight:
        return BinaryWeight(QuantSpec(1, True, True))

    def activation_fake_quant(self, layer: str, quant_type: str) -> BinaryActivation:
        return BinaryActivation(QuantSpec(1, True, True))

    def calibration(self) -> dict[str, dict[str, Any]]:
        out = super().calibration()
        for entry in out.values():
            for key in ("weight_dtype", "output_dtype"):
                if key in entry:
                    entry[key] = "binary"
        return out


@nnic.hookimpl
def register_quantizers(register) -> None:
    register(BNNQuantizer)
