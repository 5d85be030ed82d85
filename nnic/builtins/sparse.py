"""Built-in plugin for :class:`~nnic.sparse.SparseLinear` and :class:`~nnic.sparse.SparseConv2d`: their speedup
rules and the sparse layer's quantized lowering.

- The speedup rule lets ``speedup_model`` run on a model that already holds sparse layers (their input and output
  channels are removed like a Linear's, reading which weights are stored), and lets ``load_pruned`` rebuild
  ``SparseLinear`` modules from a manifest (it rebuilds only classes that an installed rule handles).
- The lowering lets ``quantization_speedup`` run after ``sparsify``: a float32 ``SparseLinear`` becomes an int8
  one with exactly the codes, scales and activation quantization the dense Linear's ``Int8Linear`` would have
  (stored where those codes are non-zero; weights with zero points, or 4-bit group-wise codes, have no sparse int8
  form and say so).
"""

from __future__ import annotations

import torch
from torch import nn

import nnic
from nnic.quantization.calibration import LayerCalibration
from nnic.quantization.lowering import Int8Lowering, LoweringContext, float_linear
from nnic.quantization.modules import Int8Linear
from nnic.sparse import layout
from nnic.sparse.conv import SparseConv2d
from nnic.sparse.modules import SparseLinear
from nnic.speedup.rules import ChannelMixRule


class SparseLinearRule(ChannelMixRule):
    name = "nnic.sparse.sparselinear"
    targets = (SparseLinear,)
    shape_attrs = ("in_features", "out_features")
    shrink_in_place = False  # its shrink replaces the tensors it slices

    def usage(self, module: nn.Module) -> torch.Tensor:
        return module.stored_mask().cpu()

    def shrink(self, module: nn.Module, keep: dict[str, torch.Tensor]) -> nn.Module:
        return module.select(keep.get("out"), keep.get("in")).train(module.training)


class SparseConv2dRule(ChannelMixRule):
    """A sparse convolution's channels, as ``Conv2d``'s (``groups == 1``): output channel o reads input channel c
    when any of its kernel taps over c is stored."""

    name = "nnic.sparse.sparseconv2d"
    targets = (SparseConv2d,)
    shape_attrs = ("in_channels", "out_channels")
    shrink_in_place = False  # its shrink builds a new layer

    def in_dim(self, module: nn.Module, x: torch.Tensor) -> int:
        return 1

    out_dim = in_dim

    def usage(self, module: nn.Module) -> torch.Tensor:
        return module.stored_mask().flatten(2).any(2).cpu()

    def shrink(self, module: nn.Module, keep: dict[str, torch.Tensor]) -> nn.Module:
        return module.select(keep.get("out"), keep.get("in")).train(module.training)


class _DenseInt8(Int8Lowering):
    """The Linear lowering's int8 path, applied to the dense equivalent of a sparse layer."""

    name, targets, module_class = "nnic.sparse.dense-int8", (nn.Linear,), Int8Linear


class SparseLinearLowering:
    name = "nnic.sparse.sparselinear"
    targets = (SparseLinear,)

    def lower(self, module: nn.Module, layer: LayerCalibration, context: LoweringContext) -> nn.Module | str:
        if module.dtype_name != "float32":
            return "the layer already holds int8 values"
        q = _DenseInt8().lower(float_linear(module.dense_weight(), module.bias), layer, context)
        if isinstance(q, str):
            return q
        if bool(q.weight_zero_point.any()):
            return "int8 codes with zero points have no sparse form (pruned weights are not code 0)"
        nm = module.nm if module.nm and layout.nm_pattern(q.weight != 0, (module.nm,), 1e9) else None
        q.activation = module.activation  # a fused activation stays fused
        return SparseLinear.from_int8(q, nm=nm)


@nnic.hookimpl
def register_speedup_rules(register) -> None:
    register(SparseLinearRule())
    register(SparseConv2dRule())


@nnic.hookimpl
def register_lowerings(register) -> None:
    register(SparseLinearLowering())
