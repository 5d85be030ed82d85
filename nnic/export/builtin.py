"""nnic's own ONNX export handlers (a built-in plugin of the ``register_onnx_exporters`` hook).

- ``Int8Linear`` / ``Int8Conv2d``: int8 weight codes and their per-channel scales as initializers, activations
  quantized in the graph; an ``Int8Linear``'s fused activation follows as ``Relu`` or the ``Erf`` form of GELU. ``int8_format="integer"`` (the default: onnxruntime runs it fastest, see
  docs/performance/onnx.md) writes ``DynamicQuantizeLinear`` (or ``QuantizeLinear`` with the calibrated static range) →
  ``MatMulInteger`` / ``ConvInteger`` → ``Cast`` → ``Mul`` by the activation × weight scales (→ ``Add`` bias),
  the pattern onnxruntime fuses into its int8 GEMM. ``int8_format="qdq"`` writes ``QuantizeLinear`` /
  ``DequantizeLinear`` pairs around a float ``MatMul`` / ``Conv`` (per-channel ``DequantizeLinear`` on the
  weight), the layout other runtimes (TensorRT, OpenVINO) read.
  onnxruntime quantizes dynamic activations per tensor (``DynamicQuantizeLinear``), nnic per token by default:
  outputs agree to int8 accuracy, not bit for bit (tolerance ``"int8"``); static activations agree closely.
- ``nnic.sparse.SparseLinear`` (when nnic has it): exported dense, as ONNX has no sparse matmul that
  onnxruntime runs faster on CPU: float layers as a plain ``MatMul`` (``Gemm``), int8 layers as the
  ``Int8Linear`` they were made from (same codes, scales and activation quantization).
- ``Int4Linear``: onnxruntime's ``com.microsoft`` ``MatMulNBits`` (4-bit blocks of 16-128 inputs, unsigned codes
  around the default zero point 8) when nnic's group size nests into such blocks; otherwise, or with
  ``int4_matmulnbits=False``, the dequantized float weight (a plain ``MatMul``), with a warning.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

import nnic
from nnic.export.handlers import ExportOptions, SymbolicStandIn
from nnic.quantization.lowering import float_linear
from nnic.quantization.modules import Int4Linear, Int8Conv2d, Int8Linear

logger = logging.getLogger("nnic.export")

_FLOAT = 1  # onnx.TensorProto.FLOAT


def _act_quantize(g: Any, x: Any, module: nn.Module) -> tuple[Any, Any, Any]:
    """(uint8 codes, scale, zero point) of the activation ``x``: calibrated static range, else dynamic (ONNX's
    ``DynamicQuantizeLinear``: 8 bits per tensor, also for per-token and ``reduce_range`` layers, whose graph thus
    rounds activations no coarser than the layer does)."""
    if module.act == "static":
        s = SymbolicStandIn.const(g, module.act_scale.reshape(()).float())
        z = SymbolicStandIn.const(g, module.act_zero_point.reshape(()).to(torch.uint8))
        return g.op("QuantizeLinear", x, s, z), s, z
    return g.op("DynamicQuantizeLinear", x, outputs=3)


def _weight_zero_point(module: nn.Module) -> torch.Tensor | None:
    z = module.weight_zero_point
    return None if not bool(z.any()) else z.to(torch.int8)


def _stored(weight: torch.Tensor, zero: torch.Tensor | None, channels: int,
            options: ExportOptions) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The weight codes and zero points as the file stores them (``options.int8_weights``): int8 as they are (no
    zero points: None), or uint8 shifted by 128 with zero points 128 where there were none (``channels`` of them,
    or one for a scalar zero point)."""
    if options.int8_weights == "int8":
        return weight, zero
    zero = torch.zeros(channels, dtype=torch.int8) if zero is None else zero
    return (weight.to(torch.int16) + 128).to(torch.uint8), (zero.to(torch.int16) + 128).to(torch.uint8)


def _qdq(g: Any, x: Any, module: nn.Module, weight: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor | None,
         axis: int, options: ExportOptions) -> tuple[Any, Any]:
    """The QDQ layout's float operands: the activation quantized and dequantized again, and the int8 ``weight``
    dequantized per channel along ``axis`` (its zero points, or zeros), stored as ``options`` says."""
    c = SymbolicStandIn.const
    xq, xs, xz = _act_quantize(g, x, module)
    channels = weight.shape[axis]
    weight, zero = _stored(weight, zero, channels, options)
    wz = c(g, torch.zeros(channels, dtype=torch.int8) if zero is None else zero)
    return g.op("DequantizeLinear", xq, xs, xz), g.op("DequantizeLinear", c(g, weight), c(g, scale), wz, axis_i=axis)


