"""``fuse_projections``: a LLaMA decoder's q/k/v and gate/up projections, quantized to int4 or int8, run as one
GEMM each with logits equal bit for bit to the unfused model's and the same greedy tokens; groups that are not
all low-bit with one setting stay as they are."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import nnic
from nnic.quantization import SharedInputPart

transformers = pytest.importorskip("transformers")
from nnic_transformers import fuse_projections  # noqa: E402


def llama() -> nn.Module:
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(hidden_size=64, intermediate_size=160, num_hidden_layers=2, num_attention_heads=4,
                                   num_key_value_heads=2, vocab_size=100, max_position_embeddings=64)
    return transformers.LlamaForCausalLM(cfg).eval()


def quantized(model: nn.Module, bits: int, keep_float: str = "") -> nn.Module:
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and not (keep_float and keep_float in n)]
    return nnic.quantization_speedup(copy.deepcopy(model), {n: bits for n in names})


@pytest.mark.parametrize("bits", [4, 8])
def test_fused_decoder_gives_the_same_logits_and_greedy_tokens(bits):
    q = quantized(llama(), bits)
    fused = copy.deepcopy(q)
    assert fuse_projections(fused) == [f"model.layers.{i}.{p}" for i in range(2)
                                       for p in ("self_attn.qkv_proj", "mlp.gate_up_proj")]
    attn = fused.model.layers[0].self_attn
    assert [type(getattr(attn, n)) for n in ("q_proj", "k_proj", "v_proj")] == [SharedInputPart] * 3
    assert attn.qkv_proj.splits == [64, 32, 32]
    ids = torch.randint(0, 100, (2, 11), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        assert torch.equal(fused(ids).logits, q(ids).logits)
        kw = {"max_new_tokens": 8, "do_sample": False, "attention_mask": torch.ones_like(ids), "pad_token_id": 0}
        assert torch.equal(fused.generate(ids, **kw), q.generate(ids, **kw))
    assert fuse_projections(fused) == []  # already fused


def test_groups_with_a_float_layer_are_left_alone():
    q = quantized(llama(), 4, keep_float="k_proj")
    fused = fuse_projections(q)
    assert fused == ["model.layers.0.mlp.gate_up_proj", "model.layers.1.mlp.gate_up_proj"]
    assert isinstance(q.model.layers[0].self_attn.k_proj, nn.Linear)
    assert fuse_projections(llama()) == []


def test_fused_bert_self_attention_gives_the_same_hidden_states():
    """BERT's self-attention calls query/key/value on one hidden state: one int8 GEMM of 3 x hidden outputs."""
    torch.manual_seed(0)
    cfg = transformers.BertConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                                  vocab_size=100, max_position_embeddings=64)
    q = quantized(transformers.BertModel(cfg, add_pooling_layer=False).eval(), 8)
    fused = copy.deepcopy(q)
    assert fuse_projections(fused) == [f"encoder.layer.{i}.attention.self.qkv" for i in range(2)]
    assert fused.encoder.layer[0].attention.self.qkv.splits == [64, 64, 64]
    ids = torch.randint(0, 100, (3, 17), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        assert torch.equal(fused(input_ids=ids).last_hidden_state, q(input_ids=ids).last_hidden_state)
