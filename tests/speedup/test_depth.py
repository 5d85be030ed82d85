"""Structured pruning removes what was asked where the structure allows it: grouped convolutions lose the same
number of channels in every block (their inputs coupled to their outputs), channels-last ConvNeXt blocks lose
residual-stream channels through their LayerNorms and layer scales, and the whole of ConvNeXt-tiny,
RegNetX-400MF and a small ResNeXt reach the parameter ratios Torch-Pruning 1.6.1 reaches on the same request
(``bench/depth.py`` measures both side by side); the pruned output always equals the masked model's."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import nnic
from nnic.builtins.speedup_rules.layer_norm import PrunedLayerNorm

from .helpers import assert_close, masked_output, run

tvm = pytest.importorskip("torchvision.models")


def _prune(model: nn.Module, x: torch.Tensor, head: str | None, sparsity: float = 0.5):
    """l1norm on every Conv2d and Linear but ``head``, dependency-aware, then speedup; returns (masks, report)."""
    cfg = [{"sparsity": sparsity, "op_types": ["Conv2d", "Linear"]}]
    if head:
        cfg.append({"exclude": True, "op_names": [head]})
    model.eval()
    pruner = nnic.pruner("l1norm", model, cfg, dependency_aware=True, dummy_input=x)
    _, masks = pruner.compress()
    expected = masked_output(model, x, masks)
    speedup = nnic.ModelSpeedup(model, x, masks)
    speedup.speedup_model()
    assert_close(run(model, x), expected)
    return masks, speedup.report


def _n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


class GroupedBlock(nn.Module):
    """1x1 conv, grouped 3x3 (4 blocks of 4 channels), 1x1 conv: the ResNeXt / RegNet bottleneck."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.bn_a = nn.Conv2d(8, 16, 1), nn.BatchNorm2d(16)
        self.b, self.bn_b = nn.Conv2d(16, 16, 3, padding=1, groups=4), nn.BatchNorm2d(16)
        self.c = nn.Conv2d(16, 8, 1)

    def forward(self, x):
        y = torch.relu(self.bn_a(self.a(x)))
        return self.c(torch.relu(self.bn_b(self.b(y))))


def test_grouped_convolution_loses_the_same_channels_in_every_block_inputs_with_outputs():
    torch.manual_seed(0)
    model = GroupedBlock()
    masks, _ = _prune(model, torch.randn(2, 8, 6, 6), head="c")
    pruned_b = ~masks["b"]["weight"].flatten(1).any(1)
    pruned_a = ~masks["a"]["weight"].flatten(1).any(1)
    assert pruned_b.reshape(4, 4).sum(1).tolist() == [2, 2, 2, 2]  # half of every block
    assert torch.equal(pruned_a, pruned_b)  # input channel k goes with output channel k
    assert (model.b.groups, model.b.in_channels, model.b.out_channels) == (4, 8, 8)
    assert model.a.out_channels == 8 and model.c.in_channels == 8


def _select_by_definition(pruner, roots, total, n_prune, sparsity, blocks):
    """The grouped selection spelled out: the first block list all of whose ids are among ``roots``; from each
    block its distinct ids' lowest-scored (ties to the lower id), as many as the sparsity asks of that block; from
    the ids in no block, the same; without such a list, the ``n_prune`` lowest of all."""
    from nnic.selection import amount

    def lowest(ids, k):
        return sorted(ids, key=lambda r: (total[list(roots).index(r)], r))[:max(k, 0)]

    present = set(roots.tolist())
    parts = next((b for b in blocks if all(r in present for part in b for r in part)), None)
    if parts is None:
        return sorted(lowest(roots.tolist(), n_prune))
    chosen = []
    for part in parts + [sorted(present - {r for part in parts for r in part})]:
        unique = sorted(set(part))
        if unique:
            chosen += lowest(unique, len(unique) - pruner._keep_count(len(unique), amount(sparsity, len(unique))))
    return sorted(chosen)


