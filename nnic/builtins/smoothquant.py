"""SmoothQuant: migrate activation outliers into the weights, then int8 weights and int8 activations (W8A8).

Xiao et al. 2023, "SmoothQuant: Accurate and Efficient Post-Training Quantization for Large Language Models".
For the layers reading one normalisation layer's output (q, k, v; the MLP's first layers),
``s_j = max|X_j|^alpha / max|W_:j|^(1 - alpha)`` divides input channel j (folded into the norm's weight and
bias, an exact transformation) and multiplies the weights' column j, so an outlier channel no longer sets the
range of the whole activation tensor. Weights are then quantized per output channel (int8) and every selected
layer's input per tensor with a static range from the calibration data, which is the calibration format
``quantization_speedup`` runs as static int8 activations.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import nn

import nnic
from nnic.config import Key, float_key, int_key
from nnic.llm import layers as L
from nnic.llm.groupquant import GroupQuant
from nnic.llm.oneshot import OneShotQuantizer
from nnic.quantization import activation
from nnic.quantization.qparams import QuantSpec, fake_quantize, qparams_from_range

__all__ = ["SmoothQuantizer", "StaticInputQuant"]


class StaticInputQuant(nn.Module):
    """Input fake quantization with a fixed, calibrated per-tensor scale and zero point."""

    def __init__(self, scale: torch.Tensor, zero_point: torch.Tensor, spec: QuantSpec) -> None:
        super().__init__()
        self.spec = spec
        self.register_buffer("scale", scale)
        self.register_buffer("zero_point", zero_point)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return fake_quantize(x, self.scale, self.zero_point, self.spec)


class SmoothQuantizer(OneShotQuantizer):
    """SmoothQuant W8A8.

    Config keys: ``quant_types: ["weight", "input"]``, ``quant_bits: 8``, ``quant_scheme`` per type (the
    weight's symmetric/affine part; the input's ``per_tensor_symmetric`` or ``per_tensor_affine``), ``alpha``
    (migration strength in [0, 1], default 0.5). Weights are per output channel (``group_size`` 0).

    Example::

        q = nnic.quantizer("smoothquant", model, [{"quant_types": ["weight", "input"], "quant_bits": 8,
                                                   "alpha": 0.5, "op_types": ["Linear"]},
                                                  {"exclude": True, "op_names": ["lm_head"]}],
                           calibration_data=batches)
        q.compress()
    """

    name = "smoothquant"
    quant_types = ("weight", "input")
    bits = (8, 8)
    config_keys: tuple[Key, ...] = (int_key("group_size", lo=0, hi=0, default=0),
                                    float_key("alpha", 0, 1, hi_closed=True, default=0.5))

    def __init__(self, model: nn.Module, config_list: list[dict], *, calibration_data: Iterable[Any] | None = None,
                 blocks: str | Sequence[str] | None = None, calibration_steps: int | None = None,
                 progress: bool | None = None) -> None:
        super().__init__(model, config_list, calibration_data=calibration_data, blocks=blocks,
                         calibration_steps=calibration_steps, progress=progress)
        for layer, cfg in self.layers.items():
            if not cfg.config["quant_scheme"]["input"].startswith("per_tensor"):
                raise ValueError(f"config_list[{cfg.entry_index}]['quant_scheme']['input']: expected "
                                 f"'per_tensor_symmetric' or 'per_tensor_affine', got "
                                 f"{cfg.config['quant_scheme']['input']!r}")
        self._attached: list[nn.Module] = []

    def observe(self, name: str, module: nn.Module, x: torch.Tensor) -> None:
        st = self._stats.get(name)
        lo, hi = x.amin(0), x.amax(0)
        self._stats[name] = (lo, hi) if st is None else (torch.minimum(st[0], lo), torch.maximum(st[1], hi))

    def quantize_group(self, names: list[str], modules: list[nn.Module]) -> None:
        lo, hi = self._stats[names[0]]
        for n in names:
            self._stats.pop(n)
        weights = [L.weight_matrix(m).to(lo.device) for m in modules]
        s = torch.ones_like(lo)
        if self.runner.can_fold(names, lo.numel()):
            x_max = torch.maximum(-lo, hi).clamp(min=1e-5)
            w_max = torch.stack([w.abs().amax(0) for w in weights]).amax(0).clamp(min=1e-5)
            alpha = self.layers[names[0]].config["alpha"]
            s = (x_max.pow(alpha) / w_max.pow(1 - alpha)).clamp(min=1e-5)
            self.runner.fold_scale(names, s)
        a_lo, a_hi = float((lo / s).min()), float((hi / s).max())
        for name, module, w in zip(names, modules, weights):
            cfg = self.layers[name].config
            grid = self.grid(name)
            ws = w * s
            scale, zero = grid.all_params(ws)
            L.set_weight_matrix(module, grid.fake(ws, scale, zero))
            spec = QuantSpec.from_config(8, cfg["quant_dtype"]["input"], cfg["quant_scheme"]["input"])
            a_scale, a_zero = qparams_from_range(torch.tensor(a_lo), torch.tensor(a_hi), spec)
            activation.attach(module, "input", StaticInputQuant(a_scale, a_zero, spec))
            self._attached.append(module)
            self.state[name] = GroupQuant(grid, scale.cpu(), zero.cpu(), extra={
                "input_bits": 8, "input_dtype": cfg["quant_dtype"]["input"],
                "input_scheme": cfg["quant_scheme"]["input"], "tracked_min_input": a_lo, "tracked_max_input": a_hi,
                "input_scale": float(a_scale), "input_zero_point": int(a_zero)})

    def undo(self) -> None:
        super().undo()
        for module in self._attached:
            activation.detach(module, "input")
        self._attached.clear()


@nnic.hookimpl
def register_quantizers(register) -> None:
    register(SmoothQuantizer)
