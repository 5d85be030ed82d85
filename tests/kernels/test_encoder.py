"""nnic.kernels.attention and skip_layer_norm against float64 numpy references, on every ISA path; bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nnic import kernels

#: The ``isa`` fixture (set once per path) is not reset between examples, by design.
SETTINGS = settings(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def attention_ref(q: np.ndarray, k: np.ndarray, v: np.ndarray, heads: int, scale: float,
                  mask: np.ndarray | None) -> np.ndarray:
    b, s, hidden = q.shape
    d = hidden // heads
    q4, k4, v4 = (t.astype(np.float64).reshape(b, s, heads, d).transpose(0, 2, 1, 3) for t in (q, k, v))
    scores = q4 @ k4.transpose(0, 1, 3, 2) * scale
    if mask is not None:
        scores = scores + mask.astype(np.float64)[:, None, None, :]
    p = np.exp(scores - scores.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    return (p @ v4).transpose(0, 2, 1, 3).reshape(b, s, hidden)


@st.composite
def attention_case(draw):
    batch = draw(st.sampled_from([1, 2, 3]))
    # seq across the query block (48) and key panel (64) edges; head_dim across the 16-lane vectors of the AVX-512
    # tiles (BERT's 64, and 32 / 80 / 128 of other encoders)
    seq = draw(st.sampled_from([1, 2, 5, 31, 33, 47, 49, 64, 70, 130]))
    heads = draw(st.sampled_from([1, 2, 3, 4]))
    head_dim = draw(st.sampled_from([1, 7, 16, 32, 33, 64, 80, 128]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    qkv = (rng.standard_normal((batch, seq, 3 * heads * head_dim)) * draw(st.sampled_from([0.1, 1.0, 4.0])))
    mask = None
    if draw(st.booleans()):
        mask = np.where(rng.random((batch, seq)) < 0.3, -1e9, 0.0).astype(np.float32)
        mask[:, 0] = 0.0  # every sequence keeps a key
    return qkv.astype(np.float32), heads, mask, draw(st.booleans())


@SETTINGS
@given(case=attention_case())
def test_attention_matches_float64_reference(isa, case):
    qkv, heads, mask, fused = case
    hidden = qkv.shape[-1] // 3
    t = torch.from_numpy(qkv)
    q, k, v = t.split(hidden, -1) if fused else (p.contiguous() for p in t.split(hidden, -1))
    scale = (hidden // heads) ** -0.5
    got = kernels.attention(q, k, v, heads, mask=None if mask is None else torch.from_numpy(mask)).numpy()
    want = attention_ref(q.numpy(), k.numpy(), v.numpy(), heads, scale, mask)
    # a convex combination of v's rows: error relative to max |v| (float32 products of up to 64 terms, exp ~1 ulp)
    assert np.abs(got - want).max() <= 2e-5 * (1 + np.abs(qkv).max() ** 2)


@SETTINGS
@given(rows=st.sampled_from([1, 2, 9, 100]), cols=st.sampled_from([1, 2, 15, 16, 17, 768, 1000]),
       scale=st.sampled_from([1e-3, 1.0, 1e3]), seed=st.integers(0, 2**32 - 1))
def test_skip_layer_norm_matches_float64_reference(isa, rows, cols, scale, seed):
    rng = np.random.default_rng(seed)
    x, r = (rng.standard_normal((rows, cols)).astype(np.float32) * scale for _ in range(2))
    w, b = rng.standard_normal(cols).astype(np.float32), rng.standard_normal(cols).astype(np.float32)
    got = kernels.skip_layer_norm(x, r, w, b, 1e-12)
    assert isinstance(got, np.ndarray)
    h = (x + r).astype(np.float64)  # the float32 sum that torch's `LayerNorm(x + r)` normalises too
    mean = h.mean(-1, keepdims=True)
    std = np.sqrt(((h - mean) ** 2).mean(-1, keepdims=True) + 1e-12)
    want = (h - mean) / std * w + b
    # float32 statistics: the mean's rounding (about 1e-7 of the summands' mean magnitude) is amplified by 1 / std
    # when a row's values lie close together (a 2-value row at scale 1e3 whose two values nearly agree)
    cond = 1 + (np.abs(h).mean(-1, keepdims=True) / std).max()
    assert np.abs(got - want).max() <= 1e-5 * cond * (1 + np.abs(w).max() * 4 + np.abs(b).max())


def test_attention_reads_fused_qkv_in_place_and_equals_torch():
    torch.manual_seed(0)
    qkv = torch.randn(2, 9, 3 * 48)
    q, k, v = qkv.split(48, -1)
    mask = torch.ones(2, 9, dtype=torch.bool)
    mask[1, 6:] = False
    got = kernels.attention(q, k, v, 4, mask=mask)
    want = kernels.twins.attention(q, k, v, 4, 12 ** -0.5, torch.zeros(2, 9).masked_fill(~mask, -1e30))
    assert got.shape == (2, 9, 48) and got.is_contiguous()
    assert (got - want).abs().max() < 1e-5
    # the [batch, 1, 1, seq] form of transformers' extended masks is the same mask
    additive = torch.zeros(2, 1, 1, 9).masked_fill(~mask[:, None, None], -1e30)
    assert torch.equal(kernels.attention(q, k, v, 4, mask=additive), got)


def test_skip_layer_norm_equals_torch_layer_norm_of_the_sum():
    torch.manual_seed(1)
    x, r = torch.randn(3, 5, 64), torch.randn(3, 5, 64)
    w, b = torch.randn(64), torch.randn(64)
    got = kernels.skip_layer_norm(x, r, w, b, 1e-12)
    assert got.shape == x.shape
    assert (got - F.layer_norm(x + r, (64,), w, b, 1e-12)).abs().max() < 1e-5


def test_nan_propagates_to_its_rows_only(isa):
    qkv = torch.randn(1, 70, 3 * 64, generator=torch.Generator().manual_seed(3))
    qkv[0, 2, 0] = float("nan")  # the query of token 2, head 0
    out = kernels.attention(*qkv.split(64, -1), 2)
    assert out[0, 2, :32].isnan().all() and not out[0, 2, 32:].isnan().any()
    assert not out[0, [t for t in range(70) if t != 2]].isnan().any()
    qkv[0, 2, 0] = 0.0
    qkv[0, 66, 64 + 40] = float("nan")  # the key of token 66, head 1 (in the second key panel): every row of head 1
    out = kernels.attention(*qkv.split(64, -1), 2)
    assert out[0, :, 32:].isnan().all() and not out[0, :, :32].isnan().any()
    x = torch.randn(3, 8)
    x[1, 3] = float("nan")
    y = kernels.skip_layer_norm(x, torch.zeros(3, 8), torch.ones(8), torch.zeros(8))
    assert y[1].isnan().all() and not y[[0, 2]].isnan().any()


@pytest.mark.parametrize("call, error, match", [
    (lambda q: kernels.attention(q, q, q, 5), ValueError, "heads must be a positive integer dividing"),
    (lambda q: kernels.attention(q, q, q, True), ValueError, "heads"),
    (lambda q: kernels.attention(q, q[:, :3], q, 4), ValueError, "k has shape"),
    (lambda q: kernels.attention(q[0], q[0], q[0], 4), ValueError, "q must be"),
    (lambda q: kernels.attention(q.double(), q, q, 4), TypeError, "float32"),
    (lambda q: kernels.attention(q, q, q, 4, scale=float("inf")), ValueError, "scale must be finite"),
    (lambda q: kernels.attention(q, q, q, 4, mask=torch.zeros(2, 3)), ValueError, "mask must be"),
    (lambda q: kernels.attention(q, q, q, 4, mask=torch.zeros(2, 4, dtype=torch.int64)), TypeError, "mask must be"),
    (lambda q: kernels.skip_layer_norm(q, q[:, :2], torch.ones(16), torch.zeros(16)), ValueError, "residual"),
    (lambda q: kernels.skip_layer_norm(q, q, torch.ones(8), torch.zeros(8)), ValueError, "weight and bias"),
    (lambda q: kernels.skip_layer_norm(q, q, torch.ones(16), torch.zeros(16), -1.0), ValueError, "eps"),
])
def test_bad_input_is_a_clear_error(call, error, match):
    with pytest.raises(error, match=match):
        call(torch.randn(2, 4, 16))


def test_empty_batch_gives_empty_outputs():
    q = torch.zeros(0, 4, 16)
    assert kernels.attention(q, q, q, 2).shape == (0, 4, 16)
    assert kernels.skip_layer_norm(q, q, torch.ones(16), torch.zeros(16)).shape == (0, 4, 16)
    ids = torch.zeros(0, 4, dtype=torch.long)
    assert kernels.embed_layer_norm([(torch.ones(3, 16), ids)], torch.ones(16), torch.zeros(16)).shape == (0, 4, 16)


def embedding_case(rng: np.random.Generator, tables: int, tokens: int, cols: int, scale: float):
    """``tables`` float32 tables of 1 to 50 rows with random indices into each, one per token."""
    pairs = []
    for _ in range(tables):
        entries = int(rng.integers(1, 50))
        pairs.append(((rng.standard_normal((entries, cols)) * scale).astype(np.float32),
                      rng.integers(0, entries, tokens)))
    w, b = rng.standard_normal(cols).astype(np.float32), rng.standard_normal(cols).astype(np.float32)
    return pairs, w, b


@SETTINGS
@given(tables=st.sampled_from([1, 2, 3]), tokens=st.sampled_from([1, 7, 100, 1100]),
       cols=st.sampled_from([1, 15, 16, 17, 64, 768]), scale=st.sampled_from([1e-3, 1.0, 1e3]),
       seed=st.integers(0, 2**32 - 1))
def test_embed_layer_norm_matches_float64_reference(isa, tables, tokens, cols, scale, seed):
    rng = np.random.default_rng(seed)
    pairs, w, b = embedding_case(rng, tables, tokens, cols, scale)
    got = kernels.embed_layer_norm(pairs, w, b, 1e-12)
    assert isinstance(got, np.ndarray) and got.shape == (tokens, cols)
    h = pairs[0][0][pairs[0][1]]
    for table, ids in pairs[1:]:
        h = h + table[ids]  # the float32 sum, in order, as torch adds the looked-up rows
    h = h.astype(np.float64)
    mean = h.mean(-1, keepdims=True)
    std = np.sqrt(((h - mean) ** 2).mean(-1, keepdims=True) + 1e-12)
    want = (h - mean) / std * w + b
    cond = 1 + (np.abs(h).mean(-1, keepdims=True) / std).max()  # as in the skip LayerNorm's test above
    assert np.abs(got - want).max() <= 1e-5 * cond * (1 + np.abs(w).max() * 4 + np.abs(b).max())


@SETTINGS
@given(tokens=st.sampled_from([1, 9, 1024]), cols=st.sampled_from([3, 16, 33, 768]), seed=st.integers(0, 2**32 - 1))
def test_embed_layer_norm_is_the_skip_layer_norm_of_the_looked_up_rows_bit_for_bit(isa, tokens, cols, seed):
    """Word + token type rows, then the position rows as the residual: the same float32 operations in the same
    order, so the same bits on every ISA path."""
    pairs, w, b = embedding_case(np.random.default_rng(seed), 3, tokens, cols, 1.0)
    (word, i), (types, j), (pos, k) = pairs
    got = kernels.embed_layer_norm(pairs, w, b, 1e-12)
    want = kernels.skip_layer_norm(word[i] + types[j], np.ascontiguousarray(pos[k]), w, b, 1e-12)
    assert np.array_equal(got, want)


def test_embed_layer_norm_takes_torch_ids_of_any_shape_and_equals_torch():
    torch.manual_seed(2)
    word, types, pos = torch.randn(100, 32), torch.randn(2, 32), torch.randn(16, 32)
    ids = torch.randint(0, 100, (3, 16))
    tt = torch.randint(0, 2, (3, 16), dtype=torch.int32)
    positions = torch.arange(16).expand(3, 16)  # broadcast views are read through a copy
    w, b = torch.randn(32), torch.randn(32)
    got = kernels.embed_layer_norm([(word, ids), (types, tt), (pos, positions)], w, b, 1e-12)
    assert isinstance(got, torch.Tensor) and got.shape == (3, 16, 32)
    want = F.layer_norm(F.embedding(ids, word) + F.embedding(tt, types) + F.embedding(positions, pos), (32,), w, b,
                        1e-12)
    assert (got - want).abs().max() < 1e-5
    twin = kernels.twins.embed_layer_norm([(word, ids), (types, tt), (pos, positions)], w, b, 1e-12)
    assert torch.equal(twin, want)


@pytest.mark.parametrize("lookups, error, match", [
    (lambda t, i: [], ValueError, "at least one"),
    (lambda t, i: [(t, i), (t, i[:, :2])], ValueError, "ids 1 have shape"),
    (lambda t, i: [(t[:, :8], i)], ValueError, "table 0 must be"),
    (lambda t, i: [(t.double(), i)], TypeError, "float32"),
    (lambda t, i: [(t, i.float())], TypeError, "must be integers"),
    (lambda t, i: [(t, i), (t[:5], i)], ValueError, "lookup 1: token 4 has index 5, outside the table.s 5 rows"),
    (lambda t, i: [(t, i - 1)], ValueError, "lookup 0: token 0 has index -1"),
])
def test_embed_layer_norm_bad_input_is_a_clear_error(lookups, error, match):
    table, ids = torch.randn(10, 16), torch.arange(8).reshape(2, 4)
    ids = ids.clone()
    ids[1, 0] = 5  # token 4
    with pytest.raises(error, match=match):
        kernels.embed_layer_norm(lookups(table, ids), torch.ones(16), torch.zeros(16))
    with pytest.raises(ValueError, match="eps"):
        kernels.embed_layer_norm([(table, ids)], torch.ones(16), torch.zeros(16), float("nan"))


@SETTINGS
@given(m=st.sampled_from([1, 13, 200, 300]), k=st.sampled_from([16, 300, 3072]), n=st.sampled_from([24, 768]),
       act=st.sampled_from(["per_token", "per_tensor", "static"]), with_bias=st.booleans(),
       seed=st.integers(0, 2**32 - 1))
def test_linear_skip_layer_norm_is_the_linear_then_the_skip_layer_norm_bit_for_bit(isa, m, k, n, act, with_bias,
                                                                                   seed):
    """A block ending in one native call equals :func:`int8_linear` followed by :func:`skip_layer_norm` bit for bit
    on every ISA and GEMM path (row blocks normalised by whichever thread finishes them), and the float64
    LayerNorm of the float64 product of the same int8 codes within float32 rounding."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((m, k)).astype(np.float32)
    residual = rng.standard_normal((m, n)).astype(np.float32)
    codes = rng.integers(-128, 128, (n, k), dtype=np.int8)
    scale = rng.uniform(1e-3, 1e-2, n).astype(np.float32)
    packed = kernels.pack_int8_weight(codes, scale)
    w, b = (rng.standard_normal(n).astype(np.float32) for _ in range(2))
    lb = rng.standard_normal(n).astype(np.float32) if with_bias else None
    kw = {"act_scale": 0.05, "act_zero_point": 120} if act == "static" else {}
    for path in kernels.gemm_paths():
        got = kernels.linear_skip_layer_norm(x, packed, residual, w, b, 1e-12, linear_bias=lb, act=act, path=path,
                                             **kw)
        y = kernels.int8_linear(x, packed, lb, act=act, path=path, **kw)
        assert np.array_equal(got, kernels.skip_layer_norm(y, residual, w, b, 1e-12)), path
    h = y.astype(np.float64) + residual
    mean = h.mean(-1, keepdims=True)
    std = np.sqrt(((h - mean) ** 2).mean(-1, keepdims=True) + 1e-12)
    want = (h - mean) / std * w + b
    assert np.abs(got - want).max() <= 1e-4 * (1 + np.abs(w).max() + np.abs(b).max())


