"""Quantization-aware training (Jacob et al. 2018; NNI's QAT_Quantizer): train through fake quantization.

Weights are quantized from their current min/max at every forward pass; inputs and outputs from ranges tracked
with an exponential moving average while training (``ema_decay``, 0.99 like NNI). Gradients pass straight
through the rounding. Until a layer's ``quant_start_step`` (counted in training-mode forward passes of the
model) its tensors are only observed, not quantized, so the ranges settle first.

With ``fold_bn=True`` a convolution followed directly by a BatchNorm (found by running ``dummy_input``) has its
*folded* weight ``W * gamma / sqrt(running_var + eps)`` quantized, which is what an inference engine that folds
the BatchNorm will run. The simulated (and exported) weight is the quantized folded weight unfolded again, so
the model keeps its BatchNorm and computes in eval mode exactly what the folded quantized model computes; its
calibration has the per-channel scales of that unfolded weight, so the exported weight is exactly on its grid.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

import nnic
from nnic.config import int_key
from nnic.quantization.activation import ActivationFakeQuant, find
from nnic.quantization.base import Quantizer, WeightFakeQuant, _weight_before
from nnic.quantization.observers import MovingAverageMinMaxObserver
from nnic.quantization.qparams import QuantSpec, fake_quantize, observe, qparams_from_range

__all__ = ["FoldedBNWeightFakeQuant", "QATQuantizer", "QATWeightFakeQuant", "find_conv_bn_pairs"]


class QATWeightFakeQuant(WeightFakeQuant):
    """Weight fake quantization from the current min/max, switched on by the quantizer at ``quant_start_step``."""

    def __init__(self, spec: QuantSpec) -> None:
        super().__init__(spec)
        self.enabled = True

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return super().forward(weight) if self.enabled else weight


class FoldedBNWeightFakeQuant(QATWeightFakeQuant):
    """Quantize ``W * f`` (``f = gamma / sqrt(running_var + eps)`` of the following BatchNorm) and unfold it."""

    def __init__(self, spec: QuantSpec, bn: nn.modules.batchnorm._BatchNorm) -> None:
        super().__init__(spec)
        self._bn = (bn,)  # a tuple: not a child module, so the BatchNorm is not registered twice

    def factor(self, weight: torch.Tensor) -> torch.Tensor:
        """The per-output-channel folding factor, shaped to broadcast over ``weight`` (1 where it is 0)."""
        bn = self._bn[0]
        gamma = bn.weight.detach() if bn.weight is not None else torch.ones_like(bn.running_var)
        f = gamma / torch.sqrt(bn.running_var + bn.eps)
        f = torch.where(f == 0, torch.ones_like(f), f)
        return f.reshape([-1] + [1] * (weight.dim() - 1)).to(weight.device)

    def qparams(self, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Scale and zero point of the *folded* weight."""
        return super().qparams(weight * self.factor(weight))

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return weight
        f = self.factor(weight)
        folded = weight * f
        return fake_quantize(folded, *qparams_from_range(*observe(folded, self.spec), self.spec), self.spec) / f


def find_conv_bn_pairs(model: nn.Module, dummy_input: Any, convs: dict[str, nn.Module]) -> dict[str, str]:
    """``{conv_name: bn_name}`` for each conv whose output goes straight (and only) into a BatchNorm."""
    names = {id(m): n for n, m in model.named_modules()}
    produced: dict[int, str] = {}
    pairs: dict[str, str] = {}
    handles = []
    for name, module in convs.items():
        def conv_output(module: nn.Module, args: Any, out: Any, name: str = name) -> None:
            produced[id(out)] = name

        handles.append(module.register_forward_hook(conv_output))
    def bn_input(module: nn.Module, args: tuple[Any, ...]) -> None:
        if args and id(args[0]) in produced:
            pairs.setdefault(produced[id(args[0])], names[id(module)])

    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            handles.append(module.register_forward_pre_hook(bn_input))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(*dummy_input) if isinstance(dummy_input, tuple) else model(dummy_input)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return pairs


