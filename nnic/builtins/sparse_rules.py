"""The speedup rule of :class:`~nnic.sparse.SparseLinear`, a built-in plugin like any other.

With it, ``speedup_model`` can run on a model that already holds sparse layers (their input and output channels
are removed like a Linear's, reading which weights are stored), and ``load_pruned`` may rebuild ``SparseLinear``
modules from a manifest (it rebuilds only classes that an installed rule handles).
"""

from __future__ import annotations

import torch
from torch import nn

import nnic
from nnic.sparse.modules import SparseLinear
from nnic.speedup.rules import ChannelMixRule


class SparseLinearRule(ChannelMixRule):
    name = "nnic.sparse.sparselinear"
    targets = (SparseLinear,)
    shape_attrs = ("in_features", "out_features")

    def usage(self, module: nn.Module) -> torch.Tensor:
        return module.stored_mask().cpu()

    def shrink(self, module: nn.Module, keep: dict[str, torch.Tensor]) -> nn.Module:
        new = module.select(keep.get("out"), keep.get("in"))
        return new.train(module.training)


@nnic.hookimpl
def register_speedup_rules(register) -> None:
    register(SparseLinearRule())
