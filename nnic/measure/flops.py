"""Exact multiply-accumulate and parameter counts, per layer and in total.

A convolution, linear, bilinear or attention layer costs what its arithmetic costs on the input actually given:
the count runs the model once with forward hooks, so a module called twice counts twice, and a layer that the
forward never reaches counts nothing. nnic's low-bit modules (``Int8Linear``, ``Int8Conv2d``, ``Int4Linear``)
count the same multiply-accumulates as the float layers they replace: they do the same arithmetic in integers.
Elementwise work (activations, normalisation, pooling, residual adds) is not counted, as in NNI's
``count_flops_params`` and fvcore: it is memory bound, and its count says little about speed.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize

from nnic.masking import is_parametrized
from nnic.measure._inputs import call, eval_mode


class FlopsCount(int):
    """Multiply-accumulates (MACs) of one forward pass: the total as an ``int`` (so it compares and divides
    like one), with ``per_layer``, ``{qualified module name: MACs}``, in the order the layers first ran.

    One MAC is one FLOP in the convention of NNI and fvcore (a fused multiply-add); ``2 * total`` counts
    multiplications and additions separately."""

    per_layer: dict[str, int]

    def __new__(cls, per_layer: dict[str, int]) -> FlopsCount:
        self = super().__new__(cls, sum(per_layer.values()))
        self.per_layer = dict(per_layer)
        return self

    @property
    def total(self) -> int:
        return int(self)

    def __repr__(self) -> str:
        return f"FlopsCount(total={int(self)}, layers={len(self.per_layer)})"

    def __reduce__(self) -> tuple:
        return FlopsCount, (self.per_layer,)


def _attention_macs(m: nn.Module, inputs: tuple) -> int:
    q, k = inputs[0], inputs[1]
    if isinstance(m, nn.MultiheadAttention):
        inner, qd, kd, vd, od = m.embed_dim, m.embed_dim, m.kdim, m.vdim, m.embed_dim
    else:  # nnic's PrunedMultiheadAttention: independent projection widths
        inner = m.num_heads * m.head_dim
        qd, kd, vd, od = m.q_proj.in_features, m.k_proj.in_features, m.v_proj.in_features, m.out_proj.out_features
    lq, lk = q.numel() // q.shape[-1], k.numel() // k.shape[-1]
    seq_k = k.shape[1] if getattr(m, "batch_first", False) else k.shape[0]
    # projections of queries, keys and values; scores and weighted sum; output projection
    return lq * inner * qd + lk * inner * (kd + vd) + 2 * lq * seq_k * inner + lq * inner * od


def _is_attention(m: nn.Module) -> bool:
    return isinstance(m, nn.MultiheadAttention) or type(m).__name__ == "PrunedMultiheadAttention"


def _is_conv_like(m: nn.Module) -> bool:
    """A convolution, or a childless module with a convolution's attributes (nnic's ``Int8Conv2d``)."""
    if isinstance(m, nn.modules.conv._ConvNd):
        return True
    return not any(True for _ in m.children()) and all(
        hasattr(m, a) for a in ("in_channels", "out_channels", "kernel_size", "weight"))


def _is_linear_like(m: nn.Module) -> bool:
    """A ``Linear``, or a childless module with its attributes (nnic's ``Int8Linear``, ``Int4Linear``)."""
    if isinstance(m, nn.Linear):
        return True
    return not any(True for _ in m.children()) and hasattr(m, "in_features") and hasattr(m, "out_features") \
        and not isinstance(m, nn.Bilinear)


def layer_macs(m: nn.Module, inputs: tuple, output: Any) -> int | None:
    """The MACs of one call of ``m`` (``None`` for a module that is not a counted layer)."""
    y = output[0] if isinstance(output, tuple) else output
    if _is_attention(m):
        return _attention_macs(m, inputs)
    if isinstance(m, nn.Bilinear):
        return y.numel() * m.in1_features * m.in2_features
    if _is_conv_like(m):
        k = math.prod(m.kernel_size)
        groups = getattr(m, "groups", 1)
        if getattr(m, "transposed", False):
            return inputs[0].numel() * (m.out_channels // groups) * k
        return y.numel() * (m.in_channels // groups) * k
    if _is_linear_like(m):
        return y.numel() * m.in_features
    return None


def count_flops(model: nn.Module, example_input: Any) -> FlopsCount:
    """Exact MACs of ``model(example_input)`` per layer and in total (see :class:`FlopsCount`).

    ``example_input``: a tensor, a tuple/list of positional arguments, or a dict of keyword arguments. The model
    runs once in eval mode under ``torch.inference_mode``; its modes are restored afterwards."""
    names: dict[nn.Module, str] = {}
    inside_attention: set[nn.Module] = set()
    for name, m in model.named_modules():
        if _is_attention(m):  # its projections are counted by the attention itself
            inside_attention.update(c for c in m.modules() if c is not m)
        names.setdefault(m, name)
    per_layer: dict[str, int] = {}
    hooks = []

    def hook(m: nn.Module, inputs: tuple, output: Any) -> None:
        macs = layer_macs(m, inputs, output)
        if macs is not None:
            per_layer[names[m]] = per_layer.get(names[m], 0) + macs

    for m in names:
        if m not in inside_attention and not isinstance(m, parametrize.ParametrizationList):
            hooks.append(m.register_forward_hook(hook))
    try:
        with eval_mode(model), torch.inference_mode():
            call(model, example_input)
    finally:
        for h in hooks:
            h.remove()
    return FlopsCount(per_layer)


def _stored_weights(m: nn.Module) -> Iterator[tuple[str, torch.Tensor, torch.Tensor, int]]:
    """``(name, stored tensor, effective tensor, element count)`` for each weight the module itself holds:
    its parameters (a masked parameter's effective value is ``original * mask``), and the weight codes and
    bias that nnic's low-bit modules keep as buffers. Quantization scales and zero points are not weights."""
    parametrized = is_parametrized(m)
    for name, p in m.named_parameters(recurse=False):
        yield name, p, p, p.numel()
    if parametrized:
        for name in m.parametrizations.keys():
            original = m.parametrizations[name].original
            yield name, original, getattr(m, name), original.numel()
    buffers = dict(m.named_buffers(recurse=False))
    if "weight_packed" in buffers and hasattr(m, "in_features"):  # two int4 codes per byte
        packed = buffers["weight_packed"]
        yield "weight", packed, packed, m.in_features * m.out_features
    for name in ("weight", "bias"):
        b = buffers.get(name)
        if b is not None and name not in dict(m.named_parameters(recurse=False)):
            yield name, b, b, b.numel()


def params_per_layer(model: nn.Module) -> dict[str, tuple[int, int]]:
    """``{qualified module name: (weights, nonzero weights)}`` for every module that holds weights itself; a
    tensor shared by two modules (tied weights) counts once, at the first."""
    out: dict[str, tuple[int, int]] = {}
    seen: set[int] = set()
    for name, m in model.named_modules():
        if isinstance(m, parametrize.ParametrizationList):  # its ``original`` is counted at the owning module
            continue
        total = nonzero = 0
        for _, stored, effective, n in _stored_weights(m):
            if id(stored) in seen:
                continue
            seen.add(id(stored))
            total += n
            nonzero += _nonzero(effective, n)
        if total:
            out[name] = (total, nonzero)
    return out


def _nonzero(t: torch.Tensor, n: int) -> int:
    with torch.no_grad():
        if t.dtype == torch.uint8 and t.numel() != n:  # packed int4 codes: count nonzero nibbles
            return int((t & 0x0F).count_nonzero() + (t >> 4).count_nonzero())  # a padding nibble is 0
        return int(torch.count_nonzero(t.detach()))


def count_params(model: nn.Module, *, nonzero: bool = False) -> int:
    """Weights of ``model`` (parameters, plus the weight codes of nnic's low-bit modules), tied weights once;
    with ``nonzero=True`` only those that are not zero (masked weights count as zero)."""
    return sum(v[1] if nonzero else v[0] for v in params_per_layer(model).values())


def count_nonzero_params(model: nn.Module) -> int:
    """``count_params(model, nonzero=True)``: the weights that pruning left."""
    return count_params(model, nonzero=True)
