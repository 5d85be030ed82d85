"""Each built-in module rule shrinks its module and keeps the function, and a BERT-style encoder loses whole
attention heads and FFN channels."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import nnic
from nnic.builtins.speedup_rules.attention import PrunedMultiheadAttention

from .helpers import channel_masks, speedup_and_check


def rows(module, drop, dim=0):
    mask = torch.ones_like(module.weight, dtype=torch.bool)
    mask.index_fill_(dim, torch.tensor(drop), False)
    return {"weight": mask}


@pytest.mark.parametrize("dims", [1, 2, 3])
def test_conv_norm_prelu_chain(dims):
    conv, bn, inorm = (getattr(nn, f"{k}{dims}d") for k in ("Conv", "BatchNorm", "InstanceNorm"))
    torch.manual_seed(0)
    model = nn.Sequential(conv(3, 8, 3, padding=1, bias=False), bn(8), nn.PReLU(8), conv(8, 8, 3, padding=1),
                          inorm(8, affine=True), nn.ReLU(), conv(8, 4, 1))
    masks = {"0": rows(model[0], [1, 2]), "3": {**rows(model[3], [0, 5]), "bias": torch.tensor([0, 1, 1, 1, 1, 0, 1, 1]).bool()}}
    speedup_and_check(model, torch.randn(2, 3, *[6] * dims), masks)
    assert model[1].num_features == 6 and model[2].num_parameters == 6 and model[4].num_features == 6
    assert model[3].in_channels == 6 and model[6].in_channels == 6


@pytest.mark.parametrize("dims, groups", [(1, 1), (2, 2), (3, 1), (2, 4)])
def test_conv_transpose_with_groups(dims, groups):
    convt = getattr(nn, f"ConvTranspose{dims}d")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Identity(), convt(4, 8, 3, stride=2, groups=groups, bias=False), nn.ReLU(),
                          convt(8, 4, 2, groups=groups))
    drop = [0, 1] if groups == 1 else [i * (8 // groups) for i in range(groups)]  # one per group
    masks = {"1": rows(model[1], drop, dim=1) if groups == 1 else _convt_rows(model[1], drop)}
    speedup_and_check(model, torch.randn(2, 4, *[5] * dims), masks)
    assert model[1].out_channels == 8 - len(drop) and model[3].in_channels == 8 - len(drop)
    assert model[1].groups == groups


def _convt_rows(m, drop):
    mask = torch.ones_like(m.weight, dtype=torch.bool)  # [in, out/groups, *k]
    per_in, per_out = m.in_channels // m.groups, m.out_channels // m.groups
    for o in drop:
        g, local = divmod(o, per_out)
        mask[g * per_in:(g + 1) * per_in, local] = False
    return {"weight": mask}


def test_group_norm_removes_whole_groups_only():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 1, bias=False), nn.GroupNorm(4, 8), nn.Conv2d(8, 2, 1))
    with torch.no_grad():
        model[1].bias.zero_()
    masks = {"0": rows(model[0], [2, 3, 5])}  # group 1 (2, 3) goes; 5 alone would break group 2
    speedup_and_check(model, torch.randn(2, 3, 4, 4), masks)
    assert model[1].num_groups == 3 and model[1].num_channels == 6 and model[0].out_channels == 6


def test_layer_norm_over_the_channels_keeps_them_but_not_over_other_dims():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.LayerNorm(8), nn.Linear(8, 4))
    speedup_and_check(model, torch.randn(3, 6), channel_masks(model, 0.5, skip=("2",)))
    assert model[0].out_features == 8

    class Time(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.ln, self.out = nn.Conv1d(3, 8, 1, bias=False), nn.LayerNorm(5), nn.Conv1d(8, 2, 1)

        def forward(self, x):
            return self.out(self.ln(self.conv(x)))

    model = Time()
    speedup_and_check(model, torch.randn(2, 3, 5), {"conv": rows(model.conv, [0, 1, 2])})
    assert model.conv.out_channels == 5


def test_embedding_and_embedding_bag_lose_zero_columns():
    class Emb(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb, self.bag = nn.Embedding(20, 8), nn.EmbeddingBag(20, 8, mode="sum")
            self.fc = nn.Linear(8, 3)

        def forward(self, ids):
            return self.fc(F.relu(self.emb(ids).mean(1) + self.bag(ids)))

    torch.manual_seed(0)
    model = Emb()
    masks = {k: rows(getattr(model, k), [1, 6], dim=1) for k in ("emb", "bag")}
    speedup_and_check(model, torch.randint(0, 20, (3, 5)), masks)
    assert model.emb.embedding_dim == 6 and model.bag.embedding_dim == 6 and model.fc.in_features == 6


def test_bilinear_shrinks_both_inputs_and_its_output():
    class Bi(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(4, 6), nn.Linear(4, 5)
            self.bi, self.out = nn.Bilinear(6, 5, 7), nn.Linear(7, 2)

        def forward(self, x):
            return self.out(self.bi(self.a(x), self.b(x)))

    torch.manual_seed(0)
    model = Bi()
    masks = {"a": {**rows(model.a, [0]), "bias": torch.arange(6) != 0}, "b": rows(model.b, [4]),
             "bi": {**rows(model.bi, [3]), "bias": torch.arange(7) != 3}}
    masks["b"]["bias"] = torch.arange(5) != 4
    speedup_and_check(model, torch.randn(3, 4), masks)
    assert (model.bi.in1_features, model.bi.in2_features, model.bi.out_features) == (5, 4, 6)


class Encoder(nn.Module):
    """A BERT-style post-norm encoder: self-attention (nn.MultiheadAttention) and a GELU FFN."""

    def __init__(self, d=32, heads=4, ffn=64, layers=2):
        super().__init__()
        self.emb = nn.Embedding(50, d)
        self.attn = nn.ModuleList(nn.MultiheadAttention(d, heads, batch_first=True) for _ in range(layers))
        self.ln1 = nn.ModuleList(nn.LayerNorm(d) for _ in range(layers))
        self.fc1 = nn.ModuleList(nn.Linear(d, ffn) for _ in range(layers))
        self.fc2 = nn.ModuleList(nn.Linear(ffn, d) for _ in range(layers))
        self.ln2 = nn.ModuleList(nn.LayerNorm(d) for _ in range(layers))
        self.head = nn.Linear(d, 3)

    def forward(self, ids, mask=None):
        x = self.emb(ids)
        for attn, ln1, fc1, fc2, ln2 in zip(self.attn, self.ln1, self.fc1, self.fc2, self.ln2):
            x = ln1(x + attn(x, x, x, key_padding_mask=mask, need_weights=False)[0])
            x = ln2(x + fc2(F.gelu(fc1(x))))
        return self.head(x[:, 0])


def head_masks(attn: nn.MultiheadAttention, heads):
    d = attn.embed_dim // attn.num_heads
    w = torch.ones_like(attn.in_proj_weight, dtype=torch.bool)
    b = torch.ones_like(attn.in_proj_bias, dtype=torch.bool)
    for h in heads:
        sl = slice(2 * attn.embed_dim + h * d, 2 * attn.embed_dim + (h + 1) * d)  # the value projection rows
        w[sl], b[sl] = False, False
    return {"in_proj_weight": w, "in_proj_bias": b}


def test_bert_style_encoder_loses_whole_heads_and_ffn_channels():
    torch.manual_seed(0)
    model = Encoder().eval()
    masks = {"attn.0": head_masks(model.attn[0], [1, 3]), "attn.1": head_masks(model.attn[1], [0])}
    masks.update({f"fc1.{i}": {**rows(model.fc1[i], list(range(0, 64, 2))), "bias": torch.arange(64) % 2 == 1}
                  for i in range(2)})
    ids = torch.randint(0, 50, (2, 7))
    pad = torch.zeros(2, 7, dtype=torch.bool)
    pad[1, 5:] = True
    before, after = speedup_and_check(model, (ids, pad), masks)
    assert isinstance(model.attn[0], PrunedMultiheadAttention)
    assert model.attn[0].num_heads == 2 and model.attn[1].num_heads == 3
    assert model.fc1[0].out_features == 32 and model.fc2[1].in_features == 32
    assert after < before


def test_pruned_attention_saves_and_loads(tmp_path):
    torch.manual_seed(0)
    model = Encoder().eval()
    masks = {"attn.0": head_masks(model.attn[0], [2])}
    ids = torch.randint(0, 50, (2, 7))
    nnic.speedup_model(model, ids, masks)
    nnic.speedup.save_pruned(model, tmp_path)
    fresh = nnic.speedup.load_pruned(Encoder(), tmp_path).eval()
    assert isinstance(fresh.attn[0], PrunedMultiheadAttention) and fresh.attn[0].num_heads == 3
    torch.testing.assert_close(fresh(ids), model(ids))


def test_attention_weights_in_use_keep_every_head():
    class WithWeights(nn.Module):
        def __init__(self):
            super().__init__()
            self.attn = nn.MultiheadAttention(16, 4)

        def forward(self, x):
            out, w = self.attn(x, x, x)
            return out.sum() + w.sum()

    torch.manual_seed(0)
    model = WithWeights().eval()
    speedup_and_check(model, torch.randn(5, 2, 16), {"attn": head_masks(model.attn, [1])})
    assert isinstance(model.attn, nn.MultiheadAttention)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 5), min_size=1, max_size=4), st.data())
def test_any_along_is_numpys_any_on_every_layout(shape, data):
    """The byte-max form of ``any`` that the channel-mixing rules reduce usage matrices with: numpy's ``any`` on
    every dimension, empty ones and non-contiguous views included."""
    from nnic.speedup.rules import any_along

    flags = torch.from_numpy(np.asarray(data.draw(st.lists(st.booleans(), min_size=int(np.prod(shape)),
                                                            max_size=int(np.prod(shape)))), dtype=bool).reshape(shape))
    if data.draw(st.booleans()):
        flags = flags.transpose(0, -1)
    dim = data.draw(st.integers(0, flags.ndim - 1))
    assert np.array_equal(any_along(flags, dim).numpy(), flags.numpy().any(dim))


_SPECIAL = [0.0, -0.0, 1.0, -2.5, float("nan"), float("inf"), float("-inf"), 1e-30]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 4), min_size=2, max_size=5), st.data())
def test_nonzero_kernels_is_any_over_each_kernel_for_every_dtype_and_layout(shape, data):
    """A convolution's or linear layer's usage (``nonzero_kernels``): for each (output, input) pair, whether
    any value of its kernel is non-zero, as ``!= 0`` says (NaN and infinities count, -0.0 does not), for the
    float dtypes numpy holds and those it does not (bfloat16), 2-D weights, empty and 1x1 kernels, and
    non-contiguous weights."""
    from nnic.speedup.rules import nonzero_kernels

    n = int(np.prod(shape))
    values = data.draw(st.lists(st.sampled_from(_SPECIAL), min_size=n, max_size=n))
    dtype = data.draw(st.sampled_from([torch.float32, torch.float64, torch.float16, torch.bfloat16]))
    weight = torch.tensor(values, dtype=torch.float64).reshape(shape).to(dtype)
    if data.draw(st.booleans()):
        weight = weight.transpose(0, 1)  # a [in, out/groups, *k] view, as a transposed convolution reads it
    kernel = int(np.prod(weight.shape[2:]))
    expected = (weight.double().numpy() != 0).reshape(weight.shape[0], weight.shape[1], kernel).any(2)
    got = nonzero_kernels(nn.Parameter(weight))
    assert got.dtype == torch.bool and got.shape == weight.shape[:2]
    assert np.array_equal(got.numpy(), expected)


@settings(max_examples=100, deadline=None)
@given(st.sampled_from([(1, 3, 4), (4, 2, 3), (1, 0, 5), (2, 3, 0), (5, 7, 1), (1, 1100, 500)]), st.data())
def test_reads_no_live_is_an_output_reading_only_dead_inputs_on_both_paths(shape, data):
    """An output channel of a usage matrix is dead when no input it reads is live: numpy's path (small usage)
    and torch's (over half a million flags) give the reference's flags, with no, some and every input dead."""
    from nnic.speedup.rules import reads_no_live

    g, per_out, per_in = shape
    rng = np.random.default_rng(data.draw(st.integers(0, 2**31 - 1)))
    density = data.draw(st.sampled_from([0.0, 0.05, 0.5, 1.0]))
    usage = rng.random(shape) < density
    dead = rng.random(g * per_in) < data.draw(st.sampled_from([0.0, 0.5, 1.0]))
    expected = ~(usage & ~dead.reshape(g, 1, per_in)).any(2).reshape(-1)
    got = reads_no_live(torch.from_numpy(usage), dead)
    assert got.dtype == torch.bool and np.array_equal(got.numpy(), expected)