@pytest.mark.parametrize("seed", range(30))
def test_grouped_selection_equals_its_definition(seed):
    """Blocks of distinct ids are selected in one vectorised pass; blocks that repeat an id one by one: both as
    the definition says, scores with ties included."""
    rng = np.random.default_rng(seed)
    pruner = nnic.pruner("l1norm", nn.Sequential(nn.Linear(2, 2)), [{"sparsity": 0.5, "op_types": ["Linear"]}],
                         round_to=int(rng.integers(1, 3)))
    g, per = int(rng.integers(1, 6)), int(rng.integers(1, 7))
    roots = np.sort(rng.choice(1000, size=g * per + int(rng.integers(0, 5)), replace=False)).astype(np.int64)
    total = rng.integers(0, 4, size=len(roots)).astype(np.float64)  # few values: many ties
    ids = rng.permutation(roots)[:g * per].reshape(g, per)
    if seed % 3 == 0:  # a block that repeats an id (an input coupled to an output of the same block)
        ids[0, -1] = ids[0, 0]
    blocks = [[[5000, 5001]], ids.tolist()] if seed % 2 else [ids.tolist()]
    sparsity = float(rng.choice([0.25, 0.5, 0.7]))
    n_prune = int(rng.integers(0, len(roots)))
    got = pruner._select(roots, total, n_prune, sparsity, blocks)
    assert sorted(got.tolist()) == _select_by_definition(pruner, roots, total, n_prune, sparsity, blocks)


def test_grouped_convolution_with_more_outputs_than_inputs_is_still_balanced():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Conv2d(4, 8, 1), nn.ReLU(), nn.Conv2d(8, 16, 3, padding=1, groups=4), nn.ReLU(),
                          nn.Conv2d(16, 4, 1))
    masks, _ = _prune(model, torch.randn(2, 4, 6, 6), head="4")
    pruned = ~masks["2"]["weight"].flatten(1).any(1)
    assert pruned.reshape(4, 4).sum(1).tolist() == [2, 2, 2, 2]
    assert model[2].groups == 4 and model[2].out_channels == 8 and model[4].in_channels == 8


def _convnext_block_model(dim: int = 16) -> nn.Module:
    from torchvision.models.convnext import CNBlock, LayerNorm2d

    model = nn.Sequential(nn.Conv2d(3, dim, 2, stride=2), LayerNorm2d(dim, eps=1e-6),
                          CNBlock(dim, layer_scale=0.5, stochastic_depth_prob=0.0),
                          CNBlock(dim, layer_scale=0.5, stochastic_depth_prob=0.0),
                          LayerNorm2d(dim, eps=1e-6), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(dim, 5))
    with torch.no_grad():  # layer scales and norm affines that differ per channel, so that slicing them matters
        for m in model.modules():
            if isinstance(m, CNBlock):
                m.layer_scale.uniform_(0.1, 1.0)
            if isinstance(m, nn.LayerNorm):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
    return model


def test_convnext_blocks_lose_residual_channels_through_layer_norm_and_layer_scale():
    torch.manual_seed(0)
    model = _convnext_block_model()
    before = _n_params(model)
    _, report = _prune(model, torch.randn(2, 3, 16, 16), head="7")
    block = model[2]
    assert model[0].out_channels == 8 and model[7].in_features == 8
    assert isinstance(model[1], PrunedLayerNorm) and (model[1].num_features, model[1].full_features) == (8, 16)
    assert isinstance(block.block[2], PrunedLayerNorm) and block.block[2].num_features == 8
    assert block.block[0].groups == block.block[0].out_channels == 8  # depthwise stays depthwise
    assert tuple(block.layer_scale.shape) == (8, 1, 1)
    assert (block.block[3].in_features, block.block[3].out_features, block.block[5].out_features) == (8, 32, 8)
    assert _n_params(model) < 0.35 * before  # 0.338 measured: the 5-way head and biases stay
    assert not report.kept_groups  # nothing that was asked for is left


