"""nnic's quantized lowerings: ``Linear -> Int8Linear / Int4Linear``, ``Conv2d -> Int8Conv2d``.

A plugin like any other (``register_lowerings``); a third-party plugin adds a module type the same way.

- 2-8 bits: the int8 twin (codes exactly the quantizer's; see :class:`~nnic.quantization.lowering.Int8Lowering`).
- 4 bits on a Linear: :class:`~nnic.quantization.modules.Int4Linear` (two codes per byte) when the centred codes
  fit in [-8, 7] (symmetric schemes) and the inputs are not quantized; per channel (one group spanning the
  inputs), per group when the calibration has a group size (a multiple of 8, no permutation), or per group of 32
  from plain bits. Affine 4-bit codes run on the int8 GEMM instead.
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
        if tc.bits != 4 or layer.input is not None:
            return super().lower(module, layer, context)
        w = module.weight
        if tc.scale is None:
            return Int4Linear.from_float(module, weight=w, group_size=32)
        if tc.perm is not None or (tc.group_size is not None and tc.group_size % 8):
            return super().lower(module, layer, context)
        q, scale, zero = weight_codes(w, tc, context)
        centred = q - broadcast(zero, q, tc.spec, tc.group_size)
        if int(centred.min()) < -8 or int(centred.max()) > 7:
            return super().lower(module, layer, context)
        if tc.group_size is not None:
            return Int4Linear.from_float(module, weight=w, group_size=tc.group_size, weight_q=centred.to(torch.int8),
                                         weight_scales=scale.contiguous())
        gs = -(-q.shape[1] // 8) * 8  # one group spanning K: one scale per channel (or tensor)
        scales = scale.reshape(-1).expand(q.shape[0]).reshape(-1, 1).contiguous()
        return Int4Linear.from_float(module, weight=w, group_size=gs, weight_q=centred.to(torch.int8),
                                     weight_scales=scales)


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
