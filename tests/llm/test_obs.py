"""SparseGPT and GPTQ on single layers: exact patterns, codes on the grid, and less output error than the
data-free baselines on the calibration inputs."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from nnic.llm.groupquant import GroupGrid
from nnic.llm.hessian import Hessian
from nnic.llm.obs import gptq_quantize, sparsegpt_prune
from nnic.llm.patterns import nm_keep, prune_lowest


def layer_problem(seed: int, rows: int = 48, cols: int = 128, tokens: int = 512):
    """A weight and correlated, unevenly scaled inputs (as a transformer's hidden states are)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, cols, generator=g)
    mix = torch.randn(cols, cols, generator=g) / cols ** 0.5 + torch.eye(cols)
    x = (torch.randn(tokens, cols, generator=g) @ mix) * torch.rand(cols, generator=g).mul(3).add(0.2)
    h = Hessian(cols)
    for chunk in x.split(100):
        h.add(chunk)
    return w, x, h.get()


def output_error(x, w, w_hat):
    return float((x @ (w - w_hat).t()).pow(2).sum() / (x @ w.t()).pow(2).sum())


def test_the_hessian_is_the_mean_of_2_x_xt_whatever_the_batching():
    w, x, h = layer_problem(0)
    torch.testing.assert_close(h, 2 * x.t() @ x / x.shape[0], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("bits, group", [(4, 32), (4, 128), (3, 32), (3, 64)])
@pytest.mark.parametrize("act_order", [False, True])
def test_gptq_has_less_output_error_than_rtn_on_the_calibration_inputs(seed, bits, group, act_order):
    w, x, h = layer_problem(seed)
    grid = GroupGrid(bits, symmetric=False, group_size=group)
    q, _, _ = gptq_quantize(w, h, grid, act_order=act_order, damp=0.01)
    rtn = grid.fake_all(w)
    assert output_error(x, w, q) < 0.8 * output_error(x, w, rtn)


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("act_order", [False, True])
def test_gptq_weights_lie_on_their_groups_grid(symmetric, act_order):
    w, _, h = layer_problem(3)
    grid = GroupGrid(4, symmetric=symmetric, group_size=32)
    q, scale, zero = gptq_quantize(w, h, grid, act_order=act_order)
    s, z = grid.expand(scale, w.shape[1]), grid.expand(zero, w.shape[1]).float()
    codes = q / s + z
    torch.testing.assert_close(codes, codes.round(), rtol=0, atol=1e-3)
    spec = grid.spec
    assert int(codes.round().min()) >= spec.qmin and int(codes.round().max()) <= spec.qmax


def test_gptq_with_uncorrelated_inputs_of_equal_scale_is_round_to_nearest():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(16, 64, generator=g)
    grid = GroupGrid(4, symmetric=True, group_size=32)
    q, _, _ = gptq_quantize(w, 2 * torch.eye(64), grid, act_order=False, damp=0.0)
    torch.testing.assert_close(q, grid.fake_all(w))


@pytest.mark.parametrize("scope", ["row", "layer"])
@pytest.mark.parametrize("sparsity", [0.5, 0.3, 0.77])
def test_sparsegpt_prunes_exactly_and_beats_magnitude_with_the_same_count(scope, sparsity):
    w, x, h = layer_problem(1, cols=200)  # 200 columns: two lazy blocks, the second one partial
    w_hat, keep = sparsegpt_prune(w, h, sparsity=sparsity, scope=scope)
    pruned = (~keep).sum(1)
    if scope == "row":
        assert (pruned == int(sparsity * 200)).all()
    else:
        assert int(pruned.sum()) == int(sparsity * w.numel())
    assert bool((w_hat[~keep] == 0).all())
    magnitude = w * prune_lowest(w.abs(), int(sparsity * (200 if scope == "row" else w.numel())), scope)
    assert output_error(x, w, w_hat) < 0.7 * output_error(x, w, magnitude)


def test_sparsegpt_n_m_masks_keep_exactly_n_of_every_m():
    w, x, h = layer_problem(2)
    for n, m in [(2, 4), (1, 4), (4, 8)]:
        w_hat, keep = sparsegpt_prune(w, h, n=n, m=m)
        assert (keep.reshape(-1, m).sum(1) == n).all()
        assert (w_hat.reshape(-1, m).ne(0).sum(1) <= n).all()


@settings(deadline=None, max_examples=50)
@given(rows=st.integers(1, 6), groups=st.integers(1, 6), m=st.sampled_from([2, 4, 8]), data=st.data())
def test_nm_keep_matches_a_numpy_reference(rows, groups, m, data):
    import numpy as np

    n = data.draw(st.integers(0, m))
    vals = data.draw(st.lists(st.integers(0, 5), min_size=rows * groups * m, max_size=rows * groups * m))
    scores = np.array(vals, dtype=np.float32).reshape(rows, groups * m)
    expected = np.zeros_like(scores, dtype=bool).reshape(-1, m)
    for i, grp in enumerate(scores.reshape(-1, m)):
        order = sorted(range(m), key=lambda j: (-grp[j], j))  # highest first, ties keep the earlier
        expected[i, order[:n]] = True
    np.testing.assert_array_equal(nm_keep(torch.from_numpy(scores), n, m).numpy(), expected.reshape(rows, -1))


@settings(deadline=None, max_examples=50)
@given(rows=st.integers(1, 5), cols=st.integers(1, 12), frac=st.floats(0, 0.99), data=st.data())
def test_prune_lowest_prunes_exactly_k_per_row_or_per_layer(rows, cols, frac, data):
    vals = data.draw(st.lists(st.integers(0, 3), min_size=rows * cols, max_size=rows * cols))
    scores = torch.tensor(vals, dtype=torch.float32).reshape(rows, cols)
    k_row, k_layer = int(frac * cols), int(frac * rows * cols)
    keep = prune_lowest(scores, k_row, "row")
    assert ((~keep).sum(1) == k_row).all()
    for r in range(rows):  # within a row, every pruned score is <= every kept score
        if 0 < k_row < cols:
            assert float(scores[r][~keep[r]].max()) <= float(scores[r][keep[r]].min())
    keep = prune_lowest(scores, k_layer, "layer")
    assert int((~keep).sum()) == k_layer
    if 0 < k_layer < rows * cols:
        assert float(scores[~keep].max()) <= float(scores[keep].min())
