"""The fx path of capture: one trace of a model with leaf modules, inputs of any structure (``*args``/``**kwargs``
forwards included), symbolic or along the dummy input (:mod:`~nnic.channels.concrete`), and an error that names
the module and line where tracing stopped.

Why its own module: every capture (:mod:`~nnic.channels.capture`) starts here, and the region fallback
(:mod:`~nnic.channels.regions`) traces through it.
"""

from __future__ import annotations

import inspect
import traceback
from collections.abc import Iterable
from typing import Any

from torch import fx, nn

from nnic.channels.concrete import ConcreteTracer, ValueTracer
from nnic.channels.tracer import CaptureError, Tracer, graph_module, placeholder_values


def _user_frame(exc: BaseException) -> str:
    frames = traceback.extract_tb(exc.__traceback__)
    for frame in reversed(frames):
        f = frame.filename.replace("\\", "/")
        if "/torch/fx/" not in f and "/torch/_" not in f and "/nnic/channels/" not in f:
            return f"{frame.filename}:{frame.lineno} ({frame.line})"
    return "unknown location"


def trace(model: nn.Module, args: tuple, kwargs: dict, *, leaf_types: Iterable[type] = (),
          leaf_modules: Iterable[str | type] = (), concrete: bool = False,
          values: dict[fx.Node, Any] | None = None) -> fx.GraphModule:
    """A GraphModule sharing ``model``'s submodules. Modules of ``leaf_types`` and those named or typed in
    ``leaf_modules`` are kept as single calls (not traced into). ``concrete=True`` runs the dummy input along
    (the model must be in the mode it will be analysed in): Python branches follow it, so the graph is the
    computation of this input, not of every input. ``values``, if given, receives each node's real value on
    the dummy input, computed while tracing (symbolically or not): the analysis then needs no forward of its
    own."""
    names = {m for m in leaf_modules if isinstance(m, str)}
    types = tuple(leaf_types) + tuple(m for m in leaf_modules if isinstance(m, type))
    known = dict(model.named_modules())
    unknown = sorted(n for n in names if n not in known)
    if unknown:
        raise ValueError(f"leaf_modules: {unknown} are not modules of {type(model).__name__}")

    def tracer_for(shapes_only: bool) -> Tracer:
        if not concrete and values is None:
            return Tracer(types, names)
        kind = ConcreteTracer if concrete else ValueTracer  # ConcreteTracer runs every layer (no stand-ins)
        return kind(types, names, list(placeholder_values(model, args, kwargs).values()), shapes_only)

    tracer = tracer_for(shapes_only=True)
    sig = inspect.signature(model.forward)
    params = list(sig.parameters.values())
    bound = sig.bind_partial(*args, **kwargs)
    defaults = {}
    for p in params:
        if p.name not in bound.arguments and p.default is not inspect.Parameter.empty:
            defaults[p.name] = p.default
    has_var = any(p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in params)

    def run(tracer: Tracer) -> fx.Graph:
        if has_var:  # fx cannot make placeholders for *args/**kwargs: trace an explicit-argument forward
            return _trace_explicit(tracer, model, bound)
        return tracer.trace(model, concrete_args=defaults or None)

    try:
        graph = run(tracer)
        if getattr(tracer, "unsure", None):  # a value computed off a layer that did not run may steer the graph
            tracer = tracer_for(shapes_only=False)
            graph = run(tracer)
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
    if values is not None:
        values.update(tracer.real)
    return graph_module(model, graph, type(model).__name__ + "Graph")


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


__all__ = ["trace"]
