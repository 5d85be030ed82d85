"""Lowerings: how a float module type becomes a module that really computes in low bits.

``nnic.quantization_speedup`` looks each calibrated layer's module type up in a table of lowerings registered
through the ``register_lowerings`` hook (nnic's own ``Linear`` and ``Conv2d`` lowerings are a built-in plugin,
``nnic/builtins/lowerings.py``). A lowering is an object with

- ``name``: lower-case, by convention the qualified name of the module type (``"torch.nn.linear"``);
- ``targets``: the module classes it handles (subclasses match too; the most specific registered class wins);
- ``lower(module, layer, context)``: the replacement module, or a string saying why there is none (the caller
  raises or warns, as ``on_unsupported`` says). ``layer`` is the layer's
  :class:`~nnic.quantization.calibration.LayerCalibration`; ``context`` a :class:`LoweringContext`.

:class:`Int8Lowering` is the base for modules with an int8 twin (``from_float(mod, weight=, weight_q=,
weight_scale=, weight_zero_point=, act=..., ...)``): it turns the calibration into the twin's integer codes.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from nnic.kernels import DEFAULT_INT4_SCALE_DTYPE
from nnic.quantization.calibration import LayerCalibration, TensorCalibration
from nnic.quantization.qparams import (
    QuantSpec,
    observe,
    qparams_from_range,
    quantize_codes,
    static_activation_qparams,
)
from nnic.type_table import TypeTable

logger = logging.getLogger("nnic.quantization")

__all__ = ["Int8Lowering", "LoweringContext", "LoweringTable", "float_linear", "weight_codes"]


@dataclass(frozen=True)
class LoweringContext:
    """What a lowering needs besides the module and its calibration: the layer's name (for messages), the
    caller's dynamic activation choices and the dtype int4 group scales are stored in."""

    name: str
    act: str = "per_token"
    symmetric: bool = False
    int4_scale_dtype: torch.dtype = DEFAULT_INT4_SCALE_DTYPE
    reduce_range: bool = False

    def where(self, key: str | None = None) -> str:
        return f"calibration[{self.name!r}]" + (f"[{key!r}]" if key is not None else "")


