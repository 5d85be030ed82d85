"""``fuse_mlp_activations``: BERT-style intermediate blocks after int8 ``quantization_speedup`` give their GELU to
the GEMM epilogue, with the same output; blocks that are not BERT's code, or not int8, are left alone."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import nnic
from nnic.quantization.modules import Int8Linear

transformers = pytest.importorskip("transformers")
from nnic_transformers import fuse_mlp_activations  # noqa: E402


def bert(model_cls=None, **kw) -> nn.Module:
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    cfg = BertConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
                     vocab_size=200, max_position_embeddings=64, **kw)
    return (model_cls or BertModel)(cfg, add_pooling_layer=False).eval()


def int8(model: nn.Module) -> nn.Module:
    return nnic.quantization_speedup(copy.deepcopy(model), {
        n: 8 for n, m in model.named_modules() if isinstance(m, nn.Linear)})


def test_bert_gelu_moves_into_the_epilogue_with_the_same_output():
    q = int8(bert())
    ids = torch.randint(0, 200, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        before = q(ids).last_hidden_state
        assert fuse_mlp_activations(q) == ["encoder.layer.0.intermediate", "encoder.layer.1.intermediate"]
        after = q(ids).last_hidden_state
    block = q.encoder.layer[0].intermediate
    assert block.dense.activation == "gelu" and isinstance(block.intermediate_act_fn, nn.Identity)
    torch.testing.assert_close(after, before, atol=1e-5, rtol=1e-5)
    assert fuse_mlp_activations(q) == []  # already fused


def test_blocks_that_cannot_take_the_activation_are_left_alone():
    float_model = bert()
    assert fuse_mlp_activations(float_model) == []  # float nn.Linear: nothing to fuse into
    q = int8(bert(hidden_act="gelu_new"))  # the tanh approximation: not the epilogue's GELU
    assert fuse_mlp_activations(q) == []
    assert all(m.activation is None for m in q.modules() if isinstance(m, Int8Linear))