def test_linear_skip_layer_norm_takes_torch_tensors_of_any_leading_shape_and_names_bad_input():
    g = torch.Generator().manual_seed(3)
    x, residual = torch.randn(2, 5, 40, generator=g), torch.randn(2, 5, 24, generator=g)
    packed = kernels.pack_int8_weight(torch.randint(-128, 128, (24, 40), generator=g, dtype=torch.int8),
                                      torch.full((24,), 0.01))
    w, b = torch.randn(24, generator=g), torch.randn(24, generator=g)
    got = kernels.linear_skip_layer_norm(x, packed, residual, w, b, 1e-5)
    assert isinstance(got, torch.Tensor) and got.shape == (2, 5, 24)
    want = kernels.skip_layer_norm(kernels.int8_linear(x, packed), residual, w, b, 1e-5)
    assert torch.equal(got, want)
    with pytest.raises(ValueError, match=r"residual \[\.\.\., 24\] with the same leading dimensions"):
        kernels.linear_skip_layer_norm(x, packed, residual[:1], w, b)
    with pytest.raises(ValueError, match="gamma has 23 values, the layer has 24 outputs"):
        kernels.linear_skip_layer_norm(x, packed, residual, w[:23], b[:23])
    with pytest.raises(TypeError, match="pack_int8_weight"):
        kernels.linear_skip_layer_norm(x, object(), residual, w, b)


