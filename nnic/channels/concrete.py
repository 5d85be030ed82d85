"""The concrete path of capture: fx tracing that computes every node's real value on the dummy input as it
goes, so that Python branches, ``dtype``/``shape`` checks and ``len`` of outputs follow the example.

Why: transformers' mask, cache and dtype helpers stop symbolic fx, yet on one given input they take one
branch. The graph is then the computation of *this* input, which is why capture checks it reproduces the
real output before using it (:func:`~nnic.channels.execution.check_faithful`).
"""

from __future__ import annotations

import weakref
from typing import Any

import torch
from torch import fx, nn
from torch.fx import _symbolic_trace as st

from nnic.channels.shapes import op_zeros, zeros_of
from nnic.channels.tracer import Tracer, fetch_attr, submodule

_MISSING = object()
_ORIGINAL_CALL = st._orig_module_call  # nn.Module.__call__ as it was before fx patched it


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


def _realize(tracer: Any, obj: Any) -> Any:
    def one(a: Any) -> Any:
        if isinstance(a, fx.Proxy):
            a = a.node
        if isinstance(a, fx.Node):
            return tracer.value_of(a)
        return a
    return fx.node.map_aggregate(obj, one)


def _stand_in(value: torch.Tensor) -> torch.Tensor:
    """A tensor with ``value``'s shape, dtype and device and no memory (one zero, expanded): what a
    structure pass reads of a large activation."""
    return torch.zeros((), dtype=value.dtype, device=value.device).expand(value.shape)


class ValueTracer(Tracer):
    """fx's symbolic tracing that also computes every node's real value on the dummy input (eval mode, no
    gradients) as it records the node, without letting the values steer the trace: the graph is the symbolic
    one, and the values (``real``: node -> value) spare the propagation that follows a forward of its own."""

    # Values are kept while the traced forward holds their proxies, and ``real`` gets a stand-in for each
    # large tensor the trace computes (:func:`_stand_in`): keeping every activation alive to the end made the
    # trace's own ops write into fresh memory, and ResNet-50's convolutions and norms ran 1.5-2.5x slower
    # than in a plain forward. Small values (masks, indices, sizes) stay as they are; rules may read them.
    stand_in_min = 1 << 14  # elements

    # A layer whose output would become a stand-in and whose shape :mod:`~nnic.channels.shapes` knows is not
    # run: its value is a stand-in from the start (ResNet-50's trace 0.20 -> 0.05 s); nor is one whose input is
    # already unreal (below), whatever its output's size: zeros of its shape. What is computed from
    # such a value ("unreal", small values included) has the right shape and the wrong values; nothing the
    # structure pass reads depends on floating-point values, but an integer or bool tensor (indices, masks)
    # or an ``item()``/``tolist()`` computed off one may steer shapes or channels: then ``unsure`` names the
    # node, and the caller traces again with ``shapes_only=False`` (every layer run, every small value real).
    def __init__(self, leaf_types: tuple[type, ...], leaf_names: set[str], inputs: list[Any],
                 shapes_only: bool = True) -> None:
        super().__init__(leaf_types, leaf_names)
        self.inputs, self.real, self.placeholders = inputs, {}, 0
        self.computing = False  # computing a value: module calls and attributes are the real ones
        self.live: weakref.WeakValueDictionary[fx.Node, torch.Tensor] = weakref.WeakValueDictionary()
        self.shadowed: set[fx.Node] = set()  # nodes whose ``real`` entry is a stand-in
        self.shapes_only = shapes_only
        self.unreal: set[fx.Node] = set()  # nodes computed from a layer that was not run
        self.unsure: str | None = None  # the first unreal node whose value may steer shapes or channels

    def value_of(self, node: fx.Node) -> Any:
        """``node``'s real value; ``LookupError`` if it has none (its computation failed, or its value was
        a large tensor that the forward no longer holds: then nothing traced after it reads it)."""
        value = self.live.get(node, _MISSING)
        if value is _MISSING:
            value = _MISSING if node in self.shadowed else self.real.get(node, _MISSING)
        if value is _MISSING:
            raise LookupError(node.name)
        return value

    def _record(self, proxy: fx.Proxy, kind: str, value: Any) -> None:
        if (kind in ("placeholder", "get_attr") or not isinstance(value, torch.Tensor)
                or value.numel() < self.stand_in_min):
            self.real[proxy.node] = value
            return
        proxy.__dict__["_nnic_value"] = value  # alive as long as the forward holds the proxy
        self.live[proxy.node] = value
        self.real[proxy.node] = _stand_in(value)
        self.shadowed.add(proxy.node)

    # fx patches nn.Module.__call__ and __getattr__ while it traces; swapping them back for each value would
    # reset the method caches of every Module class (milliseconds a node). These two hooks are where the patches
    # land: while a value is computed they answer with the real call and the real attribute.
    def call_module(self, m: nn.Module, forward, args, kwargs):
        if self.computing:
            return forward(*args, **kwargs)
        return super().call_module(m, forward, args, kwargs)

    def getattr(self, attr: str, attr_val: Any, parameter_proxy_cache: dict) -> Any:
        if self.computing:
            return attr_val
        return super().getattr(attr, attr_val, parameter_proxy_cache)

    def create_proxy(self, kind, target, args, kwargs, name=None, type_expr=None, proxy_factory_fn=None):
        proxy = super().create_proxy(kind, target, args, kwargs, name, type_expr, proxy_factory_fn)
        self.computing = True
        try:
            with torch.no_grad():
                if kind == "placeholder":
                    value = self.inputs[self.placeholders]
                    self.placeholders += 1
                elif kind == "get_attr":
                    value = fetch_attr(self.root, target)
                else:
                    a, kw = _realize(self, args), _realize(self, kwargs)
                    value = self._compute(proxy.node, kind, target, a, kw)
        except Exception:  # no real value: the node behaves as in plain fx
            return proxy
        finally:
            self.computing = False
        self._record(proxy, kind, value)
        return proxy

    def _compute(self, node: fx.Node, kind: str, target: Any, a: tuple, kw: dict) -> Any:
        unreal = any(n in self.unreal for n in node.all_input_nodes)
        module = submodule(self.root, target) if kind == "call_module" else None
        if self.shapes_only:
            # From an unreal input the value is wrong whatever its size: its shape, at any size, does as well
            # (EfficientNet's squeeze-excitation convolutions and the small late layers ran on stand-ins).
            at_least = 0 if unreal else self.stand_in_min
            value = zeros_of(module, a, kw, at_least) if module is not None else \
                op_zeros(kind, target, a, kw, at_least)
            if value is not None:
                self.unreal.add(node)
                # A small value is kept as it is (rules may read it): zeros in memory of their own, as any
                # other small tensor has, not an expanded zero.
                return value.contiguous() if value.numel() < self.stand_in_min else value
        try:
            value = _run(kind, target, module, a, kw)
        except Exception:
            if not unreal:
                raise
            # An op that writes into its input (``out += identity``) refuses a zero-memory stand-in.
            value = _run(kind, target, module, _materialized(a), _materialized(kw))
        if unreal and not _value_independent(kind, target, a):
            self.unreal.add(node)
            if self.unsure is None and (_steers(value) or target in ("item", "tolist")):
                self.unsure = node.name
        return value


