"""The fx path of capture: one symbolic trace of a model with leaf modules, inputs of any structure
(``*args``/``**kwargs`` forwards included), and an error that names the module and line where tracing stopped.

Why its own module: every capture (:mod:`~nnic.channels.capture`) starts here, and the concrete tracer
(:mod:`~nnic.channels.concrete`) and the region fallback (:mod:`~nnic.channels.regions`) trace through it.
"""

from __future__ import annotations

import inspect
import traceback
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


def _user_frame(exc: BaseException) -> str:
    frames = traceback.extract_tb(exc.__traceback__)
    for frame in reversed(frames):
        f = frame.filename.replace("\\", "/")
        if "/torch/fx/" not in f and "/torch/_" not in f and "/nnic/channels/" not in f:
            return f"{frame.filename}:{frame.lineno} ({frame.line})"
    return "unknown location"


def trace(model: nn.Module, args: tuple, kwargs: dict, *, leaf_types: Iterable[type] = (),
          leaf_modules: Iterable[str | type] = (), concrete: bool = False) -> fx.GraphModule:
    """A GraphModule sharing ``model``'s submodules. Modules of ``leaf_types`` and those named or typed in
    ``leaf_modules`` are kept as single calls (not traced into). ``concrete=True`` runs the dummy input along
    (the model must be in the mode it will be analysed in): Python branches follow it, so the graph is the
    computation of this input, not of every input."""
    names = {m for m in leaf_modules if isinstance(m, str)}
    types = tuple(leaf_types) + tuple(m for m in leaf_modules if isinstance(m, type))
    known = dict(model.named_modules())
    unknown = sorted(n for n in names if n not in known)
    if unknown:
        raise ValueError(f"leaf_modules: {unknown} are not modules of {type(model).__name__}")
    if concrete:
        from nnic.channels.concrete import ConcreteTracer  # it builds on Tracer, above

        tracer: Tracer = ConcreteTracer(types, names, list(placeholder_values(model, args, kwargs).values()))
    else:
        tracer = Tracer(types, names)
    sig = inspect.signature(model.forward)
    params = list(sig.parameters.values())
    bound = sig.bind_partial(*args, **kwargs)
    defaults = {}
    for p in params:
        if p.name not in bound.arguments and p.default is not inspect.Parameter.empty:
            defaults[p.name] = p.default
    has_var = any(p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in params)
    try:
        if has_var:  # fx cannot make placeholders for *args/**kwargs: trace an explicit-argument forward
            graph = _trace_explicit(tracer, model, bound)
        else:
            graph = tracer.trace(model, concrete_args=defaults or None)
    except Exception as exc:
        where = tracer.failed_at or ("", model)
        name = where[0] or "<root>"
        raise CaptureError(
            f"torch.fx could not trace {type(model).__name__}: stopped in module {name!r} "
            f"({type(where[1]).__name__}) at {_user_frame(exc)}: {type(exc).__name__}: {exc}. "
            f"Pass leaf_modules=[{name!r}] (or its class) to keep that module whole (its channels are then not "
            f"pruned through it, or write a speedup rule for it), or make its forward traceable (no Python "
            f"control flow on tensor values)."
        ) from exc
    return fx.GraphModule(model, graph, class_name=type(model).__name__ + "Graph")


def _trace_explicit(tracer: fx.Tracer, model: nn.Module, bound: inspect.BoundArguments) -> fx.Graph:
    """Trace ``model`` through a forward whose parameters are exactly the arguments given (by name)."""
    params, call_parts = [], []
    for name, value in bound.arguments.items():
        kind = bound.signature.parameters[name].kind
        if kind is inspect.Parameter.VAR_POSITIONAL:
            names = [f"_{name}_{i}" for i in range(len(value))]
            params += names
            call_parts += names
        elif kind is inspect.Parameter.VAR_KEYWORD:
            for key in value:
                params.append(f"_{name}_{key}")
                call_parts.append(f"{key}=_{name}_{key}")
        else:
            params.append(name)
            call_parts.append(f"{name}={name}" if kind is not inspect.Parameter.POSITIONAL_ONLY else name)
    source = f"def _nnic_forward(self, {', '.join(params)}):\n    return _orig(self, {', '.join(call_parts)})\n"
    namespace: dict = {"_orig": type(model).forward}
    exec(source, namespace)
    original = type(model)
    model.__class__ = type(original.__name__, (original,), {"_nnic_forward": namespace["_nnic_forward"]})
    tracer.traced_func_name = "_nnic_forward"
    try:
        return tracer.trace(model)
    finally:
        model.__class__ = original


__all__ = ["CaptureError", "Tracer", "placeholder_values", "split_dummy_input", "trace"]
