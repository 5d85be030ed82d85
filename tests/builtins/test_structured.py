"""Structured pruners: exact channel counts, never an empty layer, round_to, total_sparsity, dependency-aware
coupling, data-driven scores, and masks that speedup turns into a smaller model with the same output."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import nnic


def net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv1, self.bn1 = nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16)
            self.conv2, self.bn2 = nn.Conv2d(16, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16)
            self.conv3, self.bn3 = nn.Conv2d(16, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32)
            self.fc = nn.Linear(32, 10)

        def forward(self, x):
            x = F.relu(self.bn1(self.conv1(x)))
            x = F.relu(x + self.bn2(self.conv2(x)))  # conv1 and conv2 are coupled by the residual add
            x = F.relu(self.bn3(self.conv3(x)))
            return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))

    model = Net().eval()
    with torch.no_grad():
        for bn in (model.bn1, model.bn2, model.bn3):
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.5, 0.5)
    return model


X = torch.randn(2, 3, 8, 8)
CONVS = [{"sparsity": 0.5, "op_types": ["Conv2d"]}]


def pruned_channels(mask: torch.Tensor) -> int:
    return int((~mask.flatten(1).any(1)).sum())


@pytest.mark.parametrize("name", ["l1norm", "l2norm", "fpgm"])
def test_weight_pruners_prune_exact_channel_counts_and_the_following_batchnorm(name):
    model = net()
    _, masks = nnic.pruner(name, model, CONVS).compress()
    assert {k: pruned_channels(masks[k]["weight"]) for k in ("conv1", "conv2", "conv3")} == \
        {"conv1": 8, "conv2": 8, "conv3": 16}
    assert torch.equal(masks["bn3"]["weight"], masks["conv3"]["weight"].flatten(1).any(1))
    assert torch.equal(masks["bn3"]["bias"], masks["bn3"]["weight"])


def test_l1norm_prunes_the_smallest_norm_channels():
    model = net()
    norms = model.conv3.weight.detach().abs().flatten(1).sum(1)
    _, masks = nnic.pruner("l1norm", model, [{"sparsity": 0.25, "op_names": ["conv3"]}]).compress()
    kept = masks["conv3"]["weight"].flatten(1).any(1)
    assert set(torch.nonzero(~kept).flatten().tolist()) == set(torch.argsort(norms)[:8].tolist())


def test_l1_scores_are_the_bits_of_abs_then_sum_whatever_the_layout_and_dtype():
    from nnic.builtins.norm import l1_rows

    torch.manual_seed(0)
    rows = {"big": torch.randn(96, 3 * 49), "small": torch.randn(7, 5), "wide": torch.randn(3, 1000),
            "double": torch.randn(16, 33, dtype=torch.float64), "half": torch.randn(8, 9).half(),
            "strided": torch.randn(40, 12).t(), "empty": torch.randn(0, 4)}  # .t(): not contiguous
    got = l1_rows(rows)
    for name, r in rows.items():
        assert got[name].dtype == torch.float64
        assert torch.equal(got[name], r.abs().sum(1).double()), name


def test_a_layer_is_never_emptied_and_round_to_rounds_the_kept_count_up():
    model = net()
    _, masks = nnic.pruner("l1norm", model, [{"sparsity": 0.99, "op_types": ["Conv2d"]}]).compress()
    assert pruned_channels(masks["conv3"]["weight"]) == 31
    model = net()
    _, masks = nnic.pruner("l2norm", model, [{"sparsity": 0.6, "op_names": ["conv3"]}], round_to=8).compress()
    assert 32 - pruned_channels(masks["conv3"]["weight"]) == 16  # 13 kept, rounded up to 16


def test_total_sparsity_ranks_channels_across_layers():
    model = net()
    with torch.no_grad():
        model.conv3.weight.mul_(100)  # conv3's channels are all more important
    cfg = [{"total_sparsity": 0.5, "op_types": ["Conv2d"]}]
    _, masks = nnic.pruner("l1norm", model, cfg).compress()
    counts = {k: pruned_channels(masks[k]["weight"]) for k in ("conv1", "conv2", "conv3")}
    assert counts == {"conv1": 15, "conv2": 15, "conv3": 2}  # each keeps one channel; conv3 pays the rest


def test_dependency_aware_prunes_the_same_channels_in_coupled_layers_and_speedup_removes_them():
    model = net()
    pruner = nnic.pruner("l1norm", model, CONVS, dependency_aware=True, dummy_input=X)
    _, masks = pruner.compress()
    k1, k2 = (masks[k]["weight"].flatten(1).any(1) for k in ("conv1", "conv2"))
    assert torch.equal(k1, k2) and int((~k1).sum()) == 8
    expected = model(X)
    nnic.speedup_model(model, X, masks)
    assert model.conv1.out_channels == 8 and model.conv2.out_channels == 8 and model.conv3.out_channels == 16
    torch.testing.assert_close(model(X), expected, rtol=1e-4, atol=1e-5)


def test_dependency_aware_needs_a_dummy_input():
    with pytest.raises(ValueError, match="dummy_input"):
        nnic.pruner("fpgm", net(), CONVS, dependency_aware=True)


def test_slim_prunes_by_batchnorm_scale_and_masks_the_producer():
    model = net()
    with torch.no_grad():
        model.bn3.weight.copy_(torch.arange(1, 33, dtype=torch.float))
    pruner = nnic.pruner("slim", model, [{"sparsity": 0.25, "op_names": ["bn3"]}])
    _, masks = pruner.compress()
    kept = masks["bn3"]["weight"]
    assert torch.equal(kept, torch.arange(32) >= 8)
    assert torch.equal(masks["conv3"]["weight"].flatten(1).any(1), kept)
    expected = model(X)
    nnic.speedup_model(model, X, masks)
    assert model.conv3.out_channels == 24
    torch.testing.assert_close(model(X), expected, rtol=1e-4, atol=1e-5)


def test_slim_penalty_and_its_gradient_hook():
    model = net()
    pruner = nnic.pruner("slim", model, [{"sparsity": 0.5, "op_types": ["BatchNorm2d"]}], scale=0.1)
    expected = 0.1 * sum(float(bn.weight.detach().abs().sum()) for bn in (model.bn1, model.bn2, model.bn3))
    assert float(pruner.penalty().detach()) == pytest.approx(expected)
    handle = pruner.attach_penalty()
    model(X).sum().backward()
    with_penalty = model.bn3.weight.grad.clone()
    handle.remove()
    model.zero_grad()
    model(X).sum().backward()
    torch.testing.assert_close(with_penalty - model.bn3.weight.grad, 0.1 * torch.sign(model.bn3.weight.detach()))


def test_slim_rejects_layers_without_scaling_factors():
    with pytest.raises(ValueError, match="normalisation"):
        nnic.pruner("slim", net(), CONVS)


def _batches(n=3):
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(4, 3, 8, 8, generator=g), torch.randint(0, 10, (4,), generator=g)) for _ in range(n)]


def test_taylor_scores_channels_from_gradients():
    model = net()
    pruner = nnic.pruner("taylor", model, CONVS, data=_batches(), criterion=F.cross_entropy)
    _, masks = pruner.compress()
    assert pruned_channels(masks["conv3"]["weight"]) == 16
    with pytest.raises(ValueError, match="criterion"):
        nnic.pruner("taylor", net(), CONVS, data=_batches()).compress()
    with pytest.raises(ValueError, match="needs data"):
        nnic.pruner("taylor", net(), CONVS).compress()


def test_taylor_with_an_evaluator():
    from nnic.evaluator import LoopEvaluator

    model = net()
    evaluator = LoopEvaluator(_batches(), lambda p: torch.optim.SGD(p, lr=0.0), F.cross_entropy)
    _, masks = nnic.pruner("taylor", model, CONVS, evaluator=evaluator, training_steps=2).compress()
    assert pruned_channels(masks["conv2"]["weight"]) == 8


@pytest.mark.parametrize("name", ["apoz", "mean_activation"])
def test_activation_pruners_drop_the_channels_that_never_fire(name):
    model = net()
    with torch.no_grad():
        model.conv3.weight[[1, 4, 9]] = 0
        model.bn3.bias.fill_(3.0)
        model.bn3.bias[[1, 4, 9]] = -1.0  # relu(bn3(...)) of these channels is always zero
    cfg = [{"sparsity": 0.1, "op_names": ["bn3"]}]
    pruner = nnic.pruner(name, model, cfg, data=[x for x, _ in _batches()])
    _, masks = pruner.compress()
    assert set(torch.nonzero(~masks["bn3"]["weight"]).flatten().tolist()) == {1, 4, 9}


def test_every_structured_pruner_is_a_registered_plugin():
    names = {info.name for info in nnic.list_plugins("pruner")}
    assert {"l1norm", "l2norm", "fpgm", "slim", "taylor", "apoz", "mean_activation"} <= names


def _coupled_reference(layers, ids):
    """Layers sharing a group id, transitively, by repeated merging of id sets (the plain definition)."""
    sets = [({name}, set(ids.get(name, ()))) for name in layers]
    merged = True
    while merged:
        merged = False
        for i in range(len(sets)):
            for j in range(i + 1, len(sets)):
                if sets[i][1] & sets[j][1]:
                    sets[i] = (sets[i][0] | sets[j][0], sets[i][1] | sets[j][1])
                    del sets[j]
                    merged = True
                    break
            if merged:
                break
    return {frozenset(names) for names, _ in sets}


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(st.none(), st.lists(st.integers(0, 30), max_size=6)), min_size=1, max_size=12))
def test_coupled_layers_are_the_transitive_closure_of_shared_groups(per_layer):
    """Dependency-aware pruning chooses channels per set of layers that share a channel group; the vectorised
    grouping gives the sets the plain definition gives, each in layer order, sets in order of first layer."""
    from nnic.pruning.structured import _coupled_layers

    layers = [f"l{k}" for k in range(len(per_layer))]
    ids = {name: np.asarray(g, dtype=np.int64) for name, g in zip(layers, per_layer) if g is not None}
    got = _coupled_layers(layers, ids)
    assert {frozenset(g) for g in got} == _coupled_reference(layers, ids)
    assert all(g == sorted(g, key=layers.index) for g in got)
    assert [layers.index(g[0]) for g in got] == sorted(layers.index(g[0]) for g in got)