def layer_case(rng: np.random.Generator, batch: int, seq: int, hidden: int, inner: int, activation: str):
    """Random weights of a BERT-style layer: four packed int8 GEMMs (with their biases and settings) and two
    LayerNorms, as :func:`kernels.encoder_layer` takes them."""

    def gemm(n: int, k: int, act: str = "none") -> tuple:
        codes = torch.from_numpy(rng.integers(-128, 128, (n, k), dtype=np.int8))
        packed = kernels.pack_int8_weight(codes, torch.from_numpy(rng.uniform(1e-3, 1e-2, n).astype(np.float32)))
        bias = torch.from_numpy(rng.standard_normal(n).astype(np.float32))
        return packed, bias, ("per_token", False, None, None, None, act)

    def norm() -> tuple:
        w, b = (torch.from_numpy(rng.standard_normal(hidden).astype(np.float32)) for _ in range(2))
        return w, b, 1e-12

    x = torch.from_numpy(rng.standard_normal((batch, seq, hidden)).astype(np.float32))
    return x, gemm(3 * hidden, hidden), gemm(hidden, hidden), norm(), gemm(inner, hidden, activation), \
        gemm(hidden, inner), norm()


def layer_by_calls(x, qkv, heads, scale, mask, products, attention_output, norm1, up, down, norm2):
    """The layer as its five kernel calls, one after another."""
    hidden = x.shape[-1]
    y = kernels.int8_linear(x, qkv[0], qkv[1], act=qkv[2][0], activation=qkv[2][5])
    ctx = kernels.attention(y[..., :hidden], y[..., hidden:2 * hidden], y[..., 2 * hidden:], heads, scale, mask,
                            products=products)
    a = kernels.linear_skip_layer_norm(ctx, attention_output[0], x, *norm1, linear_bias=attention_output[1])
    m = kernels.int8_linear(a, up[0], up[1], activation=up[2][5])
    return kernels.linear_skip_layer_norm(m, down[0], a, *norm2, linear_bias=down[1])


