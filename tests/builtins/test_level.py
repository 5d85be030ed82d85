"""Level pruner: exact magnitude pruning that stays applied while training."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn
from torch.nn.utils import parametrize

import nnic
from nnic import io
from nnic.pruning import LevelPruner


def mlp(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))


def pruned_count(mask: torch.Tensor) -> int:
    return int((~mask).sum())


def test_the_issue_example_runs_end_to_end(tmp_path):
    model = mlp()
    pruner = nnic.pruner("level", model, [{"sparsity": 0.8, "op_types": ["Linear"]}])
    model, masks = pruner.compress()
    pruner.export_model(tmp_path / "model.pt", tmp_path / "masks.pt")
    assert pruned_count(masks["0"]["weight"]) == math.floor(0.8 * 64 * 128)
    assert pruned_count(masks["2"]["weight"]) == math.floor(0.8 * 128 * 10)
    assert masks["0"]["bias"] is None  # biases are not pruned
    assert isinstance(pruner, LevelPruner)


@given(st.floats(0, 0.999), st.integers(1, 300), st.integers(0, 2**31 - 1))
def test_each_layer_loses_exactly_floor_s_n_of_its_smallest_weights(sparsity, n, seed):
    torch.manual_seed(seed)
    layer = nn.Linear(n, 1, bias=False)
    original = layer.weight.detach().clone()
    _, masks = LevelPruner(nn.Sequential(layer), [{"sparsity": sparsity, "op_types": ["Linear"]}]).compress()
    mask = masks["0"]["weight"]
    from fractions import Fraction

    assert pruned_count(mask) == math.floor(Fraction(repr(sparsity)) * n)
    if 0 < pruned_count(mask) < n:
        assert original.abs()[~mask].max() <= original.abs()[mask].min()
    assert torch.equal(layer.weight, original * mask)


def test_sparsity_counts_use_the_decimal_the_user_wrote():
    layer = nn.Linear(100, 1, bias=False)
    _, masks = LevelPruner(nn.Sequential(layer), [{"sparsity": 0.29, "op_types": ["Linear"]}]).compress()
    assert pruned_count(masks["0"]["weight"]) == 29  # 0.29 * 100 is 28.999999999999996 in binary floating point


def test_ties_are_broken_by_position():
    layer = nn.Linear(4, 2, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1.0, -1.0, 1.0, 2.0], [1.0, -1.0, 3.0, 0.5]]))
    _, masks = LevelPruner(nn.Sequential(layer), [{"sparsity": 0.5, "op_types": ["Linear"]}]).compress()
    # 0.5 is smallest; five weights tie at |1|, of which the first three in row-major order go.
    assert masks["0"]["weight"].tolist() == [[False, False, False, True], [True, True, True, False]]


@pytest.mark.parametrize("make_optimizer", [
    lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=1e-2),
    lambda p: torch.optim.Adam(p, lr=1e-2),
    lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.1),
], ids=["sgd-momentum-decay", "adam", "adamw"])
def test_masks_stay_applied_while_the_user_trains(make_optimizer):
    model = mlp()
    _, masks = LevelPruner(model, [{"sparsity": 0.7, "op_types": ["Linear"]}]).compress()
    before = model[0].weight.detach().clone()
    optimizer = make_optimizer(model.parameters())
    for _ in range(5):
        optimizer.zero_grad()
        model(torch.randn(16, 64)).pow(2).mean().backward()
        optimizer.step()
    for name in ("0", "2"):
        weight, mask = model.get_submodule(name).weight, masks[name]["weight"]
        assert torch.count_nonzero(weight[~mask]) == 0
        assert torch.count_nonzero(model.get_submodule(name).parametrizations.weight.original[~mask]) == 0
    assert not torch.equal(model[0].weight[masks["0"]["weight"]], before[masks["0"]["weight"]])


def test_total_sparsity_uses_one_threshold_across_the_selected_layers():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 10), nn.Linear(10, 100))
    with torch.no_grad():
        model[0].weight.mul_(100)  # the first layer's weights are all large: the second layer takes the pruning
    weights = [model[0].weight.detach().clone(), model[1].weight.detach().clone()]
    _, masks = LevelPruner(model, [{"total_sparsity": 0.5, "op_types": ["Linear"]}]).compress()
    m0, m1 = masks["0"]["weight"], masks["1"]["weight"]
    assert pruned_count(m0) + pruned_count(m1) == 550
    assert pruned_count(m0) < 10
    pruned = torch.cat([weights[0][~m0], weights[1][~m1]]).abs()
    kept = torch.cat([weights[0][m0], weights[1][m1]]).abs()
    assert pruned.max() <= kept.min()


def test_total_sparsity_respects_max_sparsity_per_layer_and_stays_exact():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 10), nn.Linear(10, 100))
    with torch.no_grad():
        model[1].weight.mul_(1e-3)  # the second layer would take all the pruning without a cap
    config = [{"total_sparsity": 0.6, "max_sparsity_per_layer": 0.62, "op_types": ["Linear"]}]
    _, masks = LevelPruner(model, config).compress()
    m0, m1 = masks["0"]["weight"], masks["1"]["weight"]
    assert pruned_count(m1) == 620  # capped at floor(0.62 * 1000)
    assert pruned_count(m0) + pruned_count(m1) == 660  # the rest comes from the first layer


def test_per_layer_caps_can_be_given_by_name():
    model = mlp()
    config = [{"total_sparsity": 0.5, "max_sparsity_per_layer": {"0": 0.55}, "op_types": ["Linear"]}]
    _, masks = LevelPruner(model, config).compress()
    assert pruned_count(masks["0"]["weight"]) <= math.floor(0.55 * 64 * 128)
    assert pruned_count(masks["0"]["weight"]) + pruned_count(masks["2"]["weight"]) == (64 * 128 + 1280) // 2


def test_an_unreachable_total_sparsity_is_an_error():
    # floor(0.5 * n) per layer can sum to less than floor(0.5 * N) only by rounding: use odd sizes.
    model = nn.Sequential(nn.Linear(3, 1, bias=False), nn.Linear(3, 1, bias=False))
    with pytest.raises(ValueError, match="cannot be reached"):
        LevelPruner(model, [{"total_sparsity": 0.5, "max_sparsity_per_layer": 0.5, "op_types": ["Linear"]}]).compress()


def test_multihead_attention_is_masked_under_its_own_parameter_names():
    model = nn.Sequential(nn.MultiheadAttention(16, 4))
    _, masks = LevelPruner(model, [{"sparsity": 0.5, "op_types": ["MultiheadAttention"]}]).compress()
    assert set(masks["0"]) == {"in_proj_weight", "in_proj_bias"} and masks["0"]["in_proj_bias"] is None
    assert pruned_count(masks["0"]["in_proj_weight"]) == 48 * 16 // 2
    x = torch.randn(3, 2, 16)
    model[0](x, x, x)  # still runs


def test_a_nan_weight_is_reported_with_its_layer():
    model = mlp()
    with torch.no_grad():
        model[2].weight[3, 4] = float("nan")
    with pytest.raises(ValueError, match=r"^2\.weight: .*NaN"):
        LevelPruner(model, [{"sparsity": 0.5, "op_types": ["Linear"]}]).compress()


def test_export_writes_plain_weights_and_masks_that_load_without_unpickling(tmp_path):
    model = mlp()
    pruner = LevelPruner(model, [{"sparsity": 0.8, "op_types": ["Linear"]}])
    _, masks = pruner.compress()
    pruner.export_model(tmp_path / "model.pt", tmp_path / "masks.pt")
    state = torch.load(tmp_path / "model.pt", weights_only=True)
    assert set(state) == {"0.weight", "0.bias", "2.weight", "2.bias"}
    fresh = mlp(seed=1)
    fresh.load_state_dict(state)
    assert torch.count_nonzero(fresh[0].weight) == 64 * 128 - math.floor(0.8 * 64 * 128)
    loaded = torch.load(tmp_path / "masks.pt", weights_only=True)
    assert torch.equal(loaded["0"]["weight"], masks["0"]["weight"].cpu())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["masks.pt", "model.pt"]


def test_export_as_safetensors(tmp_path):
    pruner = LevelPruner(mlp(), [{"sparsity": 0.5, "op_types": ["Linear"]}])
    _, masks = pruner.compress()
    pruner.export_model(tmp_path / "m.safetensors", tmp_path / "k.safetensors")
    assert set(io.load_tensors(tmp_path / "m.safetensors")) == {"0.weight", "0.bias", "2.weight", "2.bias"}
    loaded = io.load_masks(tmp_path / "k.safetensors")
    assert torch.equal(loaded["2"]["weight"], masks["2"]["weight"])


def test_export_before_compress_is_an_error(tmp_path):
    with pytest.raises(RuntimeError, match=r"call compress\(\) first"):
        LevelPruner(mlp(), [{"sparsity": 0.5, "op_types": ["Linear"]}]).export_model(tmp_path / "m.pt")
    assert list(tmp_path.iterdir()) == []


def test_unwrap_leaves_plain_modules_with_the_masks_folded_in():
    model = mlp()
    pruner = LevelPruner(model, [{"sparsity": 0.5, "op_types": ["Linear"]}])
    _, masks = pruner.compress()
    x = torch.randn(4, 64)
    masked_out = model(x)
    pruner.unwrap_model()
    assert not any(parametrize.is_parametrized(m) for m in model.modules())
    assert set(model.state_dict()) == {"0.weight", "0.bias", "2.weight", "2.bias"}
    assert isinstance(model[0].weight, nn.Parameter)
    assert torch.count_nonzero(model[0].weight[~masks["0"]["weight"]]) == 0
    torch.testing.assert_close(model(x), masked_out)


def test_pruning_again_replaces_the_masks():
    model = mlp()
    LevelPruner(model, [{"sparsity": 0.5, "op_types": ["Linear"]}]).compress()
    _, masks = LevelPruner(model, [{"sparsity": 0.9, "op_types": ["Linear"]}]).compress()
    assert len(model[0].parametrizations.weight) == 1
    assert torch.count_nonzero(model[0].weight) == 64 * 128 - math.floor(0.9 * 64 * 128)
    assert pruned_count(masks["0"]["weight"]) == math.floor(0.9 * 64 * 128)


def test_sparsity_report():
    pruner = LevelPruner(mlp(), [{"sparsity": 0.75, "op_names": ["2"]}])
    pruner.compress()
    assert pruner.sparsity() == {"2.weight": 0.75}


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_models_are_pruned_exactly_and_stay_in_their_dtype(dtype):
    model = mlp().to(dtype)
    pruner = LevelPruner(model, [{"sparsity": 0.5, "op_types": ["Linear"]}])
    _, masks = pruner.compress()
    pruner.unwrap_model()
    assert model[0].weight.dtype == dtype
    assert torch.count_nonzero(model[0].weight) == 64 * 128 // 2
    assert torch.count_nonzero(model[0].weight[~masks["0"]["weight"]]) == 0


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_level_pruning_on_cuda_matches_cpu():
    cpu, gpu = mlp(), mlp().cuda()
    _, m_cpu = LevelPruner(cpu, [{"sparsity": 0.6, "op_types": ["Linear"]}]).compress()
    _, m_gpu = LevelPruner(gpu, [{"sparsity": 0.6, "op_types": ["Linear"]}]).compress()
    assert torch.equal(m_gpu["0"]["weight"].cpu(), m_cpu["0"]["weight"])