class QATQuantizer(Quantizer):
    """Simulate quantization while the user trains: weights, inputs and outputs, 2-8 bits.

    Config keys: ``quant_types``, ``quant_bits`` (2-8), ``quant_dtype``, ``quant_scheme``, and
    ``quant_start_step`` (training forward passes before quantization starts; default 0).

    :param ema_decay: decay of the moving averages tracking input/output ranges.
    :param fold_bn: fold each directly following BatchNorm into its convolution's quantized weight (needs
        ``dummy_input``; symmetric weight schemes only).

    Example::

        q = nnic.quantizer("qat", model, [{"quant_types": ["weight", "output"], "quant_bits": 8,
                                           "op_types": ["Conv2d", "Linear"], "quant_start_step": 100}])
        q.compress()
        train(model)                    # the user's loop, or evaluator.train(model, max_epochs=...)
        calibration = q.export_model("qmodel.pt", "calibration.json")
    """

    name = "qat"
    supported_bits = (2, 8)
    config_keys = (int_key("quant_start_step", lo=0, default=0),)

    def __init__(self, model: nn.Module, config_list: list[dict], *, ema_decay: float = 0.99, fold_bn: bool = False,
                 dummy_input: Any = None) -> None:
        super().__init__(model, config_list)
        if not 0 <= ema_decay < 1:
            raise ValueError(f"ema_decay: expected a float in [0, 1), got {ema_decay!r}")
        self.ema_decay = ema_decay
        self.bn_pairs: dict[str, str] = {}
        if fold_bn:
            if dummy_input is None:
                raise ValueError("fold_bn=True needs a dummy_input to find which BatchNorm follows which conv")
            convs = {n: c.module for n, c in self.layers.items() if "weight" in c.config["quant_types"]
                     and isinstance(c.module, nn.modules.conv._ConvNd)}
            self.bn_pairs = find_conv_bn_pairs(model, dummy_input, convs)
            for conv in self.bn_pairs:
                if not self.weight_spec(conv).symmetric:
                    raise ValueError(f"fold_bn: {conv}'s weight scheme must be symmetric to fold its BatchNorm")
        self.step = 0
        self._hook = None

    def weight_fake_quant(self, layer: str) -> QATWeightFakeQuant:
        if layer in self.bn_pairs:
            return FoldedBNWeightFakeQuant(self.weight_spec(layer), self.model.get_submodule(self.bn_pairs[layer]))
        return QATWeightFakeQuant(self.weight_spec(layer))

    def activation_fake_quant(self, layer: str, quant_type: str) -> ActivationFakeQuant:
        spec = self.activation_spec(layer, quant_type)
        return ActivationFakeQuant(spec, MovingAverageMinMaxObserver(spec, 1.0 - self.ema_decay) if self.ema_decay
                                   else MovingAverageMinMaxObserver(spec, 1.0))

    def compress(self) -> nn.Module:
        super().compress()
        if self._hook is None:
            self._hook = self.model.register_forward_pre_hook(self._count_step)
        self._update_states()
        return self.model

    def _count_step(self, module: nn.Module, args: Any) -> None:
        if module.training:
            self.step += 1
            self._update_states()

    def _update_states(self) -> None:
        """Quantize each layer's tensors from its ``quant_start_step`` on (counted from 1)."""
        for layer, cfg in self.layers.items():
            on = self.step > cfg.config["quant_start_step"] or (self.step == 0 and cfg.config["quant_start_step"] == 0)
            module = cfg.module
            for quant_type in cfg.config["quant_types"]:
                if quant_type == "weight":
                    for p in module.parametrizations["weight"]:
                        if isinstance(p, QATWeightFakeQuant):
                            p.enabled = on
                else:
                    fq = find(module, quant_type)
                    if fq is not None:
                        fq.quantizing = on

    def calibration(self) -> dict[str, dict[str, Any]]:
        out = super().calibration()
        for conv, bn in self.bn_pairs.items():
            module = self.layers[conv].module
            fq = next(p for p in module.parametrizations["weight"] if isinstance(p, FoldedBNWeightFakeQuant))
            with torch.no_grad():
                weight = _weight_before(module, fq)
                f = fq.factor(weight).flatten()
                scale, zero = fq.qparams(weight)
                per_channel = (scale / f).abs()
            out[conv].update({
                "weight_scheme": "per_channel_symmetric", "weight_axis": 0,
                "weight_scale": per_channel.tolist(),
                "weight_zero_point": (zero * torch.ones_like(f, dtype=torch.int32)).tolist(),
                "folded_bn": bn,
            })
        return out


@nnic.hookimpl
def register_quantizers(register) -> None:
    register(QATQuantizer)
