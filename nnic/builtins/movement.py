"""Movement pruning (Sanh, Wolf & Rush 2020): prune the weights moving towards zero, while fine-tuning.

Every selected weight gets a score ``S = -sum_steps dL/dW' * W`` (``W' = W * mask``, the effective weight; the
gradient reaches masked weights' scores too, the straight-through estimator of hard movement pruning). After
every optimizer step the mask keeps the highest scores at the scheduled sparsity: 0 until ``warm_up_step``, then
cubic growth to the target at ``cool_down_beginning_step``, then the target until training ends. Masked weights
keep their value and can come back while the schedule runs; at the end the final mask is attached like any
pruner's (pruned weights zeroed, kept applied while training).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import parametrize

import nnic
from nnic.pruning.iterative import masks_from_scores
from nnic.evaluator import Evaluator
from nnic.masking import Masks, attach_mask, is_parametrized
from nnic.pruning.base import Pruner

__all__ = ["MovementMask", "MovementPruner"]


class MovementMask(nn.Module):
    """Parametrization ``W -> W * mask`` that also accumulates movement scores from the backward pass."""

    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mask", torch.ones_like(weight, dtype=torch.bool))
        self.register_buffer("score", torch.zeros_like(weight, dtype=torch.float32))

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        out = weight * self.mask
        if out.requires_grad:
            w = weight.detach()

            def accumulate(grad: torch.Tensor) -> None:
                self.score.sub_((grad * w).float())

            out.register_hook(accumulate)
        return out


class MovementPruner(Pruner):
    """Fine-prune while training through the evaluator; sparsity follows a cubic schedule in optimizer steps.

    :param evaluator: the :class:`~nnic.evaluator.Evaluator` whose loop trains the model.
    :param training_steps: optimizer steps to train (or ``training_epochs``, then give both step arguments).
    :param warm_up_step: steps at sparsity 0 (scores accumulate); default 10% of ``training_steps``.
    :param cool_down_beginning_step: step at which the target is reached; default 70% of ``training_steps``.

    Config keys: ``sparsity`` (per layer) or ``total_sparsity`` (scores ranked across the entry's layers).

    Example::

        pruner = nnic.pruner("movement", model, [{"sparsity": 0.5, "op_types": ["Linear"]}],
                             evaluator=evaluator, training_steps=600)
        model, masks = pruner.compress()
    """

    name = "movement"

    def __init__(self, model: nn.Module, config_list: list[dict], *, evaluator: Evaluator,
                 training_steps: int | None = None, training_epochs: int | None = None,
                 warm_up_step: int | None = None, cool_down_beginning_step: int | None = None) -> None:
        super().__init__(model, config_list)
        if not isinstance(evaluator, Evaluator):
            raise TypeError(f"evaluator: expected an nnic.evaluator.Evaluator, got {type(evaluator).__name__}")
        if training_steps is None and training_epochs is None:
            raise ValueError("movement pruning trains: give training_steps (or training_epochs)")
        if training_steps is None and (warm_up_step is None or cool_down_beginning_step is None):
            raise ValueError("with training_epochs only, give warm_up_step and cool_down_beginning_step (in steps)")
        warm = warm_up_step if warm_up_step is not None else training_steps // 10
        cool = cool_down_beginning_step if cool_down_beginning_step is not None else (training_steps * 7) // 10
        if not 0 <= warm < cool:
            raise ValueError(f"expected 0 <= warm_up_step < cool_down_beginning_step, got {warm} and {cool}")
        for cfg in self.layers.values():
            if not isinstance(getattr(cfg.module, "weight", None), torch.Tensor):
                raise TypeError(f"{cfg.name}: {type(cfg.module).__name__} has no 'weight' to prune")
        self.evaluator = evaluator
        self.training_steps, self.training_epochs = training_steps, training_epochs
        self.warm_up_step, self.cool_down_beginning_step = warm, cool

    def fraction(self, step: int) -> float:
        """Fraction of the target sparsity at optimizer step ``step``."""
        if step <= self.warm_up_step:
            return 0.0
        if step >= self.cool_down_beginning_step:
            return 1.0
        progress = (step - self.warm_up_step) / (self.cool_down_beginning_step - self.warm_up_step)
        return 1.0 - (1.0 - progress) ** 3

    def _movement_masks(self) -> dict[str, MovementMask]:
        return {name: next(p for p in cfg.module.parametrizations["weight"] if isinstance(p, MovementMask))
                for name, cfg in self.layers.items()}

    def calculate_masks(self, fraction: float = 1.0) -> Masks:
        """Masks from the accumulated scores (plain magnitude before any training) at ``fraction`` of the target."""
        if all(is_parametrized(cfg.module, "weight") for cfg in self.layers.values()) and \
                all(any(isinstance(p, MovementMask) for p in cfg.module.parametrizations["weight"])
                    for cfg in self.layers.values()):
            scores = {name: mm.score for name, mm in self._movement_masks().items()}
        else:
            scores = {name: cfg.module.weight.detach().abs() for name, cfg in self.layers.items()}
        return masks_from_scores(self.layers, scores, lambda s: s * fraction if fraction < 1.0 else s)

    def _update(self, step: int) -> None:
        fraction = self.fraction(step)
        masks = self.calculate_masks(fraction)
        for name, mm in self._movement_masks().items():
            mm.mask.copy_(masks[name]["weight"])

    def compress(self) -> tuple[nn.Module, Masks]:
        """Train with the schedule, then attach the final masks (exactly the target sparsity)."""
        for cfg in self.layers.values():
            parametrize.register_parametrization(cfg.module, "weight", MovementMask(cfg.module.weight), unsafe=True)
        try:
            self.evaluator.train(self.model, max_steps=self.training_steps, max_epochs=self.training_epochs,
                                 step_hooks=[self._update])
            with torch.no_grad():
                masks = self.calculate_masks()
        finally:
            for cfg in self.layers.values():
                _remove(cfg.module, "weight", MovementMask)
        for layer, per_param in masks.items():
            attach_mask(self.layers[layer].module, "weight", per_param["weight"])
        self.masks = masks
        return self.model, masks


def _remove(module: nn.Module, name: str, kind: type) -> None:
    plist = module.parametrizations[name]
    for i in reversed(range(len(plist))):
        if isinstance(plist[i], kind):
            if len(plist) == 1:
                parametrize.remove_parametrizations(module, name, leave_parametrized=False)
                return
            del plist[i]


@nnic.hookimpl
def register_pruners(register) -> None:
    register(MovementPruner)
