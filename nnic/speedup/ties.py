"""Shared (tied) parameters across a speedup: a tensor that several modules hold must stay one tensor.

Rules shrink each module on its own, so an output layer tied to an embedding would come back as two different
tensors (of different shapes when their channels differ). Speedup records the ties before it shrinks, re-ties
what still agrees afterwards, and keeps the channels of whatever would otherwise come apart.
"""

from __future__ import annotations

from torch import nn


def tied_parameters(model: nn.Module) -> list[list[str]]:
    """Groups of qualified parameter names that refer to one tensor (only groups of two or more)."""
    by_tensor: dict[int, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        by_tensor.setdefault(id(p), []).append(name)
    return [names for names in by_tensor.values() if len(names) > 1]


def _lookup(model: nn.Module, name: str) -> nn.Parameter | None:
    owner, _, attr = name.rpartition(".")
    try:
        return getattr(model.get_submodule(owner), attr, None)
    except AttributeError:
        return None


def retie(model: nn.Module, groups: list[list[str]]) -> list[list[str]]:
    """Make each group one tensor again where its members still agree (same shape and values); returns the
    groups that no longer agree."""
    broken = []
    for names in groups:
        tensors = [_lookup(model, n) for n in names]
        first = tensors[0]
        if all(t is first for t in tensors):
            continue
        if not isinstance(first, nn.Parameter) or not all(
                isinstance(t, nn.Parameter) and t.shape == first.shape and t.dtype == first.dtype
                and bool((t.detach() == first.detach()).all()) for t in tensors[1:]):
            broken.append(names)
            continue
        for n in names[1:]:
            owner, _, attr = n.rpartition(".")
            setattr(model.get_submodule(owner), attr, first)
    return broken
