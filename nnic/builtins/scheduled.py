"""Scheduled pruning: AGP (cubic) and Linear schedules over any base pruner, with fine-tuning in between.

Iteration t of T prunes with the base pruner (``level`` by default, or any registered pruner: ``l1norm``,
``fpgm``...) to the scheduled sparsity, optionally runs speedup, fine-tunes through the evaluator and scores the
result. The last iteration reaches exactly the configured sparsity; the best-scored iteration is kept
(:meth:`~nnic.pruning.iterative.IterativePruner.get_best_result`).
"""

from __future__ import annotations

from typing import Any

from torch import nn

import nnic
from nnic.evaluator import Evaluator
from nnic.masking import Masks
from nnic.plugins import get_registry
from nnic.pruning.iterative import IterativePruner, per_layer_config
from nnic.selection import op_type

__all__ = ["AGPPruner", "LinearPruner", "ScheduledPruner"]


class ScheduledPruner(IterativePruner):
    """Prune in ``total_iteration`` steps along a schedule; subclasses give :meth:`fraction`.

    :param pruning_algorithm: the registered name of the base pruner run at each iteration.
    :param total_iteration: number of prune/fine-tune iterations (T).
    :param evaluator: an :class:`~nnic.evaluator.Evaluator`; without one there is no fine-tuning or scoring.
    :param training_steps, training_epochs: fine-tuning per iteration.
    :param speedup: run ``nnic.speedup_model`` after each pruning step (per-layer ``sparsity`` only); later
        targets are then relative to each layer's *original* size.
    :param pruning_params: extra keyword arguments for the base pruner.
    """

    def __init__(self, model: nn.Module, config_list: list[dict], pruning_algorithm: str = "level",
                 total_iteration: int = 10, *, evaluator: Evaluator | None = None,
                 training_steps: int | None = None, training_epochs: int | None = None, speedup: bool = False,
                 dummy_input: Any = None, pruning_params: dict[str, Any] | None = None,
                 keep_best: bool = True) -> None:
        # Validate the config_list with the base pruner's own extra keys too.
        self.config_keys = get_registry().get("pruner", pruning_algorithm).obj.config_keys
        super().__init__(model, config_list, evaluator=evaluator, training_steps=training_steps,
                         training_epochs=training_epochs, speedup=speedup, dummy_input=dummy_input,
                         keep_best=keep_best)
        if isinstance(total_iteration, bool) or not isinstance(total_iteration, int) or total_iteration < 1:
            raise ValueError(f"total_iteration: expected a positive int, got {total_iteration!r}")
        if speedup and any("total_sparsity" in cfg.config for cfg in self.layers.values()):
            raise ValueError("speedup=True supports per-layer 'sparsity' only, not 'total_sparsity'")
        self.pruning_algorithm = pruning_algorithm
        self.total_iteration = total_iteration
        self.pruning_params = dict(pruning_params or {})
        # Output units (rows / channels) per layer: what structured pruning plus speedup removes. Weight counts
        # would mislead, as a layer's weight also shrinks when its producer loses channels.
        self._original_units = {name: cfg.module.weight.shape[0] for name, cfg in self.layers.items()
                                if hasattr(cfg.module, "weight")}

    def fraction(self, t: int) -> float:
        """The fraction of the target sparsity reached after iteration ``t`` (1..T); 1.0 exactly at T."""
        raise NotImplementedError

    def sparsity_at(self, target: float, t: int) -> float:
        return target if t == self.total_iteration else target * self.fraction(t)

    def _iteration_config(self, t: int) -> list[dict]:
        config = per_layer_config(self.layers, lambda s: self.sparsity_at(s, t))
        if not self.speedup:
            return config
        # After speedup a layer is smaller: prune the part of its *current* units that brings it to the target.
        modules = dict(self.model.named_modules())
        out = []
        for entry in config:
            for name in entry["op_names"]:
                current = modules[name].weight.shape[0]
                relative = 1.0 - (1.0 - entry["sparsity"]) * self._original_units[name] / max(current, 1)
                if relative > 0:
                    out.append({**entry, "op_names": [name], "op_types": [op_type(modules[name])],
                                "sparsity": min(relative, 0.999999)})
        return out

    def calculate_masks(self) -> Masks:
        """The base pruner's masks at the final target, without the schedule (one-shot)."""
        config = per_layer_config(self.layers, lambda s: s)
        return nnic.pruner(self.pruning_algorithm, self.model, config, **self.pruning_params).calculate_masks()

    def compress(self) -> tuple[nn.Module, Masks]:
        """Run the T iterations; returns the model at the final sparsity and its masks."""
        masks: Masks = {}
        for t in range(1, self.total_iteration + 1):
            config = self._iteration_config(t)
            if config:
                step = nnic.pruner(self.pruning_algorithm, self.model, config, **self.pruning_params)
                if self.speedup:  # prune and shrink at once: no mask parametrizations attached only to be folded
                    masks = nnic.prune_and_speedup(step, self.dummy_input).masks
                else:
                    _, masks = step.compress()
            self.finish_iteration(t, masks)
        self.masks = masks
        return self.model, masks


class AGPPruner(ScheduledPruner):
    """Automated gradual pruning (Zhu & Gupta 2017): sparsity ``s * (1 - (1 - t/T)^3)`` at iteration t.

    Example::

        pruner = nnic.pruner("agp", model, [{"sparsity": 0.8, "op_types": ["Conv2d", "Linear"]}],
                             pruning_algorithm="level", total_iteration=5, evaluator=evaluator,
                             training_epochs=1)
        model, masks = pruner.compress()
    """

    name = "agp"

    def fraction(self, t: int) -> float:
        return 1.0 - (1.0 - t / self.total_iteration) ** 3


class LinearPruner(ScheduledPruner):
    """Linear schedule: sparsity ``s * t / T`` at iteration t (same arguments as :class:`AGPPruner`)."""

    name = "linear"

    def fraction(self, t: int) -> float:
        return t / self.total_iteration


@nnic.hookimpl
def register_pruners(register) -> None:
    register(AGPPruner)
    register(LinearPruner)
