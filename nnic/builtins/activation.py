"""Activation-based channel pruners as a built-in plugin: APoZ and mean activation (Hu et al. 2016).

The selected layers' outputs are observed on data (``evaluator=`` training steps, or ``data=`` input batches),
after ``activation`` (ReLU by default, as the layer's output feeds one):

- ``apoz``: a channel whose activations are mostly zero (high Average Percentage of Zeros) goes first;
- ``mean_activation``: a channel with the smallest mean activation goes first.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

import nnic
from nnic.pruning.structured import StructuredPruner


class ActivationPruner(StructuredPruner):
    """Base: collects per-channel statistics of ``activation(layer output)`` over the data."""

    def __init__(self, model: nn.Module, config_list: list[dict], *,
                 activation: Callable[[torch.Tensor], torch.Tensor] = torch.relu, **kwargs) -> None:
        super().__init__(model, config_list, **kwargs)
        self.activation = activation

    def statistic(self, act: torch.Tensor) -> torch.Tensor:
        """``[batch, channels, ...]`` activation -> per-channel sum to accumulate (divided by the count)."""
        raise NotImplementedError

    def channel_scores(self) -> dict[str, torch.Tensor]:
        sums: dict[str, torch.Tensor] = {}
        counts: dict[str, int] = {}
        hooks = []
        for n, cfg in self.layers.items():
            def hook(module, inputs, output, n=n):
                y = self.activation(output.detach())
                y = y.movedim(-1, 1) if isinstance(module, (nn.Linear, nn.Embedding)) and y.dim() > 2 else y
                flat = y.movedim(1, 0).reshape(y.shape[1], -1).double() if y.dim() > 1 else y.double()[:, None]
                sums[n] = sums.get(n, 0) + self.statistic(flat).cpu()
                counts[n] = counts.get(n, 0) + flat.shape[1]

            hooks.append(cfg.module.register_forward_hook(hook))
        self.run_data(backward=False, hooks=hooks)
        missing = [n for n in self.layers if n not in sums]
        if missing:
            raise ValueError(f"{self.name}: layers {missing} were never called on the data")
        return {n: self.score(sums[n] / counts[n]) for n in self.layers}

    def score(self, mean: torch.Tensor) -> torch.Tensor:
        return mean


class APoZPruner(ActivationPruner):
    name = "apoz"
    aliases = ()

    def statistic(self, flat: torch.Tensor) -> torch.Tensor:
        return (flat == 0).sum(1).double()

    def score(self, mean: torch.Tensor) -> torch.Tensor:
        return 1.0 - mean  # fewer zeros: more important


class MeanActivationPruner(ActivationPruner):
    name = "mean_activation"
    aliases = ("meanactivation",)

    def statistic(self, flat: torch.Tensor) -> torch.Tensor:
        return flat.sum(1)


@nnic.hookimpl
def register_pruners(register) -> None:
    register(APoZPruner)
    register(MeanActivationPruner)
