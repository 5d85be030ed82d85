"""One fx trace per model shape: dependency-aware pruning and the speedup after it analyse the same model on the
same dummy input, and the second analysis reuses the first one's graph instead of tracing again, and the first
one's channel groups when its propagation asks for exactly the same unions (:class:`~nnic.channels.graph.UnionRecord`).

Only a symbolic (``"fx"``) graph is reused: it depends on the model's code, module tree and attributes and on
which arguments are given, never on weight or input values, so masking the weights between the two analyses
does not change it. A concrete or region capture follows the input's values and is always redone. The graph is
kept per model object (weakly: it goes with the model) together with a fingerprint of everything a symbolic trace
reads: every module's class, forward and plain attributes (sizes, flags, strides), every parameter's and buffer's name
and shape, the leaf modules and the arguments' structure. Any difference, including a speedup that shrank the
model in between, traces again. A reused graph is rebound to the model's current modules and tensors, so
parameters replaced since (masks folded in) are the ones the analysis reads; when every module and tensor the
graph names is still the very object it was bound to, the GraphModule itself is reused (no code generation).

The groups are a function of the unions and the id count alone, so reusing them needs no trust in the
fingerprint: a propagation records its unions without applying them, and adopts the remembered result only if
the two lists are equal.

The values a trace computed (:class:`~nnic.channels.concrete.ValueTracer`: every node's, large ones as stand-ins
of their shape) are kept too, for one later value-free propagation (speedup after dependency-aware pruning)
that reads shapes and literals only: they count only for the same graph and the very same input tensors,
unchanged since (same objects, same version counters), and are handed out once.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch import fx, nn

from nnic.channels.graph import UnionRecord
from nnic.channels.tracer import fetch_attr, graph_module

_PLAIN = (type(None), bool, int, float, str, torch.dtype, torch.device)
_PLAIN_TYPES = frozenset(_PLAIN)  # the exact types: one set lookup per value (a fingerprint reads thousands)
_GRAPHS: weakref.WeakKeyDictionary[nn.Module, tuple[tuple, fx.GraphModule]] = weakref.WeakKeyDictionary()
_UNIONS: weakref.WeakKeyDictionary[nn.Module, tuple[tuple, UnionRecord]] = weakref.WeakKeyDictionary()
_VALUES: weakref.WeakKeyDictionary[nn.Module, tuple[tuple, list[tuple[torch.Tensor, int]], dict]] = \
    weakref.WeakKeyDictionary()
# Models whose module tree the caller holds still (see held()): their fingerprint's module part, once computed.
_HELD: weakref.WeakKeyDictionary[nn.Module, list] = weakref.WeakKeyDictionary()


def _plain(value: Any) -> bool:
    if type(value) in _PLAIN_TYPES:
        return True
    if isinstance(value, (tuple, list)):
        return all(_plain(v) for v in value)
    return isinstance(value, _PLAIN)


# A plain attribute as the fingerprint compares it (:func:`_modules_part`): ``(type, value)`` for None, bools, ints
# and strings and for tuples of ints (sizes, strides), whose equality is exact within their type, and its ``repr``
# for the rest (floats: NaN equals itself and -0.0 differs from 0.0; dtypes, devices, lists and nested tuples).
# The ``repr`` of every attribute was most of the fingerprint's walk (some 10 us a module).
_EXACT_TYPES = frozenset((type(None), bool, int, str))


def _arg_shape(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return ("tensor", tuple(obj.shape), obj.dtype, obj.device.type)
    if isinstance(obj, (tuple, list)):
        return (type(obj).__name__, tuple(_arg_shape(o) for o in obj))
    if isinstance(obj, dict):
        return ("dict", tuple((k, _arg_shape(v)) for k, v in obj.items()))
    return ("value", repr(obj)) if _plain(obj) else ("object", type(obj).__qualname__, id(obj))


@contextlib.contextmanager
def held(model: nn.Module) -> Iterator[None]:
    """Within the block the caller changes nothing in ``model`` that a fingerprint reads (its modules, their
    classes, plain attributes and tensor shapes) except through code that calls :func:`forget`: the module
    part of the fingerprint is computed once, and a second analysis compares the train/eval flags only.
    ``nnic.prune_and_speedup`` holds its model from the pruner's analysis to speedup's, between which only
    weight values change (and mask parametrizations are folded, which forgets)."""
    _HELD[model] = []
    try:
        yield
    finally:
        _HELD.pop(model, None)


def forget(model: nn.Module) -> None:
    """``model``'s module tree changed within :func:`held`: the next fingerprint walks it again."""
    found = _HELD.get(model)
    if found is not None:
        found.clear()


