"""What the real run on the dummy input gave: every submodule's inputs and output (module hooks), copied as
they were then, and the check that a graph traced along the example reproduces that output.

Why: a graph traced along one input (:mod:`~nnic.channels.concrete`) or of one region
(:mod:`~nnic.channels.regions`) is only used when it computes what the model really computed; the recorded
calls are also what each region is traced and analysed on.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import torch
from torch import fx, nn

from nnic.channels.tracer import CaptureError, placeholder_values


def copy_value(obj: Any) -> Any:
    """The recorded inputs must be the values the module saw then (caches and buffers mutate later)."""
    try:
        return copy.deepcopy(obj)
    except Exception:  # an object that cannot be copied is passed as it is
        return obj


def record_calls(model: nn.Module, args: tuple, kwargs: dict) -> tuple[Any, dict[str, list[tuple[tuple, dict, Any]]]]:
    """The model's output, and every submodule's inputs and output on every call of a run on the dummy input."""
    calls: dict[str, list[list[Any]]] = {}
    hooks = []
    for name, module in model.named_modules():
        if name:
            hooks.append(module.register_forward_pre_hook(
                lambda m, a, kw, name=name: calls.setdefault(name, []).append([copy_value(a), copy_value(kw), None]),
                with_kwargs=True))
            hooks.append(module.register_forward_hook(
                lambda m, a, out, name=name: calls[name][-1].__setitem__(2, copy_value(out))))
    try:
        with torch.no_grad():
            out = copy_value(model(*args, **kwargs))
    finally:
        for h in hooks:
            h.remove()
    return out, {k: [tuple(c) for c in v] for k, v in calls.items()}


def same_output(a: Any, b: Any) -> bool:
    """Whether a graph's output is the module's real output (tensors within float rounding)."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)) or a.shape != b.shape:
            return False
        if not a.is_floating_point():
            return bool(torch.equal(a, b))
        scale = float(b.detach().abs().max()) if b.numel() else 0.0
        return not b.numel() or bool((a.detach().double() - b.detach().double()).abs().max() <= 1e-5 + 1e-4 * scale)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(same_output(x, y) for x, y in zip(a, b))
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        return set(a) == set(b) and all(same_output(a[k], b[k]) for k in b)
    return True  # other objects (caches) are state, not results


def check_faithful(gm: fx.GraphModule, module: nn.Module, args: tuple, kwargs: dict, expected: Any,
                   what: str) -> None:
    """A graph traced along the example must compute the example's real output; else it is not used."""
    with torch.no_grad():
        got = fx.Interpreter(gm).run(*copy_value(list(placeholder_values(module, args, kwargs).values())))
    if not same_output(got, expected):
        raise CaptureError(f"{what}: the graph traced along the dummy input does not reproduce its output")


__all__ = ["check_faithful", "copy_value", "record_calls", "same_output"]
