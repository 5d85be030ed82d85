"""Whole Hugging Face models, one call each: ``transformer_head`` prunes half the heads, ``speedup_model`` removes
them from the whole model (fx, or the capture that follows the real execution when fx cannot trace it), and
the sped-up model computes what the masked one did. Random-init models from small configs."""

from __future__ import annotations

import pytest
import torch

import nnic

T = pytest.importorskip("transformers")
from nnic_transformers import find_heads

ids = torch.randint(0, 100, (2, 8), generator=torch.Generator().manual_seed(1))


def _llama_like(config_cls, model_cls):
    return lambda: model_cls(config_cls(hidden_size=64, intermediate_size=96, num_attention_heads=8,
                                        num_key_value_heads=2, num_hidden_layers=2, vocab_size=100,
                                        max_position_embeddings=32))


FAMILIES = {
    "bert": (lambda: T.BertModel(T.BertConfig(vocab_size=100, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                             intermediate_size=96, max_position_embeddings=32)), {"input_ids": ids}),
    "roberta": (lambda: T.RobertaModel(T.RobertaConfig(vocab_size=100, hidden_size=64, num_hidden_layers=2,
                                                       num_attention_heads=4, intermediate_size=96,
                                                       max_position_embeddings=40)), {"input_ids": ids}),
    "distilbert": (lambda: T.DistilBertModel(T.DistilBertConfig(vocab_size=100, dim=64, n_layers=2, n_heads=4,
                                                                hidden_dim=96, max_position_embeddings=32)),
                   {"input_ids": ids}),
    "albert": (lambda: T.AlbertModel(T.AlbertConfig(vocab_size=100, embedding_size=32, hidden_size=64,
                                                    num_hidden_layers=2, num_attention_heads=4, intermediate_size=96,
                                                    max_position_embeddings=32)), {"input_ids": ids}),
    "vit": (lambda: T.ViTForImageClassification(T.ViTConfig(image_size=16, patch_size=4, hidden_size=64,
                                                            num_hidden_layers=2, num_attention_heads=4,
                                                            intermediate_size=96, num_labels=3)),
            torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(2))),
    "gpt2": (lambda: T.GPT2LMHeadModel(T.GPT2Config(n_layer=2, n_embd=64, n_head=4, n_positions=32, vocab_size=100)), ids),
    "opt": (lambda: T.OPTForCausalLM(T.OPTConfig(hidden_size=64, num_hidden_layers=2, ffn_dim=96, num_attention_heads=4,
                                                 vocab_size=100, max_position_embeddings=32,
                                                 word_embed_proj_dim=64)), ids),
    "llama": (_llama_like(T.LlamaConfig, T.LlamaForCausalLM), ids),
    "qwen2": (_llama_like(T.Qwen2Config, T.Qwen2ForCausalLM), ids),
    "mistral": (_llama_like(T.MistralConfig, T.MistralForCausalLM), ids),
    "bart": (lambda: T.BartForConditionalGeneration(T.BartConfig(d_model=64, encoder_attention_heads=4,
                                                                 decoder_attention_heads=4, encoder_ffn_dim=96,
                                                                 decoder_ffn_dim=96, encoder_layers=2,
                                                                 decoder_layers=2, vocab_size=100,
                                                                 max_position_embeddings=32)),
             {"input_ids": ids, "decoder_input_ids": ids}),
    "t5": (lambda: T.T5ForConditionalGeneration(T.T5Config(d_model=64, d_kv=16, num_heads=4, d_ff=96, num_layers=2,
                                                           vocab_size=100)),
           {"input_ids": ids, "decoder_input_ids": ids}),
}


def _logits(out):
    for key in ("logits", "last_hidden_state"):
        if hasattr(out, key):
            return getattr(out, key)
    return out[0] if isinstance(out, tuple) else out


def _call(model, x):
    return model(**x) if isinstance(x, dict) else model(x)


