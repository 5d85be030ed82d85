"""ADMM pruner (Zhang et al. 2018): sparsity as a constraint solved by the alternating direction method.

Each of ``iterations`` rounds trains with the loss ``L(W) + sum_layers rho/2 * ||W - Z + U||^2``, then sets
``Z`` to the projection of ``W + U`` on the sparsity constraint (keep the largest magnitudes, exact count) and
``U += W - Z``. The weights are pulled towards a sparse solution during training, so the final magnitude
pruning of ``W`` loses little; fine-tune afterwards as with any pruner.
"""

from __future__ import annotations

import torch
from torch import nn

import nnic
from nnic.pruning.iterative import masks_from_scores
from nnic.config import float_key
from nnic.evaluator import Evaluator
from nnic.masking import Masks, attach_mask
from nnic.pruning.base import Pruner

__all__ = ["ADMMPruner"]


class ADMMPruner(Pruner):
    """Train towards the sparsity constraint with ADMM, then prune by magnitude to exactly the target.

    :param evaluator: the :class:`~nnic.evaluator.Evaluator` whose loop trains the model each round.
    :param iterations: ADMM rounds.
    :param training_steps, training_epochs: training per round.

    Config keys: ``sparsity`` or ``total_sparsity``; ``rho`` (penalty weight, > 0, default 1e-4 as in NNI;
    larger pulls harder).

    Example::

        pruner = nnic.pruner("admm", model, [{"sparsity": 0.8, "rho": 1e-3, "op_types": ["Linear"]}],
                             evaluator=evaluator, iterations=5, training_epochs=1)
        model, masks = pruner.compress()
    """

    name = "admm"
    config_keys = (float_key("rho", 0, None, lo_closed=False, default=1e-4),)

    def __init__(self, model: nn.Module, config_list: list[dict], *, evaluator: Evaluator, iterations: int = 10,
                 training_steps: int | None = None, training_epochs: int | None = None) -> None:
        super().__init__(model, config_list)
        if not isinstance(evaluator, Evaluator):
            raise TypeError(f"evaluator: expected an nnic.evaluator.Evaluator, got {type(evaluator).__name__}")
        if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 1:
            raise ValueError(f"iterations: expected a positive int, got {iterations!r}")
        if training_steps is None and training_epochs is None:
            raise ValueError("ADMM trains every round: give training_steps or training_epochs")
        self.evaluator, self.iterations = evaluator, iterations
        self.training_steps, self.training_epochs = training_steps, training_epochs
        self.Z: dict[str, torch.Tensor] = {}
        self.U: dict[str, torch.Tensor] = {}

    def _weights(self) -> dict[str, torch.Tensor]:
        return {name: cfg.module.weight for name, cfg in self.layers.items()}

    def _project(self, values: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], Masks]:
        masks = masks_from_scores(self.layers, {k: v.abs() for k, v in values.items()})
        return {k: v * masks[k]["weight"] for k, v in values.items()}, masks

    def _penalty(self) -> torch.Tensor:
        total = torch.zeros(())
        for name, w in self._weights().items():
            rho = self.layers[name].config["rho"]
            total = total + rho / 2 * (w - self.Z[name] + self.U[name]).pow(2).sum()
        return total

    def calculate_masks(self) -> Masks:
        """Magnitude masks of the current weights at exactly the target sparsity (as NNI's final step)."""
        return self._project({k: w.detach() for k, w in self._weights().items()})[1]

    def compress(self) -> tuple[nn.Module, Masks]:
        with torch.no_grad():
            weights = {k: w.detach().clone() for k, w in self._weights().items()}
            self.Z, _ = self._project(weights)
            self.U = {k: torch.zeros_like(w) for k, w in weights.items()}
        for _ in range(self.iterations):
            self.evaluator.train(self.model, max_steps=self.training_steps, max_epochs=self.training_epochs,
                                 loss_hooks=[self._penalty])
            with torch.no_grad():
                weights = {k: w.detach().clone() for k, w in self._weights().items()}
                self.Z, _ = self._project({k: weights[k] + self.U[k] for k in weights})
                for k in weights:
                    self.U[k] += weights[k] - self.Z[k]
        with torch.no_grad():
            masks = self.calculate_masks()
        for layer, per_param in masks.items():
            attach_mask(self.layers[layer].module, "weight", per_param["weight"])
        self.masks = masks
        return self.model, masks


@nnic.hookimpl
def register_pruners(register) -> None:
    register(ADMMPruner)
