"""What the training-aware pruners share: score-based exact masks, sparsity schedules over a base pruner,
per-iteration results with the best one kept, and weight snapshots for rewinding.

Public, for nnic's ``scheduled``, ``lottery``, ``movement`` and ``admm`` pruners and for third-party plugins alike
(see docs/writing-a-plugin.md); not a plugin itself (no hooks).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from nnic.evaluator import Evaluator
from nnic.masking import Masks, attach_mask, parameter, prunable_parameters
from nnic.pruning.base import Pruner
from nnic.selection import LayerConfig, amount, op_type

__all__ = ["IterationResult", "IterativePruner", "mask_from_scores", "masks_from_scores", "per_layer_config"]


def mask_from_scores(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Bool mask pruning exactly the ``k`` lowest scores; ties prune the earlier position first (as Level does)."""
    flat = scores.detach().flatten().float()
    if bool(torch.isnan(flat).any()):
        raise ValueError("the scores contain NaN")
    keep = torch.ones_like(flat, dtype=torch.bool)
    keep[torch.argsort(flat, stable=True)[:k]] = False
    return keep.reshape(scores.shape)


def masks_from_scores(layers: dict[str, LayerConfig], scores: dict[str, torch.Tensor],
                      sparsity_of: Callable[[float], float] = lambda s: s) -> Masks:
    """Exact masks from per-layer weight scores (higher keeps), honouring ``sparsity`` and ``total_sparsity``.

    ``sparsity_of`` maps the config's target to the current one (a schedule). Layers of one ``total_sparsity``
    entry are ranked together. ``max_sparsity_per_layer`` is not supported here.
    """
    masks: Masks = {}
    groups: dict[int, list[str]] = {}
    for layer, cfg in layers.items():
        bias = getattr(cfg.module, "bias", None)
        masks[layer] = {"bias": None} if isinstance(bias, torch.Tensor) else {}
        if "total_sparsity" in cfg.config:
            if "max_sparsity_per_layer" in cfg.config:
                raise ValueError(f"config_list[{cfg.entry_index}]['max_sparsity_per_layer']: not supported by this "
                                 f"pruner; use per-layer 'sparsity' or 'total_sparsity' alone")
            groups.setdefault(cfg.entry_index, []).append(layer)
        else:
            s = scores[layer]
            masks[layer]["weight"] = mask_from_scores(s, amount(sparsity_of(cfg.config["sparsity"]), s.numel()))
    for members in groups.values():
        total = layers[members[0]].config["total_sparsity"]
        flat = torch.cat([scores[layer].detach().flatten().float() for layer in members])
        keep = mask_from_scores(flat, amount(sparsity_of(total), flat.numel()))
        start = 0
        for layer in members:
            n = scores[layer].numel()
            masks[layer]["weight"] = keep[start:start + n].reshape(scores[layer].shape)
            start += n
    return masks


def per_layer_config(layers: dict[str, LayerConfig], sparsity_of: Callable[[float], float]) -> list[dict]:
    """A config_list naming exactly ``layers`` (by name and current class), with scheduled sparsities.

    Selecting by name and current class keeps working after masks (parametrizations) change a module's class
    and after speedup replaced modules; ``total_sparsity`` groups stay one entry each.
    """
    out: list[dict] = []
    groups: dict[int, list[LayerConfig]] = {}
    for cfg in layers.values():
        groups.setdefault(cfg.entry_index, []).append(cfg)
    for members in groups.values():
        config = {k: v for k, v in members[0].config.items() if k not in ("op_types", "op_names", "op_partial_names")}
        for key in ("sparsity", "total_sparsity"):
            if key in config:
                config[key] = sparsity_of(config[key])
        if "max_sparsity_per_layer" in config and isinstance(config["max_sparsity_per_layer"], float):
            config["max_sparsity_per_layer"] = max(config["max_sparsity_per_layer"], config.get("total_sparsity", 0.0))
        config["op_names"] = [cfg.name for cfg in members]
        config["op_types"] = sorted({op_type(cfg.module) for cfg in members})
        out.append(config)
    return out


@dataclass
class IterationResult:
    """One iteration of an iterative pruner: its sparsity targets, score, masks and a copy of the model."""

    iteration: int
    sparsity: dict[str, float]
    score: float | None
    masks: Masks = field(repr=False)
    model: nn.Module | None = field(default=None, repr=False)


def _check_positive(name: str, value: Any, allow_none: bool = True) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name}: expected a positive int{' or None' if allow_none else ''}, got {value!r}")


