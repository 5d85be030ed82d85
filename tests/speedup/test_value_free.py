"""Value-free propagation: after dependency-aware pruning, speedup derives the dead channels (and the constants
they hold) from the masks and the pruning's trace instead of running the masked model. Whatever it derives must
be exactly what propagating on the masked model's values gives: the same groups removed, the same constants
folded, weight for weight; and where the masks alone cannot say (a dead channel holding a non-zero constant
that then meets padding), it falls back to the values and the report says why."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import nnic
from nnic.channels import reuse

from .helpers import assert_close, masked_output, run

tvm = pytest.importorskip("torchvision.models")


def _config(model: nn.Module) -> list[dict]:
    linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    cfg = [{"sparsity": 0.5, "op_types": ["Conv2d", "Linear"]}]
    return cfg + ([{"exclude": True, "op_names": [linears[-1]]}] if linears else [])


def _speedup(model: nn.Module, x, value_free: bool, two_calls: bool, edit=None):
    """Prune ``model`` (dependency-aware) and speed it up; ``edit(masks)`` changes the masks in between."""
    pruner = nnic.pruner("l1norm", model, _config(model), dependency_aware=True, dummy_input=x)
    if two_calls or edit is not None:
        masks = pruner.checked_masks()
        if edit is not None:
            masks = edit(model, masks)
        else:
            pruner.attach(masks)
        speedup = nnic.ModelSpeedup(model, x, masks, value_free=value_free)
        speedup.speedup_model()
        return speedup.report, masks
    _, masks, report = nnic.prune_and_speedup(pruner, value_free=value_free)
    return report, masks


def _same_model(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert sa[k].shape == sb[k].shape and torch.equal(sa[k], sb[k]), k


def _both_ways(model: nn.Module, x, two_calls: bool = False, edit=None):
    """(value-free report, values report), the two results checked equal weight for weight."""
    a, b = copy.deepcopy(model).eval(), copy.deepcopy(model).eval()
    ra, masks = _speedup(a, x, True, two_calls, edit)
    rb, _ = _speedup(b, x, False, two_calls, edit)
    assert rb.propagation.startswith("values")
    _same_model(a, b)
    assert ra.removed_groups == rb.removed_groups and ra.shrunk.keys() == rb.shrunk.keys()
    assert [(g.reason, g.channels, g.modules) for g in ra.kept_groups] == \
        [(g.reason, g.channels, g.modules) for g in rb.kept_groups]
    assert_close(run(a, x), masked_output(model, x, masks))
    return ra, rb


def _randomize_norms(model: nn.Module, seed: int = 0) -> nn.Module:
    """Trained-looking BatchNorm and LayerNorm parameters and statistics (random init has zero biases and
    means: every dead channel would be exactly zero)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.BatchNorm2d, nn.LayerNorm)):
                m.weight.copy_(1 + 0.2 * torch.randn(m.weight.shape, generator=g))
                m.bias.copy_(0.2 * torch.randn(m.bias.shape, generator=g))
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(0.2 * torch.randn(m.running_mean.shape, generator=g))
                m.running_var.copy_(1 + torch.rand(m.running_var.shape, generator=g))
    return model


def _small_vit() -> nn.Module:
    from torchvision.models.vision_transformer import VisionTransformer

    return VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=4, hidden_dim=64, mlp_dim=128,
                             num_classes=10)


QUICK = ["resnet50", "convnext_tiny", "regnet_x_400mf", "densenet121", "mobilenet_v3_large", "efficientnet_b0",
         "vit"]


@pytest.mark.parametrize("name", QUICK)
@pytest.mark.parametrize("trained", [False, True], ids=["init", "trained-norms"])
def test_value_free_gives_what_the_values_give_on_every_quick_family(name, trained):
    torch.manual_seed(0)
    model = _small_vit() if name == "vit" else tvm.get_model(name, weights=None)
    model = _randomize_norms(model.eval()) if trained else model.eval()
    x = torch.randn(1, 3, 32, 32)
    ra, _ = _both_ways(model, x, two_calls=trained)
    assert ra.removed_groups > 0
    assert ra.propagation == "value-free"  # every built-in rule on these graphs has a value-free form


def _keep_norm_biases(model: nn.Module, masks: dict) -> dict:
    """The pruner's masks without those of the BatchNorms: a pruned channel leaves its BatchNorm at the
    constant ``bias - mean * weight / sqrt(var + eps)`` instead of zero."""
    norms = {n for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)}
    return {layer: per for layer, per in masks.items() if layer not in norms}