@pytest.mark.parametrize("products", ["float32", "bfloat16"])
@SETTINGS
@given(batch=st.integers(1, 3), seq=st.sampled_from([1, 7, 33]), shape=st.sampled_from([(32, 2, 64), (64, 4, 96)]),
       activation=st.sampled_from(["gelu", "relu", "none"]), masked=st.booleans(), seed=st.integers(0, 2**32 - 1))
def test_encoder_layer_is_its_five_kernel_calls_bit_for_bit(isa, products, batch, seq, shape, activation, masked,
                                                            seed):
    """One native call of a whole layer gives the bits of the QKV GEMM, the attention, the two block endings and
    the MLP up GEMM called one after another, on every ISA path, with and without a padding mask."""
    hidden, heads, inner = shape
    rng = np.random.default_rng(seed)
    x, qkv, out, norm1, up, down, norm2 = layer_case(rng, batch, seq, hidden, inner, activation)
    mask = None
    if masked:
        mask = torch.zeros(batch, seq)
        mask[0, seq // 2 + 1:] = torch.finfo(torch.float32).min  # a padded sequence
    scale = (hidden // heads) ** -0.5
    got = kernels.encoder_layer(x, qkv, heads, scale, mask, products, out, norm1, up, down, norm2)
    want = layer_by_calls(x, qkv, heads, scale, mask, products, out, norm1, up, down, norm2)
    assert got.shape == x.shape
    assert torch.equal(got, want)


def test_encoder_layer_names_what_it_does_not_take():
    rng = np.random.default_rng(0)
    x, qkv, out, norm1, up, down, norm2 = layer_case(rng, 2, 5, 32, 64, "gelu")
    with pytest.raises(ValueError, match=r"the GEMMs \(in, out\) must be"):
        kernels.encoder_layer(x, qkv, 2, 0.25, None, "float32", up, norm1, out, down, norm2)  # up and out swapped
    with pytest.raises(ValueError, match="heads"):
        kernels.encoder_layer(x, qkv, 3, 0.25, None, "float32", out, norm1, up, down, norm2)
    with pytest.raises(TypeError, match="x must be a float32 CPU tensor"):
        kernels.encoder_layer(x.double(), qkv, 2, 0.25, None, "float32", out, norm1, up, down, norm2)
    with pytest.raises(ValueError, match="no activation"):
        kernels.encoder_layer(x, qkv, 2, 0.25, None, "float32", out[:2] + (out[2][:5] + ("gelu",),), norm1, up,
                              down, norm2)
    with pytest.raises(ValueError, match="products must be one of"):
        kernels.encoder_layer(x, qkv, 2, 0.25, None, "float16", out, norm1, up, down, norm2)
