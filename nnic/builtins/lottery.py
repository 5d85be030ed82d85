"""Lottery ticket pruner (Frankle & Carbin 2019): iterative magnitude pruning with rewinding.

The weights the model has when the pruner is built are saved (the *initial* weights, or pass
``rewind_state`` to rewind elsewhere). Then: train; for each of T rounds prune to the round's sparsity with the
base pruner on the trained weights, rewind every surviving weight (and buffer) to its saved value, train again
and score. Round t targets ``1 - (1 - s)^(t/T)``: the same fraction of the remaining weights each round, ending
exactly at s.
"""

from __future__ import annotations

from typing import Any

from torch import nn

import nnic
from nnic.pruning.iterative import IterativePruner, per_layer_config, rewind, snapshot
from nnic.evaluator import Evaluator
from nnic.masking import Masks
from nnic.plugins import get_registry

__all__ = ["LotteryTicketPruner"]


class LotteryTicketPruner(IterativePruner):
    """Find a sparse subnetwork that trains to the dense accuracy from the initial weights.

    :param pruning_algorithm: base pruner for each round (``level``, the original algorithm, by default).
    :param total_iteration: rounds T.
    :param evaluator: required: each round trains ``training_steps``/``training_epochs`` through it.
    :param reset_weight: rewind to the saved weights after each pruning step (``False`` = iterative pruning
        with fine-tuning, no rewinding).
    :param train_first: train before the first pruning step (set ``False`` when the model is already trained
        and ``rewind_state`` holds its initial weights).
    :param rewind_state: what to rewind to, as returned by :func:`nnic.pruning.iterative.snapshot`; the
        weights at construction by default.

    Example::

        pruner = nnic.pruner("lottery_ticket", model, [{"sparsity": 0.8, "op_types": ["Linear"]}],
                             total_iteration=3, evaluator=evaluator, training_epochs=2)
        model, masks = pruner.compress()
    """

    name = "lottery_ticket"
    aliases = ("lottery",)

    def __init__(self, model: nn.Module, config_list: list[dict], pruning_algorithm: str = "level",
                 total_iteration: int = 5, *, evaluator: Evaluator, training_steps: int | None = None,
                 training_epochs: int | None = None, reset_weight: bool = True, train_first: bool = True,
                 rewind_state: dict | None = None, pruning_params: dict[str, Any] | None = None,
                 keep_best: bool = True) -> None:
        self.config_keys = get_registry().get("pruner", pruning_algorithm).obj.config_keys
        super().__init__(model, config_list, evaluator=evaluator, training_steps=training_steps,
                         training_epochs=training_epochs, keep_best=keep_best)
        if evaluator is None:
            raise ValueError("evaluator: the lottery ticket pruner trains every round; pass an Evaluator")
        if training_steps is None and training_epochs is None:
            raise ValueError("the lottery ticket pruner needs training_steps or training_epochs per round")
        if isinstance(total_iteration, bool) or not isinstance(total_iteration, int) or total_iteration < 1:
            raise ValueError(f"total_iteration: expected a positive int, got {total_iteration!r}")
        self.pruning_algorithm, self.total_iteration = pruning_algorithm, total_iteration
        self.reset_weight, self.train_first = reset_weight, train_first
        self.pruning_params = dict(pruning_params or {})
        self.rewind_state = rewind_state if rewind_state is not None else snapshot(model)

    def sparsity_at(self, target: float, t: int) -> float:
        return target if t == self.total_iteration else 1.0 - (1.0 - target) ** (t / self.total_iteration)

    def calculate_masks(self) -> Masks:
        """One-shot masks at the final target from the current weights (no rounds)."""
        config = per_layer_config(self.layers, lambda s: s)
        return nnic.pruner(self.pruning_algorithm, self.model, config, **self.pruning_params).calculate_masks()

    def compress(self) -> tuple[nn.Module, Masks]:
        """Run the rounds; returns the final ticket (trained, at the target sparsity) and its masks."""
        if self.train_first:
            self.fine_tune()
        masks: Masks = {}
        for t in range(1, self.total_iteration + 1):
            config = per_layer_config(self.layers, lambda s, t=t: self.sparsity_at(s, t))
            _, masks = nnic.pruner(self.pruning_algorithm, self.model, config, **self.pruning_params).compress()
            if self.reset_weight:
                rewind(self.model, self.rewind_state, masks)
            self.finish_iteration(t, masks)
        self.masks = masks
        return self.model, masks


@nnic.hookimpl
def register_pruners(register) -> None:
    register(LotteryTicketPruner)
