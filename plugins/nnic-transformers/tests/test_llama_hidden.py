"""Hidden-size (residual stream) pruning of LLaMA / Qwen2 / Mistral decoders with ``transformer_hidden``: every
member of a hidden channel goes together, the norms keep their divisor, the sped-up model computes the masked
model's logits and generates its tokens, and it saves and reloads (nnic's manifest; save_pretrained after the
exact rewrite of the norms)."""

from __future__ import annotations

import pytest
import torch

import nnic

T = pytest.importorskip("transformers")
from nnic_transformers import PrunedRMSNorm, pruned_config, standard_norms  # noqa: E402
from nnic_transformers.hidden_pruner import stack_members  # noqa: E402

PROMPT = torch.randint(0, 100, (1, 6), generator=torch.Generator().manual_seed(3))
WHOLE = {"input_ids": PROMPT, "use_cache": False}  # one graph of the whole model (no cache object)
FAMILIES = {"llama": (T.LlamaForCausalLM, T.LlamaConfig), "qwen2": (T.Qwen2ForCausalLM, T.Qwen2Config),
            "mistral": (T.MistralForCausalLM, T.MistralConfig)}


def decoder(family="llama", **kw):
    cls, config_cls = FAMILIES[family]
    torch.manual_seed(0)
    cfg = config_cls(**{"hidden_size": 64, "intermediate_size": 96, "num_attention_heads": 8,
                        "num_key_value_heads": 2, "num_hidden_layers": 2, "vocab_size": 100,
                        "max_position_embeddings": 64, "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2, **kw})
    model = cls(cfg).eval()
    with torch.no_grad():  # norms away from 1, so that a wrong divisor or weight shows
        for m in model.modules():
            if type(m).__name__.endswith("RMSNorm"):
                m.weight.uniform_(0.5, 1.5)
            if isinstance(m, torch.nn.Linear) and m.bias is not None:
                m.bias.normal_(0, 0.1)
    return model


def generate(model, n=8):
    with torch.no_grad():
        return model.generate(PROMPT, max_new_tokens=n, do_sample=False, attention_mask=torch.ones_like(PROMPT))


def logits(model):
    with torch.no_grad():
        return model(PROMPT).logits


def assert_close(got, want):
    assert (got - want).abs().max() <= 1e-4 * want.abs().max(), float((got - want).abs().max())


@pytest.mark.parametrize("family, kw", [("llama", {}), ("llama", {"attention_bias": True, "mlp_bias": True}),
                                        ("llama", {"tie_word_embeddings": True}), ("qwen2", {}), ("mistral", {})])
def test_pruned_hidden_size_computes_the_masked_models_logits_and_tokens(family, kw):
    model = decoder(family, **kw)
    masks = nnic.pruner("transformer_hidden", model, [{"sparsity": 0.25}]).compress()[1]
    want_logits, want_tokens = logits(model), generate(model)
    speedup = nnic.ModelSpeedup(model, WHOLE, masks)
    speedup.speedup_model()
    assert model.model.embed_tokens.weight.shape == (100, 48)
    assert model.lm_head.in_features == 48
    layer = model.model.layers[1]
    assert [lin.in_features for lin in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj,
                                        layer.mlp.gate_proj, layer.mlp.up_proj)] == [48] * 5
    assert layer.self_attn.o_proj.out_features == layer.mlp.down_proj.out_features == 48
    norms = [m for m in model.modules() if isinstance(m, PrunedRMSNorm)]
    assert len(norms) == 5 and all((n.num_features, n.full_features) == (48, 64) for n in norms)
    if kw.get("tie_word_embeddings"):
        assert model.lm_head.weight is model.model.embed_tokens.weight
    assert_close(logits(model), want_logits)
    assert torch.equal(generate(model), want_tokens)


def test_every_member_of_a_pruned_channel_is_masked_and_the_residual_stream_is_zero_there():
    model = decoder(attention_bias=True)
    pruner = nnic.pruner("transformer_hidden", model, [{"sparsity": 0.25}], criterion="l1_weight")
    masks = pruner.compress()[1]
    gone = ~masks["model.embed_tokens"]["weight"][0]
    assert int(gone.sum()) == 16
    for m in stack_members(model, "model"):
        mask = masks[m.module][m.param]
        along = mask.movedim(m.dim, 0).reshape(64, -1)
        assert torch.equal(along.any(1), ~gone), (m.module, m.param)
    # what speedup relies on: the residual stream (every layer's output) is exactly zero at the pruned channels
    with torch.no_grad():
        states = model(PROMPT, output_hidden_states=True).hidden_states
    assert all(bool((h[..., gone] == 0).all()) for h in states)
    # the channels kept are the best-scored ones
    scores = pruner.channel_scores()["model"]
    assert scores[~gone].min() >= scores[gone].max()


def test_combined_with_heads_and_mlp_channels_and_round_to():
    model = decoder(hidden_size=96, intermediate_size=128)
    heads = nnic.pruner("transformer_head", model, [{"sparsity": 0.5}]).compress()[1]
    mlp_names = [n for n, _ in model.named_modules() if n.endswith(("mlp.gate_proj", "mlp.up_proj"))]
    mlp = nnic.pruner("l1norm", model, [{"sparsity": 0.25, "op_names": mlp_names}], dependency_aware=True,
                      dummy_input=WHOLE).compress()[1]
    hidden = nnic.pruner("transformer_hidden", model, [{"sparsity": 0.3}], round_to=16).compress()[1]
    # the hidden masks include the head and MLP masks already on o_proj / down_proj / gate / up
    assert bool((~hidden["model.layers.0.self_attn.o_proj"]["weight"]).all(0).sum() == 48)
    want = generate(model)
    nnic.speedup_model(model, WHOLE, {**heads, **mlp, **hidden})
    layer = model.model.layers[0]
    assert model.model.embed_tokens.embedding_dim == 80  # 96 - floor(0.3 * 96) = 68, rounded up to 16: 80 kept
    assert layer.self_attn.q_proj.weight.shape == (48, 80) and layer.mlp.gate_proj.weight.shape == (96, 80)
    assert torch.equal(generate(model), want)


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_saved_and_reloaded_with_the_manifest_and_with_save_pretrained(tmp_path, family):
    model = decoder(family)
    masks = nnic.pruner("transformer_hidden", model, [{"sparsity": 0.25}]).compress()[1]
    nnic.speedup_model(model, WHOLE, masks)
    want_logits, want_tokens = logits(model), generate(model)
    nnic.speedup.save_pruned(model, tmp_path / "nnic")
    fresh = nnic.speedup.load_pruned(decoder(family), tmp_path / "nnic")
    assert isinstance(fresh.model.norm, PrunedRMSNorm)
    assert torch.equal(logits(fresh), want_logits) and torch.equal(generate(fresh), want_tokens)

    with pytest.raises(ValueError, match=r"hidden size was pruned \(48 of 64.*standard_norms\(model\)"):
        pruned_config(model)
    standard_norms(model)
    assert not any(isinstance(m, PrunedRMSNorm) for m in model.modules())
    assert_close(logits(model), want_logits)  # the rewrite is exact up to rounding
    model.config = pruned_config(model)
    assert model.config.hidden_size == 48
    assert model.config.rms_norm_eps == pytest.approx(1e-6 * 64 / 48)
    model.save_pretrained(tmp_path / "hf")
    reloaded = FAMILIES[family][0].from_pretrained(tmp_path / "hf").eval()
    assert_close(logits(reloaded), want_logits)
    assert torch.equal(generate(reloaded), want_tokens)


def test_a_dummy_input_with_a_cache_keeps_the_hidden_size_and_the_report_says_why():
    model = decoder()
    masks = nnic.pruner("transformer_hidden", model, [{"sparsity": 0.25}]).compress()[1]
    want = logits(model)
    speedup = nnic.ModelSpeedup(model, PROMPT, masks)  # a cache crosses the traced regions: channels stay
    speedup.speedup_model()
    assert model.model.embed_tokens.embedding_dim == 64
    assert speedup.report.capture == "regions" and speedup.report.kept_groups
    assert_close(logits(model), want)


def test_bad_arguments_are_refused_by_name():
    model = decoder()
    with pytest.raises(ValueError, match="criterion"):
        nnic.pruner("transformer_hidden", model, [{"sparsity": 0.25}], criterion="taylorfo")
    with pytest.raises(ValueError, match="round_to"):
        nnic.pruner("transformer_hidden", model, [{"sparsity": 0.25}], round_to=0)
    with pytest.raises(ValueError, match=r"total_sparsity"):
        nnic.pruner("transformer_hidden", model, [{"total_sparsity": 0.25}])
    with pytest.raises(ValueError, match=r"'model.layers.0' \(LlamaDecoderLayer\) is not a LLaMA-style"):
        nnic.pruner("transformer_hidden", model, [{"sparsity": 0.25, "op_names": ["model.layers.0"],
                                                   "op_types": ["LlamaDecoderLayer"]}])
    with pytest.raises(ValueError, match="PrunedRMSNorm"):
        PrunedRMSNorm(65, 64)
    model.model.layers[1].input_layernorm = torch.nn.LayerNorm(64)
    with pytest.raises(ValueError, match=r"model.layers.1.input_layernorm is a LayerNorm; hidden-size pruning knows"):
        nnic.pruner("transformer_hidden", model, [{"sparsity": 0.25}])


def test_a_residual_write_whose_bias_is_not_masked_keeps_its_channels():
    """o_proj rows masked but not their biases: the residual stream is the bias there, not zero, so
    the channels stay (and the output is still the masked model's)."""
    masks = nnic.pruner("transformer_hidden", decoder(attention_bias=True),
                        [{"sparsity": 0.25}]).compress()[1]
    weights_only = {layer: {p: m for p, m in per.items() if p != "bias"} for layer, per in masks.items()}
    model = decoder(attention_bias=True)
    with torch.no_grad():
        nnic.speedup.engine.apply_masks(model, weights_only)
    want = logits(model)
    nnic.speedup_model(model, WHOLE, weights_only)
    assert model.model.embed_tokens.embedding_dim == 64
    assert_close(logits(model), want)