def _randomise_biases(model):
    """Transformers initialise biases to zero: random ones make 'the same output' a stricter check."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(0, 0.1)


def _masked_heads(masks, h):
    """Query heads whose rows the pruner zeroed in ``h``'s query projection (weight masks are [out, in]; GPT-2's
    fused Conv1D is [in, q|k|v])."""
    weight = masks[f"{h.name}.{h.layout.q}"]["weight"]
    rows = weight[0, : h.num_heads * h.head_dim] if h.layout.fused else weight[: h.num_heads * h.head_dim, 0]
    return sum(1 for i in range(h.num_heads) if not rows[i * h.head_dim:(i + 1) * h.head_dim].any())


def _removed(h, heads, kv_heads):
    """Whether ``h``'s projection weights themselves have only ``heads`` query (``kv_heads`` key/value) heads."""
    d, m = h.head_dim, h.module
    if h.layout.fused:  # GPT-2: c_attn [in, 3 * inner], c_proj [inner, out]
        return (getattr(m, h.layout.q).weight.shape[1] == 3 * heads * d
                and getattr(m, h.layout.o).weight.shape[0] == heads * d)
    shapes = [getattr(m, h.layout.q).out_features == heads * d,
              getattr(m, h.layout.k).out_features == kv_heads * d,
              getattr(m, h.layout.v).out_features == kv_heads * d]
    if h.layout.o is not None:
        shapes.append(getattr(m, h.layout.o).in_features == heads * d)
    return all(shapes)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_half_the_heads_pruned_and_removed_in_one_call(family):
    build, x = FAMILIES[family]
    torch.manual_seed(0)
    model = build().eval()
    _randomise_biases(model)
    before = {h.name: (h.num_heads, h.num_kv_heads) for h in find_heads(model)}
    assert before, "the layouts find the family's attention modules"
    params = sum(p.numel() for p in model.parameters())
    pruner = nnic.pruner("transformer_head", model, [{"sparsity": 0.5}], criterion="l2_weight")
    _, masks = pruner.compress()
    for h in find_heads(model):  # every attention module, T5's and cross-attention too, loses half its heads
        assert _masked_heads(masks, h) == h.num_heads // 2, h.name
    with torch.no_grad():
        expected = _logits(_call(model, x))
    speedup = nnic.ModelSpeedup(model, x, masks)
    speedup.speedup_model()
    with torch.no_grad():
        got = _logits(_call(model, x))
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    assert speedup.report.capture in ("fx", "concrete", "regions")
    after = {h.name: h for h in find_heads(model)}
    removed = 0
    for name, (h, kvh) in before.items():
        if family == "t5" or "encoder_attn" in name or "EncDec" in name:
            assert _removed(after[name], h, kvh), name  # kept whole: the report says why
            continue  # T5 shares a per-head position bias across layers; cross-attention is kept whole
        assert (after[name].num_heads, after[name].num_kv_heads) == (h // 2, kvh // 2), (name, before[name])
        assert _removed(after[name], h // 2, kvh // 2), name  # the weights themselves, not a count
        removed += 1
        if kvh != h:  # grouped-query attention: each kept key/value head keeps all its query heads
            assert after[name].group == h // kvh
    if family == "t5":
        assert any("T5" in why for why in speedup.report.pinned), speedup.report
    else:
        assert removed and sum(p.numel() for p in model.parameters()) < params


def test_a_region_capture_names_what_it_could_not_analyse():
    build, x = FAMILIES["gpt2"]
    torch.manual_seed(0)
    model = build().eval()
    _, masks = nnic.pruner("transformer_head", model, [{"sparsity": 0.5}]).compress()
    speedup = nnic.ModelSpeedup(model, x, masks)
    speedup.speedup_model()
    report = speedup.report
    assert report.capture == "regions"
    assert "" in report.not_analysed and "transformer" in report.not_analysed  # the model's own forward code
    assert "capture: regions" in str(report) and "not analysed: transformer" in str(report)