def _modules_part(model: nn.Module) -> tuple:
    found = _HELD.get(model)
    if found:
        part, objects = found
        if all(entry[3] == m.training for entry, m in zip(part, objects)):
            return part
    objects, modules = [], []
    for name, m in model.named_modules():
        attrs = []
        for k, v in m.__dict__.items():  # keys as _EXACT_TYPES' comment says, the exact cases first
            if k[0] == "_":
                continue
            kind = type(v)
            if kind in _EXACT_TYPES or (kind is tuple and all(type(x) is int for x in v)):
                attrs.append((k, (kind, v)))
            elif _plain(v):
                attrs.append((k, repr(v)))
        attrs.sort()
        tensors = tuple([(k, t.shape) for k, t in (*m._parameters.items(), *m._buffers.items()) if t is not None])
        modules.append((name, type(m), type(m).forward, m.training, tuple(attrs), tensors))  # forward: patched?
        objects.append(m)
    part = tuple(modules)
    if found is not None:
        found[:] = [part, objects]
    return part


def fingerprint(model: nn.Module, args: tuple, kwargs: dict, leaf_types: Iterable[type],
                leaf_modules: Iterable[str | type]) -> tuple:
    """Everything a symbolic trace of ``model`` on these arguments reads, as a comparable tuple (its module
    part computed once while the model is :func:`held`)."""
    leaves = tuple(sorted(repr(m) for m in leaf_modules)) + tuple(sorted(t.__qualname__ for t in leaf_types))
    return _modules_part(model), leaves, _arg_shape(args), _arg_shape(kwargs)


def _bound_to(gm: fx.GraphModule, model: nn.Module) -> bool:
    """Whether every module and attribute ``gm``'s graph names is the same object in ``model``."""
    try:
        return all(fetch_attr(gm, n.target) is fetch_attr(model, n.target)
                   for n in gm.graph.nodes if n.op in ("call_module", "get_attr"))
    except AttributeError:
        return False


def canonical(model: nn.Module, key: tuple) -> tuple:
    """The fingerprint kept for ``model`` when it equals ``key`` (else ``key``): the one object that every
    later comparison of this analysis (graph, trace values, unions) then finds equal by identity. A fresh
    fingerprint equal to the kept one compares entry by entry, some 1.5 ms on a 300-module model each time,
    three times per speedup after a pruner's ``compress()`` (a model :func:`held` shares its module part, and
    compares fast already)."""
    found = _GRAPHS.get(model)
    return found[0] if found is not None and found[0] == key else key


def recall(model: nn.Module, key: tuple) -> fx.GraphModule | None:
    """The graph traced before for this fingerprint, bound to the model's current modules and tensors."""
    found = _GRAPHS.get(model)
    if found is None or found[0] != key:
        return None
    gm = found[1]
    if _bound_to(gm, model):
        return gm
    try:
        gm = graph_module(model, gm.graph, type(gm).__name__)
    except AttributeError:  # a target that lives on the traced module only (an fx constant): trace again
        del _GRAPHS[model]
        return None
    _GRAPHS[model] = (key, gm)
    return gm


def remember(model: nn.Module, key: tuple, gm: fx.GraphModule) -> None:
    """Keep ``gm`` for the next analysis of ``model`` with the same fingerprint (one per model)."""
    _GRAPHS[model] = (key, gm)


def recall_unions(model: nn.Module, key: tuple) -> UnionRecord | None:
    """The unions (and groups) of the last propagation over ``model``'s graph with this fingerprint."""
    found = _UNIONS.get(model)
    return found[1] if found is not None and found[0] == key else None


def remember_unions(model: nn.Module, key: tuple, record: UnionRecord) -> None:
    _UNIONS[model] = (key, record)


def _inputs(args: tuple, kwargs: dict) -> list[tuple[torch.Tensor, int]]:
    flat: list[torch.Tensor] = []

    def walk(obj: Any) -> None:
        if isinstance(obj, torch.Tensor):
            flat.append(obj)
        elif isinstance(obj, (tuple, list)):
            for o in obj:
                walk(o)
        elif isinstance(obj, dict):
            for o in obj.values():
                walk(o)

    walk(args)
    walk(kwargs)
    return [(t, t._version) for t in flat]


def remember_values(model: nn.Module, key: tuple, args: tuple, kwargs: dict, values: dict) -> None:
    """Keep the values a trace of ``model`` on these inputs computed (one set per model)."""
    _VALUES[model] = (key, _inputs(args, kwargs), values)


def recall_values(model: nn.Module, key: tuple, args: tuple, kwargs: dict) -> dict | None:
    """The values kept for this fingerprint and these very inputs (unchanged since), handed out once."""
    found = _VALUES.pop(model, None)
    if found is None or found[0] != key:
        return None
    now = _inputs(args, kwargs)
    same = len(now) == len(found[1]) and all(a is b and va == vb for (a, va), (b, vb) in zip(now, found[1]))
    return found[2] if same else None
