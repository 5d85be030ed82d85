"""Bases of the one-shot LLM pruners and quantizers: config keys, calibration, the sequential run, reports.

A one-shot algorithm implements the :class:`~nnic.llm.runner.LayerAlgorithm` callbacks (``observe`` and
``compress_group``); these bases validate the config_list up front (so a bad entry changes nothing), hand the
selected layers to :class:`~nnic.llm.runner.SequentialRunner`, and keep its per-layer report.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import nn

from nnic.config import Key, choice_key, int_key
from nnic.selection import select_layers
from nnic.llm import layers as L
from nnic.llm.groupquant import GroupGrid, GroupQuant
from nnic.llm.patterns import SCOPES
from nnic.llm.runner import LayerReport, SequentialRunner
from nnic.masking import Masks
from nnic.pruning.base import Pruner
from nnic.quantization.base import Quantizer

__all__ = ["OneShotPruner", "OneShotQuantizer"]


class _OneShot:
    """Calibration arguments and the run, shared by the pruner and quantizer bases."""

    true_sequential = False
    #: per-layer statistics the algorithm accumulates in ``observe`` (cleared as layers are compressed)
    _stats: dict[str, Any]
    model: nn.Module
    layers: dict[str, Any]
    name: str

    def _setup(self, calibration_data: Iterable[Any] | None, blocks: str | Sequence[str] | None,
               calibration_steps: int | None, progress: bool | None) -> None:
        if calibration_steps is not None and (isinstance(calibration_steps, bool) or
                                              not isinstance(calibration_steps, int) or calibration_steps < 1):
            raise ValueError(f"calibration_steps: expected a positive int or None, got {calibration_steps!r}")
        self._stats = {}
        modules = {n: c.module for n, c in self.layers.items()}
        for n, m in modules.items():
            L.check_supported(n, m)
        # Built now, so that a wrong block list or a layer outside the blocks fails before anything changes.
        self.runner = SequentialRunner(self.model, modules, calibration_data, blocks=blocks,
                                       calibration_steps=calibration_steps, progress=progress,
                                       true_sequential=self.true_sequential, name=self.name)
        self.reports: list[LayerReport] = []

    def _run(self) -> None:
        self.reports = self.runner.run(self)

    def report(self) -> dict[str, float]:
        """``{layer: relative output error}`` measured on the calibration inputs, in compression order."""
        return {r.name: r.relative_error for r in self.reports}

    def undo(self) -> None:
        self._stats.clear()


class OneShotPruner(_OneShot, Pruner):
    """A pruner that computes its masks from calibration activations, block by block.

    Config keys: ``sparsity`` (exactly ``floor(sparsity * n)`` per row, or per layer with
    ``sparsity_scope: "layer"``), or ``n`` and ``m`` for N:M (``n`` kept of every ``m`` consecutive inputs).
    """

    config_keys: tuple[Key, ...] = (int_key("n", lo=0), int_key("m", lo=1),
                                     choice_key("sparsity_scope", SCOPES, default="row"))

    def __init__(self, model: nn.Module, config_list: list[dict], *, calibration_data: Iterable[Any] | None = None,
                 blocks: str | Sequence[str] | None = None, calibration_steps: int | None = None,
                 progress: bool | None = None) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
        self.model, self.config_list, self.masks = model, config_list, {}
        self.layers = select_layers(model, config_list, self.kind, extra_keys=self.config_keys,
                                    require_sparsity=False)
        self.pattern: dict[str, dict[str, Any]] = {}
        for layer, cfg in self.layers.items():
            self.pattern[layer] = self._pattern(layer, cfg.entry_index, cfg.config)
        self._setup(calibration_data, blocks, calibration_steps, progress)
        self._masks: Masks = {}

    @staticmethod
    def _pattern(layer: str, index: int, c: dict[str, Any]) -> dict[str, Any]:
        where = f"config_list[{index}]"
        if "total_sparsity" in c:
            raise ValueError(f"{where}['total_sparsity']: one-shot pruners take 'sparsity' (per row or per layer, "
                             f"see 'sparsity_scope') or 'n' and 'm'")
        has_nm = "n" in c or "m" in c
        if has_nm == ("sparsity" in c):
            raise ValueError(f"{where}: expected either 'sparsity' or both 'n' and 'm', got keys {sorted(c)}")
        if has_nm:
            if "n" not in c or "m" not in c or not c["n"] <= c["m"]:
                raise ValueError(f"{where}: expected both 'n' and 'm' with n <= m, got n={c.get('n')}, "
                                 f"m={c.get('m')}")
            return {"n": c["n"], "m": c["m"], "sparsity": 1 - c["n"] / c["m"], "scope": "row"}
        return {"n": None, "m": None, "sparsity": c["sparsity"], "scope": c["sparsity_scope"]}

    def _check_columns(self) -> None:
        for layer, p in self.pattern.items():
            cols = L.in_features(self.layers[layer].module)
            if p["m"] is not None and cols % p["m"]:
                raise ValueError(f"config_list[{self.layers[layer].entry_index}]['m']: {layer!r} has {cols} inputs, "
                                 f"not a multiple of m={p['m']}; exclude it")

    def prune(self, name: str, module: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
        """The new ``[out, in]`` weight and keep-mask of an observed layer."""
        raise NotImplementedError

    def compress(self) -> tuple[nn.Module, Masks]:
        self._check_columns()
        return super().compress()

    def compress_group(self, names: list[str], modules: list[nn.Module]) -> None:
        for name, module in zip(names, modules):
            w, keep = self.prune(name, module)
            L.set_weight_matrix(module, w * keep)
            self._masks[name] = {"weight": L.to_parameter_layout(module, keep)}
            if isinstance(getattr(module, "bias", None), torch.Tensor):
                self._masks[name]["bias"] = None

    def calculate_masks(self) -> Masks:
        self._masks = {}
        self._run()
        return {n: self._masks[n] for n in self.layers}


class OneShotQuantizer(_OneShot, Quantizer):
    """A weight quantizer that writes simulated (dequantized) weights and keeps each layer's :class:`GroupQuant`.

    Config keys: ``quant_types: ["weight"]``, ``quant_bits`` (2-8), ``quant_scheme`` (its ``symmetric`` /
    ``affine`` part; the granularity is ``group_size``), ``group_size`` (inputs per group, default 128; 0 = one
    group per row), which must divide every selected layer's input dimension.
    """

    quant_types: tuple[str, ...] = ("weight",)
    bits = (2, 8)
    config_keys: tuple[Key, ...] = (int_key("group_size", lo=0, default=128),)
    needs_data = True

    def __init__(self, model: nn.Module, config_list: list[dict], *, calibration_data: Iterable[Any] | None = None,
                 blocks: str | Sequence[str] | None = None, calibration_steps: int | None = None,
                 progress: bool | None = None) -> None:
        Quantizer.__init__(self, model, config_list)
        lo, hi = self.bits
        for layer, cfg in self.layers.items():
            c, where = cfg.config, f"config_list[{cfg.entry_index}]"
            if sorted(c["quant_types"]) != sorted(self.quant_types):
                raise ValueError(f"{where}['quant_types']: the {self.name} quantizer quantizes "
                                 f"{list(self.quant_types)}, got {c['quant_types']}")
            for t, b in c["quant_bits"].items():
                if not lo <= b <= hi:
                    raise ValueError(f"{where}['quant_bits']: the {self.name} quantizer supports {lo} to {hi} bits "
                                     f"for {t!r}, got {b}")
            L.check_supported(layer, cfg.module)
            cols, g = L.in_features(cfg.module), c.get("group_size", 0)
            if g and cols % g:
                raise ValueError(f"config_list[{cfg.entry_index}]['group_size']: {g} does not divide the input "
                                 f"dimension {cols} of {layer!r}; choose a divisor (e.g. 32, 64, 128) or exclude it")
        self.state: dict[str, GroupQuant] = {}
        self._stats = {}
        if self.needs_data or calibration_data is not None:
            self._setup(calibration_data, blocks, calibration_steps, progress)
        else:
            self.reports = []

    def grid(self, layer: str) -> GroupGrid:
        c = self.layers[layer].config
        return GroupGrid(c["quant_bits"]["weight"], c["quant_scheme"]["weight"].endswith("symmetric"),
                         c.get("group_size", 0))

    def compress(self) -> nn.Module:
        """Quantize the selected layers; returns the (same) model with simulated (dequantized) weights."""
        if self.compressed:
            raise RuntimeError(f"{self.name}: compress() was already called")
        with torch.no_grad():
            self._run()
        self.compressed = True
        return self.model

    def compress_group(self, names: list[str], modules: list[nn.Module]) -> None:
        self.quantize_group(names, modules)

    def quantize_group(self, names: list[str], modules: list[nn.Module]) -> None:
        """Quantize layers that read one input: set ``self.state[name]`` and write the simulated weights."""
        raise NotImplementedError

    def calibration(self) -> dict[str, dict[str, Any]]:
        """Each layer's :class:`GroupQuant` in the calibration format (``export_model`` writes it)."""
        if not self.compressed:
            raise RuntimeError("calibration() needs a compressed model: call compress() first")
        return {name: self.state[name].calibration() for name in self.layers}

