"""``nnic.kernels.attention(..., products="bfloat16")``: the opt-in whose two products round their operands to
bfloat16. Specified against float64 numpy references: the exact attention (within ``BF16_TOLERANCE``) and the same
attention with bfloat16 rounding at the kernel's four places (q, k, v and the unnormalised probabilities), which
the kernel must track far more closely than it tracks the exact one. Where bfloat16 does not run (another ISA
path, a CPU without AVX512_BF16) the opt-in computes exactly what float32 does."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nnic import kernels
from nnic.kernels.encoder import BF16_TOLERANCE

SETTINGS = settings(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

needs_bf16 = pytest.mark.skipif(not kernels.bf16_products_run(), reason="bfloat16 products need AVX512_BF16")


def bf16(x: np.ndarray) -> np.ndarray:
    """float32 ``x`` rounded to bfloat16 (nearest, ties to even; subnormals to zero, as ``vcvtne2ps2bf16``), as
    float64."""
    x = np.asarray(x, np.float32)
    bits = x.view(np.uint32).astype(np.uint64)
    bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
    out = bits.astype(np.uint32).view(np.float32).astype(np.float64)
    return np.where(np.abs(x) < np.finfo(np.float32).tiny, 0.0, out)


def attention_ref(q: np.ndarray, k: np.ndarray, v: np.ndarray, heads: int, scale: float, mask: np.ndarray | None,
                  rounded: bool = False) -> np.ndarray:
    """The attention in float64; ``rounded``: with q, k, v and the unnormalised probabilities ``e^(s - max)``
    (float32) rounded to bfloat16 and everything else exact, the normalising sum being of the unrounded
    probabilities, as in the kernel."""
    rnd = bf16 if rounded else (lambda t: np.asarray(t, np.float64))
    b, s, hidden = q.shape
    d = hidden // heads
    q4, k4, v4 = (rnd(t).reshape(b, s, heads, d).transpose(0, 2, 1, 3) for t in (q, k, v))
    scores = q4 @ k4.transpose(0, 1, 3, 2) * scale
    if mask is not None:
        scores = scores + mask.astype(np.float64)[:, None, None, :]
    e = np.exp(scores - scores.max(-1, keepdims=True))
    if rounded:
        e = e.astype(np.float32)
    out = (rnd(e) @ v4) / np.asarray(e, np.float64).sum(-1, keepdims=True)
    return out.transpose(0, 2, 1, 3).reshape(b, s, hidden)


@st.composite
def unit_case(draw):
    """Shapes across the tiles' edges (as ``test_encoder``'s cases, odd sizes included: their bfloat16 pairs are
    padded), q, k, v of unit scale (the range ``BF16_TOLERANCE`` is stated for), with or without a padding mask,
    one fused QKV buffer or three tensors."""
    batch = draw(st.sampled_from([1, 2]))
    seq = draw(st.sampled_from([1, 2, 5, 31, 33, 47, 49, 64, 70, 130]))
    heads = draw(st.sampled_from([1, 2, 3]))
    head_dim = draw(st.sampled_from([1, 7, 16, 32, 33, 64, 80, 128]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    qkv = rng.standard_normal((batch, seq, 3 * heads * head_dim)) * draw(st.sampled_from([0.1, 0.5, 1.0]))
    mask = None
    if draw(st.booleans()):
        mask = np.where(rng.random((batch, seq)) < 0.3, -1e9, 0.0).astype(np.float32)
        mask[:, 0] = 0.0
    return qkv.astype(np.float32), heads, mask, draw(st.booleans())


def _split(qkv: np.ndarray, fused: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    hidden = qkv.shape[-1] // 3
    t = torch.from_numpy(qkv)
    return t.split(hidden, -1) if fused else tuple(p.contiguous() for p in t.split(hidden, -1))


def _head_vmax(v: np.ndarray, heads: int) -> np.ndarray:
    """max |v| per (sequence, head), broadcast to ``v``'s shape: each output is a convex combination of its head's
    values, so its error scales with them."""
    b, s, hidden = v.shape
    m = np.abs(v).reshape(b, s, heads, hidden // heads).max(axis=(1, 3), keepdims=True)
    return np.broadcast_to(m, (b, s, heads, hidden // heads)).reshape(b, s, hidden)


@needs_bf16
@SETTINGS
@given(case=unit_case())
def test_bf16_products_stay_within_the_stated_tolerance_of_float64(case):
    qkv, heads, mask, fused = case
    q, k, v = _split(qkv, fused)
    scale = (q.shape[-1] // heads) ** -0.5
    m = None if mask is None else torch.from_numpy(mask)
    got = kernels.attention(q, k, v, heads, mask=m, products="bfloat16").numpy()
    want = attention_ref(q.numpy(), k.numpy(), v.numpy(), heads, scale, mask)
    assert np.all(np.abs(got - want) <= BF16_TOLERANCE * _head_vmax(v.numpy(), heads) + 1e-6)


@needs_bf16
@SETTINGS
@given(case=unit_case())
def test_bf16_products_round_where_the_bf16_reference_does(case):
    # float32 summation and the exponential's last bit are all that separate the kernel from the emulation, except
    # where a probability lies at a bfloat16 rounding tie's edge and rounds the other way: one probability off by
    # one bfloat16 step (2^-8 of it), hence the bound 2^-8 of max |v|
    qkv, heads, mask, fused = case
    q, k, v = _split(qkv, fused)
    scale = (q.shape[-1] // heads) ** -0.5
    m = None if mask is None else torch.from_numpy(mask)
    got = kernels.attention(q, k, v, heads, mask=m, products="bfloat16").numpy()
    want = attention_ref(q.numpy(), k.numpy(), v.numpy(), heads, scale, mask, rounded=True)
    assert np.all(np.abs(got - want) <= 2.0**-8 * _head_vmax(v.numpy(), heads) + 1e-6)


@needs_bf16
def test_bf16_products_track_the_bf16_reference_far_closer_than_the_exact_attention():
    # BERT-base's shape: if the kernel rounded elsewhere (or not at all), the emulation would not explain its error
    rng = np.random.default_rng(5)
    qkv = rng.standard_normal((2, 128, 3 * 768)).astype(np.float32)
    q, k, v = _split(qkv, True)
    got = kernels.attention(q, k, v, 12, products="bfloat16").numpy().astype(np.float64)
    args = (q.numpy(), k.numpy(), v.numpy(), 12, 64 ** -0.5, None)
    rms = lambda e: float(np.sqrt(np.mean(e ** 2)))  # noqa: E731 (a rare tie rounded the other way sets the max)
    to_emulation = rms(got - attention_ref(*args, rounded=True))
    to_exact = rms(got - attention_ref(*args))
    f32 = rms(kernels.attention(q, k, v, 12).numpy() - attention_ref(*args))
    assert to_emulation < 0.05 * to_exact  # measured: about 1/200
    assert to_exact > 100 * f32  # and bfloat16 did run: float32 is ~10000x closer to exact


def test_bf16_opt_in_is_float32_where_bf16_does_not_run(isa):
    qkv = torch.randn(2, 70, 3 * 96, generator=torch.Generator().manual_seed(2))
    q, k, v = qkv.split(96, -1)
    mask = torch.ones(2, 70, dtype=torch.bool)
    mask[1, 50:] = False
    f32 = kernels.attention(q, k, v, 3, mask=mask)
    opt = kernels.attention(q, k, v, 3, mask=mask, products="bfloat16")
    if kernels.bf16_products_run():
        assert not torch.equal(opt, f32) and (opt - f32).abs().max() < BF16_TOLERANCE * v.abs().max()
    else:
        assert torch.equal(opt, f32)


def test_bf16_products_keep_nan_in_its_rows():
    qkv = torch.randn(1, 70, 3 * 64, generator=torch.Generator().manual_seed(3))
    qkv[0, 2, 0] = float("nan")  # the query of token 2, head 0
    out = kernels.attention(*qkv.split(64, -1), 2, products="bfloat16")
    assert out[0, 2, :32].isnan().all() and not out[0, 2, 32:].isnan().any()
    assert not out[0, [t for t in range(70) if t != 2]].isnan().any()


def test_unknown_products_format_is_a_clear_error():
    q = torch.randn(1, 4, 16)
    with pytest.raises(ValueError, match="products must be one of"):
        kernels.attention(q, q, q, 2, products="float16")