def test_layer_norm_keeps_channels_whose_weight_is_not_masked():
    """A zero channel entering a LayerNorm whose weight there is not zero comes out input-dependent: kept."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.LayerNorm(8), nn.Linear(8, 4)).eval()
    keep = torch.ones(8, dtype=torch.bool)
    keep[:4] = False
    masks = {"0": {"weight": keep[:, None].expand(8, 6).clone(), "bias": keep.clone()}}
    x = torch.randn(3, 6)
    expected = masked_output(model, x, masks)
    speedup = nnic.ModelSpeedup(model, x, masks)
    speedup.speedup_model()
    assert_close(run(model, x), expected)
    assert model[0].out_features == 8 and isinstance(model[1], nn.LayerNorm)
    kept = speedup.report.kept_groups
    assert sum(g.channels for g in kept) == 4  # the four masked channels, and why: the Linear after the norm
    assert all("'2' reads it, and it is not zero there" == g.reason and "0" in g.modules for g in kept), kept
    assert "'2' reads it" in str(speedup.report)


@pytest.mark.parametrize("dim", [-1, 1])
def test_pruned_layer_norm_equals_layer_norm_over_the_zero_padded_input(dim):
    g = torch.Generator().manual_seed(3)
    full, kept = 12, torch.tensor([0, 2, 3, 7, 8, 11])
    x_kept = torch.randn(2, 5, 4, len(kept), generator=g, dtype=torch.float64) * 3 + 1
    x_full = torch.zeros(2, 5, 4, full, dtype=torch.float64)
    x_full[..., kept] = x_kept
    ln = nn.LayerNorm(full, eps=1e-6, dtype=torch.float64)
    with torch.no_grad():
        ln.weight.uniform_(0.5, 2.0, generator=g)
        ln.bias.uniform_(-1.0, 1.0, generator=g)
    expected = ln(x_full)[..., kept]
    pruned = PrunedLayerNorm(len(kept), full, dim, 1e-6, dtype=torch.float64)
    with torch.no_grad():
        pruned.weight.copy_(ln.weight[kept])
        pruned.bias.copy_(ln.bias[kept])
    if dim == 1:
        got = pruned(x_kept.movedim(-1, 1)).movedim(1, -1)
    else:
        got = pruned(x_kept)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)
    assert PrunedLayerNorm.from_manifest(pruned.manifest_attrs()).manifest_attrs() == pruned.manifest_attrs()


def test_pruned_layer_norm_refuses_sizes_that_cannot_be():
    with pytest.raises(ValueError, match="num_features"):
        PrunedLayerNorm(5, 4)
    with pytest.raises(ValueError, match="dim"):
        PrunedLayerNorm(2, 4, dim=2)


def _small_resnext():
    from torchvision.models.resnet import Bottleneck, ResNet

    return ResNet(Bottleneck, [1, 1, 1, 1], groups=32, width_per_group=4, num_classes=10)


# Parameters left (pruned / dense) by Torch-Pruning 1.6.1 on the same request (MagnitudeImportance(p=1),
# pruning_ratio=0.5, classifier ignored), measured with bench/depth.py's run_tp.
TP_RATIO = {"convnext_tiny": 0.260, "regnet_x_400mf": 0.270, "resnext_small": 0.252}


@pytest.mark.parametrize("name", sorted(TP_RATIO))
def test_parameter_ratio_reaches_torch_pruning(name):
    torch.manual_seed(0)
    model = _small_resnext() if name == "resnext_small" else tvm.get_model(name, weights=None)
    head = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)][-1]
    before = _n_params(model)
    _prune(model, torch.randn(1, 3, 64, 64), head)
    assert _n_params(model) / before <= TP_RATIO[name] + 0.01
