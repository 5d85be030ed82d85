"""Graph capture with torch.fx: leaf modules, inputs of any structure, errors that say where tracing stopped;
and, when fx cannot trace a model's own forward, a capture that follows the real execution region by region."""

from __future__ import annotations

import copy
import inspect
import traceback
from collections.abc import Iterable
from dataclasses import dataclass, field
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


class _Tracer(fx.Tracer):
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
          leaf_modules: Iterable[str | type] = ()) -> fx.GraphModule:
    """A GraphModule sharing ``model``'s submodules. Modules of ``leaf_types`` and those named or typed in
    ``leaf_modules`` are kept as single calls (not traced into)."""
    names = {m for m in leaf_modules if isinstance(m, str)}
    types = tuple(leaf_types) + tuple(m for m in leaf_modules if isinstance(m, type))
    known = dict(model.named_modules())
    unknown = sorted(n for n in names if n not in known)
    if unknown:
        raise ValueError(f"leaf_modules: {unknown} are not modules of {type(model).__name__}")
    tracer = _Tracer(types, names)
    sig = inspect.signature(model.forward)
    params = list(sig.parameters.values())
    bound = sig.bind_partial(*args, **kwargs)
    concrete = {}
    for p in params:
        if p.name not in bound.arguments and p.default is not inspect.Parameter.empty:
            concrete[p.name] = p.default
    has_var = any(p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in params)
    try:
        if has_var:  # fx cannot make placeholders for *args/**kwargs: trace an explicit-argument forward
            graph = _trace_explicit(tracer, model, bound)
        else:
            graph = tracer.trace(model, concrete_args=concrete or None)
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


# ---- fallback: follow the real execution, region by region ---------------------------------------------------


@dataclass
class Part:
    """One traced region of the model: ``prefix`` is its module's qualified name ("" for the whole model),
    ``gm`` a GraphModule over the whole model (targets are qualified names) and ``calls`` the ``(module, args,
    kwargs)`` of each of its recorded calls that this graph was traced for."""

    prefix: str
    gm: fx.GraphModule
    calls: list[tuple[nn.Module, tuple, dict]]


@dataclass
class Capture:
    """How the model was captured: ``kind`` is ``"fx"`` (one graph of the whole model) or ``"regions"`` (fx
    failed on the model's own forward: the largest submodules fx can trace, each analysed on the inputs it
    really received from the dummy input); ``not_analysed`` names each module whose forward code could not be
    traced, and why: the channels crossing that code are kept."""

    kind: str
    parts: list[Part]
    not_analysed: dict[str, str] = field(default_factory=dict)


