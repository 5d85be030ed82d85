"""Output shapes of the common torch.nn layers and of elementwise ops, from their attributes and the inputs'
shapes alone.

Why: the dependency-aware pruner's trace (:class:`~nnic.channels.concrete.ValueTracer`) reads only the shape
of a large activation, yet computing it was a dense forward of the model: on ResNet-50 the convolutions were
two thirds of the trace. A layer listed here whose output is large gets zeros of the right shape (without
memory) instead; a layer or an input this module is unsure of (another dtype, a channel count that does not match,
a subclass with its own forward) gets ``None``, and the layer runs. A layer whose input is already such zeros gets
zeros of its shape whatever their size (the trace asks with ``at_least=0``): EfficientNet's squeeze-excitation
layers (an adaptive average pool, two 1x1 convolutions) and its small late layers ran on stand-ins.

The same holds for the elementwise ops between layers (a residual ``out += identity``, a squeeze-excitation or
layer-scale product, a functional activation) and for pooling: on stand-in inputs they computed a full-size
result from expanded zeros (ResNet-50's max pooling 7 ms, EfficientNet-B0's and ConvNeXt's products 4 ms a
trace). Their shapes are the broadcast of the inputs' (pooling: torch's output-size formula). Running them on
meta tensors instead gives the same shapes, but its dispatch costs more than the small ones' real compute.
"""

from __future__ import annotations

import math
import operator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

# Layers whose output has their input's shape (the norms' channel count is checked).
_SAME_SHAPE = {nn.ReLU, nn.ReLU6, nn.SiLU, nn.Hardswish, nn.Hardsigmoid, nn.Sigmoid, nn.GELU, nn.Tanh, nn.LeakyReLU,
               nn.ELU, nn.Mish, nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d}
_BATCH_NORMS = {nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d}
_POOLS = {nn.MaxPool1d: 1, nn.MaxPool2d: 2, nn.AvgPool1d: 1, nn.AvgPool2d: 2}
_CONVS = {nn.Conv1d: 1, nn.Conv2d: 2, nn.Conv3d: 3}
_ADAPTIVE_AVG_POOLS = {nn.AdaptiveAvgPool1d: 1, nn.AdaptiveAvgPool2d: 2, nn.AdaptiveAvgPool3d: 3}


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


def _pool(m: nn.Module, x: torch.Tensor, dims: int) -> tuple[int, ...] | None:
    """torch's pooling output size (``pooling_output_shape``); ``None`` where torch may refuse the input (more
    padding than half the kernel, an input smaller than the window: checks that differ between kernels, read
    conservatively) or the module returns more than one tensor."""
    if x.dim() not in (dims + 1, dims + 2) or getattr(m, "return_indices", False):
        return None

    def per_dim(v: Any) -> tuple[int, ...]:
        return tuple(v) if isinstance(v, (tuple, list)) else (v,) * dims

    kernel, pad = per_dim(m.kernel_size), per_dim(m.padding)
    stride, dilation = per_dim(m.stride or m.kernel_size), per_dim(getattr(m, "dilation", 1))
    if not all(len(v) == dims for v in (kernel, pad, stride, dilation)):
        return None
    out = []
    for size, k, p, s, d in zip(x.shape[-dims:], kernel, pad, stride, dilation):
        if s <= 0 or 2 * p > k or size < (k - 1) * d + 1:
            return None
        n = (size + 2 * p - d * (k - 1) - 1 + (s - 1 if m.ceil_mode else 0)) // s + 1
        if m.ceil_mode and (n - 1) * s >= size + p:  # the last window must start inside the input or padding
            n -= 1
        if n <= 0:
            return None
        out.append(n)
    return (*x.shape[:-dims], *out)


