"""abs_max / min_max against the numpy reference (exact)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from numpy.testing import assert_array_equal

from nnic import kernels
from nnic.testing import reference as ref
from nnic.testing import strategies as nst

SETTINGS = settings(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
BIG = settings(SETTINGS, max_examples=4)


def as_kind(a, kind):
    return torch.from_numpy(a.copy()) if kind == "torch" else a.copy()


def to_np(a):
    return a.numpy() if isinstance(a, torch.Tensor) else a


def reducible(a: np.ndarray, axis) -> bool:
    return a.size > 0 if axis is None else (a.shape[axis] == 0 or a.size > 0)


@SETTINGS
@given(nst.with_axis(nst.weight_arrays()).filter(lambda xa: reducible(*xa)))
def test_abs_max_and_min_max_match_reference(isa, kind, xa):
    x, axis = xa
    am = kernels.abs_max(as_kind(x, kind), axis=axis)
    lo, hi = kernels.min_max(as_kind(x, kind), axis=axis)
    ax = None if axis is None else axis % x.ndim
    if axis is None:
        assert isinstance(am, float) and isinstance(lo, float)
        assert (am, lo, hi) == (ref.abs_max(x), *ref.min_max(x))
    else:
        assert isinstance(am, torch.Tensor if kind == "torch" else np.ndarray)
        assert_array_equal(to_np(am), ref.abs_max(x, ax))
        rlo, rhi = ref.min_max(x, ax)
        assert_array_equal(to_np(lo), rlo)
        assert_array_equal(to_np(hi), rhi)


@BIG
@given(seed=st.integers(0, 2**32 - 1), shape=st.sampled_from([(200_000,), (1000, 3, 50), (3, 70_000), (70_000, 2)]))
def test_large_every_axis(isa, seed, shape):
    x = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
    for axis in [None, *range(len(shape))]:
        if axis is None:
            assert kernels.abs_max(x) == ref.abs_max(x)
            assert kernels.min_max(x) == ref.min_max(x)
        else:
            assert_array_equal(kernels.abs_max(x, axis), ref.abs_max(x, axis))
            for a, b in zip(kernels.min_max(x, axis), ref.min_max(x, axis)):
                assert_array_equal(a, b)


def test_edges_and_errors(isa, kind):
    x = as_kind(np.array([[-3.0, np.inf], [-0.0, 1.0]], np.float32), kind)
    assert kernels.abs_max(x) == np.inf
    assert kernels.min_max(x) == (-3.0, np.inf)
    assert_array_equal(to_np(kernels.abs_max(x, 0)), [np.inf, 1.0])
    assert kernels.abs_max(as_kind(np.array(-2.5, np.float32), kind)) == 2.5
    assert to_np(kernels.abs_max(as_kind(np.ones((0, 3), np.float32), kind), 0)).shape == (0,)
    with pytest.raises(ValueError, match="x is empty"):
        kernels.abs_max(as_kind(np.ones((3, 0), np.float32), kind), 0)
    with pytest.raises(ValueError, match="x is empty"):
        kernels.min_max(as_kind(np.ones(0, np.float32), kind))
    y = np.ones((2, 3), np.float32)
    y[1, 2] = np.nan
    with pytest.raises(ValueError, match="x contains NaN at flat index 5"):
        kernels.abs_max(as_kind(y, kind), 1)
    with pytest.raises(ValueError, match="x contains NaN at flat index 5"):
        kernels.min_max(as_kind(y, kind))
    with pytest.raises(ValueError, match=r"axis must be in \[-2, 2\) for a 2-d input, got -3"):
        kernels.abs_max(x, -3)
    with pytest.raises(TypeError, match="x must have dtype float32, got float64"):
        kernels.min_max(np.ones(3))
