"""nnic.kernels' decode-step kernels (rms_norm, add_rms_norm, silu_mul, decode_attention) against float64 numpy
references, on every ISA path; the cache is written exactly where it should be and nowhere else; bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nnic import kernels

#: The ``isa`` fixture (set once per path) is not reset between examples, by design.
SETTINGS = settings(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def rms_ref(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    x = x.astype(np.float64)
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * w.astype(np.float64)


def rotate(x: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
    """transformers' ``x cos + rotate_half(x) sin`` over the last dimension, in float64."""
    half = x.shape[-1] // 2
    rot = np.concatenate((-x[..., half:], x[..., :half]), -1)
    return x.astype(np.float64) * cos + rot.astype(np.float64) * sin


def decode_attention_ref(qkv, cos, sin, k_cache, v_cache, heads, pos, scale):
    """(out, key cache, value cache) of one step: rotary, cache write at ``pos``, GQA softmax over ``0..pos``."""
    batch, kv_heads, _, d = k_cache.shape
    q = qkv[:, :heads * d].reshape(batch, heads, d)
    k = qkv[:, heads * d:(heads + kv_heads) * d].reshape(batch, kv_heads, d)
    v = qkv[:, (heads + kv_heads) * d:].reshape(batch, kv_heads, d)
    c, s = cos.astype(np.float64)[:, None], sin.astype(np.float64)[:, None]
    kc, vc = k_cache.astype(np.float64), v_cache.astype(np.float64)
    kc[:, :, pos], vc[:, :, pos] = rotate(k, c, s), v
    qr = rotate(q, c, s)
    group = heads // kv_heads
    keys, values = np.repeat(kc[:, :, :pos + 1], group, 1), np.repeat(vc[:, :, :pos + 1], group, 1)
    scores = np.einsum("bhd,bhtd->bht", qr, keys) * scale
    p = np.exp(scores - scores.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    return np.einsum("bht,bhtd->bhd", p, values).reshape(batch, heads * d), kc, vc


@st.composite
def step_case(draw):
    batch = draw(st.sampled_from([1, 2, 3]))
    kv_heads = draw(st.sampled_from([1, 2, 4]))
    group = draw(st.sampled_from([1, 2, 3, 8]))
    # head_dim across the 16-lane sums (LLaMA's 64 and 128, odd multiples of 2 for the remainders)
    d = draw(st.sampled_from([2, 6, 16, 30, 64, 128]))
    pos = draw(st.sampled_from([0, 1, 15, 16, 17, 100, 300]))
    capacity = pos + 1 + draw(st.sampled_from([0, 3]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    amp = draw(st.sampled_from([0.1, 1.0, 4.0]))
    qkv = (rng.standard_normal((batch, (kv_heads * group + 2 * kv_heads) * d)) * amp).astype(np.float32)
    angle = rng.uniform(0, 100, (batch, d // 2))
    cos = np.cos(np.concatenate((angle, angle), -1)).astype(np.float32)
    sin = np.sin(np.concatenate((angle, angle), -1)).astype(np.float32)
    k_cache = (rng.standard_normal((batch, kv_heads, capacity, d)) * amp).astype(np.float32)
    v_cache = rng.standard_normal((batch, kv_heads, capacity, d)).astype(np.float32)
    return qkv, cos, sin, k_cache, v_cache, kv_heads * group, pos, amp


@SETTINGS
@given(case=step_case())
def test_decode_attention_matches_float64_reference(isa, case):
    qkv, cos, sin, k_cache, v_cache, heads, pos, amp = case
    d = k_cache.shape[-1]
    scale = d ** -0.5
    want, want_k, want_v = decode_attention_ref(qkv, cos, sin, k_cache, v_cache, heads, pos, scale)
    k, v = k_cache.copy(), v_cache.copy()
    got = kernels.decode_attention(qkv, cos, sin, k, v, heads, pos)
    # the value is copied bit for bit into its slot; every other slot is untouched
    assert np.array_equal(v, want_v.astype(np.float32))
    others = np.arange(k.shape[2]) != pos
    assert np.array_equal(k[:, :, others], k_cache[:, :, others])
    assert np.abs(k[:, :, pos] - want_k[:, :, pos]).max() <= 1e-6 * (1 + amp)
    # a convex combination of the value rows (|v| ~ 4 at most): float32 dot products of up to 128 terms
    assert np.abs(got - want).max() <= 1e-5 * (1 + amp * amp)


def test_decode_attention_over_one_position_returns_the_value(isa):
    """With only the new position in the cache the softmax is 1: every head in a group returns its value head."""
    rng = np.random.default_rng(0)
    heads, kv_heads, d = 8, 2, 16
    qkv = rng.standard_normal((1, (heads + 2 * kv_heads) * d)).astype(np.float32)
    cos, sin = np.ones((1, d), np.float32), np.zeros((1, d), np.float32)
    k, v = np.zeros((1, kv_heads, 4, d), np.float32), np.zeros((1, kv_heads, 4, d), np.float32)
    out = kernels.decode_attention(torch.from_numpy(qkv), torch.from_numpy(cos), torch.from_numpy(sin), k, v,
                                   heads, 0)
    assert isinstance(out, torch.Tensor)
    values = qkv[0, (heads + kv_heads) * d:].reshape(kv_heads, d)
    assert np.allclose(out.numpy().reshape(heads, d), np.repeat(values, heads // kv_heads, 0), atol=1e-6)


@SETTINGS
@given(rows=st.sampled_from([1, 2, 5]), n=st.sampled_from([1, 15, 16, 17, 64, 2048, 2049]),
       eps=st.sampled_from([0.0, 1e-6, 1e-5, 0.5]), seed=st.integers(0, 2**32 - 1))
def test_rms_norms_match_float64_reference(isa, rows, n, eps, seed):
    rng = np.random.default_rng(seed)
    x, r = (rng.standard_normal((rows, n)) * 3).astype(np.float32), rng.standard_normal((rows, n)).astype(np.float32)
    w = rng.normal(1.0, 0.5, n).astype(np.float32)
    got = kernels.rms_norm(x, w, eps)
    assert np.abs(got - rms_ref(x, w, eps)).max() <= 1e-5 * np.abs(w).max()
    h, normed = kernels.add_rms_norm(x, r, w, eps)
    assert np.array_equal(h, x + r)  # the sum is float32's own
    assert np.array_equal(normed, kernels.rms_norm(h, w, eps))  # then the same norm


@SETTINGS
@given(rows=st.sampled_from([1, 3]), inner=st.sampled_from([1, 16, 17, 160, 5632]),
       amp=st.sampled_from([0.1, 3.0, 60.0]), seed=st.integers(0, 2**32 - 1))
def test_silu_mul_matches_float64_reference(isa, rows, inner, amp, seed):
    """silu(g) * u over both signs and large |g| (no overflow: the exponential is taken of -|g| only)."""
    gu = (np.random.default_rng(seed).standard_normal((rows, 2 * inner)) * amp).astype(np.float32)
    g, u = gu[:, :inner].astype(np.float64), gu[:, inner:].astype(np.float64)
    want = g / (1 + np.exp(-g)) * u
    got = kernels.silu_mul(torch.from_numpy(gu)).numpy()
    assert got.shape == (rows, inner)
    assert np.all(np.abs(got - want) <= 2e-6 * np.maximum(np.abs(want), 1.0))


def test_decode_kernels_equal_torch_up_to_rounding():
    """The same functions as the torch ops the exact decode path runs."""
    torch.manual_seed(0)
    x, w = torch.randn(2, 1, 256), torch.randn(256)
    assert torch.allclose(kernels.rms_norm(x, w, 1e-5), torch.nn.functional.rms_norm(x, (256,), w, 1e-5),
                          atol=1e-5)
    gu = torch.randn(2, 1, 64) * 5
    assert torch.allclose(kernels.silu_mul(gu), torch.nn.functional.silu(gu[..., :32]) * gu[..., 32:], atol=1e-5)


def test_bad_input_is_refused_with_the_argument_named():
    k, v = np.zeros((1, 2, 4, 8), np.float32), np.zeros((1, 2, 4, 8), np.float32)
    qkv, cs = np.zeros((1, (4 + 4) * 8), np.float32), np.zeros((1, 8), np.float32)
    with pytest.raises(ValueError, match="pos"):
        kernels.decode_attention(qkv, cs, cs, k, v, 4, 4)  # outside the capacity
    with pytest.raises(ValueError, match="qkv"):
        kernels.decode_attention(qkv[:, :-8], cs, cs, k, v, 4, 0)
    with pytest.raises(ValueError, match="multiple"):
        kernels.decode_attention(np.zeros((1, (3 + 4) * 8), np.float32), cs, cs, k, v, 3, 0)
    with pytest.raises(ValueError, match="C-contiguous"):
        kernels.decode_attention(qkv, cs, cs, np.zeros((1, 2, 8, 4), np.float32).transpose(0, 1, 3, 2), v, 4, 0)
    with pytest.raises(TypeError, match="float32"):
        kernels.rms_norm(np.zeros((2, 4)), np.ones(4, np.float32))
    with pytest.raises(ValueError, match="weight"):
        kernels.rms_norm(np.zeros((2, 4), np.float32), np.ones(5, np.float32))
    with pytest.raises(ValueError, match="eps"):
        kernels.rms_norm(np.zeros((2, 4), np.float32), np.ones(4, np.float32), -1.0)
    with pytest.raises(ValueError, match="even"):
        kernels.silu_mul(np.zeros((2, 5), np.float32))
