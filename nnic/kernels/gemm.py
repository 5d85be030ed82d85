"""int8 / int4 GEMM for torch tensors and numpy arrays: the Rust kernels on CPU, torch ops on CUDA.

- :func:`int8_matmul` is the exact ``int32 = int8 @ int8`` product (like ``torch._int_mm``, any M).
- :func:`pack_int8_weight` packs linear weights once; :func:`int8_linear` then computes
  ``dequant(quant(x) @ w_q.T) + bias`` with activations quantized on the fly (dynamic per token or per
  tensor, or static from a calibrated scale/zero point) and a fused float epilogue (optionally ReLU or GELU).
- :func:`quantize_int4_weight`, :func:`pack_int4_weight`, :func:`int4_linear`: int4 weights (two per byte,
  per-group scales and optional zero points, groups of any multiple of 8: 32/64/128 in practice) with int8
  activations quantized per token, for decoding and small batches (AVX-512 VNNI, AVX2 or portable tiles).

Activation quantization (float32, ``x * (1 / s)`` rounded half to even): symmetric ``s = max|x| / 127`` with
codes in [-127, 127]; asymmetric ``s = (max(x,0) - min(x,0)) / 255`` with u8 codes and zero point
``z = clamp(-round(min(x,0) / s), 0, 255)``. Static: ``act_scale`` and ``act_zero_point`` in the u8 domain.
``reduce_range`` (dynamic modes): 7-bit codes, 127 in place of 255 above (symmetric: ``s = max|x| / 63``, codes
in [-63, 63]), as ``torch.ao``'s dynamic quantization on x86; AVX2 without VNNI multiplies them faster.

The code path follows :func:`nnic.kernels.set_isa` / ``NNIC_KERNEL_ISA`` (``avx512`` uses AVX512-VNNI when the
CPU has it); ``path=`` forces one per call (``"scalar"``, ``"avx2"``, ``"avx512vnni"``). The GIL is released
while the kernels run.
"""

from __future__ import annotations

import math
import os
from typing import Any

import numpy as np
import torch

from nnic.kernels import twins
from nnic.kernels.adapters import Array, as_int, check_dtype, cpu_numpy, float_output, plain
from nnic.kernels.runtime import native

PackedInt8Weight = native.PackedInt8Weight
PackedInt4Weight = native.PackedInt4Weight

#: Largest K for which int32 accumulation of int8 products is exact.
MAX_K = 131_071
ACT_MODES = ("per_token", "per_tensor", "static")
#: Activations the int8 linear epilogue can apply (``"none"`` is ``activation=None``).
ACTIVATIONS = ("none", "relu", "gelu")
# numpy's float32 dtype (the one `Tensor.numpy()` and `np.empty(..., np.float32)` give): comparing a dtype to it by
# identity, and allocating with it, skips numpy's conversion of the `np.float32` type, ~10 µs each right after a
# weight stream has pushed numpy's code and data out of the caches.
_F32 = np.dtype(np.float32)

__all__ = [
    "ACTIVATIONS", "ACT_MODES", "DEFAULT_INT4_SCALE_DTYPE", "INT4_SCALE_DTYPES", "MAX_K", "PackedInt4Weight",
    "PackedInt8Weight", "check_int4_scale_dtype", "int4_linear", "int8_conv2d", "int8_linear", "int4_group_scales",
    "int4_scale_codes", "int8_matmul", "pack_int4_weight", "pack_int8_weight", "quantize_int4_weight",
    "quantize_int4_weight_scale_codes", "quantize_int8_weight", "run_packed_linear",
]


def _check(x: Any, name: str, dtype: str, ndim: int | None = 2) -> None:
    check_dtype(x, name, (dtype,), ndim)


def _check_k(k: int) -> None:
    if k > MAX_K:
        raise ValueError(f"K = {k} is too large: int32 accumulation is exact only for K <= {MAX_K}")


