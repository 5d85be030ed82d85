"""LLaMA-style decoders: heads (grouped-query attention) and MLP channels across gate/up/down pruned, sped up
in one call, saved and reloaded (nnic's manifest, and save_pretrained with the pruned config), generating the
same tokens as the masked model."""

from __future__ import annotations

import copy

import pytest
import torch

import nnic

T = pytest.importorskip("transformers")
from nnic_transformers import find_heads, pruned_config  # noqa: E402

PROMPT = torch.randint(0, 100, (1, 6), generator=torch.Generator().manual_seed(3))


def llama(cls=None, config_cls=None, **kw):
    torch.manual_seed(0)
    cfg = (config_cls or T.LlamaConfig)(**{**dict(hidden_size=64, intermediate_size=96, num_attention_heads=8,
                                                  num_key_value_heads=2, num_hidden_layers=2, vocab_size=100,
                                                  max_position_embeddings=64, pad_token_id=0, bos_token_id=1,
                                                  eos_token_id=2), **kw})
    return (cls or T.LlamaForCausalLM)(cfg).eval()


def prune(model, heads=0.5, mlp=0.25):
    masks = nnic.pruner("transformer_head", model, [{"sparsity": heads}], criterion="l1_weight").compress()[1]
    mlp_layers = [n for n, _ in model.named_modules() if n.endswith(("mlp.gate_proj", "mlp.up_proj"))]
    mlp_masks = nnic.pruner("l1norm", model, [{"sparsity": mlp, "op_names": mlp_layers}], dependency_aware=True,
                            dummy_input=PROMPT).compress()[1]
    return {**masks, **mlp_masks}


def generate(model, n=8):
    with torch.no_grad():
        return model.generate(PROMPT, max_new_tokens=n, do_sample=False, attention_mask=torch.ones_like(PROMPT))


@pytest.mark.parametrize("family", ["llama", "qwen2", "mistral"])
def test_heads_and_mlp_pruned_generate_the_masked_models_tokens(family):
    classes = {"llama": (T.LlamaForCausalLM, T.LlamaConfig), "qwen2": (T.Qwen2ForCausalLM, T.Qwen2Config),
               "mistral": (T.MistralForCausalLM, T.MistralConfig)}[family]
    model = llama(*classes)
    masks = prune(model)
    expected = generate(model)
    n_before = sum(p.numel() for p in model.parameters())
    nnic.speedup_model(model, PROMPT, masks)
    assert torch.equal(generate(model), expected)
    layer = model.model.layers[0]
    assert layer.mlp.gate_proj.out_features == layer.mlp.up_proj.out_features == layer.mlp.down_proj.in_features == 72
    for h in find_heads(model):
        assert (h.num_heads, h.num_kv_heads) == (4, 1)  # a key/value head went with all 4 of its query heads
    assert sum(p.numel() for p in model.parameters()) < 0.8 * n_before


def test_the_decode_benchmarks_30_percent_generates_the_masked_models_tokens():
    """bench/decode.py's pruned variant on a small LLaMA: 30 % of the key/value heads (with their query heads)
    and of the MLP channels, the masked model's 24 greedy tokens, with and without a cache for the dummy input."""
    for dummy in (PROMPT, {"input_ids": PROMPT, "use_cache": False}):
        model = llama(num_attention_heads=12, num_key_value_heads=4, hidden_size=96, intermediate_size=160)
        masks = prune(model, heads=0.3, mlp=0.3)
        expected = generate(model, 24)
        nnic.speedup_model(model, dummy, masks)
        assert torch.equal(generate(model, 24), expected)
        for h in find_heads(model):
            assert (h.num_heads, h.num_kv_heads) == (9, 3)  # floor(0.3 * 4) = 1 key/value head, 3 query heads
        assert model.model.layers[1].mlp.down_proj.in_features == 112  # 160 - floor(0.3 * 160)


def test_saved_and_reloaded_with_the_manifest_and_with_save_pretrained(tmp_path):
    model = llama()
    masks = prune(model)
    nnic.speedup_model(model, PROMPT, masks)
    expected = generate(model)
    nnic.speedup.save_pruned(model, tmp_path / "nnic")
    fresh = nnic.speedup.load_pruned(llama(), tmp_path / "nnic")
    assert torch.equal(generate(fresh), expected)

    model.config = pruned_config(model)
    assert (model.config.num_attention_heads, model.config.num_key_value_heads,
            model.config.intermediate_size, model.config.head_dim) == (4, 1, 72, 8)
    model.save_pretrained(tmp_path / "hf")
    reloaded = T.LlamaForCausalLM.from_pretrained(tmp_path / "hf").eval()
    assert torch.equal(generate(reloaded), expected)


def test_pruned_config_refuses_layers_of_different_widths():
    model = llama()
    layers = [n for n, _ in model.named_modules() if n.endswith("self_attn")]
    masks = nnic.pruner("transformer_head", model, [{"sparsity": 0.5, "op_names": layers[:1]}]).compress()[1]
    nnic.speedup_model(model, PROMPT, masks)
    with pytest.raises(ValueError, match=r"different query head counts.*layers.0.self_attn: 4.*save_pruned"):
        pruned_config(model)
    with pytest.raises(ValueError, match=r"cannot express a pruned shape"):
        pruned_config(copy.deepcopy(T.GPT2LMHeadModel(T.GPT2Config(n_layer=1, n_embd=32, n_head=2))))
