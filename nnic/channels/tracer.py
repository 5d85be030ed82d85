"""What every trace of a model builds on: nnic's fx ``Tracer`` (leaf modules; it remembers the innermost module
where tracing stopped), the dummy input split into positional and keyword arguments, the values of the forward's
parameters, and :class:`CaptureError`. The symbolic trace (:mod:`~nnic.channels.tracing`) and the concrete one
(:mod:`~nnic.channels.concrete`) both start from here.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable
from typing import Any

import torch
from torch import fx, nn

_CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)


class CaptureError(RuntimeError):
    """The model could not be traced; the message names the module and line, and what to do."""


def split_dummy_input(model: nn.Module, dummy_input: Any) -> tuple[tuple, dict]:
    """A tensor is the single positional argument; a tuple or list gives the positional arguments; a dict gives
    keyword arguments (wrap a single tuple/list argument as ``(arg,)``)."""
    if isinstance(dummy_input, torch.Tensor):
        return (dummy_input,), {}
    if isinstance(dummy_input, (tuple, list)):
        return tuple(dummy_input), {}
    if isinstance(dummy_input, dict):
        return (), dict(dummy_input)
    raise TypeError(f"dummy_input: expected a tensor, a tuple/list of positional arguments or a dict of keyword "
                    f"arguments, got {type(dummy_input).__name__}")


def placeholder_values(model: nn.Module, args: tuple, kwargs: dict) -> dict[str, Any]:
    """The values of a traced ``model``'s placeholders for this call, in the graph's order (for a ``*args`` or
    ``**kwargs`` forward, the order of :func:`trace`'s explicit-argument forward)."""
    sig = inspect.signature(model.forward)
    bound = sig.bind_partial(*args, **kwargs)
    if any(p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in sig.parameters.values()):
        flat: dict[str, Any] = {}
        for name, value in bound.arguments.items():
            kind = sig.parameters[name].kind
            if kind is inspect.Parameter.VAR_POSITIONAL:
                flat.update({f"_{name}_{i}": v for i, v in enumerate(value)})
            elif kind is inspect.Parameter.VAR_KEYWORD:
                flat.update({f"_{name}_{k}": v for k, v in value.items()})
            else:
                flat[name] = value
        return flat
    values = {}
    for p in sig.parameters.values():
        if p.name in bound.arguments:
            values[p.name] = bound.arguments[p.name]
        elif p.default is not inspect.Parameter.empty:
            values[p.name] = p.default
        else:
            values[p.name] = () if p.kind is p.VAR_POSITIONAL else {} if p.kind is p.VAR_KEYWORD else None
    return values


class Tracer(fx.Tracer):
    """fx tracing with nnic's leaf modules, remembering the innermost module where tracing stopped."""

    def __init__(self, leaf_types: tuple[type, ...], leaf_names: set[str]) -> None:
        super().__init__()
        self.leaf_types, self.leaf_names = leaf_types, leaf_names
        self.leaf_exact = set(leaf_types)
        self.stack: list[tuple[str, nn.Module]] = []
        self.failed_at: tuple[str, nn.Module] | None = None

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        if qualname in self.leaf_names or type(m) in self.leaf_exact:
            return True
        if self.leaf_types and isinstance(m, self.leaf_types):
            # A subclass is a leaf only if it computes what its base does (it keeps the base's forward).
            bases = [b for b in type(m).__mro__[1:] if b in self.leaf_exact]
            return type(m).forward is bases[0].forward
        if isinstance(m, _CONTAINERS):
            return False
        return m.__module__.startswith("torch.nn") and not any(True for _ in m.children())

    def call_module(self, m: nn.Module, forward, args, kwargs):
        self.stack.append((self.path_of_module(m), m))
        try:
            return super().call_module(m, forward, args, kwargs)
        except Exception:
            if self.failed_at is None:  # the innermost module where tracing stopped
                self.failed_at = self.stack[-1]
            raise
        finally:
            self.stack.pop()


def graph_module(root: nn.Module, graph: fx.Graph, class_name: str) -> fx.GraphModule:
    """An fx GraphModule of ``graph`` over ``root``'s modules whose Python code is generated when it is first
    run, not when it is made: channel analysis walks the graph's nodes and never calls most of the modules it
    builds (the code generation was a tenth of tracing a MobileNet). A plain GraphModule where torch has no
    lazy one."""
    try:
        from torch.fx._lazy_graph_module import _LazyGraphModule as kind
    except ImportError:  # pragma: no cover - older torch
        kind = fx.GraphModule
    return kind(root, graph, class_name=class_name)


def eval_mode(model: nn.Module, modules: Iterable[nn.Module]) -> None:
    """``model.eval()``, skipped where it would change nothing: every one of ``modules`` (the model's modules,
    as the caller has them) already in eval mode, with ``nn.Module``'s own ``train`` (an override may do more
    than set the flag). ``eval()`` sets each module's flag through ``nn.Module.__setattr__``, some 4 us a
    module even when the flag is already False (1.2 ms on RegNetX-400MF), and speedup and the analyses before
    it ask for it three times on a model that is usually in eval mode already."""
    train = nn.Module.train
    if any(m.training or type(m).train is not train for m in modules):
        model.eval()


def _walk(root: nn.Module, path: str) -> nn.Module | None:
    """The module at dotted ``path`` under ``root`` found through the ``_modules`` dicts alone, or ``None`` where
    the path is not such a walk (a missing name, a ``None`` entry, an attribute that is not a submodule)."""
    module: Any = root
    try:
        for part in path.split(".") if path else ():
            module = module._modules[part]
    except (KeyError, AttributeError):
        return None
    return module


def submodule(root: nn.Module, target: str) -> nn.Module:
    """``root.get_submodule(target)`` for the dotted module paths fx and ``named_modules`` give: a walk down the
    ``_modules`` dicts. ``get_submodule`` checks and reads each step through ``hasattr`` and ``getattr``, both of
    which miss the instance and class attributes before ``nn.Module.__getattr__`` finds the submodule (some
    20 us a path, and propagation, tracing and speedup ask for one per module call); a path that is not such a
    walk takes ``get_submodule`` and its errors."""
    module = _walk(root, target)
    return root.get_submodule(target) if module is None else module


def fetch_attr(root: nn.Module, target: str) -> Any:
    """What an fx ``get_attr`` / ``call_module`` target (``"layer1.0.conv1.weight"``) names under ``root``: the
    modules on the way as :func:`submodule` finds them, the last name through ``getattr`` (a parameter may be a
    parametrization's property)."""
    owner, _, name = target.rpartition(".")
    module = _walk(root, owner)
    if module is None:  # not a plain walk down submodules: attribute by attribute
        obj: Any = root
        for part in target.split("."):
            obj = getattr(obj, part)
        return obj
    return getattr(module, name)


__all__ = ["CaptureError", "Tracer", "eval_mode", "fetch_attr", "graph_module", "placeholder_values",
           "split_dummy_input", "submodule"]
