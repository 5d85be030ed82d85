"""Post-training quantization with observers: weights, inputs and outputs, 2-8 bits, no training.

Weights are observed once when the quantizer is applied; inputs and outputs are observed while calibration
batches run through the model; then every range is frozen and the model simulates the quantized network.
Which range each tensor gets is the observer's choice (:mod:`nnic.quantization.observers`): ``minmax``,
``moving_average``, ``percentile`` (alias ``histogram``), ``mse`` or ``kl``, per quant type.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

import nnic
from nnic.builtins._quant import run_batches
from nnic.config import Key, choice_key, float_key
from nnic.quantization.activation import ActivationFakeQuant, find
from nnic.quantization.base import Quantizer, WeightFakeQuant
from nnic.quantization.observers import OBSERVERS, Observer, make_observer
from nnic.quantization.qparams import QuantSpec

__all__ = ["FrozenWeightFakeQuant", "PTQQuantizer"]


class FrozenWeightFakeQuant(WeightFakeQuant):
    """Weight fake quantization with a scale and zero point chosen once by an observer."""

    def __init__(self, spec: QuantSpec, observer: Observer, weight: torch.Tensor) -> None:
        super().__init__(spec)
        observer(weight)
        scale, zero = observer.qparams()
        self.register_buffer("scale", scale)
        self.register_buffer("zero_point", zero)
        lo, hi = observer.range()
        self.register_buffer("tracked_min", lo)
        self.register_buffer("tracked_max", hi)

    def qparams(self, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.scale, self.zero_point


class PTQQuantizer(Quantizer):
    """Calibrate ranges with observers, then simulate the quantized model; nothing is trained.

    Config keys: ``quant_types`` (any of ``weight``, ``input``, ``output``), ``quant_bits`` (2-8),
    ``quant_dtype``, ``quant_scheme`` (per tensor or per channel, symmetric or affine; activation channels are
    dim 1), ``observer`` (per quant type: ``minmax`` by default, ``moving_average``, ``percentile``/``histogram``,
    ``mse``, ``kl``) and ``percentile`` (for the percentile observer, default 99.99).

    :param calibration_data: batches (tensors or ``(input, target)``) run through the model by
        :meth:`compress`; without it, run data yourself through the compressed model and call :meth:`freeze`.
    :param calibration_steps: at most this many batches.
    :param observer_options: extra observer arguments, e.g. ``{"bins": 1024, "averaging_constant": 0.1}``.

    Example::

        q = nnic.quantizer("ptq", model, [{"quant_types": ["weight", "input"], "quant_bits": 8,
                                           "observer": {"weight": "minmax", "input": "kl"},
                                           "op_types": ["Conv2d", "Linear"]}], calibration_data=batches)
        q.compress()
        calibration = q.export_model("qmodel.pt", "calibration.json")
    """

    name = "ptq"
    aliases = ("observer",)
    supported_bits = (2, 8)
    config_keys: tuple[Key, ...] = (
        choice_key("observer", tuple(OBSERVERS), default="minmax", per_quant_type=True),
        float_key("percentile", 0, 100, lo_closed=False, hi_closed=True, default=99.99),
    )

    def __init__(self, model: nn.Module, config_list: list[dict], *, calibration_data: Iterable[Any] | None = None,
                 calibration_steps: int | None = None, observer_options: dict[str, Any] | None = None) -> None:
        super().__init__(model, config_list)
        self.calibration_data = calibration_data
        self.calibration_steps = calibration_steps
        self.observer_options = dict(observer_options or {})

    def observer(self, layer: str, quant_type: str, spec: QuantSpec) -> Observer:
        cfg = self.layers[layer].config
        return make_observer(cfg["observer"][quant_type], spec, percentile=cfg["percentile"], **self.observer_options)

    def weight_fake_quant(self, layer: str) -> FrozenWeightFakeQuant:
        spec = self.weight_spec(layer)
        module = self.layers[layer].module
        with torch.no_grad():
            weight = module.weight.detach()  # after any earlier parametrization (a pruning mask)
        return FrozenWeightFakeQuant(spec, self.observer(layer, "weight", spec), weight)

    def activation_fake_quant(self, layer: str, quant_type: str) -> ActivationFakeQuant:
        spec = self.activation_spec(layer, quant_type)
        return ActivationFakeQuant(spec, self.observer(layer, quant_type, spec), observe_in_eval=True)

    def _activations(self) -> list[ActivationFakeQuant]:
        return [fq for quant_type in ("input", "output") for layer in self._activation_layers(quant_type)
                if (fq := find(self.layers[layer].module, quant_type)) is not None]

    def compress(self) -> nn.Module:
        """Observe the weights, run the calibration data (if given) and freeze every range."""
        super().compress()
        if self.calibration_data is not None:
            self.calibrate(self.calibration_data, self.calibration_steps)
        return self.model

    def calibrate(self, data: Iterable[Any], steps: int | None = None) -> nn.Module:
        """Observe the inputs/outputs over ``data`` (eval mode, no gradients), then :meth:`freeze`."""
        if not self.compressed:
            raise RuntimeError("calibrate() needs a compressed model: call compress() first")
        for fq in self._activations():
            fq.observing, fq.quantizing = True, False
        run_batches(self.model, data, steps)
        return self.freeze()

    def freeze(self) -> nn.Module:
        """Fix every activation range at its observer's choice and start quantizing."""
        for fq in self._activations():
            if not fq.observer.observed:
                raise RuntimeError("an input/output quantizer has observed nothing: pass calibration_data, or run "
                                   "data through the compressed model before freeze()")
            fq.freeze()
            fq.quantizing = True
        return self.model


@nnic.hookimpl
def register_quantizers(register) -> None:
    register(PTQQuantizer)
