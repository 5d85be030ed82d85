"""The region fallback of capture: when neither symbolic nor concrete fx captures the whole model, the largest
submodules that trace, each along the inputs it really received on the dummy input (recorded by module hooks).

Why: one branch fx cannot follow (a cache object, a mask helper) should not cost the analysis of every block
below it. A region's inputs come from code nnic could not analyse, so its input and output channels are kept;
everything inside it (attention heads, MLP channels) is analysed as in a whole-model trace.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

import torch
from torch import fx, nn

from nnic.channels.execution import check_faithful, copy_value
from nnic.channels.tracer import CaptureError, fetch_attr, graph_module
from nnic.channels.tracing import trace

_PLAIN = (type(None), bool, int, float, str, torch.dtype, torch.device)


@dataclass
class Part:
    """One traced region of the model: ``prefix`` is its module's qualified name ("" for the whole model),
    ``gm`` a GraphModule over the whole model (targets are qualified names) and ``calls`` the ``(module, args,
    kwargs)`` of each of its recorded calls that this graph was traced for."""

    prefix: str
    gm: fx.GraphModule
    calls: list[tuple[nn.Module, tuple, dict]]


class _Call(nn.Module):
    """A module called as a leaf or traced into, behind one ``forward`` fx can make placeholders for; keyword
    arguments that were plain values (``None``, flags, sizes) on the recorded call are fixed, not traced: a
    forward's ``if encoder_hidden_states is not None`` then follows the real call."""

    def __init__(self, module: nn.Module, fixed: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.m, self.fixed = module, dict(fixed or {})

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.m(*args, **self.fixed, **kwargs)


def _is_plain(value: Any) -> bool:
    if isinstance(value, (tuple, list)):
        return all(_is_plain(v) for v in value)
    return isinstance(value, _PLAIN)


def _split_plain(kwargs: dict) -> tuple[dict, dict]:
    """(plain keyword arguments, the others)."""
    plain = {k: v for k, v in kwargs.items() if _is_plain(v)}
    return plain, {k: v for k, v in kwargs.items() if k not in plain}


def _as_keywords(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    """The call with the positional arguments from the first plain one on passed by name (so that plain
    values can be fixed); tensors before it stay positional, where rules look for them."""
    first = next((i for i, a in enumerate(args) if _is_plain(a)), len(args))
    if first == len(args):
        return args, kwargs
    try:
        params = list(inspect.signature(module.forward).parameters.values())
    except (TypeError, ValueError):
        return args, kwargs
    if len(params) < len(args) or any(p.kind not in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
                                      for p in params[first:len(args)]):
        return args, kwargs
    named = {p.name: a for p, a in zip(params[first:len(args)], args[first:])}
    if set(named) & set(kwargs):
        return args, kwargs
    return args[:first], {**named, **kwargs}


def _binding(args: tuple, kwargs: dict) -> tuple:
    """Which arguments a call gives, and its plain keyword values: calls alike share one trace."""
    plain, rest = _split_plain(kwargs)
    return len(args), tuple(sorted(rest)), repr(sorted(plain.items()))


def _trace_region(model: nn.Module, prefix: str, wrapped: _Call, args: tuple, kwargs: dict,
                  leaf_types: tuple[type, ...], leaf_names: set[str]) -> fx.GraphModule:
    """``wrapped.m`` (named ``prefix`` in ``model``) traced for these inputs, as a graph over ``model``."""
    inner = {n[len(prefix) + 1:] for n in leaf_names if n.startswith(prefix + ".")}
    gm = trace(wrapped, args, kwargs, leaf_types=leaf_types, leaf_modules={"m." + n for n in inner}, concrete=True)
    graph, owned = gm.graph, {}
    for node in graph.nodes:
        if node.op in ("call_module", "get_attr"):
            obj = gm.get_submodule(node.target) if node.op == "call_module" else fetch_attr(gm, node.target)
            if node.target == "m" or node.target.startswith("m."):  # the module's own: its name in the model
                node.target = prefix + node.target[1:]
            owned[node.target] = obj  # fx's own constants keep their names
    return graph_module(owned, graph, type(wrapped.m).__name__ + "Region")


def find_regions(model: nn.Module, recorded: dict[str, list[tuple[tuple, dict, Any]]],
                 leaf_types: tuple[type, ...], leaf_names: set[str]) -> tuple[list[Part], dict[str, str]]:
    """The regions of ``model``, walking its module tree from the top, and the modules whose forward code could
    not be traced (name -> why). ``recorded`` is :func:`~nnic.channels.execution.record_calls`' per-module
    calls: a submodule that fx traces on the inputs it received (every call it had, calls with the same
    arguments sharing one graph) is one region; one that fails is named and its children are tried in turn."""
    parts: list[Part] = []
    not_analysed: dict[str, str] = {}

    def visit(prefix: str, module: nn.Module) -> None:
        for child_name, child in module.named_children():
            name = f"{prefix}.{child_name}" if prefix else child_name
            calls = recorded.get(name)
            if not calls:  # not called itself (a ModuleList), or never run: its children may be
                visit(name, child)
                continue
            groups: dict[tuple, list[tuple[tuple, dict, Any]]] = {}
            for a, kw, out in calls:
                a, kw = _as_keywords(child, a, kw)
                groups.setdefault(_binding(a, kw), []).append((a, kw, out))
            try:
                found = []
                for same in groups.values():
                    fixed, first = _split_plain(same[0][1])
                    wrapped = _Call(child, fixed)
                    gm = _trace_region(model, name, wrapped, copy_value(same[0][0]), copy_value(first),
                                       leaf_types, leaf_names)
                    check_faithful(gm, wrapped, same[0][0], first, same[0][2], name)
                    found.append(Part(name, gm, [(wrapped, a, _split_plain(kw)[1]) for a, kw, _ in same]))
            except CaptureError as exc:
                not_analysed[name] = f"{type(child).__name__}: {exc}"
                visit(name, child)
                continue
            parts.extend(found)

    visit("", model)
    return parts, not_analysed


__all__ = ["Part", "find_regions"]
