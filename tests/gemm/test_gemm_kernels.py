"""nnic.kernels (GEMM): exact int32 products, float epilogue and packing round trips, on every code path."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from nnic import kernels as gemm

PATHS = gemm.gemm_paths()
#: The float epilogue: int32 sum × scales (float32) + bias, against a float64 reference of the same integers,
#: relative to |sum × scales| + |bias| (the result itself may cancel to ~0).
EPILOGUE_RTOL = 1e-5
#: int4 path: float32 sums of per-group partial products (and of the +128 shift term), relative to the sum
#: of the absolute values of the terms that the kernel adds up.
INT4_RTOL = 3e-5

# Awkward sizes: 1, primes, just around the tile sizes (12 rows, 32 columns, 4 k, 512 k slices).
DIMS = st.sampled_from([1, 2, 3, 5, 7, 11, 12, 13, 17, 31, 32, 33, 47, 64, 97])
K_DIMS = st.one_of(DIMS, st.sampled_from([127, 509, 512, 513, 1031, 2053, 3001]))


def i8(shape):
    return arrays(np.int8, shape, elements=st.integers(-128, 127))


@st.composite
def mm_case(draw):
    m, k, n = draw(DIMS), draw(K_DIMS), draw(DIMS)
    if draw(st.booleans()):  # uniform random values (the fill strategy alone gives mostly constant arrays)
        rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
        return rng.integers(-128, 128, (m, k), dtype=np.int8), rng.integers(-128, 128, (k, n), dtype=np.int8)
    return draw(i8((m, k))), draw(i8((k, n)))


@pytest.mark.parametrize("path", PATHS)
@given(case=mm_case())
def test_int8_matmul_exact(path, case):
    a, b = case
    want = a.astype(np.int64) @ b.astype(np.int64)
    got = gemm.int8_matmul(a, b, path=path)
    assert got.dtype == np.int32
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("path", PATHS)
def test_int8_matmul_extremes(path):
    for va, vb in [(-128, -128), (127, -128), (-128, 127)]:
        a = np.full((13, 4099), va, np.int8)
        b = np.full((4099, 35), vb, np.int8)
        np.testing.assert_array_equal(gemm.int8_matmul(a, b, path=path), np.full((13, 35), va * vb * 4099))


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("k, n", [(13, 33), (64, 64), (4099, 35)])
def test_int8_matmul_calls_in_a_row_give_each_its_own_product(path, k, n):
    """Each call packs its B into the buffer of the thread's previous one when the sizes match: nothing of the
    earlier B (its values, its column sums, the padding past K and N) reaches a later product."""
    rng = np.random.default_rng(k * n)
    a = rng.integers(-128, 128, (5, k), dtype=np.int8)
    earlier = np.full((k, n), -128, np.int8)
    later = rng.integers(-3, 4, (k, n), dtype=np.int8)
    other = rng.integers(-128, 128, (k + 1, n), dtype=np.int8)
    for b in (earlier, later, later, other, earlier, later):
        x = a if b.shape[0] == k else rng.integers(-128, 128, (5, b.shape[0]), dtype=np.int8)
        np.testing.assert_array_equal(gemm.int8_matmul(x, b, path=path), x.astype(np.int64) @ b.astype(np.int64))


def test_int8_matmul_torch_in_torch_out_and_matches_int_mm():
    a = torch.randint(-128, 128, (32, 64), dtype=torch.int8)
    b = torch.randint(-128, 128, (64, 48), dtype=torch.int8)
    got = gemm.int8_matmul(a, b)
    assert isinstance(got, torch.Tensor) and got.dtype == torch.int32
    torch.testing.assert_close(got, torch._int_mm(a, b), rtol=0, atol=0)
    # Non-contiguous inputs are accepted (copied).
    torch.testing.assert_close(gemm.int8_matmul(a, b.t().contiguous().t()), got, rtol=0, atol=0)


def test_int8_matmul_largest_k_is_exact():
    k = gemm.MAX_K
    a = np.full((1, k), -128, np.int8)
    assert int(gemm.int8_matmul(a, a.T.copy())[0, 0]) == 16384 * k


@pytest.mark.parametrize(
    ("a", "b", "err", "match"),
    [
        (np.zeros((2, 3), np.int16), np.zeros((3, 2), np.int8), TypeError, "a must have dtype int8"),
        (np.zeros((2, 3), np.int8), np.zeros((3, 2), np.float32), TypeError, "b must have dtype int8"),
        (np.zeros((2, 3), np.int8), np.zeros((4, 2), np.int8), ValueError, "inner dimensions"),
        (np.zeros(3, np.int8), np.zeros((3, 2), np.int8), ValueError, "must be 2-D"),
        (np.zeros((1, gemm.MAX_K + 1), np.int8), np.zeros((gemm.MAX_K + 1, 1), np.int8), ValueError, "131071"),
    ],
)
def test_int8_matmul_bad_input(a, b, err, match):
    with pytest.raises(err, match=match):
        gemm.int8_matmul(a, b)


def test_bad_path_name():
    with pytest.raises(ValueError, match="unknown GEMM path"):
        gemm.int8_matmul(np.zeros((1, 1), np.int8), np.zeros((1, 1), np.int8), path="sse9")


def test_vnni_peak_is_a_positive_rate_exactly_where_the_vnni_path_exists():
    """The benchmark's %peak is against this: a number where the CPU has AVX-512 VNNI, ``None`` where it lacks it."""
    peak = gemm.gemm_vnni_peak_gops(rounds=2)
    if "avx512vnni" in PATHS:
        assert isinstance(peak, float) and peak > 0
    else:
        assert peak is None


def test_follows_set_isa():
    from nnic import kernels

    before = kernels.active_isa()
    try:
        kernels.set_isa("scalar")
        assert gemm.gemm_path() == "scalar"
    finally:
        kernels.set_isa(before)
    assert gemm.gemm_path() in PATHS


