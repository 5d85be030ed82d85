"""Which output channels of which layers are coupled, for dependency-aware structured pruning."""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from typing import Any

from torch import nn

from nnic.channels.propagate import RuleTable, analyze


def channel_groups(model: nn.Module, dummy_input: Any, rules: RuleTable | Iterable[Any]) -> dict[str, list[int]]:
    """``{layer: [group id of each output channel]}`` for every layer with output channels (convs, linears,
    embeddings) or per-channel parameters (normalisation): equal ids must be pruned together. A depthwise
    convolution's output channel shares its input channel's group. ``rules`` are the speedup rules to propagate
    with (the caller's table: this layer does not look rules up). Nothing in the model changes."""
    table = rules if isinstance(rules, RuleTable) else RuleTable(rules)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # an op without a rule only makes the groups coarser here
        state = analyze(model, dummy_input, table).state
    uf = state.uf
    for (name, slot), ids in state.slots.items():
        m = model.get_submodule(name)
        if slot == "out" and isinstance(m, nn.modules.conv._ConvNd) and m.groups == m.in_channels == m.out_channels:
            for a, b in zip(state.slots[(name, "in")], ids):
                uf.union(a, b)
    return {name: [uf.find(i) for i in ids] for (name, slot), ids in state.slots.items() if slot in ("out", "c")}
