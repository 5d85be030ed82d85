"""Graph capture with torch.fx: leaf modules, inputs of any structure, errors that say where tracing stopped;
and, when fx cannot trace a model's own forward, a capture that follows the real execution region by region."""

from __future__ import annotations

import contextlib
import copy
import inspect
import traceback
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import fx, nn

from nnic.channels import reuse

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


_MISSING = object()


class _ConcreteProxy(fx.Proxy):
    """A proxy that knows the real value it stands for: attributes that are not tensors (``dtype``, ``shape``,
    ``device``), ``len`` and truth values are answered from it, so Python branches follow the example."""

    def _real(self) -> Any:
        return getattr(self.tracer, "real", {}).get(self.node, _MISSING)

    def __getattr__(self, k: str) -> Any:
        real = self._real()
        if real is not _MISSING and not k.startswith("_"):
            value = getattr(real, k, _MISSING)
            if value is not _MISSING and not isinstance(value, torch.Tensor) and not callable(value):
                return value
        return super().__getattr__(k)

    def __len__(self) -> int:
        real = self._real()
        if real is _MISSING:
            return super().__len__()
        return len(real)


@contextlib.contextmanager
def _unpatched():
    """Real computation during tracing: fx patches ``nn.Module.__call__``/``__getattr__`` while it traces."""
    from torch.fx import _symbolic_trace as st

    call, getattr_ = nn.Module.__call__, nn.Module.__getattr__
    nn.Module.__call__, nn.Module.__getattr__ = st._orig_module_call, st._orig_module_getattr
    try:
        yield
    finally:
        nn.Module.__call__, nn.Module.__getattr__ = call, getattr_


def _realize(tracer: Any, obj: Any) -> Any:
    def one(a: Any) -> Any:
        if isinstance(a, fx.Proxy):
            a = a.node
        if isinstance(a, fx.Node):
            value = tracer.real.get(a, _MISSING)
            if value is _MISSING:
                raise LookupError(a.name)
            return value
        return a
    return fx.node.map_aggregate(obj, one)


class _ConcreteTracer(_Tracer):
    """fx tracing that also computes every node's real value on the dummy input (eval mode, no gradients): the
    graph follows the branches the example takes (dtype checks, mask helpers, ``len`` of outputs)."""

    def __init__(self, leaf_types: tuple[type, ...], leaf_names: set[str], inputs: list[Any]) -> None:
        super().__init__(leaf_types, leaf_names)
        self.inputs, self.real, self.placeholders = inputs, {}, 0

    def proxy(self, node: fx.Node) -> fx.Proxy:
        return _ConcreteProxy(node, self)

    def create_proxy(self, kind, target, args, kwargs, name=None, type_expr=None, proxy_factory_fn=None):
        proxy = super().create_proxy(kind, target, args, kwargs, name, type_expr, proxy_factory_fn)
        try:
            with torch.no_grad(), _unpatched():
                if kind == "placeholder":
                    value = self.inputs[self.placeholders]
                    self.placeholders += 1
                elif kind == "get_attr":
                    value = self.root
                    for part in target.split("."):
                        value = getattr(value, part)
                else:
                    a, kw = _realize(self, args), _realize(self, kwargs)
                    if kind == "call_module":
                        value = self.root.get_submodule(target)(*a, **kw)
                    elif kind == "call_method":
                        value = getattr(a[0], target)(*a[1:], **kw)
                    else:
                        value = target(*a, **kw)
        except Exception:  # no real value: the node behaves as in plain fx
            return proxy
        self.real[proxy.node] = value
        return proxy

    def to_bool(self, obj: fx.Proxy) -> bool:
        real = self.real.get(obj.node, _MISSING)
        if real is _MISSING:
            return super().to_bool(obj)
        return bool(real)

    def iter(self, obj: fx.Proxy):
        real = self.real.get(obj.node, _MISSING)
        if real is _MISSING:
            return super().iter(obj)
        return iter([obj[i] for i in range(len(real))])

    def keys(self, obj: fx.Proxy):
        real = self.real.get(obj.node, _MISSING)
        if real is _MISSING:
            return super().keys(obj)
        return list(real.keys())


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
        from nnic.channels.propagate import placeholder_values

        tracer: _Tracer = _ConcreteTracer(types, names, list(placeholder_values(model, args, kwargs).values()))
    else:
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
    """How the model was captured: ``kind`` is ``"fx"`` (one graph of the whole model), ``"concrete"`` (one
    graph of the whole model traced along the dummy input: fx could not trace it symbolically, but its Python
    branches, dtype checks and mask helpers resolve on the example) or ``"regions"`` (the largest submodules
    that trace, each along the inputs it really received from the dummy input); ``not_analysed`` names each module whose forward code could not be
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


def _record_calls(model: nn.Module, args: tuple, kwargs: dict) -> tuple[Any, dict[str, list[tuple[tuple, dict, Any]]]]:
    """The model's output, and every submodule's inputs and output on every call of a run on the dummy input."""
    calls: dict[str, list[list[Any]]] = {}
    hooks = []
    for name, module in model.named_modules():
        if name:
            hooks.append(module.register_forward_pre_hook(
                lambda m, a, kw, name=name: calls.setdefault(name, []).append([_copy(a), _copy(kw), None]),
                with_kwargs=True))
            hooks.append(module.register_forward_hook(
                lambda m, a, out, name=name: calls[name][-1].__setitem__(2, _copy(out))))
    try:
        with torch.no_grad():
            out = _copy(model(*args, **kwargs))
    finally:
        for h in hooks:
            h.remove()
    return out, {k: [tuple(c) for c in v] for k, v in calls.items()}


def _same(a: Any, b: Any) -> bool:
    """Whether a graph's output is the module's real output (tensors within float rounding)."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)) or a.shape != b.shape:
            return False
        if not a.is_floating_point():
            return bool(torch.equal(a, b))
        scale = float(b.detach().abs().max()) if b.numel() else 0.0
        return not b.numel() or bool((a.detach().double() - b.detach().double()).abs().max() <= 1e-5 + 1e-4 * scale)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        return set(a) == set(b) and all(_same(a[k], b[k]) for k in b)
    return True  # other objects (caches) are state, not results


