"""Exact-k masks, mask application and fused threshold pruning against the numpy reference."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from numpy.testing import assert_array_equal

from nnic import kernels
from nnic.testing import reference as ref
from nnic.testing import strategies as nst

SETTINGS = settings(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
BIG = settings(SETTINGS, max_examples=4)


def as_kind(a: np.ndarray, kind: str):
    return torch.from_numpy(a.copy()) if kind == "torch" else a.copy()


def to_np(a) -> np.ndarray:
    return a.numpy() if isinstance(a, torch.Tensor) else a


def assert_same_bits(a, b):
    """Equal float32 arrays bit for bit (so +0.0 vs -0.0 and NaN payloads count)."""
    assert_array_equal(np.asarray(to_np(a), np.float32).view(np.uint32), np.asarray(b, np.float32).view(np.uint32))


# --------------------------------------------------------------------------- smallest_abs_mask
@SETTINGS
@given(nst.with_k(nst.weight_arrays(), min_k=0))
def test_mask_matches_reference(isa, kind, xk):
    x, k = xk
    m = kernels.smallest_abs_mask(as_kind(x, kind), k)
    assert isinstance(m, torch.Tensor if kind == "torch" else np.ndarray)
    assert tuple(m.shape) == x.shape and str(m.dtype).endswith("bool")
    assert_array_equal(to_np(m), ref.smallest_abs_mask(x, k))
    assert int((~to_np(m)).sum()) == k


@SETTINGS
@given(st.lists(nst.weight_arrays(), min_size=0, max_size=5), st.data())
def test_global_masks_match_reference(isa, kind, xs, data):
    k = data.draw(st.integers(0, sum(x.size for x in xs)))
    ms = kernels.global_smallest_abs_masks([as_kind(x, kind) for x in xs], k)
    want = ref.global_smallest_abs_masks(xs, k)
    assert len(ms) == len(xs)
    for m, w in zip(ms, want):
        assert_array_equal(to_np(m), w)
    assert sum(int((~to_np(m)).sum()) for m in ms) == k


@BIG
@given(seed=st.integers(0, 2**32 - 1), n=st.sampled_from([100_000, 250_001]), levels=st.sampled_from([2, 7, 0]))
def test_large_masks_with_ties(isa, seed, n, levels):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(n).astype(np.float32)
    if levels:
        x = np.round(x * levels).astype(np.float32)  # heavy ties, also across chunk boundaries
    for k in (0, 1, int(rng.integers(0, n + 1)), n // 2, n):
        assert_array_equal(kernels.smallest_abs_mask(x, k), ref.smallest_abs_mask(x, k))
    parts = [x[:10], x[10:n // 2].reshape(-1, 1), x[n // 2:]]
    k = int(rng.integers(0, n + 1))
    for m, w in zip(kernels.global_smallest_abs_masks(parts, k), ref.global_smallest_abs_masks(parts, k)):
        assert_array_equal(m, w)


def test_mask_edges(isa):
    z = np.array([-0.0, 0.0, -0.0, 0.0], np.float32)
    assert_array_equal(kernels.smallest_abs_mask(z, 3), [False, False, False, True])
    x = np.array([np.inf, -1, -np.inf, 1], np.float32)
    assert_array_equal(kernels.smallest_abs_mask(x, 3), [False, False, True, False])  # ties: first index first
    assert_array_equal(kernels.smallest_abs_mask(np.full(5, 2.0, np.float32), 2), [False, False, True, True, True])
    assert kernels.smallest_abs_mask(np.ones((0, 3), np.float32), 0).shape == (0, 3)
    assert kernels.global_smallest_abs_masks([], 0) == []
    assert_array_equal(kernels.smallest_abs_mask(np.array(3.0, np.float32), 1), np.array(False))


def test_mask_errors(kind):
    x = as_kind(np.ones((2, 3), np.float32), kind)
    with pytest.raises(ValueError, match=r"k must be in \[0, 6\] .*got 7"):
        kernels.smallest_abs_mask(x, 7)
    with pytest.raises(ValueError, match=r"k must be in \[0, 6\] .*got -1"):
        kernels.smallest_abs_mask(x, -1)
    with pytest.raises(ValueError, match=r"k must be in \[0, 0\]"):
        kernels.global_smallest_abs_masks([], 1)
    y = np.ones(6, np.float32)
    y[4] = np.nan
    with pytest.raises(ValueError, match="x contains NaN at flat index 4"):
        kernels.smallest_abs_mask(as_kind(y, kind), 0)
    with pytest.raises(ValueError, match=r"xs\[1\] contains NaN at flat index 1"):
        kernels.global_smallest_abs_masks([y[:3], y[3:]], 2)
    with pytest.raises(TypeError, match="x must have dtype float32, got float64"):
        kernels.smallest_abs_mask(np.ones(3), 1)


# --------------------------------------------------------------------------- apply_mask_
@SETTINGS
@given(st.data())
def test_apply_mask_matches_reference(isa, kind, data):
    w = data.draw(nst.float32_arrays(allow_nan=True))
    mdtype = data.draw(st.sampled_from([np.bool_, np.uint8]))
    m = data.draw(hnp.arrays(mdtype, w.shape, elements=st.integers(0, 1).map(mdtype)))
    wk = as_kind(w, kind)
    out = kernels.apply_mask_(wk, as_kind(m, kind))
    assert out is wk
    assert_same_bits(wk, ref.apply_mask(w, m))


@BIG
@given(seed=st.integers(0, 2**32 - 1), n=st.sampled_from([100_000, 333_333]))
def test_apply_mask_large(isa, kind, seed, n):
    rng = np.random.default_rng(seed)
    w = rng.standard_normal(n).astype(np.float32)
    m = rng.random(n) < 0.5
    wk = as_kind(w, kind)
    kernels.apply_mask_(wk, as_kind(m, kind))
    assert_same_bits(wk, ref.apply_mask(w, m))


def test_apply_mask_noncontiguous_writes_back(kind):
    base = np.arange(1, 49, dtype=np.float32).reshape(6, 8)
    keep = np.random.default_rng(0).random((8, 6)) < 0.5
    if kind == "torch":
        t = torch.from_numpy(base.copy())
        view = t.T  # non-contiguous
        kernels.apply_mask_(view, torch.from_numpy(keep))
        got = t.numpy()
        strided = torch.from_numpy(base.copy())
        kernels.apply_mask_(strided[:, ::2], torch.from_numpy(keep.T[:, ::2].copy()))
        want_strided = base.copy()
        want_strided[:, ::2] = ref.apply_mask(base[:, ::2], keep.T[:, ::2])
        assert_same_bits(strided, want_strided)
    else:
        got = base.copy()
        kernels.apply_mask_(got.T, keep)
    assert_same_bits(got, ref.apply_mask(base.T, keep).T)


def test_apply_mask_errors(kind):
    w = as_kind(np.ones((2, 3), np.float32), kind)
    with pytest.raises(ValueError, match=r"mask must have w's shape \(2, 3\), got \(3, 2\)"):
        kernels.apply_mask_(w, np.ones((3, 2), bool))
    m = np.array([[1, 0, 2], [1, 1, 1]], np.uint8)
    with pytest.raises(ValueError, match=r"mask values must be in \[0, 1\], got 2 at flat index 2"):
        kernels.apply_mask_(w, as_kind(m, kind))
    assert (to_np(w) == 1).all(), "nothing is written when the mask is rejected"
    with pytest.raises(TypeError, match="mask must have dtype bool or uint8, got float32"):
        kernels.apply_mask_(w, np.ones((2, 3), np.float32))
    with pytest.raises(TypeError, match="w must have dtype float32, got float16"):
        kernels.apply_mask_(torch.ones(2, 3, dtype=torch.float16), np.ones((2, 3), bool))
    ro = np.ones(3, np.float32)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="w is read-only"):
        kernels.apply_mask_(ro, np.ones(3, bool))


def test_apply_mask_on_parameter_under_no_grad():
    p = torch.nn.Parameter(torch.ones(4, 4))
    kernels.apply_mask_(p.data, torch.eye(4, dtype=torch.bool))
    assert torch.equal(p.detach(), torch.eye(4))


# --------------------------------------------------------------------------- prune_by_threshold_
@SETTINGS
@given(nst.float32_arrays(allow_nan=True), st.one_of(st.floats(-1, 10), st.sampled_from([0.0, -0.0, np.inf, 1.0])))
def test_prune_matches_reference(isa, kind, w, t):
    want, kept = ref.prune_by_threshold(w, t)
    wk = as_kind(w, kind)
    assert kernels.prune_by_threshold_(wk, t) == kept
    assert_same_bits(wk, want)


@SETTINGS
@given(nst.tie_arrays(), st.sampled_from([0.0, 1.0, 2.0, 3.5]))
def test_prune_ties_are_pruned(isa, w, t):
    want, kept = ref.prune_by_threshold(w, t)
    got = w.copy()
    assert kernels.prune_by_threshold_(got, t) == kept == int((np.abs(w) > t).sum())
    assert_same_bits(got, want)


@BIG
@given(seed=st.integers(0, 2**32 - 1), n=st.sampled_from([100_000, 300_007]))
def test_prune_large(isa, seed, n):
    rng = np.random.default_rng(seed)
    w = rng.standard_normal(n).astype(np.float32)
    w[rng.integers(0, n, 10)] = np.nan
    t = float(rng.random())
    want, kept = ref.prune_by_threshold(w, t)
    assert kernels.prune_by_threshold_(w, t) == kept
    assert_same_bits(w, want)


def test_prune_noncontiguous_and_errors(kind):
    base = np.arange(-12, 12, dtype=np.float32).reshape(4, 6) / 4
    want, kept = ref.prune_by_threshold(base[:, ::2], 1.0)
    x = as_kind(base, kind)
    assert kernels.prune_by_threshold_(x[:, ::2], 1.0) == kept
    full = base.copy()
    full[:, ::2] = want
    assert_same_bits(x, full)
    with pytest.raises(ValueError, match="t must not be NaN"):
        kernels.prune_by_threshold_(x, float("nan"))
    with pytest.raises(TypeError, match="t must be a real number, got str"):
        kernels.prune_by_threshold_(x, "0.5")
    assert kernels.prune_by_threshold_(x, torch.tensor(100.0)) == 0


@settings(BIG, max_examples=2)
@given(seed=st.integers(0, 2**32 - 1), half_zeros=st.booleans())
def test_large_masks_sampled_path(isa, seed, half_zeros):
    """>= 2^20 elements: the sampled select feeds the exact-k masks."""
    rng = np.random.default_rng(seed)
    n = (1 << 20) + 77
    x = np.round(rng.standard_normal(n) * 20).astype(np.float32)
    if half_zeros:
        x[::2] = 0.0
    for k in (int(rng.integers(0, n + 1)), n // 2):
        m = kernels.smallest_abs_mask(x, k)
        assert int((~m).sum()) == k
        assert_array_equal(m, ref.smallest_abs_mask(x, k))
