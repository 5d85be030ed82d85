"""Output shapes of the common torch.nn layers, from their attributes and the input's shape alone.

Why: the dependency-aware pruner's trace (:class:`~nnic.channels.concrete.ValueTracer`) reads only the shape
of a large activation, yet computing it was a dense forward of the model: on ResNet-50 the convolutions were
two thirds of the trace. A layer listed here whose output is large gets zeros of the right shape (without
memory) instead; a layer or an input this module is unsure of (another dtype, a channel count that does not match,
a subclass with its own forward) gets ``None``, and the layer runs.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

# Layers whose output has their input's shape (the norms' channel count is checked).
_SAME_SHAPE = {nn.ReLU, nn.ReLU6, nn.SiLU, nn.Hardswish, nn.Hardsigmoid, nn.Sigmoid, nn.GELU, nn.Tanh, nn.LeakyReLU,
               nn.ELU, nn.Mish, nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d}
_BATCH_NORMS = {nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d}
_CONVS = {nn.Conv1d: 1, nn.Conv2d: 2, nn.Conv3d: 3}


def _conv(m: nn.modules.conv._ConvNd, x: torch.Tensor, dims: int) -> tuple[int, ...] | None:
    if x.dim() != dims + 2 or x.shape[1] != m.in_channels or x.dtype != m.weight.dtype:
        return None
    spatial = x.shape[2:]
    if m.padding == "same":
        return (x.shape[0], m.out_channels, *spatial)
    padding = (0,) * dims if m.padding == "valid" else m.padding
    out = [(size + 2 * p - d * (k - 1) - 1) // s + 1
           for size, p, d, k, s in zip(spatial, padding, m.dilation, m.kernel_size, m.stride)]
    return (x.shape[0], m.out_channels, *out) if all(o > 0 for o in out) else None


def output_shape(module: nn.Module, args: tuple, kwargs: dict) -> tuple[int, ...] | None:
    """The shape of ``module(*args, **kwargs)``, or ``None`` when only running it tells (or it would fail)."""
    if kwargs or len(args) != 1 or not isinstance(args[0], torch.Tensor) or not args[0].is_floating_point():
        return None
    x, kind = args[0], type(module)
    if kind in _CONVS:
        return _conv(module, x, _CONVS[kind])
    if kind is nn.Linear:
        ok = x.dim() >= 1 and x.shape[-1] == module.in_features and x.dtype == module.weight.dtype
        return (*x.shape[:-1], module.out_features) if ok else None
    if kind in _SAME_SHAPE:
        return tuple(x.shape)
    if kind in _BATCH_NORMS or kind is nn.GroupNorm:
        channels = module.num_channels if kind is nn.GroupNorm else module.num_features
        return tuple(x.shape) if x.dim() >= 2 and x.shape[1] == channels else None
    if kind is nn.LayerNorm:
        tail = tuple(module.normalized_shape)
        return tuple(x.shape) if tuple(x.shape[x.dim() - len(tail):]) == tail else None
    return None


def zeros_of(module: nn.Module, args: tuple, kwargs: dict, at_least: float) -> torch.Tensor | None:
    """Zeros shaped as ``module``'s output, without memory (one zero, expanded: allocating and clearing them
    cost as much as a MobileNet's small convolutions), when the shape is known and holds at least ``at_least``
    elements; else ``None``."""
    shape = output_shape(module, args, kwargs)
    if shape is None or math.prod(shape) < at_least:
        return None
    x: Any = args[0]
    return torch.zeros((), dtype=x.dtype, device=x.device).expand(shape)


__all__ = ["output_shape", "zeros_of"]
