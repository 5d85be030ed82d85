"""Modules that really compute in low bits: :class:`Int8Linear`, :class:`Int8Conv2d`, :class:`Int4Linear`.

They hold integer weights as buffers (so ``state_dict`` and safetensors files are ~¼ / ~⅛ of float32) and a
packed copy for the Rust GEMM, rebuilt when the buffers change (e.g. after ``load_state_dict``). CPU tensors
run :mod:`nnic.kernels`; CUDA tensors run its torch twins (``torch._int_mm`` for int8) or a dequantized
matmul (int4).

Activations are quantized on the fly: ``act="per_token"`` (default; one scale per row), ``"per_tensor"``, or
``"static"`` with a calibrated ``act_scale`` / ``act_zero_point`` (u8 domain, [0, 255]). ``reduce_range=True``
gives dynamic activations 7-bit codes (``torch.ao``'s x86 default): a CPU without AVX512-VNNI multiplies them with
one operation fewer (:func:`nnic.kernels.int8_linear`); the results are the same on every CPU.

These are inference modules: no gradients flow through them (the weights are integer buffers).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from nnic import kernels
from nnic.kernels.gemm import try_native_linear


def _check_float_input(module: nn.Module, x: Any, k: int | None = None) -> None:
    """Integer input would be truncated on the way back; float ``nn.Linear`` / ``nn.Conv2d`` refuse it too.
    ``k``: the size the last dimension must have (linear layers)."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{type(module).__name__}: input must be a tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{type(module).__name__}: input must be a floating-point tensor, got {x.dtype}")
    if k is not None and x.shape[-1:] != (k,):
        raise ValueError(f"{type(module).__name__}: input must have shape [..., {k}], got {tuple(x.shape)}")


def _run_direct(layer: nn.Module, x: Any) -> torch.Tensor | None:
    """``layer``'s output for ``x`` from one native call of its packed weight's kernel
    (:func:`nnic.kernels.gemm.try_native_linear`), for the usual input: a plain CPU float32 tensor
    ``[..., in_features]``, contiguous, without autograd, and a float32 bias or none. Else (or on any error)
    ``None``, and the layer takes the checked path, which converts what it can and names what it cannot."""
    if type(x) is not torch.Tensor or not x.is_cpu:  # (a CUDA layer's weight is not packed for the CPU kernel)
        return None
    return try_native_linear(layer._packed_weight(), x, layer.bias, *layer.kernel_args())


def _version(t: torch.Tensor) -> int:
    """``t``'s in-place version counter for the packed-weight cache key; 0 for an inference tensor (a layer built
    under ``torch.inference_mode()``), which has none: its replacement still shows in the key's ``data_ptr``."""
    return 0 if t.is_inference() else t._version


def _f32(v: Any, n: int | None = None) -> torch.Tensor:
    t = torch.as_tensor(v, dtype=torch.float32).detach().cpu().reshape(-1).clone()
    if n is not None and t.numel() not in (1, n):
        raise ValueError(f"expected 1 or {n} scale values, got {t.numel()}")
    return t


