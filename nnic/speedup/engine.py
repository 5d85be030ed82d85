"""Speedup after propagation: decide which channel groups go, then shrink modules and slice parameters."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping

import torch
from torch import nn
from torch.nn.utils import parametrize

from nnic.channels.graph import State
from nnic.channels.propagate import SpeedupError
from nnic.speedup.rules import slice_param


def decide(state: State, why: dict[int, str] | None = None) -> set[int]:
    """The roots of the channel groups to remove. ``why``, if given, receives the reason each kept root is kept."""
    roots = state.uf.roots()
    find = roots.__getitem__
    reasons: dict[int, str] = {} if why is None else why
    for i, reason in state.blocked.items():
        reasons.setdefault(find(i), f"{reason!r} reads it, and it is not zero there")
    for i, reason in state.pinned.items():
        reasons[find(i)] = reason
    removed = set(roots) - set(reasons)

    def is_removed(i: int) -> bool:
        return find(i) in removed

    changed = True
    while changed:
        changed = False
        for (module, slot), ids in state.slots.items():
            if ids and all(is_removed(i) for i in ids):
                removed.discard(find(ids[0]))
                reasons[find(ids[0])] = f"{module} keeps at least one channel (slot {slot!r})"
                changed = True
        for constraint in state.constraints:
            for i in constraint(is_removed):
                if find(i) in removed:
                    removed.discard(find(i))
                    reasons[find(i)] = f"balance: {getattr(constraint, 'what', 'equal blocks')}"
                    changed = True
    return removed


def _kept(ids: list[int], gone: torch.Tensor) -> torch.Tensor | None:
    """The positions of ``ids`` that stay (``gone[i]``: id i is removed), or ``None`` when all do."""
    lost = gone[torch.tensor(ids, dtype=torch.long)]
    return None if not bool(lost.any()) else (~lost).nonzero().flatten()


def apply(model: nn.Module, state: State, removed: set[int]) -> dict[str, dict[str, torch.Tensor]]:
    """Fold constants, shrink modules and slice parameters; returns ``{module: {slot: kept positions}}``."""
    roots = state.uf.roots()
    find = roots.__getitem__
    gone = torch.tensor([r in removed for r in roots], dtype=torch.bool)
    keeps: dict[str, dict[str, torch.Tensor]] = defaultdict(dict)
    for (name, slot), ids in state.slots.items():
        index = _kept(ids, gone)
        if index is not None:
            keeps[name][slot] = index
    folds: dict[tuple[str, str], list] = defaultdict(list)
    for f in state.folds:
        if find(state.slots[(f.module, f.slot)][f.position]) in removed:
            folds[(f.module, f.slot)].append(f)
    with torch.no_grad():
        for (name, slot), fs in folds.items():
            module = model.get_submodule(name)
            positions = torch.tensor([f.position for f in fs], dtype=torch.long)
            values = torch.tensor([f.value for f in fs], dtype=torch.float64)
            state.slot_rules[name].fold(module, slot, positions, values)
        for name, keep in keeps.items():
            module = model.get_submodule(name)
            new = state.slot_rules[name].shrink(module, keep)
            if new is not None and new is not module:
                new.train(module.training)
                _set_submodule(model, name, new)
        done = set()
        for path, dim, ids in state.params:
            if path in done:
                continue
            done.add(path)
            index = _kept(ids, gone)
            if index is not None:
                owner_name, _, attr = path.rpartition(".")
                owner = model.get_submodule(owner_name)
                slice_param(owner, attr, index, dim)
    return dict(keeps)


def _set_submodule(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent_name), attr, new)


def unwrap_masks(model: nn.Module) -> None:
    """Fold nnic's mask parametrizations into plain weights (speedup needs plain modules)."""
    from nnic.masking import ParameterMask, fold_masks

    for name, module in model.named_modules():
        if not parametrize.is_parametrized(module):
            continue
        for pname in module.parametrizations.keys():
            if not all(isinstance(p, ParameterMask) for p in module.parametrizations[pname]):
                raise SpeedupError(f"{name}.{pname} has a parametrization other than an nnic mask; remove it "
                                   f"(e.g. unwrap the quantizer) before speedup")
        fold_masks(module)


def apply_masks(model: nn.Module, masks: Mapping[str, Mapping[str, torch.Tensor | None]]) -> None:
    with torch.no_grad():
        for layer, per_param in masks.items():
            module = model.get_submodule(layer)
            for pname, mask in per_param.items():
                if mask is None:
                    continue
                p = getattr(module, pname)
                p.mul_(mask.to(device=p.device, dtype=torch.bool).to(p.dtype))


__all__ = ["apply", "apply_masks", "decide", "unwrap_masks"]
