"""What a recipe's ``data`` factory returns: the batches and the score that training and reports use."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn


@dataclass
class Data:
    """Batches for a recipe.

    :param train: ``(input, target)`` batches, iterated once per epoch (a ``DataLoader`` or a list).
    :param eval: ``(input, target)`` batches the report scores the model on (optional).
    :param metric: ``metric(model, eval) -> float``, higher is better; top-1 accuracy in percent by default.
    :param metric_name: how reports label the metric.
    :param criterion: the training loss, ``criterion(output, target)``; cross-entropy by default.
    :param calibration: model inputs for quantizer calibration; the inputs of ``train`` by default.
    """

    train: Iterable[Any]
    eval: Iterable[Any] | None = None
    metric: Callable[[nn.Module, Iterable[Any]], float] | None = None
    metric_name: str = "accuracy (%)"
    criterion: Callable[..., torch.Tensor] | None = None
    calibration: Iterable[Any] | None = None

    def __post_init__(self) -> None:
        from nnic.evaluator import accuracy

        if self.metric is None:
            self.metric = accuracy
        if self.criterion is None:
            self.criterion = nn.CrossEntropyLoss()

    def score(self, model: nn.Module) -> float | None:
        """The metric of ``model`` on the eval batches, in eval mode without gradients (None without eval)."""
        if self.eval is None:
            return None
        was = model.training
        model.eval()
        try:
            with torch.inference_mode():
                return float(self.metric(model, self.eval))
        finally:
            model.train(was)

    def calibration_inputs(self, limit: int) -> list[Any]:
        """Up to ``limit`` model inputs for calibration."""
        source = self.calibration if self.calibration is not None else (b[0] for b in self.train)
        out = []
        for x in source:
            out.append(x)
            if len(out) >= limit:
                break
        return out
