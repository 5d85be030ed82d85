"""Speedup after propagation: decide which channel groups go, then shrink modules and slice parameters."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Collection, Iterable, Mapping

import numpy as np
import torch
from torch import nn

from nnic.channels import reuse
from nnic.channels.graph import IdRange, State
from nnic.channels.propagate import SpeedupError
from nnic.channels.tracer import submodule
from nnic.masking import zero_masked_
from nnic.selection import replace_module
from nnic.speedup.rules import slice_param


def _reasons_by_root(roots: np.ndarray, table: dict[int, str] | list[tuple[np.ndarray, str]],
                     last: bool) -> dict[int, str]:
    """``{root: reason}`` per root of ``table``'s ids (raw id -> reason, or runs of ids with one reason each),
    roots in the order their first id appears; the reason of the root's first id, or of its last with
    ``last=True``. One vectorised pass over what may be every channel of the model (a dense model's sinks
    block all of them), and plain ints out of it: a numpy scalar per root cost more than the pass."""
    if not table:
        return {}
    if isinstance(table, dict):
        ids = np.fromiter(table.keys(), dtype=np.int64, count=len(table))
        texts, text_of = list(table.values()), None
    else:  # runs: one reason per run, looked up through each id's run number
        ids = np.concatenate([run for run, _ in table])
        texts, text_of = [why for _, why in table], np.repeat(np.arange(len(table)), [len(run) for run, _ in table])
    r = roots[ids]
    unique, first = np.unique(r, return_index=True)
    pick = first
    if last:
        _, from_end = np.unique(r[::-1], return_index=True)
        pick = len(r) - 1 - from_end
    order = np.argsort(first, kind="stable")
    picked = pick[order] if text_of is None else text_of[pick[order]]
    return dict(zip(unique[order].tolist(), [texts[k] for k in picked.tolist()]))


def decide(state: State, why: dict[int, str] | None = None) -> set[int]:
    """The roots of the channel groups to remove. ``why``, if given (empty), receives the reason each kept
    root is kept: a pin's reason, else the first sink that reads the channel."""
    roots = state.uf.root_array()
    reasons: dict[int, str] = {} if why is None else why
    blocked = _reasons_by_root(roots, state.blocked_runs, last=False)
    texts = {reason: f"{reason!r} reads it, and it is not zero there" for reason in set(blocked.values())}
    reasons.update(zip(blocked.keys(), map(texts.__getitem__, blocked.values())))
    reasons.update(_reasons_by_root(roots, state.pinned, last=True))  # a pin's reason wins
    gone = np.zeros(len(roots), dtype=bool)  # by root id: the group goes
    gone[roots] = True
    if reasons:
        gone[np.fromiter(reasons.keys(), dtype=np.int64, count=len(reasons))] = False
    removed = set(np.flatnonzero(gone).tolist())

    listed: list[int] = []  # the roots as plain ints, made on the first question id by id (rarely asked:
    # the built-in constraints ask through ``many`` and name few ids, and the list is some 1 ms a speedup)

    def find(i: int) -> int:
        if not listed:
            listed.extend(roots.tolist())
        return listed[i]

    def is_removed(i: int) -> bool:  # constraints ask id by id: plain lists and sets beat numpy scalars here
        return find(i) in removed

    def many(ids) -> np.ndarray:  # or a whole list at once (see nnic.speedup.rules.removed_flags)
        return gone[state.roots_of(ids) if type(ids) is IdRange else roots[np.asarray(ids, dtype=np.int64)]]

    is_removed.many = many  # type: ignore[attr-defined]

    def keep(root: int, reason: str) -> None:
        removed.discard(root)
        gone[root] = False
        reasons[root] = reason

    slots = [(module, slot, state.roots_of(ids)) for (module, slot), ids in state.slots.items() if ids]
    changed = True
    while changed:
        changed = False
        for module, slot, slot_roots in slots:
            if gone[slot_roots].all():
                keep(int(slot_roots[0]), f"{module} keeps at least one channel (slot {slot!r})")
                changed = True
        for constraint in state.constraints:
            for i in constraint(is_removed):
                if find(i) in removed:
                    keep(find(i), f"balance: {getattr(constraint, 'what', 'equal blocks')}")
                    changed = True
    return removed


def _kept(lost: np.ndarray) -> torch.Tensor | None:
    """The positions that stay (``lost[k]``: position k is removed), or ``None`` when all do."""
    return torch.from_numpy(np.flatnonzero(~lost)) if lost.any() else None


