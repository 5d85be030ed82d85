"""Each channel-coupling pattern of issue 4 as a small model: output equals the masked model's, and the
channels that every member of a group prunes are really gone."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from .helpers import channel_masks, speedup_and_check


def rows(module: nn.Module, drop, dim: int = 0) -> dict:
    mask = torch.ones_like(module.weight, dtype=torch.bool)
    mask.index_fill_(dim, torch.tensor(drop), False)
    return {"weight": mask}


class Residual(nn.Module):
    def __init__(self, op=torch.add) -> None:
        super().__init__()
        self.op = op
        self.stem = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.a = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.bn_a = nn.BatchNorm2d(8)
        self.head = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        x = F.relu(self.bn(self.stem(x)))
        y = self.bn_a(self.a(x))
        return self.head(F.relu(self.op(x, y)))


@pytest.mark.parametrize("op", [torch.add, torch.sub, lambda a, b: a + b, lambda a, b: a - b])
def test_residual_add_removes_only_channels_both_branches_prune(op):
    torch.manual_seed(0)
    model = Residual(op)
    masks = {"stem": rows(model.stem, [1, 2, 5]), "a": rows(model.a, [2, 5, 7])}
    speedup_and_check(model, torch.randn(2, 3, 8, 8), masks)
    assert model.stem.out_channels == 6 and model.a.out_channels == 6 and model.head.in_channels == 6
    assert model.bn.num_features == 6 and model.a.in_channels == 6


def test_residual_without_common_channels_changes_nothing_but_stays_equal():
    model = Residual()
    masks = {"stem": rows(model.stem, [0, 1]), "a": rows(model.a, [2, 3])}
    speedup_and_check(model, torch.randn(2, 3, 8, 8), masks)
    assert model.stem.out_channels == 8


class SqueezeExcite(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, padding=1)
        self.fc1 = nn.Conv2d(16, 4, 1)
        self.fc2 = nn.Conv2d(4, 16, 1)
        self.out = nn.Conv2d(16, 8, 3)

    def forward(self, x):
        x = F.relu(self.conv(x))
        s = torch.sigmoid(self.fc2(F.relu(self.fc1(F.adaptive_avg_pool2d(x, 1)))))
        return self.out(x * s)


def test_squeeze_excite_gate_loses_the_gated_channels():
    torch.manual_seed(0)
    model = SqueezeExcite()
    masks = {"conv": {**rows(model.conv, [0, 3, 9]), "bias": torch.tensor([i not in (0, 3, 9) for i in range(16)])}}
    speedup_and_check(model, torch.randn(2, 3, 8, 8), masks)
    assert model.conv.out_channels == 13 and model.fc2.out_channels == 13 and model.fc1.in_channels == 13


class SEView(nn.Module):
    """torchvision-style SE: ``view(b, c)`` then Linear, gate with ``expand_as``."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, padding=1, bias=False)
        self.fc1, self.fc2 = nn.Linear(16, 4), nn.Linear(4, 16)
        self.out = nn.Conv2d(16, 8, 1)

    def forward(self, x):
        x = self.conv(x)
        b, c, _, _ = x.size()
        y = self.fc2(F.relu(self.fc1(F.adaptive_avg_pool2d(x, 1).view(b, c)))).view(b, c, 1, 1)
        return self.out(x * torch.sigmoid(y).expand_as(x))


def test_squeeze_excite_with_view_and_expand_as():
    torch.manual_seed(0)
    model = SEView()
    speedup_and_check(model, torch.randn(2, 3, 8, 8), {"conv": rows(model.conv, [1, 2, 3, 4])})
    assert model.conv.out_channels == 12 and model.fc2.out_features == 12 and model.fc1.in_features == 12


class SizedByInput(nn.Module):
    """MaxViT's attention pattern: heads split off the channels (kept whole), then merged back with a size read
    off the block's input, ``reshape(B, N, x.shape[-1])``."""

    def __init__(self) -> None:
        super().__init__()
        self.embed, self.inner, self.head = nn.Linear(8, 16), nn.Linear(16, 16), nn.Linear(16, 4)

    def forward(self, tokens):
        x = self.embed(tokens)
        b, n, d = x.shape
        heads = self.inner(x).reshape(b, n, 2, 8).transpose(2, 3)
        return self.head(heads.transpose(2, 3).reshape(b, n, d))


def test_a_size_read_off_another_tensors_channels_keeps_both():
    torch.manual_seed(0)
    model = SizedByInput()
    masks = {"embed": rows(model.embed, [0, 3, 9])}
    speedup_and_check(model, torch.randn(2, 5, 8), masks)  # before: the reshape broke on the smaller model
    assert model.embed.out_features == 16 and model.inner.out_features == 16


