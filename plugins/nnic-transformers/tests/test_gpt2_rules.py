"""Hugging Face GPT-2: whole attention heads (fused c_attn / c_proj Conv1D) and MLP channels removed, outputs
unchanged.

Here each ``GPT2Block`` is sped up on its own, exercising the rules on an fx-traced block; whole models in one
call are in test_whole_models.py.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import nnic

transformers = pytest.importorskip("transformers")

E, H, D, INNER = 64, 4, 16, 256


def gpt2(attn="eager", n_layer=2):
    from transformers import GPT2Config, GPT2LMHeadModel
    torch.manual_seed(0)
    cfg = GPT2Config(n_layer=n_layer, n_embd=E, n_head=H, n_positions=32, vocab_size=100, bos_token_id=0,
                     eos_token_id=0, attn_implementation=attn)
    model = GPT2LMHeadModel(cfg).eval()
    with torch.no_grad():  # GPT-2 initialises biases to zero: random ones make the checks stricter
        for m in model.modules():
            if isinstance(m, transformers.pytorch_utils.Conv1D):
                m.bias.normal_(0, 0.1)
    return model


def value_head_masks(conv, heads):
    """Zero the value columns (third block of c_attn's output dim) of whole heads, weight and bias."""
    w = torch.ones_like(conv.weight, dtype=torch.bool)
    b = torch.ones_like(conv.bias, dtype=torch.bool)
    for h in heads:
        w[:, 2 * E + h * D:2 * E + (h + 1) * D], b[2 * E + h * D:2 * E + (h + 1) * D] = False, False
    return {"weight": w, "bias": b}


def proj_head_masks(conv, heads):
    """Zero the c_proj rows that read whole heads."""
    w = torch.ones_like(conv.weight, dtype=torch.bool)
    for h in heads:
        w[h * D:(h + 1) * D] = False
    return {"weight": w}


def fc_masks(conv, fraction=0.5):
    keep = torch.arange(conv.weight.shape[1]) % int(1 / fraction) != 0
    return {"weight": keep[None, :].expand_as(conv.weight).clone(), "bias": keep.clone()}


def n_params(model):
    return sum(p.numel() for p in model.parameters())


def masked_reference(model, masks):
    ref = copy.deepcopy(model)
    with torch.no_grad():
        for layer, per in masks.items():
            for p, m in per.items():
                getattr(ref.get_submodule(layer), p).mul_(m)
    return ref


def speedup_blocks(model, masks):
    """Speed up each block with the masks under its prefix."""
    for i, block in enumerate(model.transformer.h):
        prefix = f"transformer.h.{i}."
        per = {k[len(prefix):]: v for k, v in masks.items() if k.startswith(prefix)}
        nnic.speedup_model(block, torch.randn(2, 8, E), per)


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_gpt2_heads_and_mlp(attn):
    model = gpt2(attn)
    h0, h1 = model.transformer.h
    masks = {"transformer.h.0.attn.c_attn": value_head_masks(h0.attn.c_attn, [1, 2]),
             "transformer.h.1.attn.c_proj": proj_head_masks(h1.attn.c_proj, [0]),
             "transformer.h.0.mlp.c_fc": fc_masks(h0.mlp.c_fc),
             "transformer.h.1.mlp.c_proj": {"weight": fc_masks(h1.mlp.c_fc, 0.25)["weight"].t().clone()}}
    ref = masked_reference(model, masks)
    x = torch.randint(0, 100, (2, 12))
    with torch.no_grad():
        expected = ref(x).logits
    before = n_params(model)
    speedup_blocks(model, masks)
    with torch.no_grad():
        got = model(x).logits
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)

    a0, a1 = h0.attn, h1.attn
    assert (a0.num_heads, a0.split_size) == (2, 2 * D) and (a1.num_heads, a1.split_size) == (3, 3 * D)
    assert tuple(a0.c_attn.weight.shape) == (E, 3 * 2 * D) and a0.c_attn.nf == 3 * 2 * D
    assert tuple(a0.c_proj.weight.shape) == (2 * D, E) and a0.c_proj.nx == 2 * D
    assert tuple(a1.c_attn.weight.shape) == (E, 3 * 3 * D) and tuple(a1.c_proj.weight.shape) == (3 * D, E)
    assert tuple(h0.mlp.c_fc.weight.shape) == (E, INNER // 2) and tuple(h0.mlp.c_proj.weight.shape) == (INNER // 2, E)
    assert tuple(h1.mlp.c_fc.weight.shape) == (E, INNER * 3 // 4) and h1.mlp.c_proj.nx == INNER * 3 // 4
    # the residual stream is pinned by the LayerNorms: every hidden-size dimension stays whole
    assert h0.ln_1.weight.numel() == E and a0.c_attn.nx == E and a0.c_proj.nf == E and h1.mlp.c_proj.nf == E
    assert n_params(model) < before

    # kept heads are the right ones: the pruned layer equals the masked one with the dropped heads left out
    kept = torch.tensor([0, 3])
    cols = (kept[:, None] * D + torch.arange(D)).flatten()
    ref_w = ref.transformer.h[0].attn.c_attn.weight
    expected_w = torch.cat([ref_w[:, cols], ref_w[:, E + cols], ref_w[:, 2 * E + cols]], 1)
    torch.testing.assert_close(a0.c_attn.weight, expected_w)

    # incremental decoding with the KV cache still matches (the cache takes each layer's own head count)
    with torch.no_grad():
        first = model(x[:, :-1], use_cache=True)
        step = model(x[:, -1:], cache=first.cache).logits
    torch.testing.assert_close(step[:, -1], expected[:, -1], rtol=0, atol=1e-5)


def test_gpt2_no_head_removable():
    """Value columns zeroed in part of each head only, c_proj rows of one head only half zero: nothing goes."""
    model = gpt2(n_layer=1)
    block = model.transformer.h[0]
    w = torch.ones_like(block.attn.c_attn.weight, dtype=torch.bool)
    w[:, 2 * E:2 * E + D // 2] = False              # half of head 0's value block
    w[:, 2 * E + 3 * D + 1] = False                 # one column of head 3's value block
    p = torch.ones_like(block.attn.c_proj.weight, dtype=torch.bool)
    p[D:D + D // 2] = False                         # half of the c_proj rows of head 1
    masks = {"attn.c_attn": {"weight": w}, "attn.c_proj": {"weight": p}}
    ref = masked_reference(block, masks)
    before = n_params(block)
    x = torch.randn(2, 8, E)
    nnic.speedup_model(block, x, masks)
    assert block.attn.num_heads == H and block.attn.split_size == E and n_params(block) == before
    with torch.no_grad():
        torch.testing.assert_close(block(x), ref(x), rtol=0, atol=1e-5)


class ReturnsWeights(nn.Module):
    def __init__(self, attn):
        super().__init__()
        self.attn = attn

    def forward(self, x):
        out, weights = self.attn(x)
        return out, weights


def test_gpt2_attention_weights_used_keep_heads():
    model = gpt2(n_layer=1)
    wrapper = ReturnsWeights(model.transformer.h[0].attn)
    masks = {"attn.c_attn": value_head_masks(wrapper.attn.c_attn, [0, 1])}
    nnic.speedup_model(wrapper, torch.randn(2, 8, E), masks)
    assert wrapper.attn.num_heads == H and tuple(wrapper.attn.c_attn.weight.shape) == (E, 3 * E)


def test_conv1d_rule_standalone():
    """Conv1D -> GELU -> Conv1D: the inner channels shrink; a zeroed input feature of the first one goes too."""
    from transformers.pytorch_utils import Conv1D

    torch.manual_seed(0)
    net = nn.Sequential(Conv1D(12, 6), nn.GELU(), Conv1D(5, 12))
    keep = torch.arange(12) % 3 != 0
    masks = {"0": {"weight": keep[None, :].expand(6, 12).clone(), "bias": keep.clone()}}
    x = torch.randn(4, 7, 6)
    ref = masked_reference(net, masks)
    nnic.speedup_model(net, x, masks)
    assert tuple(net[0].weight.shape) == (6, 8) and (net[0].nx, net[0].nf) == (6, 8)
    assert tuple(net[2].weight.shape) == (8, 5) and net[2].nx == 8
    with torch.no_grad():
        torch.testing.assert_close(net(x), ref(x), rtol=0, atol=1e-5)


def test_conv1d_folds_constant_channels():
    """Inner channels whose weights are zero but whose bias is not are constant: folded into the next bias."""
    from transformers.pytorch_utils import Conv1D

    torch.manual_seed(0)
    net = nn.Sequential(Conv1D(12, 6), nn.GELU(), Conv1D(5, 12))
    with torch.no_grad():
        net[0].bias.normal_()
    keep = torch.arange(12) >= 4
    masks = {"0": {"weight": keep[None, :].expand(6, 12).clone()}}
    x = torch.randn(4, 7, 6)
    ref = masked_reference(net, masks)
    nnic.speedup_model(net, x, masks)
    assert tuple(net[0].weight.shape) == (6, 8) and tuple(net[2].weight.shape) == (8, 5)
    with torch.no_grad():
        torch.testing.assert_close(net(x), ref(x), rtol=0, atol=1e-5)