class _Int8Base(nn.Module):
    """Shared state of the int8 modules: codes ``weight`` [out, ...], per-tensor or per-channel scales/zero
    points, optional bias, and the activation mode."""

    weight: torch.Tensor
    weight_scale: torch.Tensor
    weight_zero_point: torch.Tensor
    bias: torch.Tensor | None

    def _init_common(self, shape: tuple[int, ...], bias: bool, act: str, symmetric: bool,
                     act_scale: float | None, act_zero_point: int | None, reduce_range: bool = False) -> None:
        if act not in kernels.ACT_MODES:
            raise ValueError(f"act must be one of {kernels.ACT_MODES}, got {act!r}")
        if act == "static" and (act_scale is None or act_zero_point is None):
            raise ValueError("act='static' needs act_scale and act_zero_point")
        if act == "static" and reduce_range:
            raise ValueError("reduce_range (7-bit activation codes) applies to dynamic activations, not act='static'")
        self.act, self.symmetric, self.reduce_range = act, bool(symmetric), bool(reduce_range)
        self.register_buffer("weight", torch.zeros(shape, dtype=torch.int8))
        self.register_buffer("weight_scale", torch.ones(shape[0], dtype=torch.float32))
        self.register_buffer("weight_zero_point", torch.zeros(shape[0], dtype=torch.int32))
        self.register_buffer("bias", torch.zeros(shape[0]) if bias else None)
        if act == "static":
            self.register_buffer("act_scale", torch.tensor(float(act_scale), dtype=torch.float32))
            self.register_buffer("act_zero_point", torch.tensor(int(act_zero_point), dtype=torch.int32))
        self.activation: str | None = None
        self._packed: Any = None
        self._packed_key: tuple = ()

    def set_weight(self, q: torch.Tensor, scale: Any, zero_point: Any = 0) -> None:
        """Sets the int8 codes (``w ≈ (q - zero_point) * scale``), per tensor or per output channel."""
        if q.dtype != torch.int8 or tuple(q.shape) != tuple(self.weight.shape):
            raise ValueError(f"weight codes must be int8 of shape {tuple(self.weight.shape)}, got {q.dtype} "
                             f"{tuple(q.shape)}")
        n = q.shape[0]
        s = _f32(scale, n)
        z = torch.as_tensor(zero_point, dtype=torch.int32).reshape(-1)
        if z.numel() not in (1, n) or int(z.min()) < -128 or int(z.max()) > 127:
            raise ValueError(f"zero_point must be 1 or {n} values in [-128, 127]")
        # Stored per channel even when per tensor, so that every state_dict has the same shapes.
        self.weight = q.detach().cpu().contiguous().clone()
        self.weight_scale = s.expand(n).contiguous()
        self.weight_zero_point = z.detach().cpu().expand(n).contiguous()
        self._packed = None

    def _packed_weight(self) -> kernels.PackedInt8Weight:
        w, s, z = self.weight, self.weight_scale, self.weight_zero_point
        # Checked on every call (flat, no generator: this is per-layer overhead at small batch sizes).
        key = (w.data_ptr(), _version(w), w.shape, s.data_ptr(), _version(s), s.shape, z.data_ptr(), _version(z),
               z.shape)
        if self._packed is None or key != self._packed_key:
            w2 = self._packing_codes()
            z = self.weight_zero_point
            self._packed = kernels.pack_int8_weight(w2, self.weight_scale, None if not bool(z.any()) else z)
            self._packed_key = key
        return self._packed

    def _packing_codes(self) -> torch.Tensor:
        """The codes as ``[out, K]`` in the GEMM's K order."""
        return self.weight.reshape(self.weight.shape[0], -1)

    def _linear(self, x2: torch.Tensor) -> torch.Tensor:
        """``x2[M, K]`` float → float32 ``[M, out]``."""
        x2 = x2.float()
        if x2.is_cuda:
            return self._linear_cuda(x2)
        kw: dict[str, Any] = {"act": self.act, "symmetric": self.symmetric, "reduce_range": self.reduce_range}
        if self.act == "static":
            kw.update(act_scale=float(self.act_scale), act_zero_point=int(self.act_zero_point))
        return kernels.int8_linear(x2, self._packed_weight(), None if self.bias is None else self.bias.float(),
                                   activation=self.activation, **kw)

    def _linear_cuda(self, x: torch.Tensor) -> torch.Tensor:
        static = (self.act_scale, self.act_zero_point) if self.act == "static" else (None, None)
        y = kernels.twins.int8_linear(x, self.weight.reshape(self.weight.shape[0], -1), self.weight_scale,
                                      self.weight_zero_point, self.bias, self.act, self.symmetric, *static,
                                      reduce_range=self.reduce_range)
        return kernels.twins.activation(y, self.activation)

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_packed"], state["_packed_key"] = None, ()
        return state

    def __setstate__(self, state: dict) -> None:
        state.setdefault("reduce_range", False)  # layers pickled before the option had 8-bit activations
        super().__setstate__(state)

    def _extra(self) -> str:
        per = "per_channel" if bool((self.weight_scale != self.weight_scale[0]).any()) else "per_tensor"
        flags = (", symmetric" if self.symmetric else "") + (", reduce_range" if self.reduce_range else "")
        return f"weight={per}, act={self.act}{flags}"


