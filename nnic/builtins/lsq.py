"""LSQ, learned step size quantization (Esser et al. 2020): the quantization step is a trained parameter.

``x_hat = (round(clamp(x / s + z, qmin, qmax)) - z) * s`` with a straight-through rounding; the step ``s`` is an
``nn.Parameter`` (one per tensor, or per channel) whose gradient is scaled by ``1 / sqrt(n * qmax)``. Weight
steps start at ``2 * mean|w| / sqrt(qmax)``, activation steps at the same statistic of the first training batch.
The zero point is fixed: 0 for ``int`` (and for ``uint`` with an affine scheme: the unsigned grid
``[0, 2^b - 1]`` for non-negative activations, e.g. after a ReLU), ``2^(b-1)`` for ``uint`` symmetric.

The steps are parameters of the model after ``compress()``: build the optimizer afterwards (an
:class:`~nnic.evaluator.Evaluator` does so at every ``train`` call).
"""

from __future__ import annotations

import math

import torch
from torch import nn

import nnic
from nnic.builtins._quant import grad_scale, round_ste
from nnic.quantization.activation import ActivationFakeQuant
from nnic.quantization.base import Quantizer, WeightFakeQuant
from nnic.quantization.observers import MinMaxObserver
from nnic.quantization.qparams import QuantSpec

__all__ = ["LSQActivationFakeQuant", "LSQQuantizer", "LSQWeightFakeQuant"]


def _zero(spec: QuantSpec) -> int:
    return 0 if spec.signed or not spec.symmetric else 1 << (spec.bits - 1)


def _shape(spec: QuantSpec, x: torch.Tensor) -> list[int]:
    shape = [1] * x.dim()
    if spec.per_channel:
        shape[spec.axis] = -1
    return shape


def _lsq(x: torch.Tensor, step: torch.Tensor, spec: QuantSpec, n: int) -> torch.Tensor:
    z = float(_zero(spec))
    s = grad_scale(step, 1.0 / math.sqrt(max(n, 1) * spec.qmax)).abs().clamp(min=1e-8).reshape(_shape(spec, x))
    q = round_ste(torch.clamp(x / s + z, spec.qmin, spec.qmax))
    return (q - z) * s


def _init_step(x: torch.Tensor, spec: QuantSpec) -> torch.Tensor:
    x = x.detach().abs().float()
    if spec.per_channel:
        mean = x.movedim(spec.axis, 0).reshape(x.shape[spec.axis], -1).mean(dim=1)
    else:
        mean = x.mean()
    return torch.clamp(2 * mean / math.sqrt(spec.qmax), min=1e-8)


class LSQWeightFakeQuant(WeightFakeQuant):
    """LSQ on a weight: ``step`` is learned."""

    def __init__(self, spec: QuantSpec, weight: torch.Tensor) -> None:
        super().__init__(spec)
        self.step = nn.Parameter(_init_step(weight, spec))

    def qparams(self, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        scale = self.step.detach().abs().clamp(min=1e-8)
        return scale, torch.full_like(scale, _zero(self.spec), dtype=torch.int32)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return _lsq(weight, self.step, self.spec, weight[0].numel() if self.spec.per_channel else weight.numel())


class LSQActivationFakeQuant(ActivationFakeQuant):
    """LSQ on an input or output: the step starts from the first training batch, then is learned."""

    def __init__(self, spec: QuantSpec) -> None:
        super().__init__(spec, MinMaxObserver(spec))
        self.step = nn.Parameter(torch.ones(()))
        self.register_buffer("initialized", torch.tensor(False))
        self.quantizing = True

    def qparams(self) -> tuple[torch.Tensor, torch.Tensor]:
        if not bool(self.initialized):
            raise RuntimeError("the LSQ step of this input/output is not initialised: train the model first")
        scale = self.step.detach().abs().clamp(min=1e-8)
        return scale, torch.full_like(scale, _zero(self.spec), dtype=torch.int32)

    def tracked_range(self) -> tuple[torch.Tensor, torch.Tensor]:
        scale, zero = self.qparams()
        return (self.spec.qmin - zero) * scale, (self.spec.qmax - zero) * scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or not x.is_floating_point():
            return x
        if not bool(self.initialized):
            if not self.training:
                return x
            with torch.no_grad():
                self.step.copy_(_init_step(x, self.spec))
                self.initialized.fill_(True)
        n = x[0].numel() if x.dim() > 1 else x.numel()
        return _lsq(x, self.step, self.spec, n)


class LSQQuantizer(Quantizer):
    """Quantization-aware training with learned step sizes, weights, inputs and outputs, 2-8 bits.

    Config keys: ``quant_types``, ``quant_bits`` (2-8), ``quant_dtype``, ``quant_scheme`` (the affine/symmetric
    choice only fixes the zero point: see the module docstring).

    Example::

        q = nnic.quantizer("lsq", model, [{"quant_types": ["weight", "input"], "quant_bits": 4,
                                           "op_types": ["Conv2d", "Linear"]}])
        q.compress()
        evaluator.train(model, max_epochs=3)     # the optimizer is made after compress(): it trains the steps
        calibration = q.export_model("qmodel.pt", "calibration.json")
    """

    name = "lsq"
    supported_bits = (2, 8)

    def __init__(self, model: nn.Module, config_list: list[dict]) -> None:
        super().__init__(model, config_list)
        for cfg in self.layers.values():
            for quant_type in ("input", "output"):
                if quant_type in cfg.config["quant_types"] and cfg.config["quant_scheme"][quant_type].startswith(
                        "per_channel"):
                    raise ValueError(f"config_list[{cfg.entry_index}]['quant_scheme']: LSQ learns one step per "
                                     f"input/output tensor; per-channel is for weights")

    def weight_fake_quant(self, layer: str) -> LSQWeightFakeQuant:
        return LSQWeightFakeQuant(self.weight_spec(layer), self.layers[layer].module.weight)

    def activation_fake_quant(self, layer: str, quant_type: str) -> LSQActivationFakeQuant:
        return LSQActivationFakeQuant(self.activation_spec(layer, quant_type))


@nnic.hookimpl
def register_quantizers(register) -> None:
    register(LSQQuantizer)
