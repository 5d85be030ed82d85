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


def _layer_weights(rng: np.random.Generator, kind: str, out_features: int, in_features: int):
    w = rng.standard_normal((out_features, in_features)).astype(np.float32) * in_features ** -0.5
    if kind == "int8":
        q, s = kernels.quantize_int8_weight(torch.from_numpy(w))
        return kernels.pack_int8_weight(q, s)
    groups = -(-in_features // 32)
    q = rng.integers(-8, 8, (out_features, in_features)).astype(np.int8)
    scales = (rng.uniform(0.5, 1.5, (out_features, groups)) / (8 * in_features ** 0.5)).astype(np.float32)
    return kernels.pack_int4_weight(q, scales, 32)


def _layer_inputs(rng: np.random.Generator, batch: int, kv_heads: int, group: int, d: int, hidden: int, inner: int,
                  pos: int, kind: str, qkv_bias: bool) -> dict:
    heads = kv_heads * group
    shapes = [((heads + 2 * kv_heads) * d, hidden), (hidden, heads * d), (2 * inner, hidden), (hidden, inner)]
    weights = [_layer_weights(rng, kind, n, k) for n, k in shapes]
    biases = [rng.standard_normal(shapes[0][0]).astype(np.float32) if qkv_bias else None, None, None, None]
    angle = rng.uniform(0, 100, (batch, d // 2))
    cos = np.concatenate([np.cos(angle)] * 2, -1).astype(np.float32)
    sin = np.concatenate([np.sin(angle)] * 2, -1).astype(np.float32)
    cache = (batch, kv_heads, pos + 3, d)
    return dict(x=rng.standard_normal((batch, hidden)).astype(np.float32),
                norms=(rng.uniform(0.5, 1.5, hidden).astype(np.float32), 1e-5,
                       rng.uniform(0.5, 1.5, hidden).astype(np.float32), 1e-6),
                weights=weights, biases=biases, cos=cos, sin=sin, heads=heads, pos=pos,
                k=rng.standard_normal(cache).astype(np.float32), v=rng.standard_normal(cache).astype(np.float32))


@st.composite
def layer_case(draw):
    """A LLaMA-style layer step: GQA sizes, hidden / inner widths off and on the 16-lane multiples, int4 or int8
    weights (q/k/v with or without a bias, as Qwen2 has), a cache with earlier positions filled."""
    return _layer_inputs(np.random.default_rng(draw(st.integers(0, 2**32 - 1))), batch=draw(st.sampled_from([1, 2])),
                         kv_heads=draw(st.sampled_from([1, 2])), group=draw(st.sampled_from([1, 4])),
                         d=draw(st.sampled_from([8, 16, 64])), hidden=draw(st.sampled_from([32, 96, 136])),
                         inner=draw(st.sampled_from([40, 64, 200])), pos=draw(st.sampled_from([0, 5, 70])),
                         kind=draw(st.sampled_from(["int4", "int8"])), qkv_bias=draw(st.booleans()))


def _layer_by_calls(c: dict, k: np.ndarray, v: np.ndarray, scale: float) -> np.ndarray:
    """The layer step as the separate kernel calls, in the order decode_layer makes them."""
    w_in, eps_in, w_post, eps_post = c["norms"]
    qkv_w, o_w, gu_w, down_w = c["weights"]

    def gemm(w, x, bias):
        out = np.empty((x.shape[0], w.out_features), np.float32)
        w.linear(x, out, bias)
        return out

    qkv = gemm(qkv_w, kernels.rms_norm(c["x"], w_in, eps_in), c["biases"][0])
    context = kernels.decode_attention(qkv, c["cos"], c["sin"], k, v, c["heads"], c["pos"], scale)
    h, normed = kernels.add_rms_norm(c["x"], gemm(o_w, context, None), w_post, eps_post)
    return h + gemm(down_w, kernels.silu_mul(gemm(gu_w, normed, None)), None)


@SETTINGS
@given(case=layer_case())
def test_decode_layer_is_the_separate_kernel_calls_bit_for_bit(isa, case):
    """One call per layer computes exactly what the nine calls it replaces compute, caches included."""
    k1, v1, k2, v2 = case["k"].copy(), case["v"].copy(), case["k"].copy(), case["v"].copy()
    scale = 0.125
    want = _layer_by_calls(case, k1, v1, scale)
    got = kernels.decode_layer(case["x"], *case["norms"], case["weights"], case["biases"], case["cos"], case["sin"],
                               k2, v2, case["heads"], case["pos"], scale)
    assert got.shape == case["x"].shape and got.dtype == np.float32
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(k2, k1)
    np.testing.assert_array_equal(v2, v1)


def test_decode_layer_refuses_weights_of_the_wrong_shape_naming_the_gemm():
    case = _layer_inputs(np.random.default_rng(0), batch=1, kv_heads=2, group=2, d=16, hidden=32, inner=40, pos=3,
                         kind="int4", qkv_bias=False)
    w = list(case["weights"])
    w[1], w[3] = w[3], w[1]  # o and down swapped: o reads heads * d = 64 values, down reads inner = 40
    with pytest.raises(ValueError, match="the o weight"):
        kernels.decode_layer(case["x"], *case["norms"], w, case["biases"], case["cos"], case["sin"], case["k"],
                             case["v"], case["heads"], case["pos"])
    with pytest.raises(ValueError, match="4 weights"):
        kernels.decode_layer(case["x"], *case["norms"], case["weights"][:3], case["biases"], case["cos"],
                             case["sin"], case["k"], case["v"], case["heads"], case["pos"])
    with pytest.raises(TypeError, match="PackedInt4Weight or PackedInt8Weight"):
        kernels.decode_layer(case["x"], *case["norms"], [None] * 4, case["biases"], case["cos"], case["sin"],
                             case["k"], case["v"], case["heads"], case["pos"])