# --------------------------------------------------------------------------- float epilogue
def act_qparams(lo: float, hi: float, symmetric: bool, qmax: int = 255) -> tuple[np.float32, int]:
    """Scale and u8 zero point for codes in [0, qmax] (255; 127 with ``reduce_range``)."""
    lo, hi = np.float32(min(lo, 0.0)), np.float32(max(hi, 0.0))
    fix = lambda s: np.float32(1.0) if s == 0 else max(s, np.finfo(np.float32).tiny)  # noqa: E731
    if symmetric:
        return fix(np.float32(max(-lo, hi)) / np.float32(qmax // 2)), (qmax + 1) // 2
    s = fix(np.float32(hi - lo) / np.float32(qmax))
    return s, int(np.clip(-np.rint(lo / s), 0, qmax))


def ref_linear(x, w_q, scale, zero, bias, act, symmetric, act_scale=None, act_zp=None, qmax=255):
    """numpy reference: the same activation quantization, exact int64 products, float64 epilogue."""
    rows = []
    for i in range(x.shape[0]):
        if act == "static":
            s, z = np.float32(act_scale), act_zp
        elif act == "per_tensor":
            s, z = act_qparams(x.min(initial=0), x.max(initial=0), symmetric, qmax)
        else:
            s, z = act_qparams(x[i].min(initial=0), x[i].max(initial=0), symmetric, qmax)
        q = np.clip(np.rint(x[i] * (np.float32(1) / s)) + z, 0, qmax).astype(np.int64) - z
        acc = (w_q.astype(np.int64) - zero.astype(np.int64)[:, None]) @ q
        prod = acc * np.float64(s) * scale.astype(np.float64)
        b = 0 if bias is None else bias.astype(np.float64)
        rows.append((prod + b, np.abs(prod) + np.abs(b)))
    want = np.array([r[0] for r in rows]).reshape(x.shape[0], -1)
    size = np.array([r[1] for r in rows]).reshape(x.shape[0], -1)
    return want, size


@st.composite
def linear_case(draw):
    m, k, n = draw(DIMS), draw(K_DIMS), draw(DIMS)
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    x = (rng.standard_normal((m, k)) * draw(st.sampled_from([1e-3, 1.0, 50.0]))).astype(np.float32)
    w = rng.integers(-128, 128, (n, k), dtype=np.int8)
    per_channel = draw(st.booleans())
    scale = rng.uniform(1e-3, 1e-1, n if per_channel else 1).astype(np.float32)
    zero = rng.integers(-20, 20, n).astype(np.int32) if draw(st.booleans()) else None
    bias = rng.standard_normal(n).astype(np.float32) if draw(st.booleans()) else None
    return x, w, scale, zero, bias


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("act", ["per_token", "per_tensor", "static"])
@given(case=linear_case(), symmetric=st.booleans())
def test_int8_linear_matches_reference(path, act, case, symmetric):
    x, w, scale, zero, bias = case
    packed = gemm.pack_int8_weight(w, scale, zero)
    kw = {"act_scale": 0.05, "act_zero_point": 120} if act == "static" else {}
    got = gemm.int8_linear(x, packed, bias, act=act, symmetric=symmetric, path=path, **kw)
    z = np.zeros(w.shape[0], np.int32) if zero is None else zero
    s = np.broadcast_to(scale, (w.shape[0],))
    want, size = ref_linear(x, w, s, z, bias, act, symmetric, kw.get("act_scale"), kw.get("act_zero_point"))
    tol = EPILOGUE_RTOL * (size + size.max(initial=0) * 1e-3 + 1e-30)
    assert np.all(np.abs(got - want) <= tol), np.abs(got - want).max()


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("act", ["per_token", "per_tensor"])
@given(case=linear_case(), symmetric=st.booleans())
def test_reduce_range_quantizes_activations_to_7_bits_on_every_path(path, act, case, symmetric):
    """``reduce_range``: codes in [0, 127] (symmetric: zero point 64, scale max|x| / 63), on every path the
    reference's values; weights hold -128 here (AVX2 then multiplies with its narrow tile, exact for them too)."""
    x, w, scale, zero, bias = case
    packed = gemm.pack_int8_weight(w, scale, zero)
    got = gemm.int8_linear(x, packed, bias, act=act, symmetric=symmetric, path=path, reduce_range=True)
    z = np.zeros(w.shape[0], np.int32) if zero is None else zero
    want, size = ref_linear(x, w, np.broadcast_to(scale, (w.shape[0],)), z, bias, act, symmetric, qmax=127)
    tol = EPILOGUE_RTOL * (size + size.max(initial=0) * 1e-3 + 1e-30)
    assert np.all(np.abs(got - want) <= tol), np.abs(got - want).max()
    assert np.array_equal(got, gemm.int8_linear(x, packed, bias, act=act, symmetric=symmetric, path="scalar",
                                                reduce_range=True))


def test_reduce_range_halves_the_activation_resolution_and_refuses_static_activations():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((64, 512)).astype(np.float32)
    w = rng.standard_normal((256, 512)).astype(np.float32)
    q, s = gemm.quantize_int8_weight(torch.from_numpy(w))
    packed = gemm.pack_int8_weight(q, s)
    exact = x @ (q.numpy().astype(np.float32) * s.numpy()[:, None]).T
    err8 = np.abs(gemm.int8_linear(x, packed) - exact).mean()
    err7 = np.abs(gemm.int8_linear(x, packed, reduce_range=True) - exact).mean()
    assert 1.6 < err7 / err8 < 2.4  # half the levels: about twice the rounding error
    with pytest.raises(ValueError, match="reduce_range.*static"):
        gemm.int8_linear(x, packed, act="static", act_scale=0.1, act_zero_point=128, reduce_range=True)


@pytest.mark.parametrize("backend", ["openmp", "rayon"])
@pytest.mark.parametrize("act", ["per_token", "per_tensor", "static"])
@given(m=st.sampled_from([97, 200, 301]), k=st.sampled_from([64, 770, 3001]), n=st.sampled_from([33, 200]),
       seed=st.integers(0, 2**32 - 1), affine=st.booleans())
def test_int8_linear_packs_many_row_panels_inside_its_region_on_any_thread_count(backend, act, m, k, n, seed, affine):
    """Several row blocks, so the GEMM's region packs many row panels while other tasks wait for theirs: the result
    matches the numpy reference and is the same bits on one thread and on two, on torch's team and on nnic's own."""
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((m, k)) * 3).astype(np.float32)
    w = rng.integers(-128, 128, (n, k), dtype=np.int8)
    scale = rng.uniform(1e-3, 1e-1, n).astype(np.float32)
    zero = rng.integers(-20, 20, n).astype(np.int32) if affine else np.zeros(n, np.int32)
    bias = rng.standard_normal(n).astype(np.float32)
    packed = gemm.pack_int8_weight(w, scale, zero if affine else None)
    kw = {"act_scale": 0.05, "act_zero_point": 120} if act == "static" else {}
    threads, before = gemm.get_num_threads(), gemm.gemm_backend()
    got = {}
    try:
        gemm.set_gemm_backend(backend)
        for t in (1, 2):
            gemm.set_num_threads(t)
            got[t] = gemm.int8_linear(x, packed, bias, act=act, symmetric=False, **kw)
    finally:
        gemm.set_num_threads(threads)
        gemm.set_gemm_backend(before)
    np.testing.assert_array_equal(got[1].view(np.int32), got[2].view(np.int32))
    want, size = ref_linear(x, w, scale, zero, bias, act, False, kw.get("act_scale"), kw.get("act_zero_point"))
    tol = EPILOGUE_RTOL * (size + size.max(initial=0) * 1e-3 + 1e-30)
    assert np.all(np.abs(got[2] - want) <= tol), np.abs(got[2] - want).max()


def test_int8_linear_torch_shapes_and_accuracy():
    torch.manual_seed(0)
    lin = torch.nn.Linear(96, 40)
    q, s = gemm.quantize_int8_weight(lin.weight)
    packed = gemm.pack_int8_weight(q, s)
    x = torch.randn(2, 5, 96)
    y = gemm.int8_linear(x, packed, lin.bias.detach())
    assert isinstance(y, torch.Tensor) and y.shape == (2, 5, 40)
    ref = lin(x).detach()
    assert torch.nn.functional.cosine_similarity(y.flatten(), ref.flatten(), dim=0) > 0.999


def test_large_outputs_come_from_huge_page_buffers_and_equal_a_torch_allocated_one():
    """Outputs of 4 MiB and more are numpy-allocated (numpy advises huge pages for them); the values are those of
    the same call into a ``torch.empty`` output, and the result is an ordinary contiguous float32 tensor."""
    from nnic.kernels.adapters import HUGE_OUTPUT_BYTES, float_output

    rng = np.random.default_rng(3)
    k, n = 64, 1024
    m = HUGE_OUTPUT_BYTES // (4 * n) + 5
    w = rng.integers(-127, 128, (n, k), dtype=np.int8)
    packed = gemm.pack_int8_weight(w, rng.uniform(1e-3, 1e-2, n).astype(np.float32))
    x = torch.from_numpy(rng.standard_normal((m, k)).astype(np.float32))
    y = gemm.int8_linear(x, packed)
    ref = torch.empty(m, n)
    gemm.run_packed_linear(packed, x, ref, None, "per_token", False)
    assert y.dtype == torch.float32 and y.shape == (m, n) and y.is_contiguous()
    assert torch.equal(y, ref)
    assert not y.untyped_storage().resizable()  # numpy owns the buffer (torch.empty's storage is resizable)
    small = float_output(2, 3)
    assert small.shape == (2, 3) and small.dtype == torch.float32 and small.untyped_storage().resizable()


def test_int8_linear_gives_the_same_values_for_every_form_of_one_input():
    """The plain-tensor call (one ``numpy()`` view) and the checked path it falls back to (autograd, a
    non-contiguous view, a numpy array, leading dimensions) give the same bits; a torch input returns a torch
    tensor, a numpy one a numpy array; what the fast view cannot take is still named by the checked path."""
    rng = np.random.default_rng(7)
    k, n = 40, 24
    packed = gemm.pack_int8_weight(rng.integers(-127, 128, (n, k), dtype=np.int8), np.float32(0.01))
    xn = rng.standard_normal((6, k)).astype(np.float32)
    want = gemm.int8_linear(torch.from_numpy(xn), packed)
    assert isinstance(want, torch.Tensor) and want.shape == (6, n) and want.dtype == torch.float32
    as_numpy = gemm.int8_linear(xn, packed)
    assert isinstance(as_numpy, np.ndarray) and np.array_equal(as_numpy, want.numpy())
    grad = torch.from_numpy(xn.copy()).requires_grad_()
    assert torch.equal(gemm.int8_linear(grad, packed), want)
    strided = torch.from_numpy(np.ascontiguousarray(xn.T)).t()
    assert not strided.is_contiguous() and torch.equal(gemm.int8_linear(strided, packed), want)
    lead = gemm.int8_linear(torch.from_numpy(xn).reshape(2, 3, k), packed)
    assert lead.shape == (2, 3, n) and torch.equal(lead.reshape(6, n), want)
    assert torch.equal(gemm.int8_linear(torch.from_numpy(xn[0]), packed), want[0])
    with pytest.raises(TypeError, match="float32"):
        gemm.int8_linear(torch.from_numpy(xn).double(), packed)
    with pytest.raises(ValueError, match=r"shape \[\.\.\., 40\]"):
        gemm.int8_linear(torch.zeros(6, k + 1), packed)
    with pytest.raises(ValueError, match=r"shape \[\.\.\., 40\]"):
        gemm.int8_linear(torch.tensor(1.0), packed)


def test_native_linear_allocates_a_fresh_output_shaped_like_the_input():
    """``linear(x, None)`` (the one native call of ``int8_linear``'s usual case) takes ``x[..., K]`` of any rank,
    returns a new ``[..., N]`` array per call with the bits of the call into a given output, and refuses what it
    cannot read before running (``int8_linear`` then takes the checked path); each ``int8_linear`` result owns its
    memory, whether the bias came as a tensor or an array."""
    rng = np.random.default_rng(11)
    k, n = 24, 40
    packed = gemm.pack_int8_weight(rng.integers(-127, 128, (n, k), dtype=np.int8), rng.uniform(1e-3, 1e-2, n))
    x = rng.standard_normal((2, 3, k)).astype(np.float32)
    bias = rng.standard_normal(n).astype(np.float32)
    into = np.empty((6, n), np.float32)
    assert packed.linear(x.reshape(6, k), into, bias) is None
    a, b = packed.linear(x, None, bias), packed.linear(x, None, bias)
    assert a.shape == (2, 3, n) and a.dtype == np.float32 and a.flags.c_contiguous
    assert np.array_equal(a.reshape(6, n), into) and np.array_equal(a, b) and not np.shares_memory(a, b)
    assert np.array_equal(packed.linear(x[0, 0], None, bias), into[0])
    with pytest.raises(ValueError, match="x has 23 columns"):
        packed.linear(x[..., 1:].copy(), None)
    with pytest.raises(ValueError, match="0-d"):
        packed.linear(np.zeros((), np.float32), None)
    with pytest.raises(ValueError, match="C-contiguous"):
        packed.linear(np.ascontiguousarray(x.reshape(6, k).T).T, None)
    with pytest.raises(ValueError, match=r"out must be \[6, 40\]"):
        packed.linear(x, np.empty((2, n), np.float32))
    xt = torch.from_numpy(x)
    y1, y2 = gemm.int8_linear(xt, packed, torch.from_numpy(bias)), gemm.int8_linear(xt, packed, bias)
    assert torch.equal(y1.reshape(6, n), torch.from_numpy(into)) and torch.equal(y1, y2)
    assert y1.data_ptr() != y2.data_ptr()


@pytest.mark.parametrize("act", [{}, {"symmetric": False}, {"act": "per_tensor"},
                                 {"act": "static", "act_scale": 0.03, "act_zero_point": 120}])
def test_int4_linear_plain_inputs_take_one_native_call_with_the_checked_paths_bits(act):
    """A plain float32 tensor or array goes to the kernel in one native call (as for ``int8_linear``); inputs that
    call refuses (non-contiguous, needing grad) take the checked path: the same bits either way, for any rank, a
    bias as tensor or array, and each activation mode; bad inputs still raise the checked path's errors."""
    rng = np.random.default_rng(12)
    k, n, g = 64, 40, 32
    q = rng.integers(-8, 8, (n, k), dtype=np.int8)
    packed = gemm.pack_int4_weight(q, rng.uniform(1e-3, 1e-2, (n, k // g)).astype(np.float32), g)
    x = rng.standard_normal((2, 3, k)).astype(np.float32)
    bias = rng.standard_normal(n).astype(np.float32)
    xt = torch.from_numpy(x)
    strided = torch.from_numpy(np.ascontiguousarray(np.swapaxes(x, 0, 1))).transpose(0, 1)
    assert not strided.is_contiguous() and torch.equal(strided, xt)
    for b in (None, bias, torch.from_numpy(bias)):
        fast = gemm.int4_linear(xt, packed, b, **act)
        assert fast.shape == (2, 3, n) and fast.dtype == torch.float32
        for other in (strided, xt.clone().requires_grad_()):
            assert torch.equal(gemm.int4_linear(other, packed, b, **act).detach(), fast)
        assert np.array_equal(gemm.int4_linear(x, packed, b, **act), fast.numpy())
        row = gemm.int4_linear(xt[1, 2], packed, b, **act)
        assert row.shape == (n,) and torch.equal(gemm.int4_linear(xt[1, 2].clone().requires_grad_(), packed, b, **act), row)
    with pytest.raises(TypeError, match="float32"):
        gemm.int4_linear(xt.double(), packed)
    with pytest.raises(ValueError, match=r"shape \[\.\.\., 64\]"):
        gemm.int4_linear(torch.zeros(6, k + 1), packed)
    with pytest.raises(ValueError, match="act must be one of"):
        gemm.int4_linear(xt, packed, act="per_row")


def test_int8_linear_bad_input():
    packed = gemm.pack_int8_weight(np.zeros((4, 8), np.int8), 1.0)
    with pytest.raises(TypeError, match="float32"):
        gemm.int8_linear(np.zeros((2, 8), np.float64), packed)
    with pytest.raises(ValueError, match=r"shape \[\.\.\., 8\]"):
        gemm.int8_linear(np.zeros((2, 7), np.float32), packed)
    with pytest.raises(ValueError, match="act must be one of"):
        gemm.int8_linear(np.zeros((2, 8), np.float32), packed, act="per_channel")
    with pytest.raises(ValueError, match="act_scale"):
        gemm.int8_linear(np.zeros((2, 8), np.float32), packed, act="static")
    with pytest.raises(ValueError, match="bias"):
        gemm.int8_linear(np.zeros((2, 8), np.float32), packed, np.zeros(3, np.float32))
    with pytest.raises(ValueError, match="NaN"):
        gemm.int8_linear(np.full((2, 8), np.nan, np.float32), packed)
    with pytest.raises(ValueError, match="scale must be finite"):
        gemm.pack_int8_weight(np.zeros((4, 8), np.int8), [1.0, 0.0, 1.0, 1.0])
    with pytest.raises(ValueError, match=r"1 or 4"):
        gemm.pack_int8_weight(np.zeros((4, 8), np.int8), [1.0, 1.0])
    with pytest.raises(ValueError, match="zero_point"):
        gemm.pack_int8_weight(np.zeros((4, 8), np.int8), 1.0, 200)


@given(case=linear_case())
def test_pack_int8_round_trip(case):
    _, w, scale, zero, _ = case
    p = gemm.pack_int8_weight(w, scale, zero)
    np.testing.assert_array_equal(p.weight(), w)
    np.testing.assert_array_equal(p.scale(), scale)
    np.testing.assert_array_equal(p.zero_point(), [] if zero is None or not zero.any() else zero)
    assert (p.out_features, p.in_features) == w.shape


# --------------------------------------------------------------------------- int4
@st.composite
def int4_case(draw):
    m, k, n = draw(DIMS), draw(K_DIMS), draw(DIMS)
    g = draw(st.sampled_from([8, 32, 64, 128]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    x = rng.standard_normal((m, k)).astype(np.float32)
    q = rng.integers(-8, 8, (n, k), dtype=np.int8)
    s = rng.uniform(1e-3, 1e-1, (n, -(-k // g))).astype(np.float32)
    scales = draw(st.sampled_from(["float32", "float16", "float16-subnormal", "uint8"]))
    if scales == "float16":
        s = s.astype(np.float16)
    elif scales == "float16-subnormal":  # below float16's smallest normal 2**-14: the widening's other branch
        s = rng.uniform(1e-7, 1e-4, s.shape).astype(np.float16)
    elif scales == "uint8":  # 8-bit codes over their whole range, a float32 step per output column
        s = Int4Scales(rng.integers(1, 256, s.shape, dtype=np.uint8), rng.uniform(1e-6, 1e-3, n).astype(np.float32))
    z = rng.integers(-8, 8, s.shape, dtype=np.int8) if draw(st.booleans()) else None
    return x, q, s, g, z


class Int4Scales:
    """8-bit scale codes ``[N, groups]`` with their float32 steps ``[N]``: scale = code × step of its row."""

    def __init__(self, codes: np.ndarray, step: np.ndarray) -> None:
        self.codes, self.step = codes, step
        self.shape, self.dtype = codes.shape, codes.dtype

    def values(self) -> np.ndarray:
        """The scales in float64 (exact products)."""
        return self.codes.astype(np.float64) * self.step.astype(np.float64)[:, None]


def pack4(q, s, g, z=None):
    """``pack_int4_weight`` for float scales or :class:`Int4Scales`."""
    if isinstance(s, Int4Scales):
        return gemm.pack_int4_weight(q, s.codes, g, zero_points=z, scale_step=s.step)
    return gemm.pack_int4_weight(q, s, g, zero_points=z)


@pytest.mark.parametrize("path", PATHS)
@given(case=int4_case(), symmetric=st.booleans())
def test_int4_linear_matches_reference(path, case, symmetric):
    """Group-wise int4 weights (symmetric, or affine with per-group zero points; float32 or float16 group
    scales, normal and subnormal, or 8-bit codes times a step per column) × int8 activations quantized per token
    (symmetric or asymmetric), against a float64 reference of the same integer codes and the same scale values."""
    x, q, s, g, z = case
    packed = pack4(q, s, g, z)
    got = gemm.int4_linear(x, packed, symmetric=symmetric, path=path)
    assert_int4_close(got, x, q, s, g, z, symmetric)


def assert_int4_close(got, x, q, s, g, z, symmetric):
    """``got`` is ``int4_linear``'s output for these codes, scales and zero points: a float64 reference of the
    same integers and scale values, within :data:`INT4_RTOL` of the sum of the terms' absolute values."""
    zw = 0 if z is None else np.repeat(z, g, axis=1)[:, : q.shape[1]]
    s = s.values() if isinstance(s, Int4Scales) else s
    w = (q.astype(np.float64) - zw) * np.repeat(s, g, axis=1)[:, : q.shape[1]]
    want = np.empty((x.shape[0], q.shape[0]))
    size = np.empty_like(want)
    for i in range(x.shape[0]):
        sa, za = act_qparams(x[i].min(), x[i].max(), symmetric)
        qa = np.clip(np.rint(x[i] * (np.float32(1) / sa)) + za, 0, 255) - za
        want[i] = (w @ qa) * sa
        size[i] = (np.abs(w) @ (np.abs(qa) + za)) * sa
    tol = INT4_RTOL * size
    assert np.all(np.abs(got - want) <= tol), np.abs(got - want).max()


@pytest.mark.parametrize("path", PATHS)
def test_int4_weights_past_one_huge_page(path):
    """Packed weights larger than a 2 MiB huge page (a decoder's layers are; they are allocated on huge pages
    where the OS gives them, and the hypothesis cases above stay smaller): the GEMV (M = 1, the threads' split)
    and a small prefill (M = 5) against the reference, symmetric and affine, half scales; and the round trip."""
    rng = np.random.default_rng(13)
    n, k, g = 1100, 4096, 32
    q = rng.integers(-8, 8, (n, k), dtype=np.int8)
    s = rng.uniform(1e-3, 1e-1, (n, k // g)).astype(np.float16)
    s8 = Int4Scales(rng.integers(1, 256, s.shape, dtype=np.uint8), rng.uniform(1e-4, 1e-3, n).astype(np.float32))
    for s, z in ((s, None), (s, rng.integers(-8, 8, s.shape, dtype=np.int8)), (s8, None)):
        packed = pack4(q, s, g, z)
        assert packed.nbytes > 2 << 20
        for m in (1, 5):
            x = rng.standard_normal((m, k)).astype(np.float32)
            assert_int4_close(gemm.int4_linear(x, packed, path=path), x, q, s, g, z, True)
        q2, s2, z2 = packed.unpack()
        np.testing.assert_array_equal(q2, q)
        np.testing.assert_array_equal(s2, s.values().astype(np.float32) if isinstance(s, Int4Scales)
                                      else s.astype(np.float32))
        if z is not None:
            np.testing.assert_array_equal(z2, z)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("scales", ["float32", "float16", "uint8"])
def test_int4_bias_and_column_terms_land_on_their_columns_across_blocks_and_threads(path, scales):
    """A layer several 256-column blocks wide with a partial last panel (the threads' tasks; each block's ending
    runs once after its panels): the bias adds exactly to the output without it, column by column (so each
    column got its own bias, column sums and scale steps, past every block boundary), the output without bias
    is the reference's, and one and two threads give the same bits, for one row, a few and more than a panel."""
    rng = np.random.default_rng(29)
    n, k, g = 1100, 512, 32
    q = rng.integers(-8, 8, (n, k), dtype=np.int8)
    s = rng.uniform(1e-3, 1e-1, (n, k // g)).astype(np.float16 if scales == "float16" else np.float32)
    if scales == "uint8":
        s = Int4Scales(rng.integers(1, 256, s.shape, dtype=np.uint8), rng.uniform(1e-4, 1e-3, n).astype(np.float32))
    z = rng.integers(-8, 8, s.shape, dtype=np.int8)
    bias = rng.standard_normal(n).astype(np.float32)
    threads = gemm.get_num_threads()
    try:
        for zero in (None, z):
            packed = pack4(q, s, g, zero)
            for m in (1, 3, 9):
                x = rng.standard_normal((m, k)).astype(np.float32)
                got = {}
                for t in (1, 2):
                    gemm.set_num_threads(t)
                    got[t] = (gemm.int4_linear(x, packed, path=path, symmetric=False),
                              gemm.int4_linear(x, packed, torch.from_numpy(bias), path=path, symmetric=False))
                for one, two in zip(got[1], got[2]):
                    np.testing.assert_array_equal(np.asarray(one).view(np.int32), np.asarray(two).view(np.int32))
                plain, biased = (np.asarray(v) for v in got[1])
                np.testing.assert_array_equal(biased, plain + bias)
                assert_int4_close(plain, x, q, s, g, zero, False)
    finally:
        gemm.set_num_threads(threads)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("act", ["per_token", "per_tensor", "static"])
def test_int4_gemv_on_two_threads_gives_the_one_thread_bits(path, act):
    """A decode step's GEMV (M = 1, and a few rows) split over two threads, the last blocks in smaller pieces: the
    outputs are the one-thread bits for every activation mode, symmetric and affine weights, and a NaN in the input
    is reported."""
    rng = np.random.default_rng(31)
    n, k, g = 1100, 1024, 32  # M x N x K over 2**20: two threads
    q = rng.integers(-8, 8, (n, k), dtype=np.int8)
    s = Int4Scales(rng.integers(1, 256, (n, k // g), dtype=np.uint8), rng.uniform(1e-4, 1e-3, n).astype(np.float32))
    kw = {"act": act, "path": path, "symmetric": False}
    if act == "static":
        kw.update(act_scale=0.02, act_zero_point=3)
    threads = gemm.get_num_threads()
    try:
        for z in (None, rng.integers(-8, 8, s.shape, dtype=np.int8)):
            packed = pack4(q, s, g, z)
            for m in (1, 4):
                x = rng.standard_normal((m, k)).astype(np.float32)
                got = {}
                for t in (1, 2):
                    gemm.set_num_threads(t)
                    got[t] = np.asarray(gemm.int4_linear(x, packed, **kw))
                np.testing.assert_array_equal(got[1].view(np.int32), got[2].view(np.int32))
                if act == "per_token":
                    assert_int4_close(got[2], x, q, s, g, z, False)
        if act != "static":
            x = rng.standard_normal((1, k)).astype(np.float32)
            x[0, 700] = np.nan
            with pytest.raises(ValueError, match="NaN at flat index 700"):
                gemm.int4_linear(x, packed, **kw)
    finally:
        gemm.set_num_threads(threads)


@given(case=int4_case())
def test_pack_int4_round_trip(case):
    _, q, s, g, z = case
    p = pack4(q, s, g, z)
    q2, s2, z2 = p.unpack()
    np.testing.assert_array_equal(q2, q)
    assert s2.dtype == np.float32 and p.scale_dtype == s.dtype.name
    if isinstance(s, Int4Scales):  # the codes and steps as given; the values as their float32 products
        codes, step = p.scale_codes()
        np.testing.assert_array_equal(codes, s.codes)
        np.testing.assert_array_equal(step, s.step)
        np.testing.assert_array_equal(s2, s.codes.astype(np.float32) * s.step[:, None])
    else:
        np.testing.assert_array_equal(s2, s.astype(np.float32))  # half scales widen exactly
        assert p.scale_codes() is None
    bits = p.scale_bits()
    assert (bits is None) == (s.dtype != np.float16)
    if bits is not None:
        np.testing.assert_array_equal(bits, s.view(np.uint16))
    if z is None or not z.any():  # all-zero zero points pack as symmetric weights
        assert z2 is None and not p.affine
    else:
        np.testing.assert_array_equal(z2, z)
        assert p.affine
    assert p.group_size == g


def test_int4_bad_input():
    with pytest.raises(ValueError, match=r"\[-8, 7\]"):
        gemm.pack_int4_weight(np.full((2, 8), 9, np.int8), np.ones((2, 1), np.float32), 8)
    with pytest.raises(ValueError, match="multiple of 8"):
        gemm.pack_int4_weight(np.zeros((2, 8), np.int8), np.ones((2, 1), np.float32), 6)
    with pytest.raises(ValueError, match="scales"):
        gemm.pack_int4_weight(np.zeros((2, 16), np.int8), np.ones((2, 1), np.float32), 8)
    with pytest.raises(ValueError, match=r"zero_point.*\[-8, 7\]"):
        gemm.pack_int4_weight(np.zeros((2, 8), np.int8), np.ones((2, 1), np.float32), 8, np.full((2, 1), 8, np.int8))
    with pytest.raises(ValueError, match="zero points have 1 elements"):
        gemm.pack_int4_weight(np.zeros((2, 8), np.int8), np.ones((2, 1), np.float32), 8, np.zeros((1, 1), np.int8))
    with pytest.raises(TypeError, match="zero_points must have dtype int8"):
        gemm.pack_int4_weight(np.zeros((2, 8), np.int8), np.ones((2, 1), np.float32), 8, np.zeros((2, 1), np.int32))


def test_half_scales_take_half_the_scale_bytes_and_torch_tensors_pack_too():
    q = torch.zeros(64, 256, dtype=torch.int8)
    b32 = gemm.pack_int4_weight(q, torch.ones(64, 8), 32).nbytes
    b16 = gemm.pack_int4_weight(q, torch.ones(64, 8, dtype=torch.float16), 32).nbytes
    assert b32 - b16 == 2 * 64 * 8
    with pytest.raises(TypeError, match="scales must have dtype float32 or float16 or uint8, got bfloat16"):
        gemm.pack_int4_weight(q, torch.ones(64, 8, dtype=torch.bfloat16), 32)
    for bad in (0.0, float("inf"), -1.0, float("nan")):
        with pytest.raises(ValueError, match="scale"):
            gemm.pack_int4_weight(q, torch.full((64, 8), bad, dtype=torch.float16), 32)


def test_int4_group_scales_rounds_to_half_and_names_what_does_not_fit():
    s = torch.tensor([[1e-3, 0.1, 3e-6, 2.0**-25 * 1.01]])
    h = gemm.int4_group_scales(s, torch.float16)
    assert h.dtype == torch.float16 and torch.equal(h, s.half())
    assert torch.equal(gemm.int4_group_scales(s, torch.float32), s)
    with pytest.raises(ValueError, match=r"scales\[1\] = 70000 is not a positive finite float16 scale .*float32"):
        gemm.int4_group_scales(torch.tensor([1.0, 7e4]), torch.float16)
    with pytest.raises(ValueError, match=r"weight_scales\[0\] = 1e-09 .*float16.*float32"):
        gemm.int4_group_scales(torch.tensor([1e-9]), torch.float16, "weight_scales")
    with pytest.raises(ValueError, match="torch.float16, torch.float32 or torch.uint8, got torch.bfloat16"):
        gemm.int4_group_scales(s, torch.bfloat16)
    with pytest.raises(ValueError, match="int4_scale_codes"):
        gemm.int4_group_scales(s, torch.uint8)
    with pytest.raises(TypeError, match="floating point"):
        gemm.int4_group_scales(torch.ones(2, dtype=torch.int32), torch.float16)


@pytest.mark.parametrize("scale_dtype", [torch.float16, torch.float32])
def test_quantize_int4_weight_codes_are_nearest_for_the_stored_scales(scale_dtype):
    torch.manual_seed(1)
    w = torch.randn(16, 96)
    q, s = gemm.quantize_int4_weight(w, 32, scale_dtype)
    assert s.dtype == scale_dtype
    step = s.float().repeat_interleave(32, 1)
    # every code is the nearest in [-7, 7] for the scale as stored
    assert torch.all((w - q.float() * step).abs() <= step / 2 * (1 + 1e-6) + (w.abs() - 7 * step).clamp_min(0))


def test_eight_bit_scales_take_one_byte_per_group_and_a_step_per_column():
    q = torch.zeros(64, 256, dtype=torch.int8)
    b16 = gemm.pack_int4_weight(q, torch.ones(64, 8, dtype=torch.float16), 32).nbytes
    b8 = gemm.pack_int4_weight(q, torch.ones(64, 8, dtype=torch.uint8), 32, scale_step=torch.ones(64)).nbytes
    assert b16 - b8 == 64 * 8 - 4 * 64
    with pytest.raises(TypeError, match="scale_step goes with uint8"):
        gemm.pack_int4_weight(q, torch.ones(64, 8, dtype=torch.uint8), 32)
    with pytest.raises(TypeError, match="scale_step goes with uint8"):
        gemm.pack_int4_weight(q, torch.ones(64, 8), 32, scale_step=torch.ones(64))
    with pytest.raises(ValueError, match="scale"):  # code 0: scale 0
        gemm.pack_int4_weight(q, torch.zeros(64, 8, dtype=torch.uint8), 32, scale_step=torch.ones(64))
    for bad in (0.0, -1.0, float("inf"), float("nan"), 3e38):
        with pytest.raises(ValueError, match="scale"):
            gemm.pack_int4_weight(q, torch.ones(64, 8, dtype=torch.uint8), 32, scale_step=torch.full((64,), bad))
    with pytest.raises(ValueError, match="steps have 63 elements"):
        gemm.pack_int4_weight(q, torch.ones(64, 8, dtype=torch.uint8), 32, scale_step=torch.ones(63))


@given(seed=st.integers(0, 2**32 - 1), spread=st.sampled_from([1.0, 1e3, 1e30]))
def test_int4_scale_codes_round_every_scale_up_to_the_smallest_code(seed, spread):
    """``code · step >= s`` exactly (so codes re-rounded for the new scale never clip), with the smallest such
    code, and ``255 · step >= max`` with the smallest float32 step that allows it; rows far apart in magnitude
    each get their own step."""
    rng = np.random.default_rng(seed)
    s = torch.from_numpy(rng.uniform(1e-4, 1, (7, 13)) * spread ** rng.uniform(-1, 1, (7, 1))).float()
    codes, step = gemm.int4_scale_codes(s)
    assert codes.dtype == torch.uint8 and step.dtype == torch.float32 and tuple(step.shape) == (7,)
    c, st64, s64 = codes.double(), step.double()[:, None], s.double()
    assert int(codes.min()) >= 1 and torch.all(c * st64 >= s64)
    assert torch.all((c == 1) | ((c - 1) * st64 < s64))
    top = s64.amax(dim=1)
    assert torch.all(255 * step.double() >= top)
    below = torch.nextafter(step, torch.zeros_like(step)).double()
    assert torch.all(255 * below < top)
    with pytest.raises(ValueError, match=r"scales\[3\] = 0 is not a positive"):
        gemm.int4_scale_codes(torch.tensor([[1.0, 2.0], [1.0, 0.0]]))


@pytest.mark.parametrize("k", [96, 100])
def test_quantize_int4_weight_scale_codes_are_nearest_for_the_rounded_up_scales(k):
    torch.manual_seed(1)
    w = torch.randn(16, k) * torch.logspace(-3, 0, 16)[:, None]
    w[3, :32] = 0  # an all-zero group still gets a positive scale
    q, codes, step = gemm.quantize_int4_weight_scale_codes(w, 32)
    s = (codes.double() * step.double()[:, None]).repeat_interleave(32, 1)[:, :k]
    amax = torch.nn.functional.pad(w.abs(), (0, 128 - k)).reshape(16, 4, 32).amax(2).double()
    assert torch.all(codes.double() * step.double()[:, None] >= amax[:, : codes.shape[1]] / 7)  # nothing clips
    assert int(q.abs().max()) <= 7
    assert torch.all((w.double() - q.double() * s).abs() <= s / 2 * (1 + 1e-9))  # nearest codes
    packed = gemm.pack_int4_weight(q, codes, 32, scale_step=step)
    x = torch.randn(3, k)
    ref = x.double() @ (q.double() * s).T
    got = gemm.int4_linear(x, packed)
    assert torch.nn.functional.cosine_similarity(got.double().flatten(), ref.flatten(), dim=0) > 0.999


def test_quantize_int4_weight_accuracy():
    torch.manual_seed(0)
    w = torch.randn(64, 200)
    q, s = gemm.quantize_int4_weight(w, 32)
    assert q.shape == (64, 200) and s.shape == (64, 7) and int(q.abs().max()) <= 7
    packed = gemm.pack_int4_weight(q, s, 32)
    x = torch.randn(3, 200)
    y = gemm.int4_linear(x, packed)
    assert torch.nn.functional.cosine_similarity(y.flatten(), (x @ w.T).flatten(), dim=0) > 0.99


def test_native_binding_rejects_non_contiguous():
    from nnic.kernels.runtime import native as _kernels

    a = np.zeros((4, 6), np.int8)[:, ::2]
    with pytest.raises(ValueError, match="a must be a C-contiguous array"):
        _kernels.int8_matmul(a, np.zeros((3, 2), np.int8), np.zeros((4, 2), np.int32))
    with pytest.raises(ValueError, match=r"out must be \[4, 2\]"):
        _kernels.int8_matmul(np.zeros((4, 3), np.int8), np.zeros((3, 2), np.int8), np.zeros((4, 3), np.int32))
    # the Python layer copies non-contiguous inputs instead
    np.testing.assert_array_equal(gemm.int8_matmul(a, np.ones((3, 2), np.int8)), np.zeros((4, 2)))


def test_thread_backends_agree():
    """The OpenMP team (torch's, found at run time) and the rayon pool give the same exact results."""
    import os
    import subprocess
    import sys

    code = (
        "import numpy as np, torch; from nnic import kernels as gemm; rng = np.random.default_rng(0);"
        "a = rng.integers(-128, 128, (300, 700), dtype=np.int8); b = rng.integers(-128, 128, (700, 200), dtype=np.int8);"
        "assert (gemm.int8_matmul(a, b) == a.astype(np.int64) @ b.astype(np.int64)).all(); print(gemm.gemm_backend())"
    )
    for backend in ("", "rayon"):
        env = {**os.environ, "NNIC_GEMM_BACKEND": backend}
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
        assert out.stdout.strip() == (backend or "openmp")


def _conv_weight():
    return gemm.pack_int8_weight(np.ones((4, 27), np.int8), np.float32(0.1))


@pytest.mark.parametrize("kw, match", [
    ({"stride": (0, 1)}, r"stride\[0\] must be >= 1, got 0"),
    ({"padding": (-1, 0)}, r"padding\[0\] must be >= 0, got -1"),
    ({"padding": (2**40, 2**40)}, r"padding=\(1099511627776, 1099511627776\).* GiB, more than this machine"),
    ({"dilation": (1, 0)}, r"dilation\[1\] must be >= 1, got 0"),
    ({"kernel_size": (3, 3.0)}, r"kernel_size\[1\] must be an integer"),
])
def test_int8_conv2d_rejects_bad_geometry_before_allocating(kw, match):
    """Bad strides/paddings are ValueErrors naming the argument, raised before the output is allocated
    (padding 2**40 used to attempt a ~633 TB allocation; stride 0 raised ZeroDivisionError)."""
    args = {"kernel_size": (3, 3), **kw}
    with pytest.raises((ValueError, TypeError), match=match):
        gemm.int8_conv2d(torch.zeros(1, 3, 5, 5), _conv_weight(), **args)


def test_pack_int4_weight_rejects_a_bad_group_size():
    q, s = np.zeros((4, 16), np.int8), np.ones((4, 2), np.float32)
    for g in (-8, 0, 12):
        with pytest.raises(ValueError, match=f"group_size must be a positive multiple of 8, got {g}"):
            gemm.pack_int4_weight(q, s, g)
    with pytest.raises(TypeError, match="group_size must be an integer"):
        gemm.pack_int4_weight(q, s, 8.0)


def test_pack_int8_weight_rejects_a_2d_scale():
    """A [N, 1] scale (per-group shaped) used to be flattened silently; it must be a scalar or 1-D."""
    w = np.zeros((4, 8), np.int8)
    with pytest.raises(ValueError, match=r"scale must be a scalar or 1-D .* got shape \(4, 1\)"):
        gemm.pack_int8_weight(w, np.ones((4, 1), np.float32))
    with pytest.raises(ValueError, match=r"zero_point must be a scalar or 1-D"):
        gemm.pack_int8_weight(w, np.ones(4, np.float32), np.zeros((4, 1), np.int64))
    assert gemm.pack_int8_weight(w, torch.ones(4)).out_features == 4
