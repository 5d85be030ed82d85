"""Label tensors: how a rule learns where an op moves channels without knowing the op.

A *label tensor* is a float64 tensor whose value at channel k is ``1 + k * 2**-20``. Ops that only move, copy or
average values along other dimensions return valid labels, from which the output's channel dimension and order
are read off; anything that mixes channels produces values that are not labels (or a channel dimension that
vanished), and the channels are kept. Public: plugin rules use these exactly as the built-in ones do.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import fx

from nnic.channels.graph import Call, Spec

_EPS = 2.0 ** -20


def label_tensor(x: torch.Tensor, dim: int) -> torch.Tensor:
    shape = [1] * x.ndim
    shape[dim] = x.shape[dim]
    labels = 1.0 + torch.arange(x.shape[dim], dtype=torch.float64, device=x.device) * _EPS
    return labels.reshape(shape).expand(x.shape).contiguous()


def read_labels(out: Any, n: int) -> tuple[int, list[int]] | str | None:
    """``(dim, positions)`` if ``out`` is a valid label tensor varying along one dim; ``"single"`` if it holds one
    label only; ``None`` if channels were mixed."""
    if not isinstance(out, torch.Tensor) or out.dtype != torch.float64:
        return None
    if out.numel() == 0:
        return None
    idx = (out.detach().cpu() - 1.0) / _EPS
    pos = idx.round()
    if (idx - pos).abs().max() > 1e-3 or pos.min() < 0 or pos.max() >= n:
        return None
    pos = pos.long()
    if bool((pos == pos.flatten()[0]).all()):
        return "single"
    origin = (0,) * pos.ndim
    lines = [pos[origin[:d] + (slice(None),) + origin[d + 1:]] for d in range(pos.ndim)]
    varying = [d for d, line in enumerate(lines) if bool((line != line[0]).any())]
    if len(varying) != 1:  # one full comparison, along the one dimension whose line through 0 changes label
        return None
    d = varying[0]
    rows = pos.movedim(d, 0).reshape(pos.shape[d], -1)
    if bool((rows == rows[:, :1]).all()):
        return d, rows[:, 0].tolist()
    return None


def _replace(obj: Any, target: fx.Node, node_args: Any, new: Any) -> Any:
    """Values of ``obj`` (mirroring ``node_args``) with the value of node ``target`` replaced by ``new``."""
    if isinstance(node_args, fx.Node):
        return new if node_args is target else obj
    if isinstance(node_args, (list, tuple)):
        return type(node_args)(_replace(o, target, n, new) for o, n in zip(obj, node_args))
    if isinstance(node_args, dict):
        return {k: _replace(obj[k], target, n, new) for k, n in node_args.items()}
    return obj


def run_on_labels(call: Call, arg_node: fx.Node, labels: torch.Tensor) -> Any:
    node = call.node
    args = _replace(call.args, arg_node, node.args, labels)
    kwargs = _replace(call.kwargs, arg_node, node.kwargs, labels)
    if node.op == "call_method":
        return getattr(args[0], node.target)(*args[1:], **kwargs)
    if node.op == "call_module":
        return call.module(*args, **kwargs)
    return node.target(*args, **kwargs)


def _first_labelled(call: Call) -> tuple[fx.Node, Spec] | None:
    for arg in list(call.node.args) + list(call.node.kwargs.values()):
        if isinstance(arg, fx.Node):
            spec = call.state.specs.get(arg)
            if isinstance(spec, Spec):
                return arg, spec
    return None


def propagate_by_labels(call: Call, literal_check: Callable[[Call, int], bool] | None = None,
                        first_only: bool = False) -> None:
    """Read the output's spec off a run on labels; keep the channels if anything else is labelled or mixed.
    With ``first_only`` the other arguments only give shapes (``expand_as``, ``view_as``)."""
    found = _first_labelled(call)
    if found is None:
        return
    arg_node, spec = found
    if first_only:
        if arg_node is not call.node.args[0]:
            return
    elif len(call.input_specs()) > 1:
        call.pin_inputs()
        return
    x = call.state.values[arg_node]
    try:
        out = run_on_labels(call, arg_node, label_tensor(x, spec.dim))
    except Exception:  # the op refuses float64: treat it as unknown
        call.pin(spec)
        return
    outs = out if isinstance(out, (tuple, list)) else (out,)
    specs = []
    for o in outs:
        got = read_labels(o, len(spec))
        if isinstance(got, tuple):
            d, positions = got
            if literal_check is not None and not literal_check(call, d):
                call.pin(spec, f"node {call.node.name} sets the channel count to a literal size")
                specs.append(None)
                continue
            specs.append(spec.take(positions, d))
        else:
            if isinstance(o, torch.Tensor):
                call.pin(spec)
            specs.append(None)
    call.set_output(type(out)(specs) if isinstance(out, (tuple, list)) else specs[0])
