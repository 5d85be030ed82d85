"""Capture: how a model becomes the graph(s) channel analysis runs on. One fx graph of the whole model when fx
traces it (:mod:`~nnic.channels.tracing`); else one graph traced along the dummy input
(:mod:`~nnic.channels.concrete`); else the largest submodules that trace, each along the inputs it really
received (:mod:`~nnic.channels.regions`). The result says which, and names what could not be analysed.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from torch import nn

from nnic.channels import reuse
from nnic.channels.execution import check_faithful, copy_value, record_calls
from nnic.channels.regions import Part, find_regions
from nnic.channels.tracer import CaptureError, split_dummy_input
from nnic.channels.tracing import trace


@dataclass
class Capture:
    """How the model was captured: ``kind`` is ``"fx"`` (one graph of the whole model), ``"concrete"`` (one
    graph of the whole model traced along the dummy input: fx could not trace it symbolically, but its Python
    branches, dtype checks and mask helpers resolve on the example) or ``"regions"`` (the largest submodules
    that trace, each along the inputs it really received from the dummy input); ``not_analysed`` names each
    module whose forward code could not be traced, and why: the channels crossing that code are kept.
    ``key`` is the fingerprint of an ``"fx"`` capture (:mod:`~nnic.channels.reuse`), ``reused`` whether its graph
    came from an earlier analysis of the same model, ``values`` every node's value on the dummy input when the
    graph was traced just now (computed while tracing: a structure-only propagation reads them instead of
    running the model again), large tensors as stand-ins of their shape, dtype and device
    (:class:`~nnic.channels.concrete.ValueTracer`)."""

    kind: str
    parts: list[Part]
    not_analysed: dict[str, str] = field(default_factory=dict)
    key: tuple | None = None
    reused: bool = False
    values: dict = field(default_factory=dict)


def capture(model: nn.Module, args: tuple, kwargs: dict, *, leaf_types: Iterable[type] = (),
            leaf_modules: Iterable[str | type] = (), fallback: bool = True, values: bool = False) -> Capture:
    """One fx graph of ``model``; when fx cannot trace the model's own forward (transformers' mask and cache
    helpers, Python branches on tensor values), the regions that follow the real execution instead.

    The fallback runs the model once on the dummy input, recording each submodule's inputs, then tries the
    whole model traced along that input (kept only if it reproduces the real output), and else walks the
    module tree from the top (:func:`~nnic.channels.regions.find_regions`). A module called several times is
    analysed on every call. ``values=True``: a graph traced now carries every node's value (``Capture.values``).
    """
    leaf_modules, leaf_types = list(leaf_modules), tuple(leaf_types)
    key = reuse.canonical(model, reuse.fingerprint(model, args, kwargs, leaf_types, leaf_modules))
    gm = reuse.recall(model, key)
    if gm is not None:  # traced before (dependency-aware pruning, then speedup): the same graph
        return Capture("fx", [Part("", gm, [(model, args, kwargs)])], key=key, reused=True)
    try:
        known: dict | None = {} if values else None
        gm = trace(model, args, kwargs, leaf_types=leaf_types, leaf_modules=leaf_modules, values=known)
        reuse.remember(model, key, gm)
        if known:
            reuse.remember_values(model, key, args, kwargs, known)
        return Capture("fx", [Part("", gm, [(model, args, kwargs)])], key=key, values=known or {})
    except CaptureError as exc:
        if not fallback:
            raise
        first_error = exc
    names = {m for m in leaf_modules if isinstance(m, str)}
    types = tuple(leaf_types) + tuple(m for m in leaf_modules if isinstance(m, type))
    output, recorded = record_calls(model, args, kwargs)
    try:
        gm = trace(model, copy_value(args), copy_value(kwargs), leaf_types=leaf_types, leaf_modules=leaf_modules,
                   concrete=True)
        check_faithful(gm, model, args, kwargs, output, type(model).__name__)
        return Capture("concrete", [Part("", gm, [(model, args, kwargs)])])
    except CaptureError:
        pass
    parts, not_analysed = find_regions(model, recorded, types, names)
    if not parts:
        raise first_error
    return Capture("regions", parts, {"": f"{type(model).__name__}: {first_error}", **not_analysed})


__all__ = ["Capture", "CaptureError", "Part", "capture", "split_dummy_input", "trace"]