class _Block(nn.Module):
    """conv -> BN (dead channels at a non-zero constant) -> ReLU, then a residual add, a concat, a grouped and
    a depthwise conv, and a 1x1 conv that folds constants."""

    def __init__(self, pad: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.conv2 = nn.Conv2d(16, 16, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(16)
        self.grouped = nn.Conv2d(32, 32, 3, padding=1, groups=4)
        self.depthwise = nn.Conv2d(32, 32, 3, padding=pad, groups=32)
        self.point = nn.Conv2d(32, 8, 1)
        self.head = nn.Linear(8, 4)

    def forward(self, x):
        a = torch.relu(self.bn1(self.conv1(x)))
        b = torch.relu(self.bn2(self.conv2(a)) + a)
        c = torch.cat([a, b], 1)
        d = self.depthwise(torch.relu(self.grouped(c)))
        return self.head(self.point(d).mean((2, 3)))


def test_non_zero_dead_constants_through_bias_residual_concat_and_grouped_convs():
    torch.manual_seed(0)
    model = _randomize_norms(_Block(pad=0).eval())
    x = torch.randn(1, 3, 12, 12)
    ra, rb = _both_ways(model, x, edit=_keep_norm_biases)
    assert ra.removed_groups == rb.removed_groups > 0


class _Padded(nn.Module):
    """conv -> BN -> ReLU -> padded depthwise conv -> 1x1 conv: a dead channel at a positive constant after the
    BatchNorm reaches the 1x1 conv through zero padding (other values at the borders)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.depthwise = nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False)
        self.point = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        return self.point(self.depthwise(torch.relu(self.bn(self.conv(x))))).mean((2, 3))


def test_a_non_zero_constant_meeting_padding_falls_back_to_the_values():
    torch.manual_seed(0)
    model = _Padded().eval()
    with torch.no_grad():
        model.bn.bias.fill_(1.0)  # a pruned channel holds relu(1.0) = 1 everywhere

    def edit(model, masks):  # the conv's channels masked, the BatchNorm and the depthwise conv kept whole
        return {"conv": masks["conv"]}

    ra, rb = _both_ways(model, torch.randn(1, 3, 10, 10), edit=edit)
    # The 1x1 conv asks whether it can fold the depthwise conv's dead channels: only the activations say.
    assert ra.propagation.startswith("values: ") and "point" in ra.propagation, ra.propagation


class _ChannelsLast(nn.Module):
    """ConvNeXt's block: depthwise conv, permute, LayerNorm over channels, Linear, GELU, Linear, layer scale,
    permute back, residual."""

    def __init__(self, c: int = 16) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, c, 1)
        self.dw = nn.Conv2d(c, c, 3, padding=1, groups=c)
        self.norm = nn.LayerNorm(c)
        self.fc1, self.fc2 = nn.Linear(c, 4 * c), nn.Linear(4 * c, c)
        self.scale = nn.Parameter(torch.rand(c, 1, 1) + 0.5)
        self.head = nn.Linear(c, 3)

    def forward(self, x):
        x = self.stem(x)
        y = self.norm(self.dw(x).permute(0, 2, 3, 1))
        y = self.fc2(nn.functional.gelu(self.fc1(y))).permute(0, 3, 1, 2)
        return self.head((x + self.scale * y).mean((2, 3)))


def test_channels_last_block_with_layer_scale():
    torch.manual_seed(0)
    model = _randomize_norms(_ChannelsLast().eval())
    ra, _ = _both_ways(model, torch.randn(2, 3, 8, 8))
    assert ra.propagation == "value-free" and ra.removed_groups > 0


@pytest.mark.parametrize("change", ["another tensor", "changed in place"])
def test_trace_values_count_only_for_the_same_unchanged_input(change):
    torch.manual_seed(0)
    model = tvm.get_model("resnet18", weights=None).eval()
    x = torch.randn(1, 3, 32, 32)
    pruner = nnic.pruner("l1norm", model, _config(model), dependency_aware=True, dummy_input=x)
    masks = pruner.checked_masks()
    if change == "another tensor":
        x = x.clone()  # equal values, but not what the trace saw
    else:
        x.add_(1)
    speedup = nnic.ModelSpeedup(model, x, masks)
    speedup.speedup_model()
    assert speedup.report.propagation.startswith("values: no trace values")


def test_recall_values_hands_them_out_once_and_checks_the_inputs():
    model = nn.Linear(2, 2)
    x = torch.randn(1, 2)
    reuse.remember_values(model, ("k",), (x,), {}, {"v": 1})
    assert reuse.recall_values(model, ("other",), (x,), {}) is None  # another fingerprint (and gone now)
    reuse.remember_values(model, ("k",), (x,), {}, {"v": 1})
    assert reuse.recall_values(model, ("k",), (x.clone(),), {}) is None
    reuse.remember_values(model, ("k",), (x,), {}, {"v": 1})
    assert reuse.recall_values(model, ("k",), (x,), {}) == {"v": 1}
    assert reuse.recall_values(model, ("k",), (x,), {}) is None