def _integer(g: Any, op: str, x: Any, module: nn.Module, weight: torch.Tensor, zero: torch.Tensor | None,
             scale: torch.Tensor, bias: torch.Tensor | None, options: ExportOptions, channels: int,
             **attrs: Any) -> Any:
    """The integer layout: ``op`` (``MatMulInteger`` / ``ConvInteger``) on the activation's and the weight's
    codes (stored as ``options`` says; ``channels`` zero points, 1 for the scalar one of ``ConvInteger``), its int32
    accumulator cast to float and scaled by activation × weight scales (``scale`` shaped to broadcast over the
    output), plus ``bias`` (shaped likewise)."""
    c = SymbolicStandIn.const
    xq, xs, xz = _act_quantize(g, x, module)
    weight, zero = _stored(weight, zero, channels, options)
    if zero is not None and channels == 1:
        zero = zero.reshape(())
    args = [xq, c(g, weight), xz] + ([] if zero is None else [c(g, zero)])
    acc = g.op("Cast", g.op(op, *args, **attrs), to_i=_FLOAT)
    y = g.op("Mul", acc, g.op("Mul", xs, c(g, scale)))
    return y if bias is None else g.op("Add", y, c(g, bias.float()))


def _activation(g: Any, y: Any, kind: str | None) -> Any:
    """An ``Int8Linear``'s fused activation as ONNX nodes: ``Relu``, or GELU as ``y/2 · (1 + Erf(y/√2))`` (opset
    17 has no Gelu; onnxruntime fuses this pattern into its own)."""
    if kind is None:
        return y
    if kind == "relu":
        return g.op("Relu", y)
    c = SymbolicStandIn.const
    erf = g.op("Erf", g.op("Div", y, c(g, torch.tensor(2.0**0.5))))
    return g.op("Mul", g.op("Mul", y, c(g, torch.tensor(0.5))), g.op("Add", erf, c(g, torch.tensor(1.0))))


def _int8_linear_symbolic(module: Int8Linear, options: ExportOptions):
    w_t = module.weight.t().contiguous()  # [K, N]
    scale, zero, bias = module.weight_scale.float(), _weight_zero_point(module), module.bias

    def symbolic(g: Any, x: Any) -> Any:
        if options.int8_format != "qdq":
            return _activation(g, _integer(g, "MatMulInteger", x, module, w_t, zero, scale, bias, options,
                                           channels=w_t.shape[1]), module.activation)
        xd, wd = _qdq(g, x, module, w_t, scale, zero, axis=1, options=options)
        y = g.op("MatMul", xd, wd)
        y = y if bias is None else g.op("Add", y, SymbolicStandIn.const(g, bias.float()))
        return _activation(g, y, module.activation)

    return symbolic


def _int8_conv_symbolic(module: Int8Conv2d, options: ExportOptions):
    (ph, pw) = module.padding
    attrs = {"kernel_shape_i": list(module.kernel_size), "strides_i": list(module.stride),
             "dilations_i": list(module.dilation), "pads_i": [ph, pw, ph, pw]}
    out = module.out_channels
    scale, zero, bias = module.weight_scale.float(), _weight_zero_point(module), module.bias
    # onnxruntime's ConvInteger takes one weight zero point for the tensor; per-channel ones go through QDQ.
    qdq = options.int8_format == "qdq" or (zero is not None and bool((zero != zero[0]).any()))

    def symbolic(g: Any, x: Any) -> Any:
        if not qdq:
            return _integer(g, "ConvInteger", x, module, module.weight, None if zero is None else zero[:1],
                            scale.reshape(1, out, 1, 1), None if bias is None else bias.reshape(1, out, 1, 1),
                            options, channels=1, **attrs)
        xd, wd = _qdq(g, x, module, module.weight, scale, zero, axis=0, options=options)
        inputs = [xd, wd] + ([] if bias is None else [SymbolicStandIn.const(g, bias.float())])
        return g.op("Conv", *inputs, **attrs)

    return symbolic


