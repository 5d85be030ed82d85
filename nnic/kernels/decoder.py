"""The small ops of a one-token decoder step, fused: RMSNorm (of a residual sum), the SiLU-gated product of a
LLaMA-style MLP, and the attention of one query token over a preallocated key/value cache written in place.

At batch 1 a decode step of a compressed 1B LLaMA spends ~30 % of its time outside the weight GEMVs, in ~30 torch
ops per layer on hidden states of a few kilobytes: each op is microseconds of dispatch around nanoseconds of
arithmetic, and ``scaled_dot_product_attention``'s flash kernel, built for long query blocks, takes ~80 us for one
query over 200 keys after the cache's ``cat`` copied the whole cache once more. These run in Rust instead
(``nnic_kernels::decoder``), on one thread, into caller-provided buffers: the rotary embedding of the query and
key heads, the key and value written at their position of a ``[batch, kv_heads, capacity, head_dim]`` cache (no
``cat``, no growth), and grouped-query softmax attention over the positions so far.

They compute in float32 and equal torch's ops up to float32 rounding (other summation orders, a polynomial
exponential of ~1 ulp), not bit for bit: ``nnic_transformers.fast_decode(model, exact=False)`` uses them; its
default exact path keeps torch's ops. CPU float32 only (the decode path they serve is a CPU one).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from nnic.kernels.adapters import Array, check_dtype, check_eps
from nnic.kernels.gemm import full_settings
from nnic.kernels.runtime import native


def _cpu_array(x: Array, name: str, contiguous: bool = True) -> np.ndarray:
    """``x`` as a float32 numpy array sharing its memory (a C-contiguous copy when ``contiguous`` allows one)."""
    check_dtype(x, name, ("float32",))
    if isinstance(x, torch.Tensor):
        if x.device.type != "cpu":
            raise ValueError(f"{name} must be on the CPU, got {x.device}")
        x = x.detach()
        if not x.is_contiguous():
            if not contiguous:
                raise ValueError(f"{name} must be C-contiguous (it is written in place)")
            x = x.contiguous()
        return x.numpy()
    if not x.flags.c_contiguous:
        if not contiguous:
            raise ValueError(f"{name} must be C-contiguous (it is written in place)")
        x = np.ascontiguousarray(x)
    return x


def _like(first: Array, out: np.ndarray) -> Array:
    return torch.from_numpy(out) if isinstance(first, torch.Tensor) else out


def rms_norm(x: Array, weight: Array, eps: float = 1e-6) -> Array:
    """``x / sqrt(mean(x², -1) + eps) * weight`` over the last dimension (``weight.numel()`` values): the
    LLaMA / Qwen2 / Mistral RMSNorm in float32. Returns a new tensor/array of ``x``'s kind and shape."""
    xa, wa = _cpu_array(x, "x"), _cpu_array(weight, "weight")
    if wa.ndim != 1 or xa.ndim == 0 or xa.shape[-1] != wa.shape[0]:
        raise ValueError(f"rms_norm: weight must be 1-D with x's last dimension; got x {xa.shape}, weight "
                         f"{wa.shape}")
    out = np.empty_like(xa)
    if out.size:
        native.rms_norm(xa, wa, check_eps(eps, "rms_norm"), out)
    return _like(x, out)


def add_rms_norm(x: Array, residual: Array, weight: Array, eps: float = 1e-6) -> tuple[Array, Array]:
    """``(h, rms_norm(h, weight, eps))`` with ``h = x + residual``, in one pass: a decoder layer's residual add and
    the norm that follows it."""
    xa, ra, wa = _cpu_array(x, "x"), _cpu_array(residual, "residual"), _cpu_array(weight, "weight")
    if xa.shape != ra.shape:
        raise ValueError(f"add_rms_norm: residual has shape {ra.shape}, x has {xa.shape}")
    if wa.ndim != 1 or xa.ndim == 0 or xa.shape[-1] != wa.shape[0]:
        raise ValueError(f"add_rms_norm: weight must be 1-D with x's last dimension; got x {xa.shape}, weight "
                         f"{wa.shape}")
    h, out = np.empty_like(xa), np.empty_like(xa)
    if out.size:
        native.add_rms_norm(xa, ra, wa, check_eps(eps, "add_rms_norm"), h, out)
    return _like(x, h), _like(x, out)


def silu_mul(gate_up: Array) -> Array:
    """``silu(gate) * up`` where ``gate, up`` are the two halves of ``gate_up``'s last dimension (a fused gate/up
    projection's output). Returns ``[..., inner]``."""
    ga = _cpu_array(gate_up, "gate_up")
    if ga.ndim == 0 or ga.shape[-1] % 2 or ga.shape[-1] == 0:
        raise ValueError(f"silu_mul: gate_up's last dimension must be even and >= 2, got shape {ga.shape}")
    inner = ga.shape[-1] // 2
    out = np.empty((*ga.shape[:-1], inner), np.float32)
    if out.size:
        native.silu_mul(ga, inner, out)
    return _like(gate_up, out)