class Concat(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 6, 3, padding=1, bias=False)
        self.b = nn.Conv2d(3, 10, 3, padding=1, bias=False)
        self.head = nn.Conv2d(16, 4, 1)

    def forward(self, x):
        return self.head(torch.cat([self.a(x), self.b(x)], 1))


def test_cat_maps_each_input_channel_to_its_offset():
    torch.manual_seed(0)
    model = Concat()
    head_w = model.head.weight.detach().clone()
    masks = {"a": rows(model.a, [0, 5]), "b": rows(model.b, [1, 2, 9])}
    speedup_and_check(model, torch.randn(2, 3, 8, 8), masks)
    kept = [i for i in range(16) if i not in (0, 5, 6 + 1, 6 + 2, 6 + 9)]
    assert torch.equal(model.head.weight, head_w[:, kept])


class SplitChunk(nn.Module):
    def __init__(self, how: str) -> None:
        super().__init__()
        self.how = how
        self.conv = nn.Conv2d(3, 12, 3, padding=1, bias=False)
        self.left, self.right = nn.Conv2d(6, 4, 1), nn.Conv2d(6, 4, 1)

    def forward(self, x):
        y = self.conv(x)
        a, b = y.chunk(2, dim=1) if self.how == "chunk" else torch.split(y, y.size(1) // 2, dim=1)
        return self.left(a) + self.right(b)


@pytest.mark.parametrize("how", ["chunk", "split"])
def test_chunk_and_split_remove_the_same_number_from_each_piece(how):
    torch.manual_seed(0)
    model = SplitChunk(how)
    masks = {"conv": rows(model.conv, [0, 1, 2, 7])}  # 3 from the first half, 1 from the second
    speedup_and_check(model, torch.randn(2, 3, 8, 8), masks)
    assert model.conv.out_channels == 10 and model.left.in_channels == 5 and model.right.in_channels == 5


def test_split_at_literal_sizes_keeps_the_channels():
    class Literal(SplitChunk):
        def forward(self, x):
            a, b = torch.split(self.conv(x), [6, 6], dim=1)
            return self.left(a) + self.right(b)

    model = Literal("split")
    speedup_and_check(model, torch.randn(2, 3, 8, 8), {"conv": rows(model.conv, [0, 7])})
    assert model.conv.out_channels == 12


class Grouped(nn.Module):
    def __init__(self, groups: int, mult: int = 1) -> None:
        super().__init__()
        self.pw = nn.Conv2d(3, 8, 1, bias=False)
        self.gconv = nn.Conv2d(8, 8 * mult, 3, padding=1, groups=groups, bias=False)
        self.head = nn.Conv2d(8 * mult, 4, 1)

    def forward(self, x):
        return self.head(F.relu(self.gconv(F.relu(self.pw(x)))))


def test_depthwise_conv_drops_whole_channels():
    torch.manual_seed(0)
    model = Grouped(groups=8)
    masks = {"pw": rows(model.pw, [1, 4]), "gconv": rows(model.gconv, [6])}
    speedup_and_check(model, torch.randn(2, 3, 8, 8), masks)
    assert model.gconv.groups == 5 and model.gconv.in_channels == 5 and model.pw.out_channels == 5


def test_depthwise_multiplier_drops_a_group_only_when_all_its_outputs_go():
    torch.manual_seed(0)
    model = Grouped(groups=8, mult=2)
    masks = {"pw": rows(model.pw, [3]), "gconv": rows(model.gconv, [0, 1, 5])}
    speedup_and_check(model, torch.randn(2, 3, 8, 8), masks)
    # group 0 (outputs 0, 1: its input is then unused) and group 3 (input 3, so outputs 6, 7 are dead) go;
    # output 5 alone would unbalance group 2.
    assert model.gconv.groups == 6 and model.gconv.out_channels == 12 and model.pw.out_channels == 6


def test_grouped_conv_keeps_groups_balanced():
    torch.manual_seed(0)
    model = Grouped(groups=2)
    masks = {"pw": rows(model.pw, [0, 1, 5])}  # 2 from group 0, 1 from group 1: only 1 each can go
    speedup_and_check(model, torch.randn(2, 3, 8, 8), masks)
    assert model.gconv.groups == 2 and model.gconv.in_channels == 6 and model.pw.out_channels == 6


class FlattenLinear(nn.Module):
    def __init__(self, how: str) -> None:
        super().__init__()
        self.how = how
        self.conv = nn.Conv2d(3, 6, 3, padding=1, bias=False)
        self.fc = nn.Linear(6 * 4 * 4, 5)

    def forward(self, x):
        y = F.max_pool2d(self.conv(x), 2)
        if self.how == "flatten":
            y = torch.flatten(y, 1)
        elif self.how == "view":
            y = y.view(y.size(0), -1)
        else:
            y = y.reshape(-1, y.shape[1] * y.shape[2] * y.shape[3])
        return self.fc(y)


@pytest.mark.parametrize("how", ["flatten", "view", "reshape"])
def test_flatten_into_linear_removes_each_channels_spatial_block(how):
    torch.manual_seed(0)
    model = FlattenLinear(how)
    speedup_and_check(model, torch.randn(2, 3, 8, 8), {"conv": rows(model.conv, [2, 4])})
    assert model.conv.out_channels == 4 and model.fc.in_features == 4 * 16


def test_view_to_a_literal_size_keeps_the_channels():
    class Literal(FlattenLinear):
        def forward(self, x):
            return self.fc(F.max_pool2d(self.conv(x), 2).view(-1, 96))

    model = Literal("view")
    speedup_and_check(model, torch.randn(2, 3, 8, 8), {"conv": rows(model.conv, [2, 4])})
    assert model.conv.out_channels == 6


class Permuted(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.fc = nn.Linear(8, 6)
        self.fc2 = nn.Linear(6, 4)

    def forward(self, x):
        y = self.conv(x).permute(0, 2, 3, 1)  # channels last
        y = F.gelu(self.fc(y)).transpose(1, 3)  # channels back to dim 1
        return self.fc2(y.transpose(1, 3)).mean((1, 2))


def test_permute_and_transpose_carry_channels_into_linear():
    torch.manual_seed(0)
    model = Permuted()
    masks = {"conv": rows(model.conv, [0, 1, 6]), "fc": {**rows(model.fc, [3]), "bias": torch.arange(6) != 3}}
    speedup_and_check(model, torch.randn(2, 3, 6, 6), masks)
    assert model.fc.in_features == 5 and model.fc.out_features == 5 and model.fc2.in_features == 5


class PassThrough(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, bias=False)
        self.up = nn.Upsample(scale_factor=2)
        self.head = nn.Conv2d(8, 4, 3)

    def forward(self, x):
        y = F.dropout(F.hardswish(self.conv(x)), 0.1, self.training)
        y = F.pad(F.avg_pool2d(self.up(y), 2), (1, 1, 1, 1))
        y = torch.clamp(F.interpolate(y, scale_factor=2.0, mode="nearest"), -1, 1) * 2.0
        return self.head(F.max_pool2d(y, 2))


def test_elementwise_pooling_padding_and_upsampling_pass_channels_through():
    torch.manual_seed(0)
    model = PassThrough()
    speedup_and_check(model, torch.randn(2, 3, 10, 10), {"conv": rows(model.conv, [1, 2, 3])})
    assert model.conv.out_channels == 5 and model.head.in_channels == 5


def test_batchnorm_shift_is_folded_when_the_consumer_allows_or_kept():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, bias=False), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 4, 1),
                          nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 2, 3, padding=1))
    with torch.no_grad():
        for bn in (model[1], model[4]):
            bn.bias.uniform_(0.1, 1.0)
    masks = {"0": rows(model[0], [0, 1]), "3": rows(model[3], [2])}
    speedup_and_check(model, torch.randn(2, 3, 8, 8), masks)
    assert model[3].in_channels == 6  # relu(BN shift) folded into the unpadded 1x1 conv's bias
    assert model[6].in_channels == 4  # a padded conv cannot absorb a constant channel: kept


def test_shared_module_called_twice_couples_both_calls():
    class Shared(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 6, 1, bias=False), nn.Conv2d(3, 6, 1, bias=False)
            self.shared = nn.Conv2d(6, 6, 1, bias=False)
            self.head = nn.Conv2d(12, 2, 1)

        def forward(self, x):
            return self.head(torch.cat([self.shared(self.a(x)), self.shared(self.b(x))], 1))

    torch.manual_seed(0)
    model = Shared()
    masks = {"a": rows(model.a, [0, 1]), "b": rows(model.b, [1, 2]), "shared": rows(model.shared, [4, 5])}
    speedup_and_check(model, torch.randn(2, 3, 4, 4), masks)
    assert model.shared.in_channels == 5 and model.shared.out_channels == 4 and model.head.in_channels == 8


def test_inplace_ops_and_a_random_mlp():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 32), nn.ReLU(inplace=True), nn.Linear(32, 32), nn.ReLU(inplace=True),
                          nn.Dropout(0.2), nn.Linear(32, 3))
    masks = channel_masks(model, 0.5, skip=("5",))
    before, after = speedup_and_check(model, torch.randn(4, 10), masks)
    assert model[0].out_features == 16 and model[2].out_features == 16 and after < before / 2