def matmulnbits_block(group_size: int, in_features: int) -> int | None:
    """The ``MatMulNBits`` block size (a power of two in [16, 128]) that nests into nnic's groups, or None."""
    for block in (128, 64, 32, 16):
        if group_size % block == 0 or (group_size >= in_features and block <= max(16, in_features)):
            return block
    return None


def _int4_symbolic(module: Int4Linear, block: int):
    k, n = module.in_features, module.out_features
    blocks = -(-k // block)
    codes = torch.zeros(n, blocks * block, dtype=torch.int16)
    codes[:, :k] = module.codes().to(torch.int16)
    u = (codes + 8).to(torch.uint8).reshape(n, blocks, block)  # padding columns hold code 0 (value 0)
    packed = (u[..., 0::2] | (u[..., 1::2] << 4)).contiguous()  # low nibble first, like nnic's layout
    last_group = module.weight_scales.shape[1] - 1
    group_of_block = torch.clamp(torch.arange(blocks) * block // module.group_size, max=last_group)
    scales = module.group_scales()[:, group_of_block].reshape(-1).contiguous()
    bias = module.bias

    def symbolic(g: Any, x: Any) -> Any:
        c = SymbolicStandIn.const
        y = g.op("com.microsoft::MatMulNBits", x, c(g, packed), c(g, scales), K_i=k, N_i=n, bits_i=4,
                 block_size_i=block)
        return y if bias is None else g.op("Add", y, c(g, bias.float()))

    return symbolic


class Int8Export:
    """An int8 module type written by a symbolic builder (``builder(module, options) -> symbolic``)."""

    kind = "int8"

    def __init__(self, name: str, target: type[nn.Module], builder: Callable[[Any, ExportOptions], Any]) -> None:
        self.name, self.targets, self.builder = name, (target,), builder

    def stand_in(self, module: nn.Module, options: ExportOptions) -> nn.Module | str:
        return SymbolicStandIn(module, self.builder(module, options))


class Int4LinearExport:
    name = "nnic.int4linear"
    kind = "int4"
    targets = (Int4Linear,)

    def stand_in(self, module: Int4Linear, options: ExportOptions) -> nn.Module | str:
        block = matmulnbits_block(module.group_size, module.in_features)
        if options.int4_matmulnbits and block is not None:
            return SymbolicStandIn(module, _int4_symbolic(module, block))
        logger.warning("Int4Linear(group_size=%d) is exported with a dequantized float weight (%s)",
                       module.group_size, "MatMulNBits disabled" if not options.int4_matmulnbits else
                       "its groups do not nest into MatMulNBits blocks of 16-128")
        return float_linear(module.dequantized_weight(), module.bias)


class SparseLinearExport:
    """Sparse layers exported dense (the file stores every weight; onnxruntime has no faster sparse kernel)."""

    name = "nnic.sparselinear"
    kind = "int8"  # the loosest of its forms: int8 layers quantize activations as Int8Linear does

    @property
    def targets(self) -> tuple[type, ...]:
        try:
            from nnic.sparse.modules import SparseLinear
        except ImportError:  # an nnic without sparse modules
            return ()
        return (SparseLinear,)

    def stand_in(self, module: nn.Module, options: ExportOptions) -> nn.Module | str:
        dense = module.dense_weight().float()
        if module.weight_scale is None:
            linear = float_linear(dense, module.bias)
            fused = {"relu": nn.ReLU, "gelu": nn.GELU}.get(module.activation)
            return linear if fused is None else nn.Sequential(linear, fused())
        act = module.act or "per_token"
        static = {"act_scale": float(module.act_scale), "act_zero_point": int(module.act_zero_point)} \
            if act == "static" else {}
        q = Int8Linear(module.in_features, module.out_features, module.bias is not None,
                       act=act.removesuffix("_symmetric"), symmetric=act.endswith("_symmetric"), **static)
        scale = module.weight_scale.float()
        q.set_weight(torch.round(dense / scale[:, None]).to(torch.int8), scale)
        if module.bias is not None:
            q.bias = module.bias.detach().float().clone()
        q.activation = module.activation
        return SymbolicStandIn(module, _int8_linear_symbolic(q, options))


@nnic.hookimpl
def register_onnx_exporters(register: Any) -> None:
    register(Int8Export("nnic.int8linear", Int8Linear, _int8_linear_symbolic))
    register(Int8Export("nnic.int8conv2d", Int8Conv2d, _int8_conv_symbolic))
    register(Int4LinearExport())
    register(SparseLinearExport())
