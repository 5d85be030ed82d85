"""The constant a dead channel holds, read off a probe's output: per index along a dimension, the value when
every element there is the same, else NaN."""

from __future__ import annotations

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from nnic.channels.constants import uniform_along

VALUES = st.sampled_from([0.0, -0.0, 1.5, -2.0, float("nan"), float("inf"), 3.0])


def reference(t: torch.Tensor, dim: int) -> list[float]:
    """Index by index: the value when all elements there are equal and not NaN (-0.0 and 0.0 count as equal, the
    maximum is reported), else NaN."""
    out = []
    for k in range(t.shape[dim]):
        vals = t.select(dim, k).double().reshape(-1).tolist()
        out.append(max(vals) if vals and not any(v != v for v in vals) and min(vals) == max(vals) else float("nan"))
    return out


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(1, 3), min_size=1, max_size=4).flatmap(
    lambda shape: st.tuples(st.just(shape), st.integers(0, len(shape) - 1),
                            st.lists(VALUES, min_size=int(np.prod(shape)), max_size=int(np.prod(shape))))))
def test_uniform_along_gives_each_index_its_value_when_all_agree(case):
    shape, dim, values = case
    t = torch.tensor(values, dtype=torch.float32).reshape(shape)
    got = uniform_along(t, dim)
    assert got.dtype == torch.float64 and got.shape == (shape[dim],)
    want = reference(t, dim)
    assert all((g != g and w != w) or g == w for g, w in zip(got.tolist(), want))


def test_a_probes_output_keeps_its_values_signs_and_nans_and_is_a_copy():
    probe = torch.tensor([0.0, -0.0, float("nan"), 2.5], dtype=torch.float64).reshape(1, 4, 1, 1)
    got = uniform_along(probe, 1)
    assert torch.equal(torch.signbit(got), torch.tensor([False, True, False, False]))
    assert got[2].isnan() and got[3] == 2.5
    got[3] = 7.0
    assert probe[0, 3, 0, 0] == 2.5  # not a view of the probe (a float64 probe converts without a copy)