class Int8Linear(_Int8Base):
    """``y = f(dequant(quant(x) @ W_q.T) + bias)`` with int8 weights and activations quantized on the fly;
    ``f`` is ``activation`` (``None``, ``"relu"`` or ``"gelu"``, the exact erf GELU), computed in the GEMM's
    epilogue (see :func:`fuse_activation`)."""

    #: Its GEMM's epilogue applies ``activation`` (see :func:`nnic.quantization.fusion.takes_activation`).
    takes_fused_activation = True

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *, act: str = "per_token",
                 symmetric: bool = False, act_scale: float | None = None, act_zero_point: int | None = None,
                 activation: str | None = None, reduce_range: bool = False) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self._init_common((out_features, in_features), bias, act, symmetric, act_scale, act_zero_point, reduce_range)
        if activation not in (None, *kernels.ACTIVATIONS[1:]):
            raise ValueError(f"activation must be None or one of {kernels.ACTIVATIONS[1:]}, got {activation!r}")
        self.activation = activation

    @classmethod
    def from_float(cls, mod: nn.Linear, *, weight: torch.Tensor | None = None, weight_q: torch.Tensor | None = None,
                   weight_scale: Any = None, weight_zero_point: Any = 0, per_channel: bool = True,
                   **act_kw: Any) -> Int8Linear:
        """From a float ``nn.Linear`` (its effective ``weight``, parametrizations included): symmetric
        per-channel codes, or the given ``weight_q`` / ``weight_scale`` / ``weight_zero_point``."""
        w = mod.weight if weight is None else weight
        new = cls(mod.in_features, mod.out_features, mod.bias is not None, **act_kw)
        if weight_q is None:
            weight_q, weight_scale = kernels.quantize_int8_weight(w, per_channel=per_channel)
            weight_zero_point = 0
        new.set_weight(weight_q, weight_scale, weight_zero_point)
        if mod.bias is not None:
            new.bias = mod.bias.detach().float().cpu().clone()
        return new.to(w.device)

    def kernel_args(self) -> tuple:
        """The activation settings this layer passes to its packed weight's ``linear`` after the bias (the arguments
        of :func:`nnic.kernels.run_packed_linear` after ``bias``)."""
        static = (float(self.act_scale), int(self.act_zero_point)) if self.act == "static" else (None, None)
        return (self.act, self.symmetric, *static, None, self.activation or "none", self.reduce_range)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = _run_direct(self, x)
        if y is not None:
            return y
        _check_float_input(self, x, self.in_features)
        if x.dim() == 2:
            y = self._linear(x)
        else:
            y = self._linear(x.reshape(-1, self.in_features)).reshape(*x.shape[:-1], self.out_features)
        return y if y.dtype == x.dtype else y.to(x.dtype)

    def extra_repr(self) -> str:
        fused = f", activation={self.activation}" if self.activation else ""
        return f"in_features={self.in_features}, out_features={self.out_features}, {self._extra()}{fused}"


