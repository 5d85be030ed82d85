"""``fast_decode``: LLaMA / Qwen2 / Mistral RMSNorms computed by one ``F.rms_norm`` call give float32 logits equal
bit for bit to transformers' modules (prefill and KV-cached decode, float and int4 + fused projections) and the same
greedy tokens; other dtypes run the original code; the state dict and a second call are unchanged."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import nnic

transformers = pytest.importorskip("transformers")
from nnic_transformers import FastRMSNorm, fast_decode, fuse_projections

SHAPE = {"hidden_size": 64, "intermediate_size": 160, "num_hidden_layers": 2, "num_attention_heads": 4,
         "num_key_value_heads": 2, "vocab_size": 100, "max_position_embeddings": 64, "rms_norm_eps": 1e-5}
FAMILIES = {"llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM),
            "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM),
            "mistral": (transformers.MistralConfig, transformers.MistralForCausalLM)}


def decoder(family: str) -> nn.Module:
    torch.manual_seed(0)
    config_cls, model_cls = FAMILIES[family]
    model = model_cls(config_cls(**SHAPE)).eval()
    with torch.no_grad():  # norms initialise to ones: give them weights that a wrong order of operations would show
        for m in model.modules():
            if "RMSNorm" in type(m).__name__:
                m.weight.normal_(1.0, 0.5)
    return model


@torch.inference_mode()
def decode_logits(model: nn.Module, ids: torch.Tensor, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(every step's last-position logits, greedy tokens) for a prefill of ``ids`` and ``steps`` cached steps."""
    out = model(input_ids=ids, use_cache=True)
    logits = [out.logits[:, -1]]
    for _ in range(steps):
        nxt = logits[-1].argmax(-1, keepdim=True)
        out = model(input_ids=nxt, cache=out.cache, use_cache=True)
        logits.append(out.logits[:, -1])
    stacked = torch.stack(logits, 1)
    return stacked, stacked.argmax(-1)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_float32_logits_and_greedy_tokens_are_bit_identical(family):
    ref = decoder(family)
    fast = copy.deepcopy(ref)
    names = fast_decode(fast)
    assert names == ["model.layers.0.input_layernorm", "model.layers.0.post_attention_layernorm",
                     "model.layers.1.input_layernorm", "model.layers.1.post_attention_layernorm", "model.norm"]
    assert all(isinstance(fast.get_submodule(n), FastRMSNorm) for n in names)
    ids = torch.randint(0, 100, (2, 13), generator=torch.Generator().manual_seed(1))
    want, want_tokens = decode_logits(ref, ids, 8)
    got, got_tokens = decode_logits(fast, ids, 8)
    assert torch.equal(got, want)
    assert torch.equal(got_tokens, want_tokens)
    with torch.inference_mode():
        kw = {"max_new_tokens": 8, "do_sample": False, "attention_mask": torch.ones_like(ids), "pad_token_id": 0}
        assert torch.equal(fast.generate(ids, **kw), ref.generate(ids, **kw))


def test_quantized_and_fused_decoder_stays_bit_identical():
    """The intended use: int4 projections run as fused GEMMs, then the fast norms."""
    q = nnic.quantization_speedup(decoder("llama"), {n: 4 for n, m in decoder("llama").named_modules()
                                                     if isinstance(m, nn.Linear)})
    fuse_projections(q)
    fast = copy.deepcopy(q)
    assert fast_decode(fast)[:2] == ["model.layers.0", "model.layers.1"]  # then the 5 norms
    ids = torch.randint(0, 100, (1, 17), generator=torch.Generator().manual_seed(2))
    want, want_tokens = decode_logits(q, ids, 6)
    got, got_tokens = decode_logits(fast, ids, 6)
    assert torch.equal(got, want)
    assert torch.equal(got_tokens, want_tokens)


def test_other_dtypes_run_the_original_code():
    """transformers multiplies by the weight after casting back; ``F.rms_norm`` would round once: for bfloat16 the
    fast norm must run the original forward, and a model cast after ``fast_decode`` keeps its outputs."""
    ref = decoder("llama").to(torch.bfloat16)
    fast = decoder("llama")
    fast_decode(fast)
    fast = fast.to(torch.bfloat16)
    x = torch.randn(3, 5, 64, generator=torch.Generator().manual_seed(3)).to(torch.bfloat16)
    assert torch.equal(fast.model.norm(x), ref.model.norm(x))
    ids = torch.randint(0, 100, (1, 9), generator=torch.Generator().manual_seed(4))
    with torch.inference_mode():
        assert torch.equal(fast(ids).logits, ref(ids).logits)


def test_state_dict_shared_parameters_and_idempotence():
    ref = decoder("llama")
    fast = copy.deepcopy(ref)
    norm = fast.model.norm
    fast_decode(fast)
    assert fast.model.norm.weight is norm.weight  # shared, not copied
    assert fast.state_dict().keys() == ref.state_dict().keys()
    assert all(torch.equal(fast.state_dict()[k], v) for k, v in ref.state_dict().items())
    assert fast_decode(fast) == []
    assert "LlamaRMSNorm" in repr(fast.model.norm)


def test_bad_input_is_named():
    with pytest.raises(TypeError, match="fast_decode: model must be a torch.nn.Module"):
        fast_decode("llama")
    with pytest.raises(TypeError, match="FastRMSNorm: expected a transformers"):
        FastRMSNorm(nn.LayerNorm(8))
    assert fast_decode(nn.Sequential(nn.Linear(4, 4))) == []
