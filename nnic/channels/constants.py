"""The constants dead channels hold, derived without running the model: what a value-free propagation
(:attr:`~nnic.channels.graph.State.value_free`) reads instead of the masked model's activations.

A dead channel does not depend on the model's input, so its value at every position is a function of the masks
and parameters alone. Rules give it in :attr:`~nnic.channels.graph.Spec.const` (NaN where they cannot): a channel
mix reading only zero channels outputs its bias there; an elementwise or per-channel module is run on a *probe*,
a tensor with one element per channel holding the input's constants (every other dimension of size 1: the
op is elementwise along them, so the probe's value is the value everywhere). Ops that average, pad or resample
keep only the zeros (:meth:`~nnic.channels.graph.Spec.zero_only`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import fx

from nnic.channels.graph import Call, Spec, flags, values_of

_NAN = float("nan")


def _probe_of(spec: Spec, like: torch.Tensor) -> torch.Tensor:
    """``like``'s number of dimensions, ``spec``'s channels along its dim, 1 along the others."""
    shape = [1] * like.ndim
    shape[spec.dim] = len(spec)
    return spec.known().to(like.dtype).reshape(shape)


def probe_constants(call: Call, dim: int, n: int) -> torch.Tensor | None:
    """The node's op run on probes of its labelled inputs' constants, parameters and literals as they are: the
    output's constant per channel along ``dim`` (NaN where unknown or not uniform), or ``None`` when the op
    also reads an input-dependent tensor (then nothing is known) or fails on the probe."""
    state = call.state

    def swap(a: Any) -> Any:
        if not isinstance(a, fx.Node):
            return a
        value = state.values.get(a)
        spec = state.specs.get(a)
        if isinstance(spec, Spec) and isinstance(value, torch.Tensor):
            return _probe_of(spec, value)
        if a in state.const or not isinstance(value, torch.Tensor):
            return value
        raise LookupError(a.name)

    try:
        args = fx.node.map_aggregate(call.node.args, swap)
        kwargs = fx.node.map_aggregate(call.node.kwargs, swap)
        node = call.node
        with torch.no_grad():
            if call.module is not None:
                out = call.module(*args, **kwargs)
            elif node.op == "call_method":
                out = getattr(args[0], node.target)(*args[1:], **kwargs)
            else:
                out = node.target(*args, **kwargs)
    except Exception:  # an input-dependent operand, or an op that refuses the probe's shape
        return None
    if not isinstance(out, torch.Tensor) or out.ndim <= dim or out.shape[dim] != n:
        return None
    return uniform_along(out, dim)


def uniform_along(out: torch.Tensor, dim: int) -> torch.Tensor:
    """Per index along ``dim``: the value when every element there is equal (and not NaN), else NaN. In numpy:
    a probe holds one element per channel (see :func:`~nnic.channels.graph.flags` for why)."""
    v = values_of(out)
    if v.size and v.size == v.shape[dim]:  # one element per index, as a probe's output has: each is its own
        return torch.from_numpy(v.reshape(-1).copy())  # value (NaN stays NaN), no reductions over nothing
    other = tuple(d for d in range(v.ndim) if d != dim)
    hi, lo = (v.max(axis=other), v.min(axis=other)) if other and v.size else (v.reshape(-1), v.reshape(-1))
    return torch.from_numpy(np.where(hi == lo, hi, _NAN))


def only_dead(const: torch.Tensor | None, dead: torch.Tensor) -> torch.Tensor | None:
    """``const`` where ``dead``, NaN elsewhere (a live channel has no constant); ``None`` when nothing is dead."""
    if const is None:
        return None
    d = flags(dead)
    if not d.any():
        return None
    return torch.from_numpy(np.where(d, values_of(const), _NAN))


__all__ = ["only_dead", "probe_constants", "uniform_along"]
