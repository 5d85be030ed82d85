"""Which output channels of which layers are coupled, for dependency-aware structured pruning."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from nnic.speedup.capture import split_dummy_input, trace
from nnic.speedup.engine import Propagation, RuleTable, _placeholder_values


def channel_groups(model: nn.Module, dummy_input: Any) -> dict[str, list[int]]:
    """``{layer: [group id of each output channel]}`` for every layer with output channels (convs, linears,
    embeddings) or per-channel parameters (normalisation): equal ids must be pruned together. A depthwise
    convolution's output channel shares its input channel's group. Nothing in the model changes."""
    args, kwargs = split_dummy_input(model, dummy_input)
    table = RuleTable.from_registry()
    modes = {m: m.training for m in model.modules()}
    try:
        gm = trace(model, args, kwargs, leaf_types=table.leaf_types)
        model.eval()
        prop = Propagation(gm, table, strict=False)
        import warnings

        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            state = prop.run(_placeholder_values(model, args, kwargs))
    finally:
        for m, mode in modes.items():
            m.training = mode
    uf = state.uf
    for (name, slot), ids in state.slots.items():
        m = model.get_submodule(name)
        if slot == "out" and isinstance(m, nn.modules.conv._ConvNd) and m.groups == m.in_channels == m.out_channels:
            for a, b in zip(state.slots[(name, "in")], ids):
                uf.union(a, b)
    out: dict[str, list[int]] = {}
    for (name, slot), ids in state.slots.items():
        if slot in ("out", "c"):
            out[name] = [uf.find(i) for i in ids]
    return out
