"""The quantizer base class: simulated (fake-quant) weights while training, calibration export."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize

from nnic import io, masking
from nnic.compressor import Compressor
from nnic.quantization.calibration import Calibration, LayerCalibration, TensorCalibration
from nnic.quantization.qparams import QuantSpec, fake_quantize, observe, qparams_from_range


class WeightFakeQuant(nn.Module):
    """Parametrization ``weight -> dequantize(quantize(weight))`` with parameters observed from the current weight.

    The scale follows the weight as it trains; gradients pass straight through.
    """

    def __init__(self, spec: QuantSpec) -> None:
        super().__init__()
        self.spec = spec

    def qparams(self, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return qparams_from_range(*observe(weight, self.spec), self.spec)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return fake_quantize(weight, *self.qparams(weight), self.spec)


class Quantizer(Compressor):
    """A quantizer simulates low-bit layers in float and exports their calibration.

    Subclasses decide the :class:`QuantSpec` of each quantized tensor (:meth:`weight_spec`); the calibration
    written by :meth:`export_model` is what ``nnic.quantization_speedup`` consumes.
    """

    kind = "quantizer"
    #: What this quantizer can simulate; the config list is checked against it before any work. The base's
    #: integer grid needs two levels or more (1 bit would divide by zero: NaN weights) and stays exact in float32
    #: up to 16 bits. A subclass narrows these (``supported_bits = (2, 8)``) or, with its own fake quantization,
    #: widens them (``bnn``: ``(1, 1)``).
    supported_bits: tuple[int, int] = (2, 16)
    supported_quant_types: tuple[str, ...] = ("weight", "input", "output")

    def __init__(self, model: nn.Module, config_list: list[dict]) -> None:
        super().__init__(model, config_list)
        self._check_support()
        self.compressed = False

    def _check_support(self) -> None:
        """Refuse quant types and bit widths this quantizer cannot simulate, naming the config entry."""
        allowed, (lo, hi) = self.supported_quant_types, self.supported_bits
        for cfg in self.layers.values():
            where = f"config_list[{cfg.entry_index}]"
            extra = [t for t in cfg.config["quant_types"] if t not in allowed]
            if extra:
                raise ValueError(f"{where}['quant_types']: the {self.name} quantizer quantizes "
                                 f"{', '.join(allowed)} only, got {cfg.config['quant_types']}")
            for quant_type, b in cfg.config["quant_bits"].items():
                if not lo <= b <= hi:
                    span = f"{lo} bit" if lo == hi else f"{lo} to {hi} bits"
                    raise ValueError(f"{where}['quant_bits']: the {self.name} quantizer supports {span}, got {b} "
                                     f"for {quant_type!r}")

    def weight_spec(self, layer: str) -> QuantSpec:
        cfg = self.layers[layer].config
        return QuantSpec.from_config(cfg["quant_bits"]["weight"], cfg["quant_dtype"]["weight"], cfg["quant_scheme"]["weight"])

    def activation_spec(self, layer: str, quant_type: str) -> QuantSpec:
        """The spec of ``layer``'s ``"input"`` or ``"output"``; per-channel means along dim 1 (channels)."""
        cfg = self.layers[layer].config
        return QuantSpec.from_config(cfg["quant_bits"][quant_type], cfg["quant_dtype"][quant_type],
                                     cfg["quant_scheme"][quant_type], axis=1)

    def activation_fake_quant(self, layer: str, quant_type: str) -> nn.Module:
        """The module that observes and fake-quantizes ``layer``'s input or output (override to change it).

        The default observes min/max in training and eval mode and quantizes from the first observation.
        """
        from nnic.quantization.activation import ActivationFakeQuant
        from nnic.quantization.observers import MinMaxObserver

        spec = self.activation_spec(layer, quant_type)
        fq = ActivationFakeQuant(spec, MinMaxObserver(spec), observe_in_eval=True)
        fq.quantizing = True
        return fq

    def weight_fake_quant(self, layer: str) -> WeightFakeQuant:
        """The parametrization that simulates ``layer``'s quantized weight (override to change the scheme)."""
        return WeightFakeQuant(self.weight_spec(layer))

    def _weight_layers(self) -> list[str]:
        return [name for name, cfg in self.layers.items() if "weight" in cfg.config["quant_types"]]

    def _activation_layers(self, quant_type: str) -> list[str]:
        return [name for name, cfg in self.layers.items() if quant_type in cfg.config["quant_types"]]

    def compress(self) -> nn.Module:
        """Attach fake quantization to the selected weights; returns the (same) simulated model."""
        for layer in self._weight_layers():
            module = self.layers[layer].module
            if not isinstance(getattr(module, "weight", None), torch.Tensor):
                raise TypeError(f"{layer}: {type(module).__name__} has no weight tensor to quantize")
            if not any(isinstance(p, WeightFakeQuant) for p in _parametrizations(module, "weight")):
                parametrize.register_parametrization(module, "weight", self.weight_fake_quant(layer), unsafe=True)
        from nnic.quantization import activation

        for quant_type in ("input", "output"):
            for layer in self._activation_layers(quant_type):
                module = self.layers[layer].module
                if activation.find(module, quant_type) is None:
                    activation.attach(module, quant_type, self.activation_fake_quant(layer, quant_type))
        self.compressed = True
        return self.model

    def calibration(self) -> dict[str, dict[str, Any]]:
        """Per layer: bits, scheme, dtype, scale and zero point of each quantized tensor (JSON-ready; the format
        of :mod:`nnic.quantization.calibration`, whose ``Calibration.from_dict`` types and checks it)."""
        if not self.compressed:
            raise RuntimeError("calibration() needs a compressed model: call compress() first")
        layers: dict[str, LayerCalibration] = {}
        for layer in self._weight_layers():
            module = self.layers[layer].module
            fq = next(p for p in _parametrizations(module, "weight") if isinstance(p, WeightFakeQuant))
            with torch.no_grad():
                # The fake-quant sees the weight after the parametrizations before it (a pruning mask, say).
                scale, zero = fq.qparams(_weight_before(module, fq))
            layers.setdefault(layer, LayerCalibration()).weight = _tensor_calibration(fq.spec, scale, zero)
        for quant_type in ("input", "output"):
            for layer in self._activation_layers(quant_type):
                setattr(layers.setdefault(layer, LayerCalibration()), quant_type,
                        _activation_calibration(self.layers[layer].module, layer, quant_type))
        return Calibration(layers).to_dict()

    def export_model(self, model_path: io.PathLike, calibration_path: io.PathLike | None = None) -> dict[str, dict[str, Any]]:
        """Write the simulated model's weights (quantized then dequantized) and the calibration JSON, atomically."""
        calibration = self.calibration()
        io.save_tensors(_without_activation_quant(masking.plain_state_dict(self.model)), model_path)
        if calibration_path is not None:
            io.save_json(calibration, calibration_path)
        return calibration