class Int8Conv2d(_Int8Base):
    """int8 ``Conv2d`` (groups = 1, zero padding). On CPU: activations quantized per tensor (dynamic) or
    statically, im2col on the int8 codes of the channels-last input, then the int8 GEMM (``act="per_token"``
    means per tensor here). On CUDA: ``F.unfold`` + ``torch._int_mm``. The output is NCHW-shaped with
    channels-last strides, so that following layers stay channels-last."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: Any, stride: Any = 1, padding: Any = 0,
                 dilation: Any = 1, bias: bool = True, *, act: str = "per_token", symmetric: bool = False,
                 act_scale: float | None = None, act_zero_point: int | None = None, reduce_range: bool = False) -> None:
        super().__init__()
        pair = nn.modules.utils._pair
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride = pair(kernel_size), pair(stride)
        self.padding, self.dilation = pair(padding), pair(dilation)
        if not all(isinstance(p, int) for p in self.padding):
            raise ValueError(f"Int8Conv2d needs integer padding, got {padding!r}")
        shape = (out_channels, in_channels, *self.kernel_size)
        self._init_common(shape, bias, act, symmetric, act_scale, act_zero_point, reduce_range)

    @staticmethod
    def supports(mod: nn.Module) -> str | None:
        """Why ``mod`` cannot become an :class:`Int8Conv2d` (``None`` when it can)."""
        if not isinstance(mod, nn.Conv2d):
            return f"{type(mod).__name__} is not a Conv2d"
        if mod.groups != 1:
            return f"grouped convolution (groups={mod.groups}) is not supported"
        if mod.padding_mode != "zeros":
            return f"padding_mode={mod.padding_mode!r} is not supported"
        if isinstance(mod.padding, str) and mod.padding != "valid":
            return f"padding={mod.padding!r} is not supported"
        return None

    @classmethod
    def from_float(cls, mod: nn.Conv2d, *, weight: torch.Tensor | None = None, weight_q: torch.Tensor | None = None,
                   weight_scale: Any = None, weight_zero_point: Any = 0, per_channel: bool = True,
                   **act_kw: Any) -> Int8Conv2d:
        why = cls.supports(mod)
        if why:
            raise ValueError(why)
        w = mod.weight if weight is None else weight
        padding = (0, 0) if mod.padding == "valid" else mod.padding
        new = cls(mod.in_channels, mod.out_channels, mod.kernel_size, mod.stride, padding, mod.dilation,
                  mod.bias is not None, **act_kw)
        if weight_q is None:
            q2, weight_scale = kernels.quantize_int8_weight(w, per_channel=per_channel)
            weight_q, weight_zero_point = q2.reshape(w.shape), 0
        new.set_weight(weight_q.reshape(w.shape), weight_scale, weight_zero_point)
        if mod.bias is not None:
            new.bias = mod.bias.detach().float().cpu().clone()
        return new.to(w.device)

    def _packing_codes(self) -> torch.Tensor:
        # K ordered (dy, dx, c): im2col gathers whole NHWC pixels.
        return self.weight.permute(0, 2, 3, 1).reshape(self.weight.shape[0], -1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_float_input(self, x)
        if x.dim() == 3:  # unbatched (C, H, W), as nn.Conv2d accepts
            return self.forward(x.unsqueeze(0)).squeeze(0)
        if x.dim() != 4:
            raise ValueError(f"Int8Conv2d: expected a 3-D (unbatched) or 4-D (batched) input, got {x.dim()}-D "
                             f"{tuple(x.shape)}")
        if x.device.type == "cpu":
            kw: dict[str, Any] = {"act": "static", "act_scale": float(self.act_scale),
                                  "act_zero_point": int(self.act_zero_point)} if self.act == "static" else \
                {"act": "per_tensor", "symmetric": self.symmetric, "reduce_range": self.reduce_range}
            bias = None if self.bias is None else self.bias.float()
            y = kernels.int8_conv2d(x.float(), self._packed_weight(), bias, kernel_size=self.kernel_size,
                                 stride=self.stride, padding=self.padding, dilation=self.dilation, **kw)
            return y.to(x.dtype)
        return self._forward_unfold(x)

    def _forward_unfold(self, x: torch.Tensor) -> torch.Tensor:
        """CUDA: float im2col (K ordered (c, dy, dx)) and the int8 twin of the GEMM."""
        cols, ho, wo = kernels.twins.im2col(x, self.kernel_size, self.stride, self.padding, self.dilation)
        y = self._linear(cols).reshape(x.shape[0], ho, wo, self.out_channels).permute(0, 3, 1, 2)
        return y.to(x.dtype)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, dilation={self.dilation}, {self._extra()}")


def _pack_nibbles(q: torch.Tensor) -> torch.Tensor:
    """int8 codes in [-8, 7] ``[N, K]`` → uint8 ``[N, ceil(K/2)]``, low nibble first."""
    if q.shape[1] % 2:
        q = F.pad(q, (0, 1))
    u = (q.to(torch.int16) & 0xF).to(torch.uint8)
    return (u[:, 0::2] | (u[:, 1::2] << 4)).contiguous()


def _unpack_nibbles(p: torch.Tensor, k: int) -> torch.Tensor:
    lo = (p & 0xF).to(torch.int16)
    hi = (p >> 4).to(torch.int16)
    u = torch.stack([lo, hi], dim=2).reshape(p.shape[0], -1)[:, :k]
    return ((u ^ 8) - 8).to(torch.int8)


def _requantize_for_scale_codes(q: torch.Tensor, scales: torch.Tensor, zero_points: torch.Tensor | None, group_size: int
                                ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor]:
    """Codes, zero points, 8-bit scale codes and steps for ``w = s · (q - z)`` given with float scales: each
    scale rounded up to ``s' = code · step`` (:func:`nnic.kernels.int4_scale_codes`), the zero points and codes
    re-rounded to it (``z' = round(z · r)``, ``q' = round((q - z) · r) + z'`` with ``r = s / s' <= 1``, clamped
    to [-8, 7]: the shrunken range fits but for the rounding of ``z'``)."""
    codes, step = kernels.int4_scale_codes(scales.float(), "scales")
    r = scales.double() / (codes.double() * step.double()[:, None])
    k = q.shape[1]
    expand = lambda t: t.repeat_interleave(group_size, dim=1)[:, :k]  # noqa: E731
    if zero_points is None:
        q2 = torch.round(q.double() * expand(r))
        return q2.clamp(-8, 7).to(torch.int8), None, codes, step
    z = torch.as_tensor(zero_points).detach().cpu().double()
    z2 = torch.round(z * r).clamp(-8, 7)
    q2 = torch.round((q.double() - expand(z)) * expand(r)) + expand(z2)
    return q2.clamp(-8, 7).to(torch.int8), z2.to(torch.int8), codes, step


class Int4Linear(nn.Module):
    """int4 weights (two per byte, one scale per group of ``group_size`` inputs, optional per-group zero
    points) × int8 activations quantized per token: for decoding and small batches, where reading the weights
    is the cost. ``w = scale * (q - zero_point)`` per group, codes and zero points in [-8, 7].

    ``input_perm`` (a GPTQ act-order permutation) says which input column each code column holds: groups run
    over permuted columns, so the input is gathered by it before the GEMM (``x[..., perm]``).

    ``scale_dtype``: how the scales are stored (buffer, state dict and kernel); decoding is bound by the bytes a
    step reads, so the default is the smallest format, ``torch.uint8``: double-quantized, ``weight_scales`` holds
    8-bit codes and ``weight_scale_step`` one float32 step per output (scale = code × step,
    :func:`nnic.kernels.int4_scale_codes`), 17 bytes per group of 32 codes instead of 18 (float16) or 20 (float32);
    each scale is rounded *up* and the codes (and zero points) re-rounded for it, so nothing clips, and the
    outputs' error stays that of float16 scales within int4's own. ``torch.float16`` stores them as GGUF, GPTQ and
    AWQ do (one rounding of each scale, relative 2**-11 at most); ``torch.float32`` keeps them exact. Loading a
    state dict (or :func:`nnic.speedup.load_pruned`) adopts the saved format: the dtype of its ``weight_scales``
    and whether it has zero points and an input permutation (:meth:`adopt_state_format`), so a saved module
    reloads to the same outputs into a module built with any of these options.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *, group_size: int = 32,
                 affine: bool = False, permuted: bool = False, scale_dtype: torch.dtype = kernels.DEFAULT_INT4_SCALE_DTYPE) -> None:
        super().__init__()
        if group_size <= 0 or group_size % 8:
            raise ValueError(f"group_size must be a positive multiple of 8, got {group_size}")
        kernels.check_int4_scale_dtype(scale_dtype)
        self.in_features, self.out_features, self.group_size = in_features, out_features, group_size
        groups = -(-in_features // group_size)
        self.register_buffer("weight_packed", torch.zeros(out_features, (in_features + 1) // 2, dtype=torch.uint8))
        self.register_buffer("weight_scales", torch.ones(out_features, groups, dtype=scale_dtype))
        self.register_buffer("weight_scale_step",
                             torch.ones(out_features) if scale_dtype == torch.uint8 else None)
        self.register_buffer("weight_zero_points",
                             torch.zeros(out_features, groups, dtype=torch.int8) if affine else None)
        self.register_buffer("input_perm", torch.arange(in_features) if permuted else None)
        self.register_buffer("bias", torch.zeros(out_features) if bias else None)
        self._packed: Any = None
        self._packed_key: tuple = ()

    @classmethod
    def from_float(cls, mod: nn.Linear, *, weight: torch.Tensor | None = None, group_size: int = 32,
                   weight_q: torch.Tensor | None = None, weight_scales: torch.Tensor | None = None,
                   weight_zero_points: torch.Tensor | None = None, input_perm: torch.Tensor | None = None,
                   scale_dtype: torch.dtype = kernels.DEFAULT_INT4_SCALE_DTYPE) -> Int4Linear:
        """From a float ``nn.Linear``: symmetric int4 codes per group (nearest to the scales as stored in
        ``scale_dtype``), or the given codes, scales (rounded to ``scale_dtype``, see :meth:`set_weight`), zero
        points and input permutation (codes then in permuted column order)."""
        w = mod.weight if weight is None else weight
        new = cls(mod.in_features, mod.out_features, mod.bias is not None, group_size=group_size,
                  affine=weight_zero_points is not None, permuted=input_perm is not None, scale_dtype=scale_dtype)
        step = None
        if weight_q is None and scale_dtype == torch.uint8:
            weight_q, weight_scales, step = kernels.quantize_int4_weight_scale_codes(w, group_size)
        elif weight_q is None:
            weight_q, weight_scales = kernels.quantize_int4_weight(w, group_size, scale_dtype)
        new.set_weight(weight_q, weight_scales, weight_zero_points, input_perm, scale_step=step)
        if mod.bias is not None:
            new.bias = mod.bias.detach().float().cpu().clone()
        return new.to(w.device)

    def set_weight(self, q: torch.Tensor, scales: torch.Tensor, zero_points: torch.Tensor | None = None,
                   input_perm: torch.Tensor | None = None, *, scale_step: torch.Tensor | None = None) -> None:
        """Codes ``q[out, in]`` (int8 in [-8, 7]), ``scales[out, groups]`` (stored in the module's
        :attr:`scale_dtype`), optional ``zero_points[out, groups]`` (integers in [-8, 7]) and ``input_perm`` (a
        permutation of the inputs).

        With 8-bit scales (``scale_dtype=torch.uint8``): uint8 scale codes with ``scale_step`` (float32
        ``[out]``) are stored as given; float scales are double-quantized (each rounded up,
        :func:`nnic.kernels.int4_scale_codes`) and the codes and zero points re-rounded to the new scales
        (``q' = round((q - z) · s / s') + z'``, ``z' = round(z · s / s')``, clamped to [-8, 7])."""
        if q.dtype != torch.int8 or tuple(q.shape) != (self.out_features, self.in_features):
            raise ValueError(f"codes must be int8 [{self.out_features}, {self.in_features}], got {q.dtype} {tuple(q.shape)}")
        if int(q.min()) < -8 or int(q.max()) > 7:
            raise ValueError("int4 codes must be in [-8, 7]")
        scales, step = torch.as_tensor(scales).detach().cpu(), None
        if tuple(scales.shape) != tuple(self.weight_scales.shape):
            raise ValueError(f"scales must have shape {tuple(self.weight_scales.shape)}, got {tuple(scales.shape)}")
        if zero_points is not None:  # checked as given: 8-bit scales re-round (and clamp) them below
            z = torch.as_tensor(zero_points).detach().cpu()
            if tuple(z.shape) != tuple(scales.shape) or z.is_floating_point() or z.is_complex():
                raise ValueError(f"zero_points must be integers of shape {tuple(scales.shape)}, got {z.dtype} "
                                 f"{tuple(z.shape)}")
            if z.numel() and (int(z.min()) < -8 or int(z.max()) > 7):
                raise ValueError(f"int4 zero points must be in [-8, 7], got [{int(z.min())}, {int(z.max())}]")
            zero_points = z
        if (scale_step is not None) != (scales.dtype == torch.uint8) or \
                (scale_step is not None and self.scale_dtype != torch.uint8):
            raise ValueError("scale_step goes with uint8 scale codes, for a module with scale_dtype=torch.uint8")
        if scale_step is not None:
            step = torch.as_tensor(scale_step).detach().cpu().float().reshape(-1).contiguous()
            if step.numel() != self.out_features or int(scales.min()) < 1 or \
                    not bool((torch.isfinite(step * 255) & (step > 0)).all()):
                raise ValueError(f"8-bit scales need codes in [1, 255] and {self.out_features} positive finite "
                                 f"steps")
            scales = scales.contiguous()
        elif self.scale_dtype == torch.uint8:
            q, zero_points, scales, step = _requantize_for_scale_codes(q, scales, zero_points, self.group_size)
        else:
            scales = kernels.int4_group_scales(scales, self.scale_dtype)
        if zero_points is not None:
            zero_points = zero_points.to(torch.int8).contiguous()
        if input_perm is not None:
            perm = torch.as_tensor(input_perm).detach().cpu().long().reshape(-1)
            if not torch.equal(torch.sort(perm).values, torch.arange(self.in_features)):
                raise ValueError(f"input_perm must be a permutation of {self.in_features} inputs")
            input_perm = perm
        self.weight_packed = _pack_nibbles(q.detach().cpu())
        self.weight_scales = scales
        self.weight_scale_step = step
        self.weight_zero_points = zero_points
        self.input_perm = input_perm
        self._packed = None

    @property
    def scale_dtype(self) -> torch.dtype:
        """The dtype the group scales are stored in (``torch.float16``, ``torch.float32``, or ``torch.uint8``:
        codes times :attr:`weight_scale_step`)."""
        return self.weight_scales.dtype

    def group_scales(self) -> torch.Tensor:
        """The group scales ``[out, groups]`` as float32 values (for 8-bit scales the float32 products of code
        and step, which the kernels apply in two factors)."""
        if self.weight_scale_step is None:
            return self.weight_scales.float()
        return self.weight_scales.float() * self.weight_scale_step.float()[:, None]

    def adopt_state_format(self, state_dict: Mapping[str, torch.Tensor], prefix: str = "") -> None:
        """Take the saved module's format from ``state_dict`` (entries under ``prefix``) before loading it: the
        dtype of its scales (float16 or float32 scales give different outputs, so float32 scales are adopted, not
        rounded into a float16 buffer; 8-bit codes come with their ``weight_scale_step``, the other formats
        without) and whether it has zero points (asymmetric weights: AWQ, affine RTN) and an input permutation
        (GPTQ act order). A module built with any default thus reloads any save exactly as saved. Nothing changes
        unless the entry holds the module's ``weight_scales``; scales in a dtype no int4 kernel takes are a
        ``ValueError``, not a silent rounding. :func:`nnic.speedup.load_pruned` calls it before it applies the
        manifest's shapes, and ``load_state_dict`` calls it through the module's own load."""
        saved = state_dict.get(prefix + "weight_scales")
        if not isinstance(saved, torch.Tensor):
            return
        if saved.dtype not in kernels.INT4_SCALE_DTYPES:
            raise ValueError(f"{prefix}weight_scales: saved as {saved.dtype}, which no int4 kernel reads "
                             f"(torch.float16, torch.float32 or torch.uint8 with weight_scale_step)")
        dev = self.weight_packed.device
        shape = tuple(self.weight_scales.shape)
        present = {
            "weight_scale_step": (saved.dtype == torch.uint8,
                                  lambda: torch.ones(self.out_features, device=dev)),
            "weight_zero_points": (isinstance(state_dict.get(prefix + "weight_zero_points"), torch.Tensor),
                                   lambda: torch.zeros(shape, dtype=torch.int8, device=dev)),
            "input_perm": (isinstance(state_dict.get(prefix + "input_perm"), torch.Tensor),
                           lambda: torch.arange(self.in_features, device=dev)),
        }
        if saved.dtype != self.weight_scales.dtype:
            self.weight_scales = torch.empty(shape, dtype=saved.dtype, device=dev)
        for name, (wanted, make) in present.items():
            if wanted != (getattr(self, name) is not None) or name in self._parameters:
                self._parameters.pop(name, None)  # a manifest load may have made it a parameter
                self.register_buffer(name, make() if wanted else None)
        self._packed = None

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs) -> None:
        self.adopt_state_format(state_dict, prefix)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)

    def codes(self) -> torch.Tensor:
        """The int4 codes ``[out, in]`` as int8 (in permuted column order when ``input_perm`` is set)."""
        return _unpack_nibbles(self.weight_packed, self.in_features)

    def dequantized_weight(self) -> torch.Tensor:
        """The float weight ``[out, in]`` in the inputs' own order."""
        dev = self.weight_packed.device
        expand = lambda t: t.repeat_interleave(self.group_size, dim=1)[:, : self.in_features]  # noqa: E731
        q = self.codes().float()
        if self.weight_zero_points is not None:
            q = q - expand(self.weight_zero_points.float())
        w = q * expand(self.group_scales()).to(dev)
        if self.input_perm is not None:
            w = w[:, torch.argsort(self.input_perm.to(dev))]
        return w

    def _packed_weight(self) -> kernels.PackedInt4Weight:
        # Checked on every call, flat (this is per-layer overhead of every decode step).
        wp, ws, wz, st = self.weight_packed, self.weight_scales, self.weight_zero_points, self.weight_scale_step
        key = (wp.data_ptr(), _version(wp), ws.data_ptr(), _version(ws),
               None if wz is None else (wz.data_ptr(), _version(wz)),
               None if st is None else (st.data_ptr(), _version(st)))
        if self._packed is None or key != self._packed_key:
            z = None if self.weight_zero_points is None else self.weight_zero_points.cpu()
            step = None if st is None else st.detach().cpu().float().contiguous()
            self._packed = kernels.pack_int4_weight(self.codes().cpu(), self.weight_scales.cpu(), self.group_size,
                                                    zero_points=z, scale_step=step)
            self._packed_key = key
        return self._packed

    def kernel_args(self) -> tuple:
        """The activation settings this layer passes to its packed weight's ``linear`` after the bias
        (int4 layers quantize activations per token: the defaults)."""
        return ()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = _run_direct(self, x) if self.input_perm is None else None
        if y is not None:
            return y
        _check_float_input(self, x, self.in_features)
        x2 = x.reshape(-1, self.in_features)
        if x2.dtype != torch.float32:
            x2 = x2.float()
        if x2.is_cuda:
            y = x2 @ self.dequantized_weight().t()
            y = y if self.bias is None else y + self.bias
        else:
            if self.input_perm is not None:
                x2 = x2.index_select(1, self.input_perm)
            y = kernels.int4_linear(x2, self._packed_weight(), None if self.bias is None else self.bias.float())
        if x.dim() != 2:
            y = y.reshape(*x.shape[:-1], self.out_features)
        return y if y.dtype == x.dtype else y.to(x.dtype)

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_packed"], state["_packed_key"] = None, ()
        return state

    def extra_repr(self) -> str:
        extra = (", affine" if self.weight_zero_points is not None else "") + (
            ", input_perm" if self.input_perm is not None else "")
        scales = str(self.scale_dtype).removeprefix("torch.")
        return (f"in_features={self.in_features}, out_features={self.out_features}, group_size={self.group_size}"
                f", scales={scales}{extra}")


__all__ = ["Int4Linear", "Int8Conv2d", "Int8Linear"]
