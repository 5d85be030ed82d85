"""Shared base of the channel (structured) pruners: score output channels, prune the lowest, everywhere.

A subclass implements :meth:`StructuredPruner.channel_scores` (``{layer: scores[out_channels]}``, higher is more
important). The base turns scores into masks:

- ``sparsity``: each selected layer loses ``floor(sparsity * channels)`` channels; ``total_sparsity``: the
  layers of one config entry share one ranking, ``floor(total_sparsity * total channels)`` go in all, no layer
  beyond ``max_sparsity_per_layer``;
- a layer always keeps at least one channel; with ``round_to=r`` the kept count is rounded up to a multiple of r;
- a pruned channel is masked in the layer's weight rows and bias and in the normalisation layer that follows
  (BatchNorm/GroupNorm/InstanceNorm weight and bias), so the masked model computes what the smaller one will;
- ``dependency_aware=True`` (needs ``dummy_input``) traces the model as speedup does: layers whose output channels
  are coupled (residual adds, grouped convs...) prune the same channel indices, chosen by the coupled channels'
  summed scores, and every coupled layer is masked, so that speedup can really remove them.

Pruners that need data take ``evaluator`` (an :class:`nnic.evaluator.Evaluator`, trained for
``training_steps`` steps) or ``data`` (an iterable of batches: ``(inputs, target)`` pairs with ``criterion`` for gradient-based
pruners; for activation-based ones, model inputs: a tensor, a tuple of positional arguments or a dict).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import torch
from torch import nn

from nnic.masking import Masks
from nnic.pruning.base import Pruner
from nnic.selection import amount

_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.GroupNorm, nn.InstanceNorm1d, nn.InstanceNorm2d,
          nn.InstanceNorm3d)


def out_dim(module: nn.Module) -> int:
    """The weight dimension that holds output channels."""
    return 1 if isinstance(module, nn.modules.conv._ConvTransposeNd) else 0


def out_channels(module: nn.Module) -> int:
    w = module.weight
    return w.shape[out_dim(module)] * (module.groups if isinstance(module, nn.modules.conv._ConvTransposeNd) else 1)


class StructuredPruner(Pruner):
    """Base of l1norm, l2norm, fpgm, slim, taylor, apoz and mean_activation."""

    def __init__(self, model: nn.Module, config_list: list[dict], *, dependency_aware: bool = False,
                 dummy_input: Any = None, round_to: int = 1, evaluator: Any = None, data: Iterable[Any] | None = None,
                 criterion: Callable[..., torch.Tensor] | None = None, training_steps: int = 5) -> None:
        super().__init__(model, config_list)
        if not isinstance(round_to, int) or isinstance(round_to, bool) or round_to < 1:
            raise ValueError(f"round_to: expected an int >= 1, got {round_to!r}")
        if dependency_aware and dummy_input is None:
            raise ValueError("dependency_aware=True needs dummy_input (to trace the model's channel coupling)")
        self.dependency_aware, self.dummy_input, self.round_to = dependency_aware, dummy_input, round_to
        self.evaluator, self.data, self.criterion, self.training_steps = evaluator, data, criterion, training_steps
        for name, cfg in self.layers.items():
            if getattr(cfg.module, "weight", None) is None or cfg.module.weight.dim() < 1:
                raise ValueError(f"{self.name} prunes output channels of layers with a weight; {name!r} "
                                 f"({type(cfg.module).__name__}) has none")

    # ---- to implement
    def channel_scores(self) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    # ---- data helpers for subclasses
    def run_data(self, *, backward: bool, hooks: Iterable[Any] = ()) -> None:
        """Run the user's data through the model: ``evaluator`` training steps, or one pass over ``data``.

        ``hooks`` (handles of the hooks that collect the pruner's statistics) are removed however the run ends.
        """
        try:
            self._run_data(backward=backward)
        finally:
            for handle in hooks:
                handle.remove()

    def _run_data(self, *, backward: bool) -> None:
        if self.evaluator is not None:
            with torch.enable_grad():
                self.evaluator.train(self.model, max_steps=self.training_steps)
            return
        if self.data is None:
            raise ValueError(f"{self.name} needs data: pass evaluator=... (an nnic Evaluator) or data=... "
                             f"(an iterable of {'(inputs, target) batches and criterion=...' if backward else 'input batches'})")
        was = self.model.training
        self.model.train(backward)
        try:
            for batch in self.data:
                if backward:
                    if self.criterion is None:
                        raise ValueError(f"{self.name}: data=... needs criterion=... to compute gradients")
                    x, y = batch
                    self.model.zero_grad()
                    with torch.enable_grad():  # compress() computes masks under no_grad
                        self.criterion(_call(self.model, x), y).backward()
                else:
                    with torch.no_grad():
                        _call(self.model, batch)
        finally:
            self.model.train(was)

    # ---- scores -> masks
    def calculate_masks(self) -> Masks:
        scores = {k: v.detach().double().cpu() for k, v in self.channel_scores().items()}
        if self.dependency_aware:
            pruned = self._dependency_aware(scores)
        else:
            pruned = self._independent(scores)
        return self._masks(pruned)

    def _keep_count(self, n: int, n_pruned: int) -> int:
        kept = max(n - n_pruned, 1)
        return min(n, math.ceil(kept / self.round_to) * self.round_to)

    def _independent(self, scores: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        pruned: dict[str, torch.Tensor] = {}
        groups: dict[int, list[str]] = defaultdict(list)
        for name, cfg in self.layers.items():
            if "total_sparsity" in cfg.config:
                groups[cfg.entry_index].append(name)
                continue
            n = scores[name].numel()
            pruned[name] = _lowest(scores[name], n - self._keep_count(n, amount(cfg.config["sparsity"], n)))
        for index, names in groups.items():
            entry = self.layers[names[0]].config
            flat = torch.cat([scores[n] for n in names])
            owner = torch.cat([torch.full((scores[n].numel(),), i) for i, n in enumerate(names)])
            budget = amount(entry["total_sparsity"], flat.numel())
            counts = [0] * len(names)
            caps = [self._cap(entry, n, scores[n].numel()) for n in names]
            for idx in torch.argsort(flat, stable=True).tolist():
                if budget == 0:
                    break
                i = int(owner[idx])
                if counts[i] < caps[i]:
                    counts[i] += 1
                    budget -= 1
            for i, n in enumerate(names):
                size = scores[n].numel()
                pruned[n] = _lowest(scores[n], size - self._keep_count(size, counts[i]))
        return pruned

    def _cap(self, entry: dict, layer: str, n: int) -> int:
        cap = entry.get("max_sparsity_per_layer", 1.0)
        cap = cap.get(layer, 1.0) if isinstance(cap, dict) else cap
        return min(amount(cap, n), n - 1)

    def _dependency_aware(self, scores: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        from nnic.channels.groups import coupling
        from nnic.plugins import get_registry

        rules = [info.obj for info in get_registry().list("speedup_rule")]  # the rules speedup will shrink with
        found = coupling(self.model, self.dummy_input, rules)
        groups = found.groups  # layer -> list of root ids per out channel
        self._coupled = groups
        ids = found.arrays or {n: np.asarray(g, dtype=np.int64) for n, g in groups.items()}
        chosen: list[np.ndarray] = []
        for names in _coupled_layers(list(self.layers), ids):
            if not all(n in groups for n in names):
                continue
            roots = np.unique(np.concatenate([ids[n] for n in names]))
            total = np.zeros(len(roots))  # the coupled channels' summed scores, per group
            smallest = len(roots)  # the fewest groups any of the layers has
            for n in names:
                at = np.searchsorted(roots, ids[n])  # each channel's group, as its place in roots
                total += np.bincount(at, weights=scores[n].numpy(), minlength=len(roots))
                # The layer's distinct groups: its places in roots, counted (a np.unique of its ids per layer
                # was a third of this loop, some 3 ms of EfficientNet-B0's pruning).
                smallest = min(smallest, int(np.count_nonzero(np.bincount(at, minlength=len(roots)))))
            sparsity = min(self.layers[n].config.get("sparsity", self.layers[n].config.get("total_sparsity", 0.0))
                           for n in names)
            n_prune = smallest - self._keep_count(smallest, amount(sparsity, smallest))
            chosen.append(self._select(roots, total, n_prune, sparsity, found.blocks))
        is_pruned = np.zeros(max((int(i.max()) + 1 for i in ids.values() if i.size), default=0), dtype=bool)
        if chosen:
            is_pruned[np.concatenate(chosen)] = True
        pruned = {}
        for name in self.layers:
            if name in groups:
                pruned[name] = torch.from_numpy(is_pruned[ids[name]])
            else:  # not traced (not called): prune alone
                n = scores[name].numel()
                pruned[name] = _lowest(scores[name], n - self._keep_count(n, amount(self.layers[name].config.get("sparsity", 0.0), n)))
        # Every other layer coupled to a pruned channel is masked too.
        for name, layer_ids in ids.items():
            if name not in pruned:
                flags = is_pruned[layer_ids]
                if flags.any():
                    pruned[name] = torch.from_numpy(flags)
        return pruned

    def _select(self, roots: np.ndarray, total: np.ndarray, n_prune: int, sparsity: float,
                blocks: list[list[list[int]]]) -> np.ndarray:
        """The ``n_prune`` lowest-scored of ``roots`` (sorted; ``total`` their scores, ties to the lower id);
        where the roots are a grouped convolution's blocks, the same number from every block (speedup removes a
        grouped convolution's channels only in equal numbers)."""
        def lowest(candidates: np.ndarray, k: int) -> np.ndarray:
            at = np.searchsorted(roots, candidates)
            return candidates[np.lexsort((candidates, total[at]))[:max(k, 0)]]

        present = set(roots.tolist())
        parts = next((b for b in blocks if all(r in present for part in b for r in part)), None)
        if parts is None:
            return lowest(roots, n_prune)
        chosen = []
        blocks_ids = np.sort(np.asarray(parts, dtype=np.int64), axis=1)  # [block, ids] (equal-sized blocks)
        if (blocks_ids[:, 1:] != blocks_ids[:, :-1]).all():  # distinct ids in every block: one count, one sort
            per = blocks_ids.shape[1]
            k = max(per - self._keep_count(per, amount(sparsity, per)), 0)
            scores = total[np.searchsorted(roots, blocks_ids)]
            order = np.lexsort((blocks_ids, scores), axis=1)[:, :k]  # by score, ties to the lower id, per block
            chosen.append(np.take_along_axis(blocks_ids, order, 1).reshape(-1))
        else:
            for part in parts:
                unique = np.unique(np.asarray(part, dtype=np.int64))
                n = len(unique)
                chosen.append(lowest(unique, n - self._keep_count(n, amount(sparsity, n))))
        rest = np.setdiff1d(roots, np.asarray([r for part in parts for r in part], dtype=np.int64))
        if len(rest):
            chosen.append(lowest(rest, len(rest) - self._keep_count(len(rest), amount(sparsity, len(rest)))))
        return np.concatenate(chosen)

    def _masks(self, pruned: dict[str, torch.Tensor]) -> Masks:
        modules = dict(self.model.named_modules())
        norms = self._following_norms()
        masks: Masks = {}
        for name, flags in pruned.items():
            module = modules[name]
            keep = ~flags.bool()
            if isinstance(module, _NORMS):
                masks[name] = _norm_masks(module, keep)
                continue
            masks[name] = {"weight": _row_mask(module, keep)}
            if getattr(module, "bias", None) is not None:
                masks[name]["bias"] = keep.to(module.bias.device).clone()
            norm = norms.get(name)
            if norm is not None and norm not in masks and norm not in pruned:
                masks[norm] = _norm_masks(modules[norm], keep)
        return masks

    def _following_norms(self) -> dict[str, str]:
        """Layer -> the normalisation layer right after it (from the trace if there is one, else module order)."""
        coupled = getattr(self, "_coupled", None)
        modules = list(self.model.named_modules())
        out: dict[str, str] = {}
        if coupled is not None:
            by_roots: dict[tuple, str] = {}
            for name, m in modules:
                if isinstance(m, _NORMS) and name in coupled:
                    by_roots.setdefault(tuple(coupled[name]), name)
            for name in self.layers:
                if name in coupled and tuple(coupled[name]) in by_roots:
                    out[name] = by_roots[tuple(coupled[name])]
            return out
        for i, (name, m) in enumerate(modules):
            if name not in self.layers or isinstance(m, _NORMS):
                continue
            for nxt_name, nxt in modules[i + 1:i + 3]:
                if isinstance(nxt, _NORMS) and _norm_size(nxt) == out_channels(m):
                    out[name] = nxt_name
                    break
        return out


def _coupled_layers(layers: list[str], ids: dict[str, np.ndarray]) -> list[list[str]]:
    """``layers`` partitioned into sets that share a channel group (transitively), each in ``layers``' order,
    the sets in the order of their first layer; a layer without ``ids`` stands alone. Vectorised: a
    ConvNeXt's residual stream is one group that some forty layers share channel by channel, and a Python
    union per (channel, layer) pair was a fifth of its pruning."""
    index = {name: k for k, name in enumerate(layers)}
    traced = [name for name in layers if name in ids and ids[name].size]
    parent = list(range(len(layers)))
    if traced:
        roots = np.concatenate([ids[name] for name in traced])
        owner = np.repeat(np.asarray([index[name] for name in traced], dtype=np.int64),
                          [ids[name].size for name in traced])
        first = np.full(int(roots.max()) + 1, len(layers), dtype=np.int64)
        np.minimum.at(first, roots, owner)  # each group's first layer: unite every layer with it
        pairs = np.unique(first[roots] * len(layers) + owner)  # distinct (first layer, layer), as one int each
        for a, b in zip((pairs // len(layers)).tolist(), (pairs % len(layers)).tolist()):
            while parent[a] != a:
                a = parent[a]
            while parent[b] != b:
                parent[b] = parent[parent[b]]
                b = parent[b]
            if a != b:
                parent[max(a, b)] = min(a, b)
    members: dict[int, list[str]] = defaultdict(list)
    for k, name in enumerate(layers):
        while parent[k] != parent[parent[k]]:
            parent[k] = parent[parent[k]]
        members[parent[k]].append(name)
    return list(members.values())


def _row_mask(module: nn.Module, keep: torch.Tensor) -> torch.Tensor:
    """A weight-shaped mask keeping the output channels flagged in ``keep``."""
    w = module.weight
    if isinstance(module, nn.modules.conv._ConvTransposeNd):  # [in, out/groups, *k]
        g = module.groups
        rows = keep.reshape(g, -1).repeat_interleave(w.shape[0] // g, 0)  # [in, out/groups]
        return rows.reshape(*rows.shape, *[1] * (w.dim() - 2)).expand_as(w).to(w.device).clone()
    return keep.reshape(-1, *[1] * (w.dim() - 1)).expand_as(w).to(w.device).clone()


def _norm_size(m: nn.Module) -> int:
    return m.num_channels if isinstance(m, nn.GroupNorm) else m.num_features


def _norm_masks(module: nn.Module, keep: torch.Tensor) -> dict:
    out = {}
    for p in ("weight", "bias"):
        t = getattr(module, p, None)
        if isinstance(t, torch.Tensor) and t.numel() == keep.numel():
            out[p] = keep.to(t.device).clone()
    return out


def _lowest(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Bool flags of the ``k`` lowest scores (ties: the earlier index goes first)."""
    flags = torch.zeros(scores.numel(), dtype=torch.bool)
    if k > 0:
        flags[torch.argsort(scores, stable=True)[:k]] = True
    return flags


def _call(model: nn.Module, x: Any) -> Any:
    if isinstance(x, dict):
        return model(**x)
    if isinstance(x, (tuple, list)):
        return model(*x)
    return model(x)


def weight_rows(module: nn.Module, tensor: torch.Tensor | None = None) -> torch.Tensor:
    """The weight (or a tensor of its shape, a gradient say) as ``[out_channels, -1]`` (transposed convs
    included, groups unfolded)."""
    w = (module.weight if tensor is None else tensor).detach()
    if isinstance(module, nn.modules.conv._ConvTransposeNd):
        g = module.groups
        w = w.reshape(g, w.shape[0] // g, *w.shape[1:]).transpose(1, 2)  # [g, out/g, in/g, *k]
        return w.reshape(w.shape[0] * w.shape[1], -1)
    return w.reshape(w.shape[0], -1)
