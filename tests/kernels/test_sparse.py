"""nnic.kernels sparse Linear kernels against dense numpy references, on every ISA path, both layouts and value types."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nnic import kernels
from nnic.kernels import sparse_linear
from nnic.sparse import layout
from nnic.sparse.layout import pack_sparse_weight

#: The ``isa`` fixture (set once per path) is not reset between examples, by design.
SETTINGS = settings(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
#: float32 sums in a different order than numpy's: error relative to Σ|w·x| + |bias|, per output.
RTOL = 2e-6


def _check_close(got: np.ndarray, w: np.ndarray, x: np.ndarray, bias: np.ndarray | None) -> None:
    want = x.astype(np.float64) @ w.T.astype(np.float64) + (0 if bias is None else bias.astype(np.float64))
    mag = np.abs(x.astype(np.float64)) @ np.abs(w.T.astype(np.float64)) + (0 if bias is None else np.abs(bias))
    k = max(1, w.shape[1])
    assert np.all(np.abs(got - want) <= RTOL * np.sqrt(k) * mag + 1e-6), np.max(np.abs(got - want))


@st.composite
def sparse_case(draw):
    rows = draw(st.sampled_from([1, 2, 5, 16, 33]))
    k = draw(st.sampled_from([1, 3, 8, 16, 17, 64, 100, 257]))
    m = draw(st.sampled_from([1, 2, 3, 4, 5, 16, 17, 40, 70]))
    density = draw(st.sampled_from([0.0, 0.02, 0.1, 0.3, 0.7, 1.0]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    w = rng.standard_normal((rows, k)).astype(np.float32)
    keep = rng.random((rows, k)) < density
    x = rng.standard_normal((m, k)).astype(np.float32)
    bias = rng.standard_normal(rows).astype(np.float32) if draw(st.booleans()) else None
    return w * keep, keep, x, bias


@SETTINGS
@given(case=sparse_case())
def test_csr_float32_equals_the_dense_product(isa, case):
    w, keep, x, bias = case
    packed = pack_sparse_weight(torch.from_numpy(w), torch.from_numpy(keep))
    assert packed.nnz == keep.sum() and packed.layout == "csr"
    np.testing.assert_array_equal(packed.to_dense(), w)
    _check_close(sparse_linear(x, packed, bias), w, x, bias)


@SETTINGS
@given(case=sparse_case())
def test_csr_int8_codes_times_row_scales(isa, case):
    w, keep, x, bias = case
    codes = np.clip(np.round(w * 40), -127, 127).astype(np.int8) * keep
    scale = np.linspace(0.01, 0.05, w.shape[0]).astype(np.float32)
    packed = pack_sparse_weight(torch.from_numpy(codes), scale=torch.from_numpy(scale))
    assert packed.dtype == "int8"
    _check_close(sparse_linear(x, packed, bias), codes * scale[:, None], x, bias)


@st.composite
def nm_case(draw):
    n, m = draw(st.sampled_from([(2, 4), (1, 4), (1, 2), (4, 8), (2, 8), (3, 5), (8, 16), (16, 16)]))
    rows = draw(st.sampled_from([1, 3, 16, 31]))
    k = m * draw(st.sampled_from([1, 2, 5, 8, 17, 33]))
    batch = draw(st.sampled_from([1, 2, 4, 9, 33, 70]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    w = rng.standard_normal((rows, k)).astype(np.float32)
    # keep at most n per group (sometimes fewer: padding slots)
    scores = rng.random((rows, k // m, m))
    kept = np.argsort(scores, -1)[..., : draw(st.integers(0, n))]
    keep = np.zeros((rows, k // m, m), bool)
    np.put_along_axis(keep, kept, True, -1)
    keep = keep.reshape(rows, k)
    x = rng.standard_normal((batch, k)).astype(np.float32)
    return n, m, w * keep, keep, x


@SETTINGS
@given(case=nm_case(), int8=st.booleans())
def test_nm_equals_the_dense_product(isa, case, int8):
    n, m, w, keep, x = case
    if int8:
        codes = np.clip(np.round(w * 30), -127, 127).astype(np.int8)
        scale = np.full(w.shape[0], 0.03, np.float32)
        packed = pack_sparse_weight(torch.from_numpy(codes), torch.from_numpy(keep), nm=(n, m), scale=scale)
        dense = codes * keep * scale[:, None]
    else:
        packed = pack_sparse_weight(torch.from_numpy(w), torch.from_numpy(keep), nm=(n, m))
        dense = w
    assert packed.layout == f"{n}:{m}" and packed.nnz == w.shape[0] * w.shape[1] // m * n
    np.testing.assert_allclose(packed.to_dense(), dense, rtol=1e-6)
    _check_close(sparse_linear(x, packed), dense, x, None)


def _activated(y: np.ndarray, activation: str) -> np.ndarray:
    """The reference activation in float64 (torch's exact erf GELU, ReLU)."""
    t = torch.from_numpy(np.asarray(y, np.float64))
    return (torch.nn.functional.gelu(t) if activation == "gelu" else torch.relu(t)).numpy()


@SETTINGS
@given(case=sparse_case(), nm=st.booleans(), activation=st.sampled_from(["gelu", "relu"]))
def test_fused_activation_equals_the_activation_of_the_product(isa, case, nm, activation):
    """``activation=`` applies GELU / ReLU after the bias in the kernels' epilogue, on the batch-1 and the tiled
    kernels, CSR and 2:4: the activation of the unfused product, within float tolerance (GELU's slope is at most
    1.13, and its erf approximation errs by at most 4e-7 x)."""
    w, keep, x, bias = case
    if nm:
        k4 = w.shape[1] // 4 * 4
        w, keep, x = w[:, :k4], keep[:, :k4].copy(), x[:, :k4]
        keep.reshape(w.shape[0], -1, 4)[..., 2:] = False  # at most 2 of every 4 kept
        w = w * keep
        if k4 == 0:
            return
    packed = pack_sparse_weight(torch.from_numpy(w), torch.from_numpy(keep), nm=(2, 4) if nm else None)
    plain = sparse_linear(x, packed, bias)
    got = sparse_linear(x, packed, bias, activation=activation)
    np.testing.assert_allclose(got, _activated(plain, activation), rtol=1e-6, atol=1e-6)
    # and against the dense float64 reference
    want = x.astype(np.float64) @ w.T.astype(np.float64) + (0 if bias is None else bias)
    mag = np.abs(x.astype(np.float64)) @ np.abs(w.T.astype(np.float64)) + (0 if bias is None else np.abs(bias))
    err = np.abs(got - _activated(want, activation))
    assert np.all(err <= 1.2 * RTOL * np.sqrt(max(1, w.shape[1])) * mag + 2e-6), err.max()


@pytest.mark.parametrize("activation", ["gelu", "relu"])
def test_fused_activation_of_int8_activations_matches_the_dense_int8_gemm(isa, activation):
    """int8 values and activations (the VNNI batch-1 kernel where the CPU has it, the float kernels elsewhere)
    with a fused activation: the dense int8 GEMM's fused-activation output."""
    rng = np.random.default_rng(7)
    w = rng.standard_normal((40, 300)).astype(np.float32) * (rng.random((40, 300)) < 0.1)
    codes = np.clip(np.round(w * 40), -128, 127).astype(np.int8)
    scale = np.linspace(0.01, 0.05, 40).astype(np.float32)
    packed = pack_sparse_weight(torch.from_numpy(codes), scale=torch.from_numpy(scale))
    dense = kernels.pack_int8_weight(torch.from_numpy(codes), torch.from_numpy(scale))
    bias = torch.from_numpy(rng.standard_normal(40).astype(np.float32))
    for m in (1, 3, 17):
        x = torch.from_numpy(rng.standard_normal((m, 300)).astype(np.float32))
        want = kernels.int8_linear(x, dense, bias, act="per_token", activation=activation)
        got = sparse_linear(x, packed, bias, act="per_token", activation=activation)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_fused_activation_keeps_nan_rows_and_rejects_unknown_names():
    w = torch.randn(6, 16) * (torch.rand(6, 16) < 0.5)
    packed = pack_sparse_weight(w)
    x = torch.randn(2, 16)
    x[1, 3] = float("nan")
    got = sparse_linear(x, packed, activation="relu")
    assert torch.isnan(got[1]).all() and not torch.isnan(got[0]).any()  # ReLU keeps NaN as torch's does
    with pytest.raises(ValueError, match="activation must be None, 'relu' or 'gelu', got 'tanh'"):
        sparse_linear(x, packed, activation="tanh")
    with pytest.raises(ValueError, match="activation must be"):
        packed.forward(x.numpy(), None, None, None, None, "silu")


@pytest.mark.parametrize("act,symmetric", [("per_token", False), ("per_token_symmetric", True),
                                           ("per_tensor", False), ("per_tensor_symmetric", True)])
def test_int8_activations_match_the_dense_int8_gemm(isa, act, symmetric):
    """Same weight codes, same activation quantization: the sparse product equals nnic's dense int8 GEMM."""
    rng = np.random.default_rng(0)
    codes = rng.integers(-127, 128, (48, 300)).astype(np.int8) * (rng.random((48, 300)) < 0.1)
    scale = rng.uniform(0.01, 0.02, 48).astype(np.float32)
    bias = rng.standard_normal(48).astype(np.float32)
    packed = pack_sparse_weight(torch.from_numpy(codes.astype(np.int8)), scale=scale)
    dense = kernels.pack_int8_weight(torch.from_numpy(codes.astype(np.int8)), torch.from_numpy(scale))
    for batch in (1, 3, 8, 37):
        x = torch.from_numpy(rng.standard_normal((batch, 300)).astype(np.float32))
        want = kernels.int8_linear(x, dense, torch.from_numpy(bias), act=act.split("_sym")[0], symmetric=symmetric)
        got = sparse_linear(x, packed, torch.from_numpy(bias), act=act)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@SETTINGS
@given(case=sparse_case(), act=st.sampled_from(["per_token", "per_tensor_symmetric"]))
def test_int8_activations_at_any_density_and_batch_match_the_dense_int8_gemm(isa, case, act):
    """The batch-1 integer kernels (AVX-512 VNNI on the bitmask) and the float ones give the dense int8 GEMM's
    result: same codes, same activation quantization, exact integer sums."""
    w, keep, x, bias = case
    codes = (np.clip(np.round(w * 40), -128, 127) * keep).astype(np.int8)
    scale = np.linspace(0.01, 0.05, w.shape[0]).astype(np.float32)
    packed = pack_sparse_weight(torch.from_numpy(codes), scale=torch.from_numpy(scale))
    xt, b = torch.from_numpy(x), None if bias is None else torch.from_numpy(bias)
    dense = kernels.pack_int8_weight(torch.from_numpy(codes), torch.from_numpy(scale))
    want = kernels.int8_linear(xt, dense, b, act=act.split("_sym")[0], symmetric=act.endswith("symmetric"))
    torch.testing.assert_close(sparse_linear(xt, packed, b, act=act), want, rtol=1e-5, atol=1e-5)


def test_static_activation_quantization_matches_the_dense_int8_gemm(isa):
    rng = np.random.default_rng(1)
    codes = (rng.integers(-127, 128, (20, 64)) * (rng.random((20, 64)) < 0.2)).astype(np.int8)
    scale = np.full(20, 0.02, np.float32)
    x = torch.from_numpy(rng.standard_normal((5, 64)).astype(np.float32))
    want = kernels.int8_linear(x, kernels.pack_int8_weight(torch.from_numpy(codes), torch.from_numpy(scale)), None,
                            act="static", act_scale=0.02, act_zero_point=120)
    got = sparse_linear(x, pack_sparse_weight(torch.from_numpy(codes), scale=scale), act="static", act_scale=0.02,
                        act_zero_point=120)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_empty_layers_all_zero_rows_and_empty_batches():
    w = torch.zeros(4, 6)
    w[1, 2] = 3.0                                            # rows 0, 2, 3 store nothing
    bias = torch.arange(4.0)
    packed = pack_sparse_weight(w)
    x = torch.randn(5, 6)
    torch.testing.assert_close(sparse_linear(x, packed, bias), x @ w.T + bias)
    assert sparse_linear(torch.zeros(0, 6), packed).shape == (0, 4)
    none_out = pack_sparse_weight(torch.zeros(0, 6))
    assert sparse_linear(x, none_out).shape == (5, 0)
    no_in = pack_sparse_weight(torch.zeros(3, 0))
    torch.testing.assert_close(sparse_linear(torch.zeros(2, 0), no_in, torch.ones(3)), torch.ones(2, 3))


def test_non_contiguous_and_numpy_inputs():
    w = torch.randn(8, 32) * (torch.rand(8, 32) < 0.3)
    packed = pack_sparse_weight(w)
    x = torch.randn(32, 5).t()                              # non-contiguous view
    torch.testing.assert_close(sparse_linear(x, packed), x @ w.T, rtol=1e-5, atol=1e-5)
    out = sparse_linear(x.contiguous().numpy(), packed)
    assert isinstance(out, np.ndarray)


def test_non_finite_inputs_follow_the_dense_product():
    w = torch.tensor([[2.0, 0.0, 0.0], [0.0, 0.0, 0.0], [1.0, 0.0, 1.0]])
    packed = pack_sparse_weight(w)
    x = torch.tensor([[float("inf"), 1.0, 1.0], [1.0, float("nan"), 1.0], [1.0, 2.0, 3.0]])
    got, want = sparse_linear(x, packed), x @ w.T
    torch.testing.assert_close(got, want, equal_nan=True)


def test_bad_input_is_a_clear_error():
    w = torch.randn(4, 16) * (torch.rand(4, 16) < 0.5)
    packed = pack_sparse_weight(w)
    with pytest.raises(ValueError, match="x has 15 columns"):
        sparse_linear(torch.randn(2, 15), packed)
    with pytest.raises(TypeError, match="float32"):
        sparse_linear(torch.randn(2, 16, dtype=torch.float64), packed)
    with pytest.raises(ValueError, match="bias has 3"):
        sparse_linear(torch.randn(2, 16), packed, torch.zeros(3))
    with pytest.raises(ValueError, match="keep has shape"):
        pack_sparse_weight(w, torch.ones(4, 15, dtype=torch.bool))
    with pytest.raises(ValueError, match="NaN"):
        pack_sparse_weight(torch.full((2, 8), float("nan")))
    with pytest.raises(ValueError, match="not 2:4 sparse"):
        pack_sparse_weight(torch.ones(2, 8), nm=(2, 4))
    with pytest.raises(ValueError, match="multiple of m=4"):
        pack_sparse_weight(torch.zeros(2, 6), nm=(2, 4))
    with pytest.raises(ValueError, match="too large"):
        pack_sparse_weight(torch.zeros(1, 70_000))
    with pytest.raises(ValueError, match="non-finite"):
        codes = pack_sparse_weight(torch.ones(2, 4, dtype=torch.int8), scale=[1.0, 1.0])
        sparse_linear(torch.tensor([[1.0, float("nan"), 0.0, 0.0]]), codes, act="per_token")
    with pytest.raises(ValueError, match="bitmask has"):
        kernels.sparse_weight_csr(np.zeros((2, 1), np.uint8), 16, np.zeros(0, np.float32))
    with pytest.raises(ValueError, match="int8 values need scale"):
        kernels.sparse_weight_csr(np.zeros((2, 2), np.uint8), 16, np.zeros(0, np.int8))
    with pytest.raises(TypeError, match="SparseWeight"):
        sparse_linear(torch.randn(2, 16), w)


def test_bitmask_and_nm_forms_round_trip():
    torch.manual_seed(0)
    keep = torch.rand(7, 21) < 0.4
    assert torch.equal(layout.unpack_bitmask(layout.pack_bitmask(keep), 21), keep)
    packed = np.packbits(keep.numpy(), axis=1, bitorder="little")
    assert np.array_equal(layout.pack_bitmask(keep).numpy(), packed)
    w = torch.randn(5, 16)
    from nnic.builtins.nm import nm_mask

    mask = nm_mask(w, 2, 4)
    assert layout.nm_pattern(mask) == (2, 4)
    values, index = layout.pack_nm(w, mask, 2, 4)
    assert torch.equal(layout.unpack_nm(values, index, 16, 2, 4), w * mask)
    assert layout.nm_pattern(torch.ones(2, 8, dtype=torch.bool)) is None


def test_forward_returns_a_new_output_of_any_input_layout():
    """``SparseWeight.forward``, the module's one native call: the product of ``linear`` as a new array shaped
    like ``x`` with out_features last, for C-contiguous and strided inputs; shape errors name the expectation."""
    w = torch.randn(8, 32) * (torch.rand(8, 32) < 0.3)
    bias = torch.randn(8)
    packed = pack_sparse_weight(w)
    x = torch.randn(2, 3, 32)
    for xi in (x, x[:, 1], x[:, :, ::1].transpose(0, 1), x[0, 0]):
        got = packed.forward(xi.numpy(), bias.numpy())
        assert isinstance(got, np.ndarray) and got.dtype == np.float32 and got.shape == (*xi.shape[:-1], 8)
        torch.testing.assert_close(torch.from_numpy(got), xi @ w.T + bias, rtol=1e-5, atol=1e-5)
    xf = np.asfortranarray(x[0].numpy())  # Fortran order: numpy calls it contiguous, but not in C order
    got = torch.from_numpy(packed.forward(xf, bias.numpy()))
    torch.testing.assert_close(got, x[0] @ w.T + bias, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="x must be a C-contiguous array"):
        packed.linear(xf, np.empty((3, 8), np.float32))
    with pytest.raises(ValueError, match=r"x must have shape \[\.\.\., 32\], got \[2, 31\]"):
        packed.forward(np.zeros((2, 31), np.float32))
    with pytest.raises(ValueError, match="bias has 3"):
        packed.forward(np.zeros((2, 32), np.float32), np.zeros(3, np.float32))
    with pytest.raises(TypeError):
        packed.forward(np.zeros((2, 32), np.float64))


@st.composite
def quad_case(draw):
    """Integer weights and inputs at the batched int8 kernel's boundaries: rows past a 128-row group and a 64-row
    tile, inputs past a K block (256) and not a whole number of quads, all-zero rows, every density."""
    rows = draw(st.sampled_from([1, 7, 65, 130]))
    k = draw(st.sampled_from([3, 5, 64, 255, 256, 257, 600]))
    m = draw(st.sampled_from([4, 5, 16, 17, 100, 128, 130, 200]))
    density = draw(st.sampled_from([0.0, 0.05, 0.1, 0.3, 1.0]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    codes = (rng.integers(-128, 128, (rows, k)) * (rng.random((rows, k)) < density)).astype(np.int8)
    zero = int(draw(st.sampled_from([0, 1, 128, 200, 255])))
    x = rng.integers(-zero, 256 - zero, (m, k)).astype(np.float32)  # static scale 1: codes = x + zero exactly
    return codes, x, zero


@SETTINGS
@given(case=quad_case())
def test_batched_int8_sums_are_exact_on_every_isa(isa, case):
    """int8 values with int8 activations at 4+ rows (the K-quad kernel: AVX-512 VNNI, or the portable loop; the
    float tiles on AVX2): with unit scales the output is the integer sum Σ w · (q - z), bit for bit."""
    codes, x, zero = case
    packed = pack_sparse_weight(torch.from_numpy(codes), scale=np.ones(codes.shape[0], np.float32))
    assert packed.batched_kernel(True) == ("tiled" if kernels.active_isa() == "avx2" else "quad")
    assert packed.batched_kernel(False) == "tiled"
    want = x.astype(np.int64) @ codes.T.astype(np.int64)
    assert np.abs(want).max(initial=0) < 2**24  # float32 holds the sums exactly
    got = sparse_linear(x, packed, act="static", act_scale=1.0, act_zero_point=zero)
    np.testing.assert_array_equal(got, want.astype(np.float32))


def test_flush_caches_keeps_every_value_and_rejects_what_it_cannot_flush():
    rng = np.random.default_rng(3)
    codes = (rng.integers(-127, 128, (64, 300)) * (rng.random((64, 300)) < 0.1)).astype(np.int8)
    packed = pack_sparse_weight(torch.from_numpy(codes), scale=np.full(64, 0.02, np.float32))
    x = rng.standard_normal((20, 300)).astype(np.float32)
    before = sparse_linear(x, packed, act="per_token")
    lin = torch.nn.Linear(300, 64)
    t = torch.randn(30, 40).t()  # not contiguous: its whole storage is flushed
    t_before, w_before = t.clone(), lin.weight.detach().clone()
    kernels.flush_caches(packed, lin, t, x, np.zeros(0), torch.zeros(0))
    np.testing.assert_array_equal(sparse_linear(x, packed, act="per_token"), before)
    assert torch.equal(t, t_before) and torch.equal(lin.weight, w_before)
    from nnic.sparse import SparseLinear

    module = torch.nn.Sequential(SparseLinear.from_dense(torch.from_numpy(codes.astype(np.float32))))
    y = module(torch.from_numpy(x))
    kernels.flush_caches(module)  # parameters, buffers and the packed weight the SparseLinear keeps
    torch.testing.assert_close(module(torch.from_numpy(x)), y, rtol=0, atol=0)
    with pytest.raises(TypeError, match="argument 1 must be a torch tensor"):
        kernels.flush_caches(packed, [1, 2])
    with pytest.raises(ValueError, match="C-contiguous"):
        kernels.flush_caches(x.T)