class IterativePruner(Pruner):
    """Base of pruners that alternate pruning, (optional) speedup, fine-tuning and evaluation.

    Each iteration is recorded in :attr:`history`; :meth:`get_best_result` returns the one with the best
    evaluator score (a deep copy of the model and its masks), and :meth:`restore_best` puts its weights and
    masks back into the model.
    """

    def __init__(self, model: nn.Module, config_list: list[dict], *, evaluator: Evaluator | None = None,
                 training_steps: int | None = None, training_epochs: int | None = None, speedup: bool = False,
                 dummy_input: Any = None, keep_best: bool = True) -> None:
        super().__init__(model, config_list)
        if evaluator is not None and not isinstance(evaluator, Evaluator):
            raise TypeError(f"evaluator: expected an nnic.evaluator.Evaluator, got {type(evaluator).__name__}")
        _check_positive("training_steps", training_steps)
        _check_positive("training_epochs", training_epochs)
        self.evaluator = evaluator
        self.training_steps, self.training_epochs = training_steps, training_epochs
        self.speedup = speedup
        self.dummy_input = dummy_input if dummy_input is not None else getattr(evaluator, "dummy_input", None)
        if speedup and self.dummy_input is None:
            raise ValueError("speedup=True needs a dummy_input (or an evaluator that has one)")
        self.keep_best = keep_best
        self.history: list[IterationResult] = []
        self.best: IterationResult | None = None

    # -- the pieces an iteration is made of ---------------------------------------------------------------
    def fine_tune(self, **hooks: Iterable[Any]) -> int:
        """Train with the evaluator for the configured steps/epochs (nothing without an evaluator)."""
        if self.evaluator is None or (self.training_steps is None and self.training_epochs is None):
            return 0
        return self.evaluator.train(self.model, max_steps=self.training_steps, max_epochs=self.training_epochs,
                                    **hooks)

    def score(self) -> float | None:
        if self.evaluator is None or self.evaluator.evaluating_func is None:
            return None
        return self.evaluator.evaluate(self.model)

    def sparsity_at(self, target: float, t: int) -> float:
        """The sparsity iteration ``t`` (1..T) prunes a layer whose final target is ``target`` to."""
        raise NotImplementedError

    def finish_iteration(self, t: int, masks: Masks) -> None:
        """Fine-tune, score and record iteration ``t`` with the sparsity each layer was pruned to."""
        self.fine_tune()
        targets = {name: self.sparsity_at(cfg.config.get("sparsity", cfg.config.get("total_sparsity", 0.0)), t)
                   for name, cfg in self.layers.items()}
        self.record(t, targets, masks, self.score())

    def record(self, iteration: int, sparsity: dict[str, float], masks: Masks, score: float | None) -> None:
        result = IterationResult(iteration, sparsity, score, {k: dict(v) for k, v in masks.items()})
        self.history.append(result)
        better = score is not None and (self.best is None or self.best.score is None or score > self.best.score)
        if self.keep_best and (better or self.best is None):
            result.model = copy.deepcopy(self.model)
            if self.best is not None:
                self.best.model = None  # keep one copy only
            self.best = result

    def get_best_result(self) -> IterationResult:
        """The iteration with the highest evaluator score (the first one when nothing was scored)."""
        if self.best is None:
            raise RuntimeError("no result yet: call compress() first" if not self.history else
                               "keep_best=False: no model copy was kept")
        return self.best

    def restore_best(self) -> nn.Module:
        """Load the best iteration's weights and masks into the model (same architecture, i.e. no speedup)."""
        best = self.get_best_result()
        state = best.model.state_dict()
        self.model.load_state_dict(state)
        modules = dict(self.model.named_modules())
        for layer, per_param in best.masks.items():
            for pname, mask in per_param.items():
                if mask is not None:
                    attach_mask(modules[layer], pname, mask)
        self.masks = best.masks
        return self.model


def snapshot(model: nn.Module) -> dict[tuple[str, str], torch.Tensor]:
    """Copies of every stored parameter and buffer, keyed by (module, name), whatever the parametrizations."""
    out = {}
    for mname, module in model.named_modules():
        if mname.endswith(".parametrizations") or ".parametrizations." in mname or mname == "parametrizations":
            continue
        names = [n for n, _ in module.named_parameters(recurse=False)] + prunable_parameters(module)
        names += [n for n, _ in module.named_buffers(recurse=False)]
        for name in dict.fromkeys(names):
            out[(mname, name)] = parameter(module, name).detach().clone()
    return out


def rewind(model: nn.Module, saved: dict[tuple[str, str], torch.Tensor], masks: Masks) -> None:
    """Copy ``saved`` values back into the model, then re-zero the pruned weights."""
    modules = dict(model.named_modules())
    with torch.no_grad():
        for (mname, name), value in saved.items():
            parameter(modules[mname], name).copy_(value)
    for layer, per_param in masks.items():
        for pname, mask in per_param.items():
            if mask is not None:
                attach_mask(modules[layer], pname, mask)
