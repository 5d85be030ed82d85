"""Finding a model's transformer blocks: the units the sequential runner compresses one at a time.

Automatic detection takes the longest ``nn.ModuleList`` whose members all have the same class (``transformer.h``
in GPT-2, ``model.layers`` in LLaMA/Qwen2/Mistral, ``model.decoder.layers`` in OPT). A user with another layout
names the list (``blocks="encoder.stages"``) or the blocks themselves (``blocks=["stem", "body.0", "body.1"]``),
which must run one after another, each taking the previous one's output as its first argument.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

__all__ = ["find_blocks", "layer_blocks"]


def _candidates(model: nn.Module) -> list[tuple[str, nn.ModuleList]]:
    return [(n, m) for n, m in model.named_modules()
            if isinstance(m, nn.ModuleList) and len(m) > 0 and len({type(c) for c in m}) == 1]


def _describe(model: nn.Module) -> str:
    found = [f"{n!r} ({len(m)} x {type(m[0]).__name__})" for n, m in _candidates(model)]
    return "module lists found: " + (", ".join(found) if found else "none")


def find_blocks(model: nn.Module, blocks: str | Sequence[str] | None = None) -> list[tuple[str, nn.Module]]:
    """``[(qualified_name, block)]`` in execution order; ``ValueError`` naming what is missing otherwise."""
    modules = dict(model.named_modules())
    if blocks is None:
        found = _candidates(model)
        if not found:
            raise ValueError(f"blocks: {type(model).__name__} has no nn.ModuleList of identical blocks; name the "
                             f"blocks (blocks='path.to.list' or a list of module names)")
        name, mlist = max(found, key=lambda item: len(item[1]))
        return [(f"{name}.{i}" if name else str(i), b) for i, b in enumerate(mlist)]
    if isinstance(blocks, str):
        container = modules.get(blocks)
        if container is None or blocks == "":
            raise ValueError(f"blocks: {blocks!r} is not a module of {type(model).__name__}; {_describe(model)}")
        if not isinstance(container, (nn.ModuleList, nn.Sequential)) or len(container) == 0:
            raise ValueError(f"blocks: {blocks!r} is a {type(container).__name__}, expected a non-empty "
                             f"nn.ModuleList or nn.Sequential; {_describe(model)}")
        return [(f"{blocks}.{n}", b) for n, b in container.named_children()]
    if not isinstance(blocks, Sequence) or not blocks or not all(isinstance(b, str) for b in blocks):
        raise TypeError(f"blocks: expected None, a module name or a non-empty list of module names, got {blocks!r}")
    missing = [b for b in blocks if b not in modules or b == ""]
    if missing:
        raise ValueError(f"blocks: {missing} are not modules of {type(model).__name__}; {_describe(model)}")
    if len(set(blocks)) != len(blocks):
        raise ValueError(f"blocks: a block is named twice in {list(blocks)}")
    return [(b, modules[b]) for b in blocks]


def layer_blocks(blocks: list[tuple[str, nn.Module]], layers: Sequence[str]) -> dict[str, int]:
    """``{layer: index of the block holding it}``; a layer outside every block is a ``ValueError``."""
    owner: dict[str, int] = {}
    for layer in layers:
        for i, (name, _) in enumerate(blocks):
            if layer.startswith(name + "."):
                owner[layer] = i
                break
        else:
            raise ValueError(
                f"config_list selects {layer!r}, which is outside the transformer blocks "
                f"({blocks[0][0]} ... {blocks[-1][0]}); one-shot algorithms compress layers inside blocks: add "
                f"{{'exclude': True, 'op_names': [{layer!r}]}} to the config_list")
    return owner
