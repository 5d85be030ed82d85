"""Norm-based channel pruners: L1-norm, L2-norm and FPGM (geometric median), as a built-in plugin.

Each scores the output channels of the selected layers from their weights alone (no data):

- ``l1norm``: the L1 norm of the channel's weights (Li et al., *Pruning Filters for Efficient ConvNets*);
- ``l2norm``: the L2 norm;
- ``fpgm``: the summed distance to the other channels' weights; the channels nearest the geometric median are
  the most replaceable (He et al., *Filter Pruning via Geometric Median*).

Example::

    pruner = nnic.pruner("l1norm", model, [{"sparsity": 0.5, "op_types": ["Conv2d"]}],
                         dependency_aware=True, dummy_input=torch.rand(1, 3, 224, 224))
    model, masks = pruner.compress()
    nnic.speedup_model(model, torch.rand(1, 3, 224, 224), masks)
"""

from __future__ import annotations

import torch

import nnic
from nnic.pruning.structured import StructuredPruner, weight_rows


class L1NormPruner(StructuredPruner):
    name = "l1norm"
    aliases = ("l1",)
    p = 1

    def channel_scores(self) -> dict[str, torch.Tensor]:
        # The L1 norm as a float32 sum of absolute values (torch's cascaded, vectorised sum), in float64 after:
        # 2.7x faster than accumulating in float64 (0.021 s against 0.057 s over ResNet-50's weights, whose cast
        # per element is not vectorised), within 2e-7 relatively, and the same lowest half on all 468 Conv2d and
        # Linear layers of seven torchvision families (vector_norm's float64 path is slower still).
        if self.p == 1:
            return l1_rows({n: weight_rows(cfg.module) for n, cfg in self.layers.items()})
        return {n: torch.linalg.vector_norm(weight_rows(cfg.module), ord=self.p, dim=1, dtype=torch.float64)
                for n, cfg in self.layers.items()}


def l1_rows(rows: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Each ``[out, k]`` matrix's row sums of absolute values (float32 sums, in float64 after), the same bits as
    ``rows.abs().sum(1)``: the absolute values of each contiguous matrix go into one buffer, reused for every
    layer of its dtype and device, instead of a fresh weight-sized tensor per layer (ConvNeXt-tiny's 28M weights:
    the fresh memory's page faults were half of its scores' time)."""
    sizes: dict[tuple[torch.dtype, torch.device], int] = {}
    for r in rows.values():
        if r.is_contiguous():
            sizes[(r.dtype, r.device)] = max(sizes.get((r.dtype, r.device), 0), r.numel())
    buffers = {key: torch.empty(n, dtype=key[0], device=key[1]) for key, n in sizes.items()}
    out = {}
    for name, r in rows.items():
        if r.is_contiguous():
            r = torch.abs(r, out=buffers[(r.dtype, r.device)][:r.numel()].view(r.shape))
        else:
            r = r.abs()
        out[name] = r.sum(1).double()
    return out


class L2NormPruner(L1NormPruner):
    name = "l2norm"
    aliases = ("l2",)
    p = 2


class FPGMPruner(StructuredPruner):
    name = "fpgm"
    aliases = ()

    def channel_scores(self) -> dict[str, torch.Tensor]:
        out = {}
        for n, cfg in self.layers.items():
            rows = weight_rows(cfg.module).double()
            out[n] = torch.cdist(rows, rows).sum(1)
        return out


@nnic.hookimpl
def register_pruners(register) -> None:
    register(L1NormPruner)
    register(L2NormPruner)
    register(FPGMPruner)
