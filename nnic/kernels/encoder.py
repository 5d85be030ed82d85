"""Fused encoder ops: multi-head self-attention and LayerNorm of a residual sum ("skip LayerNorm").

BERT-style encoders spend about a quarter of an int8 forward outside their GEMMs: torch's attention reads the
projections through ``[batch, heads, seq, head_dim]`` views and copies its result back to ``[batch, seq,
hidden]``, and every block adds its residual and normalises in two kernels over fresh tensors. These two run in
Rust instead (``nnic_kernels::attention`` / ``nnic_kernels::norm``): the attention reads Q, K and V where the
projections wrote them (one fused QKV output is read in place, through its row stride) and writes the context
rows the output projection reads; the skip LayerNorm sums and normalises each row in one pass in L1.

Both compute in float32 and equal torch's ``scaled_dot_product_attention`` / ``layer_norm(x + residual)`` up to
float32 rounding (the products accumulate in another order; the exponential is a polynomial with ~1 ulp error).
CPU float32 tensors run the kernels; tensors on other devices run the torch twins (:mod:`.twins`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from nnic.kernels import twins
from nnic.kernels.gemm import PackedInt8Weight, full_settings, int8_linear
from nnic.kernels.adapters import Array, check_dtype, check_eps, float_output, on_device
from nnic.kernels.runtime import active_isa, cpu_features, native


def _as_tensor(x: Array) -> torch.Tensor:
    return torch.from_numpy(x) if isinstance(x, np.ndarray) else x.detach()


def _torch(x: Array, name: str) -> torch.Tensor:
    check_dtype(x, name, ("float32",))
    return _as_tensor(x)


def _kind(first: Array, out: torch.Tensor) -> Array:
    return out.numpy() if isinstance(first, np.ndarray) else out


def skip_layer_norm(x: Array, residual: Array, weight: Array, bias: Array, eps: float = 1e-5) -> Array:
    """``layer_norm(x + residual, (n,), weight, bias, eps)`` over the last dimension (``n = weight.numel()``), in
    one pass: the residual block ending of BERT-style encoders (onnxruntime's ``SkipLayerNormalization``).
    ``x`` and ``residual`` have the same shape with ``n`` last; all float32. Returns a new tensor/array."""
    xt, rt, wt, bt = (_torch(a, n) for a, n in ((x, "x"), (residual, "residual"), (weight, "weight"), (bias, "bias")))
    if xt.shape != rt.shape:
        raise ValueError(f"skip_layer_norm: residual has shape {tuple(rt.shape)}, x has {tuple(xt.shape)}")
    n = wt.numel()
    if xt.dim() == 0 or xt.shape[-1] != n or wt.dim() != 1 or bt.shape != wt.shape:
        raise ValueError(f"skip_layer_norm: weight and bias must be 1-D with x's last dimension; got x "
                         f"{tuple(xt.shape)}, weight {tuple(wt.shape)}, bias {tuple(bt.shape)}")
    eps = check_eps(eps, "skip_layer_norm")
    if any(on_device(t) for t in (xt, rt, wt, bt)):
        return twins.skip_layer_norm(xt, rt, wt, bt, eps)
    out = float_output(*xt.shape)
    if out.numel():
        native.skip_layer_norm(xt.contiguous().numpy(), rt.contiguous().numpy(), wt.contiguous().numpy(),
                                 bt.contiguous().numpy(), eps, out.numpy())
    return _kind(x, out)


def linear_skip_layer_norm(x: Array, packed: PackedInt8Weight, residual: Array, weight: Array, bias: Array,
                           eps: float = 1e-5, *, linear_bias: Array | None = None, act: str = "per_token",
                           symmetric: bool = False, act_scale: float | None = None,
                           act_zero_point: int | None = None, path: str | None = None,
                           reduce_range: bool = False) -> Array:
    """``skip_layer_norm(int8_linear(x, packed, linear_bias, act=..., ...), residual, weight, bias, eps)``, the
    same bits, as one native call: a BERT-style block ending (the projection back to the hidden size, the residual
    add and the LayerNorm). ``x[..., K]`` and ``residual[..., N]`` with the same leading dimensions; the rest as
    :func:`int8_linear` and :func:`skip_layer_norm` take them. Returns a new tensor/array shaped like ``residual``.

    Why: as two calls the LayerNorm is a parallel region of its own that reads the GEMM's output back from memory
    (0.77 ms a call in a batch-8 BERT-base forward against 0.27 ms on data just written, one thread) and is the
    encoder stage that gains least from a second thread. Here each row block is normalised by the thread that
    finished its last output block, in the GEMM's region, while the rows are in cache.

    Off the CPU (or for inputs that are not float32) the two calls run."""
    if type(packed) is not PackedInt8Weight:
        raise TypeError(f"linear_skip_layer_norm: packed must come from pack_int8_weight, got {type(packed).__name__}")
    settings = {"act": act, "symmetric": symmetric, "act_scale": act_scale, "act_zero_point": act_zero_point,
                "path": path, "reduce_range": reduce_range}
    tensors = [_as_tensor(a) for a in (x, residual, weight, bias)]
    lb = None if linear_bias is None else _as_tensor(linear_bias)
    if any(on_device(t) or t.dtype != torch.float32 for t in tensors + ([] if lb is None else [lb])):
        y = int8_linear(x, packed, linear_bias, **settings)
        return skip_layer_norm(y, residual, weight, bias, eps)
    eps = check_eps(eps, "linear_skip_layer_norm")
    xt, rt, wt, bt = (t.contiguous().numpy() for t in tensors)
    out = packed.linear_skip_layer_norm(xt, rt, wt.reshape(-1), bt.reshape(-1), eps,
                                        None if lb is None else lb.contiguous().numpy().reshape(-1), act, symmetric,
                                        act_scale, act_zero_point, path, reduce_range)
    return out if isinstance(x, np.ndarray) else torch.from_numpy(out)


#: One GEMM of :func:`encoder_layer`: the packed weight, its bias (or None) and the settings its layer passes after
#: the bias (``Int8Linear.kernel_args()``: act, symmetric, act_scale, act_zero_point, path, activation,
#: reduce_range).
LayerGemm = tuple[PackedInt8Weight, "torch.Tensor | None", tuple]


def encoder_layer(x: torch.Tensor, qkv: LayerGemm, heads: int, scale: float, mask: Array | None, products: str,
                  attention_output: LayerGemm, norm1: tuple[torch.Tensor, torch.Tensor, float], up: LayerGemm,
                  down: LayerGemm, norm2: tuple[torch.Tensor, torch.Tensor, float]) -> torch.Tensor:
    """A BERT-style encoder layer on float32 CPU ``x[batch, seq, hidden]`` as one native call, the same bits as its
    five kernel calls one after another: ``int8_linear`` with ``qkv`` (query, key and value, ``3 * hidden``
    outputs), :func:`attention` of its three column slices (``heads``, ``scale``, ``mask``, ``products``),
    :func:`linear_skip_layer_norm` with ``attention_output`` and ``norm1`` (weight, bias, eps) on the residual
    ``x``, ``int8_linear`` with ``up`` (its fused activation in the settings), and :func:`linear_skip_layer_norm`
    with ``down`` and ``norm2`` on the first block ending's output. Returns a new ``[batch, seq, hidden]`` tensor.

    Why one call: between two kernel calls the layer's Python runs right after a GEMM has pushed the interpreter's
    and torch's code and data out of the caches; on one thread that was 2-3 % of an int8 BERT-base forward, and at
    two threads it is serial time (docs/performance/onnx.md, round of 2026-12-02). The arrays between the steps are
    allocated and freed at the points the five calls would allocate and free them.

    Every tensor must be a float32 CPU tensor (``x`` and the norms' weights contiguous); a ``TypeError`` says which
    is not (callers check before: this is the fast path, not a converting one)."""
    return encoder_layers(x, [(qkv, heads, scale, mask, products, attention_output, norm1, up, down, norm2)])


#: One layer of :func:`encoder_layers`: :func:`encoder_layer`'s arguments after ``x``.
EncoderLayerArgs = tuple


def encoder_layers(x: torch.Tensor, layers: Sequence[EncoderLayerArgs]) -> torch.Tensor:
    """:func:`encoder_layer` of each of ``layers`` in turn, each on the previous one's output: a stack of encoder
    layers as one native call (each layer's arguments as :func:`encoder_layer` takes them after ``x``). The bits of
    the layers called one by one; what it saves is the Python between them."""

    def array(t: torch.Tensor, name: str) -> np.ndarray:
        if not isinstance(t, torch.Tensor) or t.dtype != torch.float32 or not t.is_cpu:
            raise TypeError(f"encoder_layer: {name} must be a float32 CPU tensor")
        return t.detach().numpy()

    def gemm(g: LayerGemm, name: str) -> tuple:
        packed, bias, settings = g
        return (packed, None if bias is None else array(bias, f"{name}'s bias").reshape(-1), *full_settings(settings))

    def norm(n: tuple, name: str) -> tuple:
        weight, bias, eps = n
        return (array(weight, f"{name}'s weight").reshape(-1), array(bias, f"{name}'s bias").reshape(-1),
                check_eps(eps, "encoder_layer"))

    batch, seq, _ = x.shape
    native_layers = []
    for qkv, heads, scale, mask, products, attention_output, norm1, up, down, norm2 in layers:
        if products not in PRODUCTS:
            raise ValueError(f"encoder_layer: products must be one of {PRODUCTS}, got {products!r}")
        m = None if mask is None else _key_mask(mask, batch, seq).contiguous().numpy()
        native_layers.append((gemm(qkv, "qkv"), heads, scale, m, products == "bfloat16",
                              gemm(attention_output, "the attention output"), norm(norm1, "norm1"), gemm(up, "up"),
                              gemm(down, "down"), norm(norm2, "norm2")))
    return torch.from_numpy(native.encoder_layers(array(x, "x"), native_layers))


def embed_layer_norm(lookups: Sequence[tuple[Array, Array]], weight: Array, bias: Array, eps: float = 1e-5) -> Array:
    """``layer_norm(table_0[ids_0] + table_1[ids_1] + ..., (n,), weight, bias, eps)``, the rows summed in the order
    of ``lookups``: the embedding layer of BERT-style encoders (word, token type and position rows) in one pass
    (onnxruntime's ``EmbedLayerNormalization``). ``lookups``: pairs of a float32 table ``[entries, n]`` and integer
    indices of one shape (``[batch, seq]``), the same for every pair (broadcast them first). Returns
    ``[*ids.shape, n]``, a new tensor/array.

    Why not torch: its three ``index_select``, two adds and ``layer_norm`` are six parallel regions with static
    splits over fresh tensors, each waiting for its slowest thread; beside another process that costs a time slice
    per region (50-90 ms per BERT-base batch-8 forward at 2 threads, against 1.7 ms on one thread). Here each row
    is gathered, summed and normalised in L1, in chunks of rows taken dynamically. The sum is torch's (the same
    float32 adds in the same order); the norm is :func:`skip_layer_norm`'s (float32 rounding from torch's).

    :raises ValueError: an index outside its table, shapes that disagree, or bad ``weight`` / ``bias`` / ``eps``."""
    if not lookups:
        raise ValueError("embed_layer_norm: lookups must hold at least one (table, ids) pair")
    wt, bt = _torch(weight, "weight"), _torch(bias, "bias")
    n = wt.numel()
    if wt.dim() != 1 or bt.shape != wt.shape:
        raise ValueError(f"embed_layer_norm: weight and bias must be 1-D of one length; got {tuple(wt.shape)}, "
                         f"{tuple(bt.shape)}")
    eps = check_eps(eps, "embed_layer_norm")
    pairs = []
    for i, (table, ids) in enumerate(lookups):
        tt, it = _torch(table, f"table {i}"), _as_tensor(ids)
        if tt.dim() != 2 or tt.shape[1] != n:
            raise ValueError(f"embed_layer_norm: table {i} must be [entries, {n}] (n = weight.numel()), got shape "
                             f"{tuple(tt.shape)}")
        if it.is_floating_point() or it.is_complex() or it.dtype == torch.bool:
            raise TypeError(f"embed_layer_norm: ids {i} must be integers, got {it.dtype}")
        if pairs and it.shape != pairs[0][1].shape:
            raise ValueError(f"embed_layer_norm: ids {i} have shape {tuple(it.shape)}, ids 0 {tuple(pairs[0][1].shape)}")
        pairs.append((tt, it))
    shape = tuple(pairs[0][1].shape)
    if any(on_device(t) for p in pairs for t in p) or on_device(wt) or on_device(bt):
        return twins.embed_layer_norm(pairs, wt, bt, eps)
    out = float_output(*shape, n)
    native.embed_layer_norm([(t.contiguous().numpy(), i.reshape(-1).to(torch.int64).contiguous().numpy())
                             for t, i in pairs], wt.contiguous().numpy(), bt.contiguous().numpy(), eps,
                            out.view(-1, n).numpy())
    return _kind(lookups[0][0], out)


def _rows(t: torch.Tensor, name: str, batch: int, seq: int, hidden: int) -> tuple[np.ndarray, int]:
    """``t`` ([batch, seq, hidden]) as a flat array of the buffer it views and its row stride: a column slice of
    a contiguous ``[batch, seq, width]`` buffer (one part of a fused QKV output) is read in place; any other
    layout is copied first."""
    if tuple(t.shape) != (batch, seq, hidden):
        raise ValueError(f"attention: {name} has shape {tuple(t.shape)}, expected {(batch, seq, hidden)} "
                         f"(like q)")
    stride = t.stride(1) if seq > 1 else max(t.stride(0), hidden)
    in_place = t.stride(2) == 1 and stride >= hidden and (batch == 1 or t.stride(0) == seq * stride)
    if not in_place:
        t, stride = t.contiguous(), hidden
    span = (batch * seq - 1) * stride + hidden
    return t.as_strided((span,), (1,), t.storage_offset()).numpy(), stride


#: The number formats the attention's two products (``q kᵀ`` and ``p v``) can run in (:func:`attention`).
PRODUCTS = ("float32", "bfloat16")

#: What ``products="bfloat16"`` is tested to: with q, k, v of unit scale or below (standard normal values, head_dim
#: 1 to 128, scale ``head_dim ** -0.5``), every output within this many times the largest ``|v|`` of its
#: (sequence, head) of the float64 attention. Measured worst over 300 random shapes: 0.0043
#: (``tests/kernels/test_attention_bf16.py``). The scores' error grows with ``|q| · |k|``: larger q and k lose more.
BF16_TOLERANCE = 0.01


def bf16_products_run() -> bool:
    """Whether ``products="bfloat16"`` runs in bfloat16 here: the AVX-512 path on a CPU with AVX512_BF16 (Zen 4,
    Sapphire Rapids and later); elsewhere it runs the float32 products."""
    return active_isa() == "avx512" and "avx512bf16" in cpu_features()


def attention(q: Array, k: Array, v: Array, heads: int, scale: float | None = None, mask: Array | None = None,
              products: str = "float32") -> Array:
    """``softmax(q_h k_hᵀ · scale + mask) v_h`` for every head ``h``, heads concatenated: the attention of an
    encoder (no causal mask, no dropout). ``q``, ``k``, ``v``: float32 ``[batch, seq, heads * head_dim]``;
    column slices of one ``[batch, seq, 3 * hidden]`` QKV output are read in place. ``scale`` defaults to
    ``head_dim ** -0.5``. ``mask``: optional additive key mask, ``[batch, seq]`` or ``[batch, 1, 1, seq]``
    (``0`` keeps a key, a large negative number drops it), or a boolean one (``True`` keeps). Returns
    ``[batch, seq, hidden]``, contiguous.

    ``products="bfloat16"`` (opt-in) rounds q, k, v and the softmax's unnormalised probabilities to bfloat16
    (round to nearest even) and accumulates the two products in float32 with AVX512_BF16's ``vdpbf16ps``, twice
    the multiply-adds per instruction; the softmax and the output stay float32. Error: see
    :data:`BF16_TOLERANCE`; the rounding is of the size of the int8 activations' own. Where
    :func:`bf16_products_run` is false (another CPU, a forced ISA, another device) it computes in float32."""
    if products not in PRODUCTS:
        raise ValueError(f"attention: products must be one of {PRODUCTS}, got {products!r}")
    qt, kt, vt = _torch(q, "q"), _torch(k, "k"), _torch(v, "v")
    if qt.dim() != 3:
        raise ValueError(f"attention: q must be [batch, seq, heads * head_dim], got shape {tuple(qt.shape)}")
    batch, seq, hidden = qt.shape
    if isinstance(heads, bool) or not isinstance(heads, int) or heads < 1 or hidden % heads:
        raise ValueError(f"attention: heads must be a positive integer dividing q's last dimension {hidden}, "
                         f"got {heads!r}")
    head_dim = hidden // heads
    scale = head_dim ** -0.5 if scale is None else float(scale)
    if not math.isfinite(scale):
        raise ValueError(f"attention: scale must be finite, got {scale}")
    m = None if mask is None else _key_mask(mask, batch, seq)
    if any(on_device(t) for t in (qt, kt, vt)):
        return twins.attention(qt, kt, vt, heads, scale, m)
    out = float_output(batch, seq, hidden)
    if out.numel():
        (qa, qs), (ka, ks), (va, vs) = (_rows(t, n, batch, seq, hidden) for t, n in ((qt, "q"), (kt, "k"), (vt, "v")))
        native.attention(qa, 0, qs, ka, 0, ks, va, 0, vs, batch, seq, heads, head_dim, scale,
                           None if m is None else m.contiguous().numpy(), out.view(-1, hidden).numpy(),
                           bf16=products == "bfloat16")
    return _kind(q, out)


def _key_mask(mask: Array, batch: int, seq: int) -> torch.Tensor:
    """The additive float32 ``[batch, seq]`` key mask of ``mask``."""
    m = _as_tensor(mask)
    if m.dim() == 4 and m.shape[1] == 1 and m.shape[2] == 1:
        m = m[:, 0, 0]
    if tuple(m.shape) != (batch, seq):
        raise ValueError(f"attention: mask must be [batch, seq] or [batch, 1, 1, seq] = {(batch, seq)}, got shape "
                         f"{tuple(m.shape)}")
    if m.dtype == torch.bool:
        return torch.zeros(m.shape).masked_fill_(~m.cpu(), torch.finfo(torch.float32).min).to(m.device)
    if not m.is_floating_point():
        raise TypeError(f"attention: mask must be float or bool, got {m.dtype}")
    return m.float()