def _parametrizations(module: nn.Module, name: str) -> list[nn.Module]:
    return list(module.parametrizations[name]) if masking.is_parametrized(module, name) else []


def _weight_before(module: nn.Module, stop: nn.Module) -> torch.Tensor:
    plist = module.parametrizations["weight"]
    value = plist.original
    for p in plist:
        if p is stop:
            return value
        value = p(value)
    raise LookupError("parametrization not found")


def _tensor_calibration(spec: QuantSpec, scale: torch.Tensor, zero: torch.Tensor, **tracked: torch.Tensor
                        ) -> TensorCalibration:
    return TensorCalibration(spec.bits, spec.dtype, spec.scheme, spec.axis if spec.per_channel else None,
                             scale=scale.double(), zero_point=zero.to(torch.int64), **tracked)


def _activation_calibration(module: nn.Module, layer: str, quant_type: str) -> TensorCalibration:
    """The spec, tracked range, scale and zero point of ``layer``'s input or output."""
    from nnic.quantization import activation

    fq = activation.find(module, quant_type)
    if fq is None:
        raise RuntimeError(f"{layer}: no {quant_type} quantizer attached; call compress() first")
    try:
        with torch.no_grad():
            lo, hi = fq.tracked_range()
            scale, zero = fq.qparams()
    except RuntimeError as exc:
        raise RuntimeError(f"{layer} ({quant_type}): {exc}") from exc
    return _tensor_calibration(fq.spec, scale, zero, tracked_min=lo.double(), tracked_max=hi.double())


def _without_activation_quant(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The state dict without the activation fake-quant children (their observers, step sizes)."""
    from nnic.quantization.activation import CHILD_NAMES

    children = tuple(CHILD_NAMES.values())
    return {k: v for k, v in state.items() if not any(part in children for part in k.split("."))}
