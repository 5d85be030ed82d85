"""The channel-dependency groups of a model, printable: which layers must lose the same channels together.

A thin view over the channel analysis that dependency-aware pruning and speedup share; nothing is recomputed
here, the per-channel group ids are only gathered into groups of layers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn


@dataclass(frozen=True)
class ChannelGroup:
    """Layers whose output channels are coupled, and how many independent channels they share."""

    layers: tuple[str, ...]
    channels: int


@dataclass(frozen=True)
class ChannelGroups:
    """``per_layer``: ``{layer: [group id of each output channel]}`` (equal ids are pruned together);
    ``groups``: the coupled layers, largest first. ``str()`` prints one line per group."""

    per_layer: dict[str, list[int]]
    groups: tuple[ChannelGroup, ...]

    def __str__(self) -> str:
        lines = [f"{len(self.groups)} channel groups (layers in a group lose the same channels together):"]
        for i, g in enumerate(self.groups):
            lines.append(f"  {i:>3}  {g.channels:>6} channels  {', '.join(g.layers)}")
        return "\n".join(lines)


def _components(per_layer: dict[str, list[int]]) -> list[ChannelGroup]:
    owner: dict[int, str] = {}
    parent = {name: name for name in per_layer}

    def find(a: str) -> str:
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    for name, ids in per_layer.items():
        for gid in ids:
            if gid in owner:
                parent[find(name)] = find(owner[gid])
            else:
                owner[gid] = name
    members: dict[str, list[str]] = {}
    for name in per_layer:
        members.setdefault(find(name), []).append(name)
    groups = [ChannelGroup(tuple(layers), len({g for n in layers for g in per_layer[n]})) for layers in
              members.values()]
    return sorted(groups, key=lambda g: (-len(g.layers), g.layers[0]))


def channel_groups(model: nn.Module, example_input: Any) -> ChannelGroups:
    """Trace ``model`` on ``example_input`` and gather its coupled channels (the model is not changed)."""
    from nnic.channels import channel_groups as per_channel_groups
    from nnic.plugins import get_registry

    rules = [info.obj for info in get_registry().list("speedup_rule")]  # those speedup shrinks with
    per_layer = per_channel_groups(model, example_input, rules)
    return ChannelGroups(per_layer, tuple(_components(per_layer)))
