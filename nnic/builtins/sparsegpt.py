"""SparseGPT: one-shot pruning with optimal-brain-surgeon updates of the remaining weights.

Frantar & Alistarh 2023, "SparseGPT: Massive Language Models Can Be Accurately Pruned in One-Shot". The mask
of each block of 128 columns is chosen by ``w^2 / [H^-1]_jj^2`` and the pruned weights' error is compensated
by the columns not yet visited (:func:`nnic.llm.obs.sparsegpt_prune`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import nn

import nnic
from nnic.llm import layers as L
from nnic.llm.hessian import Hessian
from nnic.llm.obs import sparsegpt_prune
from nnic.llm.oneshot import OneShotPruner

__all__ = ["SparseGPTPruner"]


class SparseGPTPruner(OneShotPruner):
    """SparseGPT pruning, unstructured or N:M; see :class:`OneShotPruner` for the config keys.

    :param damp: dampening added to the Hessian's diagonal, as a fraction of its mean (default 0.01).
    :param block_size: columns per lazy-update block (default 128).

    Example::

        pruner = nnic.pruner("sparsegpt", model, [{"n": 2, "m": 4, "op_types": ["Linear"]},
                                                  {"exclude": True, "op_names": ["lm_head"]}],
                             calibration_data=batches)
        model, masks = pruner.compress()
    """

    name = "sparsegpt"

    def __init__(self, model: nn.Module, config_list: list[dict], *, calibration_data: Iterable[Any] | None = None,
                 blocks: str | Sequence[str] | None = None, calibration_steps: int | None = None,
                 progress: bool | None = None, damp: float = 0.01, block_size: int = 128) -> None:
        if not (isinstance(damp, (int, float)) and 0 <= damp < 1) or isinstance(damp, bool):
            raise ValueError(f"damp: expected a float in [0, 1), got {damp!r}")
        if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
            raise ValueError(f"block_size: expected a positive int, got {block_size!r}")
        self.damp, self.block_size = float(damp), block_size
        super().__init__(model, config_list, calibration_data=calibration_data, blocks=blocks,
                         calibration_steps=calibration_steps, progress=progress)

    def observe(self, name: str, module: nn.Module, x: torch.Tensor) -> None:
        self._stats.setdefault(name, Hessian(x.shape[1])).add(x)

    def prune(self, name: str, module: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
        p = self.pattern[name]
        h = self._stats.pop(name).get()
        return sparsegpt_prune(L.weight_matrix(module).to(h.device), h, sparsity=p["sparsity"], n=p["n"],
                               m=p["m"], scope=p["scope"], damp=self.damp, block_size=self.block_size)


@nnic.hookimpl
def register_pruners(register) -> None:
    register(SparseGPTPruner)