def _adaptive_pool(m: nn.Module, x: torch.Tensor, dims: int) -> tuple[int, ...] | None:
    """An adaptive pool's output: its ``output_size`` (``None`` entries keep the input's size), over the input's
    leading dimensions (batched or not); ``None`` for an empty spatial input (torch refuses it)."""
    size = m.output_size
    size = tuple(size) if isinstance(size, (tuple, list)) else (size,) * dims
    if x.dim() not in (dims + 1, dims + 2) or len(size) != dims or 0 in x.shape[-dims:]:
        return None
    out = tuple(s if o is None else o for o, s in zip(size, x.shape[-dims:]))
    return (*x.shape[:-dims], *out) if all(isinstance(o, int) and o > 0 for o in out) else None


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
    if kind in _POOLS:
        return _pool(module, x, _POOLS[kind])
    if kind in _ADAPTIVE_AVG_POOLS:
        return _adaptive_pool(module, x, _ADAPTIVE_AVG_POOLS[kind])
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


# Elementwise ops between layers, by number of positional arguments: the result's shape is the broadcast of the
# tensor arguments' shapes, its dtype theirs when they share one float dtype (Python numbers do not change it);
# keyword arguments only those that change neither.
_BINARY = {operator.add, operator.sub, operator.mul, operator.truediv, operator.iadd, operator.isub, operator.imul,
           operator.itruediv, torch.add, torch.sub, torch.mul, torch.div}
_UNARY = {torch.relu, torch.sigmoid, torch.tanh, F.relu, F.relu6, F.hardswish, F.hardsigmoid, F.silu, F.gelu}
_BINARY_METHODS = {"add", "sub", "mul", "div", "add_", "sub_", "mul_", "div_"}
_UNARY_METHODS = {"relu", "relu_", "sigmoid", "sigmoid_", "tanh", "tanh_"}
_IN_PLACE: set[Any] = {operator.iadd, operator.isub, operator.imul, operator.itruediv}
_SHAPE_KWARGS = {"alpha", "inplace", "approximate"}


def op_zeros(kind: str, target: Any, args: tuple, kwargs: dict, at_least: float) -> torch.Tensor | None:
    """Zeros shaped as the result of a traced elementwise ``call_function`` or ``call_method`` node (the list
    above), without memory, when all its tensors are floating point on one device and the result holds at
    least ``at_least`` elements; else ``None`` (the op runs, and raises where it would). An in-place op
    qualifies only when it writes into a stand-in (whose values are already wrong): one writing into a real
    tensor changes values that later ops read."""
    if kind == "call_method" and isinstance(target, str):
        arity = 2 if target in _BINARY_METHODS else 1 if target in _UNARY_METHODS else 0
        in_place = target.endswith("_")
    elif kind == "call_function":
        arity = 2 if _known(target, _BINARY) else 1 if _known(target, _UNARY) else 0
        in_place = _known(target, _IN_PLACE) or kwargs.get("inplace") is True
    else:
        return None
    if not arity or len(args) != arity:  # F.relu(x, True): an in-place flag passed by position
        return None
    if not set(kwargs) <= _SHAPE_KWARGS or not args or not isinstance(args[0], torch.Tensor):
        return None
    if in_place and not _is_stand_in(args[0]):
        return None
    tensors = [a for a in args if isinstance(a, torch.Tensor)]
    dtype, device = args[0].dtype, args[0].device  # one dtype: promotion across 0-dim tensors has its own rules
    if not dtype.is_floating_point or any(t.dtype != dtype or t.device != device for t in tensors):
        return None
    if any(not isinstance(a, (torch.Tensor, bool, int, float)) for a in args):
        return None
    try:
        shape = torch.broadcast_shapes(*(t.shape for t in tensors))
    except RuntimeError:  # shapes that do not broadcast: the op raises for real
        return None
    if in_place and tuple(shape) != tuple(args[0].shape) or math.prod(shape) < at_least:
        return None
    return torch.zeros((), dtype=dtype, device=device).expand(shape)


def _is_stand_in(t: torch.Tensor) -> bool:
    """An expanded zero: a stand-in of a large value (:func:`zeros_of`)."""
    return t.numel() > 1 and 0 in t.stride()


def _known(target: Any, among: set[Any]) -> bool:
    try:
        return target in among
    except TypeError:  # unhashable target
        return False


__all__ = ["op_zeros", "output_shape", "zeros_of"]