def _run(kind: str, target: Any, module: nn.Module | None, a: tuple, kw: dict) -> Any:
    if module is not None:  # around fx's call wrapper, which rescans globals per call
        return _ORIGINAL_CALL(module, *a, **kw)
    if kind == "call_method":
        return getattr(a[0], target)(*a[1:], **kw)
    return target(*a, **kw)


def _materialized(obj: Any) -> Any:
    """``obj`` with every expanded tensor (a stand-in) copied into memory of its own."""
    return fx.node.map_aggregate(obj, lambda t: t.contiguous() if isinstance(t, torch.Tensor) and 0 in t.stride()
                                 and t.numel() > 1 else t)


# Ops whose result depends on their input's shape, dtype and device only: exact on an unreal input.
_SHAPE_METHODS = {"size", "dim", "numel", "nelement", "new_zeros", "new_ones", "new_full", "new_empty"}
_SHAPE_ATTRS = {"shape", "ndim", "dtype", "device"}
_SHAPE_FUNCTIONS = {torch.zeros_like, torch.ones_like, torch.full_like, torch.empty_like}


def _value_independent(kind: str, target: Any, args: tuple) -> bool:
    if kind == "call_method":
        return target in _SHAPE_METHODS
    if target is getattr:
        return len(args) > 1 and args[1] in _SHAPE_ATTRS
    return kind == "call_function" and target in _SHAPE_FUNCTIONS


def _steers(value: Any) -> bool:
    """Whether ``value`` holds an integer or bool tensor: indices, masks or sizes that may steer shapes or
    channels."""
    if isinstance(value, torch.Tensor):
        return not (value.is_floating_point() or value.is_complex())
    if isinstance(value, (list, tuple)):
        return any(_steers(v) for v in value)
    if isinstance(value, dict):
        return any(_steers(v) for v in value.values())
    return False


class ConcreteTracer(ValueTracer):
    """fx tracing that also computes every node's real value on the dummy input (eval mode, no gradients): the
    graph follows the branches the example takes (dtype checks, mask helpers, ``len`` of outputs). Every
    value is kept: branches read them."""

    stand_in_min = float("inf")  # type: ignore[assignment]

    def proxy(self, node: fx.Node) -> fx.Proxy:
        return _ConcreteProxy(node, self)

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


__all__ = ["ConcreteTracer", "ValueTracer"]
