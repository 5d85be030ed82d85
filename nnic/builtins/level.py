"""Level pruner: fine-grained magnitude pruning with exact counts, per layer or with one global threshold."""

from __future__ import annotations

from collections import defaultdict

import torch

import nnic
from nnic import kernels
from nnic.masking import Masks, parameter, prunable_parameters
from nnic.pruning.base import Pruner
from nnic.selection import amount


class LevelPruner(Pruner):
    """Prune the smallest-magnitude weights of each selected layer.

    - ``sparsity`` (per layer): exactly ``floor(sparsity * n)`` weights of each weight tensor are pruned.
    - ``total_sparsity``: the layers one config entry selects share one threshold; exactly
      ``floor(total_sparsity * N)`` of their N weights are pruned, the smallest in magnitude across all of them,
      and no tensor goes past ``max_sparsity_per_layer`` (the rest is re-spread over the others).

    Ties at the threshold are broken deterministically: the first in layer order, then in flat index order,
    are pruned first. Biases are not pruned.

    Example::

        pruner = nnic.pruner("level", model, [{"sparsity": 0.8, "op_types": ["Linear"]}])
        model, masks = pruner.compress()
    """

    name = "level"
    aliases = ("magnitude",)

    def calculate_masks(self) -> Masks:
        masks: Masks = {}
        groups: dict[int, list[tuple[str, str]]] = defaultdict(list)
        for layer, cfg in self.layers.items():
            masks[layer] = {}
            for pname in prunable_parameters(cfg.module):
                bias = pname.removesuffix("weight") + "bias"
                if isinstance(getattr(cfg.module, bias, None), torch.Tensor):
                    masks[layer][bias] = None  # biases are kept whole
                if "total_sparsity" in cfg.config:
                    groups[cfg.entry_index].append((layer, pname))
                else:
                    weight = self._weight(layer, pname)
                    k = amount(cfg.config["sparsity"], weight.numel())
                    masks[layer][pname] = self._guard(layer, pname, kernels.smallest_abs_mask, weight, k)
        for entry_index, members in groups.items():
            entry = self.config_list[entry_index]
            for (layer, pname), mask in zip(members, self._group_masks(members, entry)):
                masks[layer][pname] = mask
        return masks

    def _weight(self, layer: str, pname: str) -> torch.Tensor:
        # The kernels select on float32; half-precision values convert exactly, so the order is the same.
        return parameter(self.layers[layer].module, pname).detach().float()

    @staticmethod
    def _guard(layer, pname, fn, *args):
        """Run a kernel, naming the layer in its error (a NaN weight, say)."""
        try:
            return fn(*args)
        except ValueError as exc:
            raise ValueError(f"{layer}.{pname}: {exc}") from exc

    def _group_masks(self, members: list[tuple[str, str]], entry: dict) -> list[torch.Tensor]:
        """Masks for one total_sparsity group: a global threshold, water-filled under the per-layer caps."""
        weights = [self._weight(layer, pname) for layer, pname in members]
        total = amount(entry["total_sparsity"], sum(w.numel() for w in weights))
        caps = [amount(self._cap(entry, layer), w.numel()) for (layer, _), w in zip(members, weights)]
        if total > sum(caps):
            raise ValueError(
                f"total_sparsity {entry['total_sparsity']} cannot be reached: max_sparsity_per_layer lets at most "
                f"{sum(caps)} of {sum(w.numel() for w in weights)} weights be pruned"
            )
        fixed: dict[int, torch.Tensor] = {}
        remaining = total
        while True:
            active = [i for i in range(len(weights)) if i not in fixed]
            masks = kernels.global_smallest_abs_masks([weights[i] for i in active], remaining)
            over = [i for i, m in zip(active, masks) if int((~m).sum()) > caps[i]]
            if not over:
                fixed.update(zip(active, masks))
                return [fixed[i] for i in range(len(weights))]
            for i in over:
                fixed[i] = kernels.smallest_abs_mask(weights[i], caps[i])
                remaining -= caps[i]

    @staticmethod
    def _cap(entry: dict, layer: str) -> float:
        cap = entry.get("max_sparsity_per_layer", 1.0)
        if isinstance(cap, dict):
            return cap.get(layer, 1.0)
        return cap


@nnic.hookimpl
def register_pruners(register) -> None:
    register(LevelPruner)
