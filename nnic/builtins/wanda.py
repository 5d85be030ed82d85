"""Wanda: prune by ``|W_ij| * ||X_j||_2``, weight magnitude times the norm of its input over calibration tokens.

Sun et al. 2023, "A Simple and Effective Pruning Approach for Large Language Models". No weight update; the
scores are compared within each output row (the paper's choice, ``sparsity_scope: "row"``, the default), within
the layer, or within each group of ``m`` inputs for N:M.
"""

from __future__ import annotations

import torch
from torch import nn

import nnic
from nnic.llm import layers as L
from nnic.llm.oneshot import OneShotPruner
from nnic.llm.patterns import nm_keep, prune_lowest
from nnic.selection import amount

__all__ = ["WandaPruner"]


class WandaPruner(OneShotPruner):
    """Wanda pruning, unstructured or N:M, from calibration activations; see :class:`OneShotPruner` for keys.

    Example::

        pruner = nnic.pruner("wanda", model, [{"sparsity": 0.5, "op_types": ["Linear", "Conv1D"]},
                                              {"exclude": True, "op_names": ["lm_head"]}],
                             calibration_data=batches)
        model, masks = pruner.compress()
    """

    name = "wanda"

    def observe(self, name: str, module: nn.Module, x: torch.Tensor) -> None:
        self._stats[name] = self._stats.get(name, 0) + x.pow(2).sum(0)

    def prune(self, name: str, module: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
        w = L.weight_matrix(module)
        scores = w.abs() * self._stats.pop(name).sqrt().unsqueeze(0)
        p = self.pattern[name]
        if p["n"] is not None:
            return w, nm_keep(scores, p["n"], p["m"])
        k = amount(p["sparsity"], w.shape[1] if p["scope"] == "row" else w.numel())
        return w, prune_lowest(scores, k, p["scope"])


@nnic.hookimpl
def register_pruners(register) -> None:
    register(WandaPruner)