class _Call(nn.Module):
    """A module called as a leaf or traced into, behind one ``forward`` fx can make placeholders for; keyword
    arguments that were plain values (``None``, flags, sizes) on the recorded call are fixed, not traced: a
    forward's ``if encoder_hidden_states is not None`` then follows the real call."""

    def __init__(self, module: nn.Module, fixed: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.m, self.fixed = module, dict(fixed or {})

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.m(*args, **self.fixed, **kwargs)


_PLAIN = (type(None), bool, int, float, str, torch.dtype, torch.device)


def _is_plain(value: Any) -> bool:
    if isinstance(value, (tuple, list)):
        return all(_is_plain(v) for v in value)
    return isinstance(value, _PLAIN)


def _split_plain(kwargs: dict) -> tuple[dict, dict]:
    """(plain keyword arguments, the others)."""
    plain = {k: v for k, v in kwargs.items() if _is_plain(v)}
    return plain, {k: v for k, v in kwargs.items() if k not in plain}


def _copy(obj: Any) -> Any:
    """The recorded inputs must be the values the module saw then (caches and buffers mutate later)."""
    try:
        return copy.deepcopy(obj)
    except Exception:  # an object that cannot be copied is passed as it is
        return obj


def _record_calls(model: nn.Module, args: tuple, kwargs: dict) -> dict[str, list[tuple[tuple, dict]]]:
    """Every submodule's inputs on every call of a run on the dummy input (eval mode, no gradients)."""
    calls: dict[str, list[tuple[tuple, dict]]] = {}
    hooks = []
    for name, module in model.named_modules():
        if name:
            hooks.append(module.register_forward_pre_hook(
                lambda m, a, kw, name=name: calls.setdefault(name, []).append((_copy(a), _copy(kw))),
                with_kwargs=True))
    try:
        with torch.no_grad():
            model(*args, **kwargs)
    finally:
        for h in hooks:
            h.remove()
    return calls


def _binding(args: tuple, kwargs: dict) -> tuple:
    """Which arguments a call gives, and its plain keyword values: calls alike share one trace."""
    plain, rest = _split_plain(kwargs)
    return len(args), tuple(sorted(rest)), repr(sorted(plain.items()))


def _trace_region(model: nn.Module, prefix: str, wrapped: _Call, args: tuple, kwargs: dict,
                  leaf_types: tuple[type, ...], leaf_names: set[str]) -> fx.GraphModule:
    """``wrapped.m`` (named ``prefix`` in ``model``) traced for these inputs, as a graph over ``model``."""
    inner = {n[len(prefix) + 1:] for n in leaf_names if n.startswith(prefix + ".")}
    gm = trace(wrapped, args, kwargs, leaf_types=leaf_types, leaf_modules={"m." + n for n in inner})
    graph, owned = gm.graph, {}
    for node in graph.nodes:
        if node.op in ("call_module", "get_attr"):
            obj = gm.get_submodule(node.target) if node.op == "call_module" else _fetch_attr(gm, node.target)
            if node.target == "m" or node.target.startswith("m."):  # the module's own: its name in the model
                node.target = prefix + node.target[1:]
            owned[node.target] = obj  # fx's own constants keep their names
    return fx.GraphModule(owned, graph, class_name=type(wrapped.m).__name__ + "Region")


def _fetch_attr(root: nn.Module, target: str) -> Any:
    obj: Any = root
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def capture(model: nn.Module, args: tuple, kwargs: dict, *, leaf_types: Iterable[type] = (),
            leaf_modules: Iterable[str | type] = (), fallback: bool = True) -> Capture:
    """One fx graph of ``model``; when fx cannot trace the model's own forward (transformers' mask and cache
    helpers, Python branches on tensor values), the regions that follow the real execution instead.

    The fallback runs the model once on the dummy input, recording each submodule's inputs, then walks the
    module tree from the top: a submodule that fx traces (on the inputs it received) is one region; one that
    fails is named in ``not_analysed`` and its children are tried in turn. A region's inputs come from code
    nnic could not analyse, so its input and output channels are kept; everything inside (attention heads, MLP
    channels) is analysed as in a whole-model trace. A module called several times is analysed on every call.
    """
    leaf_modules = list(leaf_modules)
    try:
        gm = trace(model, args, kwargs, leaf_types=leaf_types, leaf_modules=leaf_modules)
        return Capture("fx", [Part("", gm, [(model, args, kwargs)])])
    except CaptureError as exc:
        if not fallback:
            raise
        first_error = exc
    names = {m for m in leaf_modules if isinstance(m, str)}
    types = tuple(leaf_types) + tuple(m for m in leaf_modules if isinstance(m, type))
    recorded = _record_calls(model, args, kwargs)
    result = Capture("regions", [], {"": f"{type(model).__name__}: {first_error}"})

    def visit(prefix: str, module: nn.Module) -> None:
        for child_name, child in module.named_children():
            name = f"{prefix}.{child_name}" if prefix else child_name
            calls = recorded.get(name)
            if not calls:  # not called itself (a ModuleList), or never run: its children may be
                visit(name, child)
                continue
            groups: dict[tuple, list[tuple[tuple, dict]]] = {}
            for a, kw in calls:
                groups.setdefault(_binding(a, kw), []).append((a, kw))
            try:
                parts = []
                for same in groups.values():
                    fixed, first = _split_plain(same[0][1])
                    wrapped = _Call(child, fixed)
                    gm = _trace_region(model, name, wrapped, same[0][0], first, types, names)
                    parts.append(Part(name, gm, [(wrapped, a, _split_plain(kw)[1]) for a, kw in same]))
            except CaptureError as exc:
                result.not_analysed[name] = f"{type(child).__name__}: {exc}"
                visit(name, child)
                continue
            result.parts += parts

    visit("", model)
    if not result.parts:
        raise first_error
    return result