# --------------------------------------------------------------------------- exact int8 product
def int8_matmul(a: Array, b: Array, *, path: str | None = None) -> Array:
    """Exact ``a @ b`` in int32 for int8 ``a[M, K]`` and ``b[K, N]`` (numpy in, numpy out; torch in, torch out).

    CUDA tensors use ``torch._int_mm`` (which needs M > 16 and K, N multiples of 8 there; other shapes fall
    back to an int32 matmul on the device). On CPU ``b`` is packed on every call, into a buffer that each calling
    thread keeps for its next call of the same size (up to 64 MiB); a ``b`` used more than once is faster packed
    once with :func:`pack_int8_weight`.
    """
    _check(a, "a", "int8")
    _check(b, "b", "int8")
    (m, k), (k2, n) = a.shape, b.shape
    if k != k2:
        raise ValueError(f"a is [{m}, {k}] but b is [{k2}, {n}]: inner dimensions differ")
    _check_k(k)
    if isinstance(a, torch.Tensor) and a.device.type != "cpu":
        return twins.int_mm(a, torch.as_tensor(b, device=a.device)).to(torch.int32)
    if isinstance(a, torch.Tensor) != isinstance(b, torch.Tensor):
        raise TypeError("a and b must both be torch tensors or both numpy arrays")
    out_t = torch.empty((m, n), dtype=torch.int32) if isinstance(a, torch.Tensor) else None
    out = out_t.numpy() if out_t is not None else np.empty((m, n), np.int32)
    native.int8_matmul(cpu_numpy(a, "a"), cpu_numpy(b, "b"), out, path)
    return out_t if out_t is not None else out


