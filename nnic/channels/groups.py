"""Which output channels of which layers are coupled, for dependency-aware structured pruning.

Two kinds of coupling come out of the propagation: *groups* (ids removed together: a residual add, a conv and
its BatchNorm) and *blocks* (a grouped convolution's channels fall into ``groups`` equal blocks, and speedup
removes channels from a grouped convolution only when every kept block loses as many as the others: a selection
that ignores the blocks leaves most of what was asked in place).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from torch import nn

from nnic.channels.propagate import RuleTable, analyze
from nnic.channels.tracer import submodule


@dataclass
class Coupling:
    """``groups``: ``{layer: [group id of each output channel]}``; ``blocks``: one entry per grouped
    convolution, ``[[group ids of block 0], [of block 1], ...]`` (equal-sized blocks, in channel order);
    ``arrays``: ``groups`` as read-only int64 arrays, for a caller that computes with them (dependency-aware
    pruning: converting the lists back was some 1 ms of a torchvision classifier's)."""

    groups: dict[str, list[int]] = field(default_factory=dict)
    blocks: list[list[list[int]]] = field(default_factory=list)
    arrays: dict[str, np.ndarray] = field(default_factory=dict)


def coupling(model: nn.Module, dummy_input: Any, rules: RuleTable | Iterable[Any]) -> Coupling:
    """The channel groups and grouped-convolution blocks of ``model`` under ``rules`` (see :func:`channel_groups`).

    A grouped convolution whose blocks read as many channels as they write (depthwise, and the grouped 3x3 of
    ResNeXt and RegNet) couples input channel k with output channel k, as a depthwise one does: removing a
    block's output channel and the input channel at the same place keeps the blocks aligned, and removes the
    producer's channel too. Nothing in the model changes."""
    table = rules if isinstance(rules, RuleTable) else RuleTable(rules)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # an op without a rule only makes the groups coarser here
        state = analyze(model, dummy_input, table, structure_only=True).state
    uf = state.uf
    grouped = []
    for (name, slot), ids in state.slots.items():
        m = submodule(model, name)
        if slot != "out" or not isinstance(m, nn.modules.conv._ConvNd) or m.groups == 1:
            continue
        ins = state.slots[(name, "in")]
        if len(ins) == len(ids):
            uf.union_pairs(ins, ids)
        elif m.groups < len(ins):  # inputs in blocks of their own
            grouped.append((ins, m.groups))
        if m.groups < len(ids):  # depthwise blocks hold one channel: any selection is balanced
            grouped.append((ids, m.groups))
    arrays = {name: state.roots_of(ids) for (name, slot), ids in state.slots.items() if slot in ("out", "c")}
    groups = {name: roots.tolist() for name, roots in arrays.items()}
    blocks = []
    for ids, g in grouped:
        per = len(ids) // g
        blocks.append(state.roots_of(ids).reshape(g, per).tolist())
    return Coupling(groups, blocks, arrays)


def channel_groups(model: nn.Module, dummy_input: Any, rules: RuleTable | Iterable[Any]) -> dict[str, list[int]]:
    """``{layer: [group id of each output channel]}`` for every layer with output channels (convs, linears,
    embeddings) or per-channel parameters (normalisation): equal ids must be pruned together. A depthwise
    convolution's output channel shares its input channel's group. ``rules`` are the speedup rules to propagate
    with (the caller's table: this layer does not look rules up). Nothing in the model changes."""
    return coupling(model, dummy_input, rules).groups
