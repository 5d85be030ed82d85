"""The quantizer base class: simulated (fake-quant) weights while training, calibration export."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize

from nnic import io, masking
from nnic.compressor import Compressor
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

    def __init__(self, model: nn.Module, config_list: list[dict]) -> None:
        super().__init__(model, config_list)
        self.compressed = False

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
        """Per layer: bits, scheme, dtype, scale and zero point of each quantized tensor (JSON-ready)."""
        if not self.compressed:
            raise RuntimeError("calibration() needs a compressed model: call compress() first")
        out: dict[str, dict[str, Any]] = {}
        for quant_type in ("input", "output"):  # the weight's entries come first, as before
            for layer in self._activation_layers(quant_type):
                out.setdefault(layer, {})
        for layer in self._weight_layers():
            module = self.layers[layer].module
            fq = next(p for p in _parametrizations(module, "weight") if isinstance(p, WeightFakeQuant))
            with torch.no_grad():
                # The fake-quant sees the weight after the parametrizations before it (a pruning mask, say).
                scale, zero = fq.qparams(_weight_before(module, fq))
            spec = fq.spec
            out[layer] = {
                "weight_bits": spec.bits,
                "weight_dtype": "int" if spec.signed else "uint",
                "weight_scheme": spec.scheme,
                **({"weight_axis": spec.axis} if spec.per_channel else {}),
                "weight_scale": scale.tolist(),
                "weight_zero_point": zero.tolist(),
                **out.get(layer, {}),
            }
        for quant_type in ("input", "output"):
            for layer in self._activation_layers(quant_type):
                out[layer].update(_activation_calibration(self.layers[layer].module, layer, quant_type))
        return out

    def export_model(self, model_path: io.PathLike, calibration_path: io.PathLike | None = None) -> dict[str, dict[str, Any]]:
        """Write the simulated model's weights (quantized then dequantized) and the calibration JSON, atomically."""
        calibration = self.calibration()
        io.save_tensors(_without_activation_quant(masking.plain_state_dict(self.model)), model_path)
        if calibration_path is not None:
            io.save_json(calibration, calibration_path)
        return calibration


def _parametrizations(module: nn.Module, name: str) -> list[nn.Module]:
    return list(module.parametrizations[name]) if parametrize.is_parametrized(module, name) else []


def _weight_before(module: nn.Module, stop: nn.Module) -> torch.Tensor:
    plist = module.parametrizations["weight"]
    value = plist.original
    for p in plist:
        if p is stop:
            return value
        value = p(value)
    raise LookupError("parametrization not found")


def _activation_calibration(module: nn.Module, layer: str, quant_type: str) -> dict[str, Any]:
    """``{input_bits, tracked_min_input, tracked_max_input, input_scale, input_zero_point, ...}`` of one layer."""
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
    spec = fq.spec
    return {
        f"{quant_type}_bits": spec.bits,
        f"{quant_type}_dtype": "int" if spec.signed else "uint",
        f"{quant_type}_scheme": spec.scheme,
        **({f"{quant_type}_axis": spec.axis} if spec.per_channel else {}),
        f"tracked_min_{quant_type}": lo.tolist(),
        f"tracked_max_{quant_type}": hi.tolist(),
        f"{quant_type}_scale": scale.tolist(),
        f"{quant_type}_zero_point": zero.tolist(),
    }


def _without_activation_quant(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The state dict without the activation fake-quant children (their observers, step sizes)."""
    from nnic.quantization.activation import CHILD_NAMES

    children = tuple(CHILD_NAMES.values())
    return {k: v for k, v in state.items() if not any(part in children for part in k.split("."))}
