"""Taylor first-order channel pruner (Molchanov et al. 2019) as a built-in plugin.

A channel's importance is ``(sum over its weights of weight * gradient)^2``, accumulated over a few batches of
gradients: give ``evaluator=`` (trained for ``training_steps`` optimizer steps) or ``data=`` batches of
``(inputs, target)`` with ``criterion=``.
"""

from __future__ import annotations

import torch

import nnic
from nnic.pruning.structured import StructuredPruner, weight_rows


class TaylorPruner(StructuredPruner):
    name = "taylor"
    aliases = ("taylorfo", "taylor_fo_weight")

    def channel_scores(self) -> dict[str, torch.Tensor]:
        scores = {n: torch.zeros(weight_rows(cfg.module).shape[0], dtype=torch.float64)
                  for n, cfg in self.layers.items()}
        hooks = []
        for n, cfg in self.layers.items():
            module = cfg.module

            def hook(grad, n=n, module=module):
                w, g = weight_rows(module).double(), weight_rows(module, grad).double()
                scores[n] += ((w * g).sum(1) ** 2).cpu()

            hooks.append(module.weight.register_hook(hook))
        self.run_data(backward=True, hooks=hooks)
        return scores


@nnic.hookimpl
def register_pruners(register) -> None:
    register(TaylorPruner)