# --------------------------------------------------------------------------- int8 linear
def quantize_int8_weight(w: torch.Tensor, *, per_channel: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 codes (in [-127, 127]) and float32 scales (``[N]`` or ``[1]``) of a float ``w[N, ...]``."""
    w = w.detach().float().reshape(w.shape[0], -1)
    amax = w.abs().amax(dim=1) if per_channel else w.abs().amax().reshape(1)
    scale = torch.where(amax > 0, amax / 127, torch.ones_like(amax)).clamp_min(torch.finfo(torch.float32).tiny)
    s = scale[:, None] if per_channel else scale
    q = torch.clamp(torch.round(w / s), -127, 127).to(torch.int8)
    return q, scale


def pack_int8_weight(w_q: Array, scale: Any, zero_point: Any = None) -> PackedInt8Weight:
    """Packs int8 codes ``w_q[N, K]`` (``w ≈ (w_q - zero_point) * scale``) for :func:`int8_linear`.

    ``scale``: a float or 1 / N values (per output channel), finite and > 0; ``zero_point``: ``None``, an int
    or N ints in [-128, 127]. Both are scalars or 1-D: a 2-D scale (say ``[N, 1]``) is refused rather than
    flattened, since it usually means per-group scales this packing does not have. The zero-point
    compensation terms are precomputed here.
    """
    _check(w_q, "w_q", "int8")
    _check_k(w_q.shape[1])
    s = _per_channel(scale, "scale", np.float32)
    z = np.zeros(0, np.int64) if zero_point is None else _per_channel(zero_point, "zero_point", np.int64)
    if z.size and (z.min() < -128 or z.max() > 127):
        raise ValueError(f"zero_point must be in [-128, 127], got values in [{z.min()}, {z.max()}]")
    return native.PackedInt8Weight(cpu_numpy(w_q, "w_q"), s, np.ascontiguousarray(z.astype(np.int32)))


def _per_channel(v: Any, name: str, dtype: type) -> np.ndarray:
    """A scalar or 1-D per-channel parameter as a contiguous 1-D array (the channel count is checked natively)."""
    a = np.asarray(plain(v))
    if a.ndim > 1:
        raise ValueError(f"{name} must be a scalar or 1-D (one value per output channel), got shape {a.shape}")
    if a.dtype.kind not in ("fiu" if dtype is np.float32 else "iu"):
        raise TypeError(f"{name} must be {'real' if dtype is np.float32 else 'integer'}, got dtype {a.dtype}")
    with np.errstate(over="ignore"):
        return np.ascontiguousarray(a.astype(dtype).reshape(-1))


def _numpy_view(x: Array, name: str) -> np.ndarray:
    """The data of a CPU float32 tensor/array as numpy, zero-copy for the usual contiguous CPU tensor (the
    common case is tested first: this runs once per layer call, so its cost shows at small batch sizes)."""
    if type(x) is torch.Tensor and x.is_cpu and not x.requires_grad and x.is_contiguous() and not x.is_conj() \
            and not x.is_neg():
        return x.numpy()
    return cpu_numpy(x, name)


def _plain_numpy(x: Array) -> np.ndarray | None:
    """``x``'s data as numpy without a copy when ``x`` is a plain C-contiguous float32 CPU tensor (or such an array)
    of at least one dimension; else ``None``, and the caller takes the checked path, which converts what it can and
    names what it cannot (autograd, a device, conj/neg bits and dtypes numpy lacks make ``numpy()`` raise).

    Why one ``numpy()`` instead of the attribute checks before it: right after a weight stream has pushed torch's
    code and data out of the caches, every call into torch costs tens of µs (one thread, after a 64 MB read:
    ``torch.empty`` 48-70 µs, ``x.numpy()`` 32-48, the dtype/shape/layout checks 25-40), and a checked call made
    about eight of them, ~150 µs on top of a ~0.5 ms 4096 × 4096 GEMV at M = 1."""
    if type(x) is torch.Tensor:
        try:
            xn = x.numpy()
        except (RuntimeError, TypeError, ValueError):
            return None
    elif type(x) is np.ndarray:
        xn = x
    else:
        return None
    dt = xn.dtype
    return xn if (dt is _F32 or dt == _F32) and xn.ndim >= 1 and xn.flags.c_contiguous else None


def _run_linear(packed: Any, x: Array, bias: Array | None, symmetric: bool, kw: dict) -> Array:
    k, n = packed.in_features, packed.out_features
    xn = _plain_numpy(x)
    if xn is None:
        _check(x, "x", "float32", ndim=None)
        if x.ndim < 1 or x.shape[-1] != k:
            raise ValueError(f"x must have shape [..., {k}], got {tuple(x.shape)}")
        xn = _numpy_view(x, "x")
    elif xn.shape[-1] != k:
        raise ValueError(f"x must have shape [..., {k}], got {tuple(xn.shape)}")
    if kw["act"] not in ACT_MODES:
        raise ValueError(f"act must be one of {ACT_MODES}, got {kw['act']!r}")
    activation = kw.get("activation") or "none"
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be None or one of {ACTIVATIONS[1:]}, got {activation!r}")
    lead = xn.shape[:-1]
    b = None
    if bias is not None:
        _check(bias, "bias", "float32", ndim=1)
        if bias.shape[0] != n:
            raise ValueError(f"bias must have {n} values, got {bias.shape[0]}")
        b = _numpy_view(bias, "bias")
    x2 = xn if len(lead) == 1 else xn.reshape(-1, k)  # a 2-D input is its own [M, K] view (no numpy call)
    # The native call allocates the output (numpy's allocator, from C: a Python-level `np.empty` costs 35-60 µs
    # right after a weight stream; numpy also asks for 2 MiB pages on large outputs, see `float_output`), shared
    # with the returned tensor (one call into torch).
    res = packed.linear(x2, None, b, kw["act"], symmetric, kw.get("act_scale"), kw.get("act_zero_point"),
                        kw.get("path"), activation, bool(kw.get("reduce_range", False)))
    res = res if len(lead) == 1 else res.reshape(*lead, n)
    return torch.from_numpy(res) if isinstance(x, torch.Tensor) else res


def run_packed_linear(packed: Any, x2: Any, out: Any, bias: np.ndarray | None = None, act: str = "per_token",
                      symmetric: bool = True, act_scale: float | None = None, act_zero_point: int | None = None,
                      path: str | None = None, activation: str = "none", reduce_range: bool = False) -> None:
    """The kernel call of :func:`int8_linear` / :func:`int4_linear` without their argument checks, for a caller
    that has made them: ``x2[M, K]`` and ``out[M, N]`` C-contiguous float32 CPU tensors (without autograd) or
    numpy arrays, ``bias`` a float32 numpy array of N values or None, ``act`` / ``activation`` valid names.
    The native code still checks shapes and dtypes (a ``ValueError`` / ``TypeError``, never a crash); what this
    skips is the Python layer's conversions and messages, ~12 µs per call, against ~5 µs for a small decode GEMV:
    the decode layers call it with outputs they reuse (nnic's quantized modules call the packed weight's ``linear``
    with ``out=None`` instead, which allocates a fresh output natively)."""
    xn = x2.numpy() if type(x2) is torch.Tensor else x2
    on = out.numpy() if type(out) is torch.Tensor else out
    packed.linear(xn, on, bias, act, symmetric, act_scale, act_zero_point, path, activation, reduce_range)


def int8_linear(
    x: Array,
    packed: PackedInt8Weight,
    bias: Array | None = None,
    *,
    act: str = "per_token",
    symmetric: bool = False,
    act_scale: float | None = None,
    act_zero_point: int | None = None,
    activation: str | None = None,
    path: str | None = None,
    reduce_range: bool = False,
) -> Array:
    """``f(dequant(quant(x) @ w_q.T) + bias)`` for float32 ``x[..., K]`` on CPU; returns float32 ``[..., N]``.

    ``act``: ``"per_token"`` (one scale per row of x), ``"per_tensor"``, or ``"static"`` (then ``act_scale``
    and ``act_zero_point`` in [0, 255] are required). ``symmetric`` selects symmetric dynamic quantization.
    ``reduce_range``: 7-bit dynamic activation codes (0..127; ``torch.ao``'s x86 default), which a CPU without
    AVX512-VNNI multiplies with one operation fewer (1.1-1.4x faster there); every CPU gives the same result.
    ``activation``: ``None``, ``"relu"`` or ``"gelu"`` (exact, erf form, as ``torch.nn.functional.gelu``),
    applied in the GEMM's epilogue while each output block is in cache, instead of a pass of its own.
    """
    if type(packed) is PackedInt8Weight:
        y = try_native_linear(packed, x, bias, act, symmetric, act_scale, act_zero_point, path, activation or "none",
                              reduce_range)
        if y is not None:
            return y
    if not isinstance(packed, PackedInt8Weight):
        raise TypeError(f"packed must come from pack_int8_weight, got {type(packed).__name__}")
    kw = {"act": act, "act_scale": act_scale, "act_zero_point": act_zero_point, "path": path,
          "activation": activation, "reduce_range": reduce_range}
    return _run_linear(packed, x, bias, symmetric, kw)


def full_settings(s: Any) -> tuple:
    """An int8 GEMM's settings after the bias (``Int8Linear.kernel_args()``) with ``reduce_range`` last: False where
    it is left out (the six values that came before it)."""
    return tuple(s) + (False,) if len(s) == 6 else tuple(s)


def try_native_linear(packed: Any, x: Array, bias: Array | None, *kernel_args: Any) -> Array | None:
    """``packed.linear`` of ``x`` from one native call, for the usual arguments: a plain float32 CPU tensor (or
    numpy array) ``x[..., K]``, the bias as such or None, ``kernel_args`` the packed weight's settings after the
    bias (``act, symmetric, act_scale, act_zero_point, path, activation, reduce_range`` for int8; none for int4's
    defaults).
    Else (or on any error) ``None``, and the caller takes its checked path, which names what is wrong (the native
    call checks everything it reads before the kernel runs). :func:`int8_linear` and nnic's quantized Linear
    layers call it first.

    Why: right after a weight stream has pushed numpy's and torch's code and data out of the caches, each crossing
    into them costs 30-60 µs (one thread, CPU time), and the checked path's conversions, attribute checks and
    output allocation made a 4096 × 4096 call at M = 1 cost ~0.14 ms more than its kernel. Here there are three:
    the input's numpy view, the native call (which checks dtypes, shapes and contiguity, allocates the output and
    runs the kernel) and the tensor wrapped around the output."""
    tx = type(x)
    try:
        if tx is torch.Tensor:
            xn = x.numpy()
        elif tx is np.ndarray:
            xn = x
        else:
            return None
        if bias is not None:
            tb = type(bias)
            if tb is torch.Tensor:
                bias = bias.numpy()
            elif tb is not np.ndarray:
                return None
        res = packed.linear(xn, None, bias, *kernel_args)
    except (RuntimeError, TypeError, ValueError, OverflowError):
        return None
    return torch.from_numpy(res) if tx is torch.Tensor else res


def int8_conv2d(
    x: torch.Tensor,
    packed: PackedInt8Weight,
    bias: torch.Tensor | None = None,
    *,
    kernel_size: tuple[int, int],
    stride: tuple[int, int] = (1, 1),
    padding: tuple[int, int] = (0, 0),
    dilation: tuple[int, int] = (1, 1),
    act: str = "per_tensor",
    symmetric: bool = False,
    act_scale: float | None = None,
    act_zero_point: int | None = None,
    path: str | None = None,
    reduce_range: bool = False,
) -> torch.Tensor:
    """int8 ``conv2d`` (groups = 1, zero padding) of a float32 CPU tensor ``x[N, C, H, W]``.

    ``packed`` holds the weight permuted to ``[C_out, kh, kw, C_in]`` and flattened (see
    ``Int8Conv2d``). Activations are quantized per tensor (``act="per_tensor"``) or statically; im2col runs on
    the int8 codes. Channels-last input is used without a copy; the result is ``[N, C_out, Ho, Wo]`` with
    channels-last strides.
    """
    _check(x, "x", "float32", ndim=4)
    if not isinstance(packed, PackedInt8Weight):
        raise TypeError(f"packed must come from pack_int8_weight, got {type(packed).__name__}")
    if act not in ("per_tensor", "static"):
        raise ValueError(f"act must be 'per_tensor' or 'static' for convolutions, got {act!r}")
    n, _, h, w = x.shape
    (kh, kw), (sh, sw) = _pair(kernel_size, "kernel_size", 1), _pair(stride, "stride", 1)
    (ph, pw), (dh, dw) = _pair(padding, "padding", 0), _pair(dilation, "dilation", 1)
    ho, wo = _conv_out(h, kh, sh, ph, dh, "height"), _conv_out(w, kw, sw, pw, dw, "width")
    cout = packed.out_features
    _check_fits(4 * n * ho * wo * cout, f"the output [{n}, {cout}, {ho}, {wo}] (padding={padding}, stride={stride})")
    nhwc = x.detach().permute(0, 2, 3, 1)
    if not nhwc.is_contiguous():
        nhwc = nhwc.contiguous()
    out = float_output(n * ho * wo, cout)
    b = None
    if bias is not None:
        _check(bias, "bias", "float32", ndim=1)
        b = cpu_numpy(bias, "bias")
    packed.conv2d(nhwc.numpy(), out.numpy(), (kh, kw), (sh, sw), (ph, pw), (dh, dw), b, act, symmetric,
                  act_scale, act_zero_point, path, reduce_range)
    return out.reshape(n, ho, wo, cout).permute(0, 3, 1, 2)


def _pair(v: Any, name: str, lo: int) -> tuple[int, int]:
    """Two integers >= lo (a convolution's kernel_size, stride, padding or dilation)."""
    if not isinstance(v, (tuple, list)) or len(v) != 2:
        raise TypeError(f"{name} must be a pair of integers, got {v!r}")
    pair = (as_int(v[0], f"{name}[0]"), as_int(v[1], f"{name}[1]"))
    for i, p in enumerate(pair):
        if p < lo:
            raise ValueError(f"{name}[{i}] must be >= {lo}, got {p}")
    return pair


def _conv_out(size: int, k: int, s: int, p: int, d: int, what: str) -> int:
    """Output extent along one spatial dim; a kernel wider than the padded input is a geometry error."""
    span = d * (k - 1) + 1
    if size + 2 * p < span:
        raise ValueError(f"invalid convolution geometry: the padded input {what} {size} + 2*{p} is smaller than "
                         f"the dilated kernel ({span})")
    return (size + 2 * p - span) // s + 1


def _check_fits(nbytes: int, what: str) -> None:
    """Refuses, before allocating, a buffer larger than this machine's physical memory."""
    try:
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        ram = 1 << 48
    if nbytes > ram:
        raise ValueError(f"{what} needs {nbytes / 2**30:.3g} GiB, more than this machine's {ram / 2**30:.3g} GiB")


# --------------------------------------------------------------------------- int4
#: Dtypes int4 group scales are stored in: half precision (2 bytes per group, as GGUF/GPTQ/AWQ keep them), float32,
#: or ``torch.uint8``: double-quantized, 8-bit codes (1 byte per group) times one float32 step per output column
#: (:func:`int4_scale_codes`; ~4.26 bits per weight at groups of 32 instead of 4.5).
INT4_SCALE_DTYPES = (torch.float16, torch.float32, torch.uint8)
#: The one default of ``Int4Linear`` and ``quantization_speedup``: 8-bit scale codes, the fewest bytes a decode step
#: streams (17 per group of 32 weights instead of float16's 18), measured 1.04-1.06x faster per cold GEMV, with the
#: same accuracy within int4's own error (docs/performance/low-bit.md, "8-bit group scales as the default").
DEFAULT_INT4_SCALE_DTYPE = torch.uint8


def check_int4_scale_dtype(dtype: Any, name: str = "scale_dtype") -> None:
    """A ``ValueError`` naming ``name`` unless ``dtype`` is one of :data:`INT4_SCALE_DTYPES`: the one check of
    every argument that chooses how int4 group scales are stored."""
    if dtype not in INT4_SCALE_DTYPES:
        raise ValueError(f"{name} must be torch.float16, torch.float32 or torch.uint8, got {dtype!r}")


def int4_group_scales(scales: Any, dtype: torch.dtype, name: str = "scales") -> torch.Tensor:
    """``scales`` as a contiguous CPU tensor of ``dtype`` (one of :data:`INT4_SCALE_DTYPES`), rounded to nearest
    when narrowed to float16. Every value must stay finite and positive there: a scale above float16's 65504, or
    one below half its smallest subnormal (2**-25, which would round to 0), is a ``ValueError`` naming ``name``
    and the offending value. Subnormal float16 scales (below 2**-14) keep an absolute error of at most 2**-25."""
    check_int4_scale_dtype(dtype, f"{name}: int4 scale dtype")
    if dtype == torch.uint8:
        raise ValueError(f"{name}: 8-bit int4 scales are codes with a step per column: int4_scale_codes makes them")
    t = torch.as_tensor(plain(scales)).detach().cpu()
    if not t.is_floating_point():
        raise TypeError(f"{name} must be floating point, got {t.dtype}")
    out = t.to(dtype).contiguous()
    bad = ~(torch.isfinite(out) & (out > 0))
    if bool(bad.any()):
        i = int(bad.reshape(-1).nonzero()[0])
        v = float(t.reshape(-1)[i])
        lost_in_half = dtype == torch.float16 and math.isfinite(v) and v > 0  # fine in float32, 0 or inf in float16
        hint = " (pass scale_dtype=torch.float32 to keep it)" if lost_in_half else ""
        raise ValueError(f"{name}[{i}] = {v:.6g} is not a positive finite {str(dtype).removeprefix('torch.')} scale"
                         f"{hint}")
    return out.clone() if out.data_ptr() == t.data_ptr() else out


def int4_scale_codes(scales: Any, name: str = "scales") -> tuple[torch.Tensor, torch.Tensor]:
    """Double-quantizes positive group scales ``[N, G]`` into uint8 codes ``[N, G]`` in [1, 255] and one float32
    step per row ``[N]``: ``step ≈ max / 255`` and ``code = ceil(s / step)``, so every scale rounds *up*
    (``code · step >= s``, checked exactly in float64): codes chosen for the new scales then never clip. A
    scale below a 255th of its row's largest loses relative precision (up to ``1 / code``); the step carries
    the rows' range, so rows of different magnitudes do not."""
    t = torch.as_tensor(plain(scales)).detach().cpu()
    if not t.is_floating_point() or t.ndim != 2:
        raise TypeError(f"{name} must be a 2-D floating point tensor, got {t.dtype} of shape {tuple(t.shape)}")
    s = t.double()
    bad = ~(torch.isfinite(s) & (s > 0))
    if bool(bad.any()):
        i = int(bad.reshape(-1).nonzero()[0])
        raise ValueError(f"{name}[{i}] = {float(s.reshape(-1)[i]):.6g} is not a positive finite scale")
    top = s.amax(dim=1) if s.shape[1] else torch.ones(s.shape[0], dtype=torch.float64)
    step = (top / 255).float()
    short = step.double() * 255 < top  # float32 rounding took the step below max / 255: one ulp up
    step = torch.where(short, torch.nextafter(step, torch.full_like(step, math.inf)), step)
    if not bool(torch.isfinite(step * 255).all()):
        raise ValueError(f"{name}: a row's largest scale does not fit a float32 step times 255")
    codes = torch.ceil(s / step.double()[:, None]).clamp(1, 255)
    codes = torch.where(codes * step.double()[:, None] < s, codes + 1, codes).clamp(max=255)
    return codes.to(torch.uint8).contiguous(), step.contiguous()


def _weight_groups(w: torch.Tensor, group_size: int) -> tuple[torch.Tensor, int]:
    """``w`` as float32 ``[N, groups, group_size]`` (the last group zero-padded) and its input count ``K``: the
    grouping every int4 quantizer starts from, with the one check of ``group_size``."""
    group_size = as_int(group_size, "group_size")
    if group_size <= 0 or group_size % 8:
        raise ValueError(f"group_size must be a positive multiple of 8, got {group_size}")
    w = w.detach().float().reshape(w.shape[0], -1)
    n, k = w.shape
    g = -(-k // group_size)
    return torch.nn.functional.pad(w, (0, g * group_size - k)).reshape(n, g, group_size), k


def quantize_int4_weight(w: torch.Tensor, group_size: int = 32, scale_dtype: torch.dtype = torch.float32
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int4 codes ``[N, K]`` (int8 values in [-7, 7]) and scales ``[N, ceil(K / group_size)]`` of
    ``scale_dtype``: ``absmax / 7`` per group, rounded to that dtype first, so the codes are the nearest ones
    for the scale actually stored."""
    wp, k = _weight_groups(w, group_size)
    n = wp.shape[0]
    amax = wp.abs().amax(dim=2)
    scale = torch.where(amax > 0, amax / 7, torch.ones_like(amax)).clamp_min(torch.finfo(torch.float32).tiny)
    scale = int4_group_scales(scale, scale_dtype)
    q = torch.clamp(torch.round(wp / scale.float()[..., None]), -7, 7).reshape(n, -1)[:, :k].to(torch.int8)
    return q.contiguous(), scale


def quantize_int4_weight_scale_codes(w: torch.Tensor, group_size: int = 32
                                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Symmetric int4 codes ``[N, K]`` with double-quantized scales (``torch.uint8`` in
    :data:`INT4_SCALE_DTYPES`): ``absmax / 7`` per group, rounded *up* to ``code · step``
    (:func:`int4_scale_codes`), then the codes nearest for those scales (in [-7, 7]: nothing clips). Returns
    ``(codes, scale codes uint8 [N, groups], step float32 [N])``."""
    wp, k = _weight_groups(w, group_size)
    wp, n = wp.double(), wp.shape[0]
    amax = wp.abs().amax(dim=2)
    top = amax.amax(dim=1, keepdim=True)
    codes, step = int4_scale_codes(torch.where(amax > 0, amax, torch.where(top > 0, top, 7.0)) / 7)
    scale = codes.double() * step.double()[:, None]
    q = torch.clamp(torch.round(wp / scale[..., None]), -7, 7).reshape(n, -1)[:, :k].to(torch.int8)
    return q.contiguous(), codes, step


def pack_int4_weight(q: Array, scales: Array, group_size: int, zero_points: Array | None = None, *,
                     scale_step: Array | None = None) -> PackedInt4Weight:
    """Packs int4 codes ``q[N, K]`` (int8 values in [-8, 7]) with per-group scales ``[N, ceil(K/group_size)]``
    and optional per-group zero points of the same shape (integers in [-8, 7]; ``w = s * (q - z)``).

    The scales are stored in their own dtype: float32, or float16 (half the scale bytes: 0.5625 instead of
    0.625 bytes per weight at groups of 32; the kernels widen them exactly, so results are those of the
    float16 values), or uint8 codes in [1, 255] with ``scale_step`` (float32 ``[N]``, given only with them):
    ``s = code * step`` of its output column (0.53 bytes per weight; :func:`int4_scale_codes`)."""
    _check(q, "q", "int8")
    check_dtype(scales, "scales", ("float32", "float16", "uint8"), 2)
    g = as_int(group_size, "group_size")
    if g <= 0 or g % 8:
        raise ValueError(f"group_size must be a positive multiple of 8, got {g}")
    z = None
    if zero_points is not None:
        _check(zero_points, "zero_points", "int8")
        z = cpu_numpy(zero_points, "zero_points")
    s = cpu_numpy(scales, "scales")
    if (s.dtype == np.uint8) != (scale_step is not None):
        raise TypeError("scale_step goes with uint8 scale codes, and only with them")
    step = None
    if scale_step is not None:
        check_dtype(scale_step, "scale_step", ("float32",), 1)
        step = cpu_numpy(scale_step, "scale_step")
    return native.PackedInt4Weight(cpu_numpy(q, "q"), s.view(np.uint16) if s.dtype == np.float16 else s, g, z, step)


def int4_linear(
    x: Array,
    packed: PackedInt4Weight,
    bias: Array | None = None,
    *,
    act: str = "per_token",
    symmetric: bool = True,
    act_scale: float | None = None,
    act_zero_point: int | None = None,
    path: str | None = None,
) -> Array:
    """``quant(x) @ dequant(w).T + bias`` with int4 weights; same activation options as :func:`int8_linear`.

    The usual case (a plain float32 input) is one native call, as for :func:`int8_linear`
    (:func:`try_native_linear`), so that per-call comparisons of the two measure their kernels (the checked
    path added ~2 µs per 4096 x 4096 GEMV, one thread: median of 61 interleaved rounds)."""
    if type(packed) is PackedInt4Weight:
        y = try_native_linear(packed, x, bias, act, symmetric, act_scale, act_zero_point, path)
        if y is not None:
            return y
    if not isinstance(packed, PackedInt4Weight):
        raise TypeError(f"packed must come from pack_int4_weight, got {type(packed).__name__}")
    kw = {"act": act, "act_scale": act_scale, "act_zero_point": act_zero_point, "path": path}
    return _run_linear(packed, x, bias, symmetric, kw)
