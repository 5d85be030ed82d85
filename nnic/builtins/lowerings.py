"""nnic's quantized lowerings: ``Linear -> Int8Linear / Int4Linear``, ``Conv2d -> Int8Conv2d``.

A plugin like any other (``register_lowerings``); a third-party plugin adds a module type the same way.

- 2-8 bits: the int8 twin (codes exactly the quantizer's; see :class:`~nnic.quantization.lowering.Int8Lowering`).
- 4 bits on a Linear (and 2-3 bits when group-wise): :class:`~nnic.quantization.modules.Int4Linear` (two codes
  per byte) when the inputs are not quantized (weight-only: the one-shot ``rtn``/``gptq``/``awq`` quantizers,
  ``naive``/``ptq`` 4-bit): symmetric or affine (per-group zero points), per channel (one group spanning the
  inputs), per group when the calibration has a group size (a multiple of 8; a GPTQ act-order permutation
  gathers the inputs), or per group of 32 from plain bits; scales stored in the context's ``int4_scale_dtype``
  (uint8, 8-bit codes times a step per output, unless the caller of ``quantization_speedup`` asks for float16 or
  float32).
"""

from __future__ import annotations

import torch
from torch import nn

import nnic
from nnic.quantization.calibration import LayerCalibration
from nnic.quantization.lowering import Int8Lowering, LoweringContext, weight_codes
from nnic.quantization.qparams import broadcast
from nnic.quantization.modules import Int4Linear, Int8Conv2d, Int8Linear


class LinearLowering(Int8Lowering):
    name = "torch.nn.linear"
    targets = (nn.Linear,)
    module_class = Int8Linear

    def lower(self, module: nn.Module, layer: LayerCalibration, context: LoweringContext) -> nn.Module | str:
        tc = layer.weight
        assert tc is not None
        int4 = tc.bits == 4 or (tc.bits < 4 and tc.group_size is not None)
        if not int4 or layer.input is not None:
            return super().lower(module, layer, context)
        w = module.weight
        if tc.scale is None:
            return Int4Linear.from_float(module, weight=w, group_size=32, scale_dtype=context.int4_scale_dtype)
        if tc.group_size is not None and tc.group_size % 8:
            return super().lower(module, layer, context)
        q, scale, zero = weight_codes(w, tc, context)
        if tc.group_size is None:  # one group spanning K: one scale (and zero point) per channel or tensor
            gs = -(-q.shape[1] // 8) * 8
            scale = scale.reshape(-1).expand(q.shape[0]).reshape(-1, 1)
            zero = zero.reshape(-1).expand(q.shape[0]).reshape(-1, 1)
        else:
            gs = tc.group_size
            zero = zero.reshape(scale.shape)
        if tc.perm is not None:  # codes in the permuted column order the groups run over
            q = q[:, tc.perm]
        if _fits_int4(q) and _fits_int4(zero):
            zeros = None if not bool(zero.any()) else zero.to(torch.int8)
            return Int4Linear.from_float(module, weight=w, group_size=gs, weight_q=q.to(torch.int8),
                                         weight_scales=scale.contiguous(), weight_zero_points=zeros,
                                         input_perm=tc.perm, scale_dtype=context.int4_scale_dtype)
        centred = q - broadcast(zero, q, tc.spec, gs)  # symmetric codes stored with an offset zero point
        if _fits_int4(centred):
            return Int4Linear.from_float(module, weight=w, group_size=gs, weight_q=centred.to(torch.int8),
                                         weight_scales=scale.contiguous(), input_perm=tc.perm,
                                         scale_dtype=context.int4_scale_dtype)
        return super().lower(module, layer, context)


def _fits_int4(t: torch.Tensor) -> bool:
    return t.numel() == 0 or (int(t.min()) >= -8 and int(t.max()) <= 7)


class Conv2dLowering(Int8Lowering):
    name = "torch.nn.conv2d"
    targets = (nn.Conv2d,)
    module_class = Int8Conv2d

    def unsupported(self, module: nn.Module) -> str | None:
        return Int8Conv2d.supports(module)


@nnic.hookimpl
def register_lowerings(register) -> None:
    register(LinearLowering())
    register(Conv2dLowering())