def float_linear(weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Linear:
    """A plain float32 ``nn.Linear`` holding copies of ``weight`` (``[out, in]``) and ``bias``, on the weight's
    device: the form other layer types take to reuse the Linear lowering (or be exported as a ``MatMul``)."""
    out_features, in_features = weight.shape
    linear = nn.Linear(in_features, out_features, bias=bias is not None, device=weight.device)
    with torch.no_grad():
        linear.weight.copy_(weight)
        if bias is not None:
            linear.bias.copy_(bias)
    return linear


def weight_codes(weight: torch.Tensor, tc: TensorCalibration, context: LoweringContext
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The calibrated codes of ``weight`` (int64, its shape), scales and zero points, checked against its shape.

    ``uint`` codes and zero points are shifted by ``-2^(bits-1)`` into the signed range, which leaves every
    ``(q - zero_point) * scale`` unchanged.
    """
    assert tc.scale is not None and tc.zero_point is not None
    spec = tc.spec
    w = weight.detach().float().cpu()
    if tc.group_size is not None:
        w2 = w.reshape(w.shape[0], -1)
        groups = -(-w2.shape[1] // tc.group_size)
        if tuple(tc.scale.shape) != (w.shape[0], groups):
            raise ValueError(f"{context.where('weight_scale')}: expected [{w.shape[0]}][{groups}] scales for group "
                             f"size {tc.group_size} on a weight of shape {tuple(w.shape)}, got {tuple(tc.scale.shape)}")
        if tc.perm is not None and tc.perm.numel() != w2.shape[1]:
            raise ValueError(f"{context.where('weight_perm')}: expected a permutation of {w2.shape[1]} columns, "
                             f"got {tc.perm.numel()}")
        cols = w2 if tc.perm is None else w2[:, tc.perm]
        q = quantize_codes(cols, tc.scale, tc.zero_point, spec, tc.group_size)
        if tc.perm is not None:
            q = q[:, torch.argsort(tc.perm)]
        q = q.reshape(w.shape)
    else:
        channels = w.shape[tc.axis or 0] if tc.per_channel else 1
        if tc.per_channel and (tc.axis or 0) != 0:
            raise ValueError(f"{context.where('weight_axis')}: per-channel weights must be quantized along axis 0 "
                             f"(output channels), got {tc.axis}")
        if tc.scale.numel() != channels:
            raise ValueError(f"{context.where('weight_scale')}: expected {channels} scale(s) for {tc.scheme} on a "
                             f"weight of shape {tuple(w.shape)}, got {tc.scale.numel()}")
        q = quantize_codes(w, tc.scale, tc.zero_point, spec)
    zero = tc.zero_point.clone()
    if not spec.signed:
        shift = 1 << (spec.bits - 1)
        q, zero = q - shift, zero - shift
    return q, tc.scale.clone(), zero


def static_activation(layer: LayerCalibration, context: LoweringContext) -> dict[str, Any]:
    """The int8 modules' activation arguments: static from a calibrated 8-bit per-tensor input range, else
    ``{}`` (dynamic, as the caller chose). Input specs the modules cannot honour are said, not silently dropped."""
    tc = layer.input
    if tc is None:
        return {}
    if tc.bits != 8:
        logger.warning("%s: %d-bit inputs run as dynamically quantized 8-bit activations (the int8 modules have no "
                       "%d-bit activation path)", context.where("input_bits"), tc.bits, tc.bits)
        return {}
    if tc.tracked_min is None or tc.tracked_max is None:
        return {}
    if tc.tracked_min.numel() != 1:
        logger.warning("%s: per-channel input ranges run as dynamic per-%s activations", context.where("input_scheme"),
                       context.act.removeprefix("per_"))
        return {}
    scale, zero = static_activation_qparams(float(tc.tracked_min), float(tc.tracked_max))
    return {"act": "static", "act_scale": scale, "act_zero_point": zero}


class Int8Lowering:
    """Lowers a module type with an int8 twin ``module_class`` (``Int8Linear``, ``Int8Conv2d``...).

    With a quantizer's calibration the twin's codes are exactly the quantizer's (of the layer's effective weight,
    parametrizations such as pruning masks included); with plain bits, symmetric per-channel codes of that
    width. Subclasses set ``name``, ``targets`` and ``module_class`` and may override :meth:`unsupported` or
    :meth:`lower`.
    """

    name: str
    targets: tuple[type[nn.Module], ...]
    module_class: Any

    def unsupported(self, module: nn.Module) -> str | None:
        """Why ``module`` cannot be lowered (``None`` when it can)."""
        return None

    def lower(self, module: nn.Module, layer: LayerCalibration, context: LoweringContext) -> nn.Module | str:
        why = self.unsupported(module)
        if why:
            return why
        tc = layer.weight
        assert tc is not None
        w = module.weight  # the effective weight: parametrizations (masks, fake quantization) applied
        static = static_activation(layer, context)
        kw = {"act": context.act, "symmetric": context.symmetric, "reduce_range": context.reduce_range and not static,
              **static}
        if tc.scale is None:  # plain bits: quantize directly
            if tc.bits == 8:
                return self.module_class.from_float(module, weight=w, **kw)
            spec = QuantSpec(tc.bits, per_channel=True, axis=0)  # symmetric int codes per output channel
            s, z = qparams_from_range(*observe(w, spec), spec)
            q = quantize_codes(w, s, z, spec).to(torch.int8)
            return self.module_class.from_float(module, weight=w, weight_q=q, weight_scale=s, **kw)
        if tc.group_size is not None:
            return (f"group-wise {tc.bits}-bit weights have no int8 layout yet (per-tensor or per-channel scales do; "
                    f"group-wise Linear weights of 2 to 4 bits run on int4)")
        q, scale, zero = weight_codes(w, tc, context)
        if int(q.min()) < -128 or int(q.max()) > 127 or int(zero.min()) < -128 or int(zero.max()) > 127:
            return "weight codes do not fit int8"
        return self.module_class.from_float(module, weight=w, weight_q=q.to(torch.int8), weight_scale=scale,
                                            weight_zero_point=zero, **kw)


class LoweringTable(TypeTable):
    """Lowerings by module class (the ``register_lowerings`` hook's objects); see :class:`~nnic.type_table.TypeTable`."""

    kind = "lowering"
    noun = "lowerings"
