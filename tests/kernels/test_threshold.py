"""kth_smallest_abs / global_kth_smallest_abs against the numpy reference (exact equality)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nnic import kernels
from nnic.testing import reference as ref
from nnic.testing import strategies as nst

# The `isa`/`kind` fixtures are constant across a test's examples.
SETTINGS = settings(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
BIG = settings(SETTINGS, max_examples=4)  # >= 1e5 elements: several rayon chunks, few examples


def as_kind(a: np.ndarray, kind: str):
    return torch.from_numpy(a.copy()) if kind == "torch" else a.copy()


def same_float(a: float, b: float) -> bool:
    return np.float32(a).tobytes() == np.float32(b).tobytes()


@SETTINGS
@given(nst.with_k(nst.weight_arrays(min_side=1)))
def test_kth_matches_reference(isa, kind, xk):
    x, k = xk
    got = kernels.kth_smallest_abs(as_kind(x, kind), k)
    assert isinstance(got, float)
    assert same_float(got, ref.kth_smallest_abs(x, k))


@SETTINGS
@given(st.lists(nst.weight_arrays(), min_size=1, max_size=5).filter(lambda xs: sum(x.size for x in xs) > 0),
       st.data())
def test_global_kth_matches_concatenation(isa, xs, data):
    k = data.draw(st.integers(1, sum(x.size for x in xs)))
    assert same_float(kernels.global_kth_smallest_abs(xs, k), ref.global_kth_smallest_abs(xs, k))


@BIG
@given(seed=st.integers(0, 2**32 - 1), n=st.sampled_from([100_000, 300_001]), ties=st.booleans())
def test_large_inputs_many_chunks(isa, seed, n, ties):
    rng = np.random.default_rng(seed)
    x = (np.round(rng.standard_normal(n) * 3) if ties else rng.standard_normal(n)).astype(np.float32)
    for k in (1, int(rng.integers(1, n + 1)), n):
        assert same_float(kernels.kth_smallest_abs(x, k), ref.kth_smallest_abs(x, k))
    parts = np.split(x, [5, n // 3, n // 3 + 1])
    k = int(rng.integers(1, n + 1))
    assert same_float(kernels.global_kth_smallest_abs(parts, k), ref.kth_smallest_abs(x, k))


def test_edge_values(isa):
    assert kernels.kth_smallest_abs(np.array([-3.5], np.float32), 1) == 3.5
    t = kernels.kth_smallest_abs(np.array([-0.0, 0.0, -0.0], np.float32), 3)
    assert same_float(t, 0.0), "±0.0 are both 0 and the result is +0.0"
    x = np.array([-np.inf, 1, np.inf, -2], np.float32)
    assert [kernels.kth_smallest_abs(x, k) for k in (1, 2, 3, 4)] == [1.0, 2.0, np.inf, np.inf]
    assert kernels.kth_smallest_abs(np.full((7, 3), -2.0, np.float32), 21) == 2.0
    assert kernels.kth_smallest_abs(np.array(-5.0, np.float32), 1) == 5.0  # 0-d


@pytest.mark.parametrize("n", [10, 100_000])
def test_nan_names_first_index(isa, kind, n):
    x = np.ones(n, np.float32)
    x[n - 4] = np.nan
    x[n - 2] = -np.nan
    with pytest.raises(ValueError, match=rf"x contains NaN at flat index {n - 4}$"):
        kernels.kth_smallest_abs(as_kind(x, kind), 1)
    with pytest.raises(ValueError, match=rf"xs\[1\] contains NaN at flat index {n - 4 - 3}$"):
        kernels.global_kth_smallest_abs([x[:3], x[3:]], 1)


def test_errors():
    x = np.ones(4, np.float32)
    with pytest.raises(ValueError, match=r"k must be in \[1, 4\] .*got 0"):
        kernels.kth_smallest_abs(x, 0)
    with pytest.raises(ValueError, match=r"k must be in \[1, 4\] .*got 5"):
        kernels.kth_smallest_abs(x, 5)
    with pytest.raises(ValueError, match="x is empty"):
        kernels.kth_smallest_abs(np.ones((0, 3), np.float32), 1)
    with pytest.raises(ValueError, match="xs is empty"):
        kernels.global_kth_smallest_abs([], 1)
    with pytest.raises(TypeError, match=r"x must have dtype float32, got float64 \(convert with \.float\(\)"):
        kernels.kth_smallest_abs(x.astype(np.float64), 1)
    for dt in (torch.float16, torch.bfloat16, torch.float64):
        with pytest.raises(TypeError, match=f"x must have dtype float32, got {str(dt)[6:]}"):
            kernels.kth_smallest_abs(torch.ones(3, dtype=dt), 1)
    with pytest.raises(TypeError, match="k must be an integer, got float"):
        kernels.kth_smallest_abs(x, 1.0)
    with pytest.raises(TypeError, match="k must be an integer, got bool"):
        kernels.kth_smallest_abs(x, True)
    with pytest.raises(TypeError, match="x must be a torch.Tensor or numpy.ndarray, got list"):
        kernels.kth_smallest_abs([1.0, 2.0], 1)
    with pytest.raises(TypeError, match="xs must be a list or tuple"):
        kernels.global_kth_smallest_abs(x, 1)
    with pytest.raises(TypeError, match=r"xs\[1\] must have dtype float32, got int32"):
        kernels.global_kth_smallest_abs([x, np.ones(2, np.int32)], 1)


def test_accepts_integer_likes_and_noncontiguous(kind):
    x = np.arange(-12, 12, dtype=np.float32).reshape(4, 6)
    for view in (x.T, x[:, ::2], x[::-1]):
        v = torch.from_numpy(x).T if kind == "torch" and view is x.T else as_kind(np.ascontiguousarray(view), kind)
        assert kernels.kth_smallest_abs(v, np.int64(3)) == ref.kth_smallest_abs(np.asarray(view), 3)
    assert kernels.kth_smallest_abs(torch.from_numpy(x)[:, 1::2], torch.tensor(2)) == ref.kth_smallest_abs(x[:, 1::2], 2)
    assert kernels.kth_smallest_abs(x[:, 1::2], 5) == ref.kth_smallest_abs(x[:, 1::2], 5)
    w = torch.nn.Parameter(torch.randn(5, 5))
    assert kernels.kth_smallest_abs(w, 25) == float(w.detach().abs().max())


@settings(BIG, max_examples=2)
@given(seed=st.integers(0, 2**32 - 1), shape=st.sampled_from(["normal", "sorted", "half_zeros", "ties"]))
def test_sampled_select_path(isa, seed, shape):
    """>= 2^20 elements take the sampled select (with its fallback); same answers as a full sort."""
    rng = np.random.default_rng(seed)
    n = (1 << 20) + 4321
    x = rng.standard_normal(n).astype(np.float32)
    if shape == "sorted":
        x = x[np.argsort(np.abs(x))]
    elif shape == "half_zeros":
        x[::2] = 0.0
    elif shape == "ties":
        x = np.round(x * 2).astype(np.float32)
    s = np.sort(np.abs(x))
    for k in (1, n // 4, n // 2, int(rng.integers(1, n + 1)), n):
        assert same_float(kernels.kth_smallest_abs(x, k), s[k - 1])
    parts = [x[: n // 3], x[n // 3:].reshape(-1, 7) if (n - n // 3) % 7 == 0 else x[n // 3:]]
    k = int(rng.integers(1, n + 1))
    assert same_float(kernels.global_kth_smallest_abs(parts, k), s[k - 1])