def _check_faithful(gm: fx.GraphModule, module: nn.Module, args: tuple, kwargs: dict, expected: Any,
                    what: str) -> None:
    """A graph traced along the example must compute the example's real output; else it is not used."""
    from nnic.channels.propagate import placeholder_values

    with torch.no_grad():
        got = fx.Interpreter(gm).run(*_copy(list(placeholder_values(module, args, kwargs).values())))
    if not _same(got, expected):
        raise CaptureError(f"{what}: the graph traced along the dummy input does not reproduce its output")


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
    leaf_modules, leaf_types = list(leaf_modules), tuple(leaf_types)
    key = reuse.fingerprint(model, args, kwargs, leaf_types, leaf_modules)
    gm = reuse.recall(model, key)
    if gm is not None:  # traced before (dependency-aware pruning, then speedup): the same graph
        return Capture("fx", [Part("", gm, [(model, args, kwargs)])])
    try:
        gm = trace(model, args, kwargs, leaf_types=leaf_types, leaf_modules=leaf_modules)
        reuse.remember(model, key, gm)
        return Capture("fx", [Part("", gm, [(model, args, kwargs)])])
    except CaptureError as exc:
        if not fallback:
            raise
        first_error = exc
    names = {m for m in leaf_modules if isinstance(m, str)}
    types = tuple(leaf_types) + tuple(m for m in leaf_modules if isinstance(m, type))
    output, recorded = _record_calls(model, args, kwargs)
    try:
        gm = trace(model, _copy(args), _copy(kwargs), leaf_types=leaf_types, leaf_modules=leaf_modules,
                   concrete=True)
        _check_faithful(gm, model, args, kwargs, output, type(model).__name__)
        return Capture("concrete", [Part("", gm, [(model, args, kwargs)])])
    except CaptureError:
        pass
    result = Capture("regions", [], {"": f"{type(model).__name__}: {first_error}"})

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
                parts = []
                for same in groups.values():
                    fixed, first = _split_plain(same[0][1])
                    wrapped = _Call(child, fixed)
                    gm = _trace_region(model, name, wrapped, _copy(same[0][0]), _copy(first), types, names)
                    _check_faithful(gm, wrapped, same[0][0], first, same[0][2], name)
                    parts.append(Part(name, gm, [(wrapped, a, _split_plain(kw)[1]) for a, kw, _ in same]))
            except CaptureError as exc:
                result.not_analysed[name] = f"{type(child).__name__}: {exc}"
                visit(name, child)
                continue
            result.parts += parts

    visit("", model)
    if not result.parts:
        raise first_error
    return result
