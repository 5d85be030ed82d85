"""Per-channel statistics that speedup's rules read (all zero, all equal, first value; all zero
alone), checked against a plain numpy loop over the channels: every layout (the channel dimension first, last or in between, non-contiguous
views), selections of few and of many channels, NaN and infinity, empty dimensions, integer and bool tensors."""

from __future__ import annotations

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from nnic.channels.graph import channel_stats, channel_zero


def reference(value: np.ndarray, dim: int, where: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    n = value.shape[dim]
    zero, uniform, first = np.zeros(n, bool), np.zeros(n, bool), np.zeros(n, np.float64)
    for c in range(n):
        if where is not None and not where[c]:
            continue
        x = np.take(value, c, axis=dim).reshape(-1).astype(np.float64)
        if x.size == 0:
            zero[c] = uniform[c] = True
            continue
        finite = bool(np.isfinite(x).all())
        zero[c] = finite and bool((x == 0).all())
        uniform[c] = finite and bool((x == x[0]).all())
        first[c] = x[0]
    return zero, uniform, first


@st.composite
def cases(draw):
    shape = draw(st.lists(st.integers(0, 4), min_size=1, max_size=4))
    dim = draw(st.integers(0, len(shape) - 1))
    dtype = draw(st.sampled_from([torch.float32, torch.float64, torch.int64, torch.bool]))
    # Few distinct values, so that zero and uniform channels are common.
    pool = [0.0, 0.0, 1.5, -2.0, float("nan"), float("inf")] if dtype.is_floating_point else [0, 0, 1, 3]
    flat = draw(st.lists(st.sampled_from(pool), min_size=int(np.prod(shape)), max_size=int(np.prod(shape))))
    value = torch.tensor(flat, dtype=torch.float64).reshape(shape).to(dtype)
    if draw(st.booleans()) and len(shape) > 1:  # the same values through a non-contiguous view
        value = value.transpose(0, -1).contiguous().transpose(0, -1)
    selection = draw(st.sampled_from(["all", "few", "many"]))
    where = None
    if selection != "all":
        k = max(1, shape[dim] // 5) if selection == "few" else shape[dim]
        chosen = draw(st.lists(st.integers(0, max(shape[dim] - 1, 0)), max_size=k)) if shape[dim] else []
        where = torch.zeros(shape[dim], dtype=torch.bool)
        where[chosen] = True
    return value, dim, where


@settings(max_examples=300, deadline=None)
@given(cases())
def test_channel_stats_match_a_per_channel_loop(case):
    value, dim, where = case
    got = channel_stats(value, dim, where)
    zero, uniform, first = reference(value.double().numpy(), dim, None if where is None else where.numpy())
    assert np.array_equal(got.zero.numpy(), zero)
    assert np.array_equal(got.uniform.numpy(), uniform)
    known = uniform  # the first value is read only where a channel is uniform (a constant to fold)
    assert np.array_equal(got.value.numpy()[known], first[known])
    assert np.array_equal(channel_zero(value, dim, where).numpy(), zero)  # the zero-only form agrees


def test_unselected_channels_read_as_neither_zero_nor_uniform():
    value = torch.zeros(2, 8, 3)
    where = torch.zeros(8, dtype=torch.bool)
    where[[1, 6]] = True
    got = channel_stats(value, 1, where)
    assert got.zero.tolist() == where.tolist() and got.uniform.tolist() == where.tolist()