def apply(model: nn.Module, state: State, removed: set[int],
          before_write: Callable[[nn.Module], None] | None = None) -> dict[str, dict[str, torch.Tensor]]:
    """Fold constants, shrink modules and slice parameters; returns ``{module: {slot: kept positions}}``.
    ``before_write(module)`` is called before a step that may write into ``module``'s tensors in place (a
    fold; a shrink whose rule does not say ``shrink_in_place = False``), so that the caller can keep their values
    first."""
    before_write = before_write or (lambda module: None)
    roots = state.uf.root_array()
    gone_root = np.zeros(len(roots), dtype=bool)
    if removed:
        gone_root[np.fromiter(removed, dtype=np.int64, count=len(removed))] = True
    keeps: dict[str, dict[str, torch.Tensor]] = defaultdict(dict)
    for (name, slot), ids in state.slots.items():
        index = _kept(gone_root[state.roots_of(ids)])
        if index is not None:
            keeps[name][slot] = index
    folds: dict[tuple[str, str], list] = defaultdict(list)
    for f in state.folds:
        if gone_root[roots[state.slots[(f.module, f.slot)][f.position]]]:
            folds[(f.module, f.slot)].append(f)
    with torch.no_grad():
        for (name, slot), fs in folds.items():
            module = submodule(model, name)
            before_write(module)
            positions = torch.tensor([f.position for f in fs], dtype=torch.long)
            values = torch.tensor([f.value for f in fs], dtype=torch.float64)
            state.slot_rules[name].fold(module, slot, positions, values)
        for name, keep in keeps.items():
            module = submodule(model, name)
            rule = state.slot_rules[name]
            if getattr(rule, "shrink_in_place", True):
                before_write(module)
            new = rule.shrink(module, keep)
            if new is not None and new is not module:
                new.train(module.training)
                replace_module(model, name, new)
        done = set()
        for path, dim, ids in state.params:
            if path in done:
                continue
            done.add(path)
            index = _kept(gone_root[state.roots_of(ids)])
            if index is not None:
                owner_name, _, attr = path.rpartition(".")
                owner = submodule(model, owner_name)
                slice_param(owner, attr, index, dim)
    return dict(keeps)


def unwrap_masks(model: nn.Module, parametrized: Iterable[tuple[str, nn.Module]] | None = None,
                 masks_only: Collection[nn.Module] = ()) -> dict[tuple[str, str], list[torch.Tensor]]:
    """Fold nnic's mask parametrizations into plain weights (speedup needs plain modules); returns the masks
    folded, ``{(layer, parameter): [mask, ...]}``. Checks every module first, so a parametrization that is not
    an nnic mask raises before anything is folded. ``parametrized``: the model's parametrized modules by name,
    where the caller has just walked them; ``masks_only``: those of them that hold masks only, as
    :func:`nnic.masking.only_masks_test` has just found (speedup's module walk does both)."""
    from nnic.masking import ParameterMask, fold_masks, fold_only_masks, is_parametrized

    if parametrized is None:
        parametrized = [(name, m) for name, m in model.named_modules() if is_parametrized(m)]
    parametrized = list(parametrized)
    if parametrized:
        reuse.forget(model)  # their classes and parameters change
    for name, module in parametrized:
        if module in masks_only:
            continue
        for pname, plist in module._modules["parametrizations"].items():
            if not all(isinstance(p, ParameterMask) for p in plist):
                raise SpeedupError(f"{name}.{pname} has a parametrization other than an nnic mask; remove it "
                                   f"(e.g. unwrap the quantizer) before speedup")
    return {(name, pname): masks for name, module in parametrized
            for pname, masks in (fold_only_masks(module) if module in masks_only else fold_masks(module))}


def same_tensor(a: torch.Tensor, b: torch.Tensor) -> bool:
    """One tensor seen twice (a parametrization keeps a view of the mask it was given): same memory, layout and
    dtype, so the same values."""
    return (a.data_ptr() == b.data_ptr() and a.shape == b.shape and a.stride() == b.stride() and a.dtype == b.dtype
            and a.device == b.device)


def apply_masks(model: nn.Module, masks: Mapping[str, Mapping[str, torch.Tensor | None]],
                folded: Mapping[tuple[str, str], list[torch.Tensor]] | None = None) -> None:
    """Zero the weights where ``masks`` are zero (as attaching them does: no weight-sized float copy of each
    mask to multiply by); a mask that :func:`unwrap_masks` has just folded into its parameter
    (``folded``: the pruner's masks, given back to speedup) is already in it, and is not applied twice."""
    folded = folded or {}
    with torch.no_grad():
        for layer, per_param in masks.items():
            module = submodule(model, layer)
            for pname, mask in per_param.items():
                if mask is None:
                    continue
                if mask.dtype == torch.bool and any(same_tensor(mask, m) for m in folded.get((layer, pname), ())):
                    continue
                p = getattr(module, pname)
                zero_masked_(p.data, mask.to(device=p.device, dtype=torch.bool))


__all__ = ["apply", "apply_masks", "decide", "same_tensor", "unwrap_masks"]