def decode_attention(qkv: Array, cos: Array, sin: Array, k_cache: Array, v_cache: Array, heads: int, pos: int,
                     scale: float | None = None) -> Array:
    """One query token's attention, for every row of a batch.

    ``qkv``: ``[batch, (heads + 2 kv_heads) head_dim]``, a fused q/k/v projection's rows (query heads, then key
    heads, then value heads); ``cos``, ``sin``: ``[batch, head_dim]``, the rotary embedding of the token's
    position; ``k_cache``, ``v_cache``: ``[batch, kv_heads, capacity, head_dim]``, C-contiguous float32, **written
    in place**: the rotated key and the value go to position ``pos``. Returns ``out``, ``[batch, heads
    head_dim]``: for each query head ``h`` (rotated: ``x cos + rotate_half(x) sin``) ``softmax(scale q_h K[:pos+1]ᵀ)
    V[:pos+1]`` with the key/value head of its group (``h // (heads // kv_heads)``). ``scale`` defaults to
    ``head_dim ** -0.5``."""
    ka, va = _cpu_array(k_cache, "k_cache", contiguous=False), _cpu_array(v_cache, "v_cache", contiguous=False)
    if ka.ndim != 4 or ka.shape != va.shape:
        raise ValueError(f"decode_attention: k_cache and v_cache must be [batch, kv_heads, capacity, head_dim] "
                         f"alike, got {ka.shape} and {va.shape}")
    batch, kv_heads, capacity, head_dim = ka.shape
    qa, ca, sa = _cpu_array(qkv, "qkv"), _cpu_array(cos, "cos"), _cpu_array(sin, "sin")
    if isinstance(heads, bool) or not isinstance(heads, int) or heads < 1:
        raise ValueError(f"decode_attention: heads must be a positive integer, got {heads!r}")
    if qa.shape != (batch, (heads + 2 * kv_heads) * head_dim):
        raise ValueError(f"decode_attention: qkv must be [batch, (heads + 2 kv_heads) head_dim] = "
                         f"{(batch, (heads + 2 * kv_heads) * head_dim)}, got {qa.shape}")
    for name, a in (("cos", ca), ("sin", sa)):
        if a.shape != (batch, head_dim):
            raise ValueError(f"decode_attention: {name} must be [batch, head_dim] = {(batch, head_dim)}, got {a.shape}")
    if isinstance(pos, bool) or not isinstance(pos, int) or not 0 <= pos < capacity:
        raise ValueError(f"decode_attention: pos must be an integer in [0, capacity={capacity}), got {pos!r}")
    scale = head_dim ** -0.5 if scale is None else float(scale)
    out = np.empty((batch, heads * head_dim), np.float32)
    native.decode_attention(qa, ca, sa, ka, va, heads, kv_heads, head_dim, pos, scale, out)
    return _like(qkv, out)


#: Each packed weight class's activation settings when none are given (``linear``'s defaults): per-token dynamic
#: int8 activations, symmetric for int4, asymmetric for int8; the active ISA's path; no fused activation.
_DEFAULT_SETTINGS = {"PackedInt4Weight": ("per_token", True, None, None, None, "none", False),
                     "PackedInt8Weight": ("per_token", False, None, None, None, "none", False)}



def decode_layer(x: Array, input_norm: Array, input_eps: float, post_norm: Array, post_eps: float,
                 weights: Sequence, biases: Sequence[Array | None], cos: Array, sin: Array, k_cache: Array,
                 v_cache: Array, heads: int, pos: int, scale: float | None = None,
                 settings: Sequence[tuple] | None = None) -> Array:
    """One decode step of a LLaMA-style decoder layer for every row of ``x`` (``[batch, hidden]``), in one native
    call: ``h = x + o(decode_attention(qkv(rms_norm(x))))``, then ``h + down(silu(gate) · up)`` with ``gate | up =
    gate_up(rms_norm(h))``. The same kernels in the same order as :func:`rms_norm`, the packed weights' ``linear``,
    :func:`decode_attention` (``k_cache`` / ``v_cache`` written in place at ``pos``), :func:`add_rms_norm`,
    :func:`silu_mul` and an add, so the same bits; what it saves is eight Python calls and their argument handling
    per layer.

    ``weights``: the q/k/v, output, gate/up and down projections' packed int4/int8 weights (``pack_int4_weight`` /
    ``pack_int8_weight``); ``biases``: their float32 biases or None; ``settings``: each GEMM's ``(act, symmetric,
    act_scale, act_zero_point, path, activation[, reduce_range])`` as ``run_packed_linear`` takes them (default:
    the packed class's ``linear`` defaults). Returns a new tensor/array of ``x``'s kind and shape."""
    xa = _cpu_array(x, "x")
    if xa.ndim != 2:
        raise ValueError(f"decode_layer: x must be [batch, hidden], got shape {xa.shape}")
    if len(weights) != 4 or len(biases) != 4:
        raise ValueError(f"decode_layer: 4 weights and 4 biases (q/k/v, o, gate/up, down), got {len(weights)} and "
                         f"{len(biases)}")
    if settings is None:
        settings = [_DEFAULT_SETTINGS.get(type(w).__name__, _DEFAULT_SETTINGS["PackedInt4Weight"]) for w in weights]
    ka, va = _cpu_array(k_cache, "k_cache", contiguous=False), _cpu_array(v_cache, "v_cache", contiguous=False)
    head_dim = ka.shape[-1] if ka.ndim == 4 else 0
    scale = head_dim ** -0.5 if scale is None else float(scale)
    out = np.empty_like(xa)
    native.decode_layer_step(xa, out, _cpu_array(input_norm, "input_norm"), check_eps(input_eps, "decode_layer"),
                             _cpu_array(post_norm, "post_norm"), check_eps(post_eps, "decode_layer"), list(weights),
                             [None if b is None else _cpu_array(b, "bias") for b in biases],
                             [full_settings(s) for s in settings], _cpu_array(cos, "cos"), _cpu_array(sin, "sin"),
                             ka, va, heads, pos, scale)
    return _like(x, out)


__all__ = ["add_rms_norm", "decode_attention", "decode_layer", "rms_norm", "silu_mul"]
