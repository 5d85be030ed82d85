"""BERT-base-shaped and GPT-2-shaped models (small configs) export and match in onnxruntime after head pruning
(``nnic.speedup_model`` with the nnic-transformers rules) and after int8 ``nnic.quantization_speedup``; the
sequence axis is dynamic."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import nnic

pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
transformers = pytest.importorskip("transformers")


def bert() -> nn.Module:
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=100, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=128, max_position_embeddings=64, attn_implementation="eager")
    return BertModel(cfg, add_pooling_layer=False).eval()


def head_masks(linear: nn.Linear, heads: list[int], d: int) -> dict:
    keep = torch.ones(linear.out_features, dtype=torch.bool)
    for h in heads:
        keep[h * d:(h + 1) * d] = False
    return {"weight": keep[:, None].expand_as(linear.weight).clone(), "bias": keep.clone()}


def linear_layers(model: nn.Module) -> dict[str, int]:
    return {name: 8 for name, m in model.named_modules() if isinstance(m, nn.Linear)}


def session_run(path, feeds: dict) -> list[np.ndarray]:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(
        None, {k: v.numpy() for k, v in feeds.items()})


def pruned_bert() -> nn.Module:
    model = bert()
    self0, self1 = model.encoder.layer[0].attention.self, model.encoder.layer[1].attention.self
    masks = {"encoder.layer.0.attention.self.value": head_masks(self0.value, [1, 2], 16),
             "encoder.layer.1.attention.self.value": head_masks(self1.value, [0], 16)}
    nnic.speedup_model(model, torch.randint(0, 100, (2, 8)), masks)
    assert self0.num_attention_heads == 2 and self1.num_attention_heads == 3
    return model


@pytest.mark.parametrize("stage", ["pruned", "pruned+int8", "pruned+int8-qdq"])
def test_bert(tmp_path, stage):
    model = pruned_bert()
    if stage != "pruned":
        nnic.quantization_speedup(model, linear_layers(model))
    ids, mask = torch.randint(0, 100, (2, 16)), torch.ones(2, 16, dtype=torch.long)
    mask[1, 12:] = 0
    int8_format = "qdq" if stage.endswith("qdq") else "integer"
    result = nnic.export_onnx(model, {"input_ids": ids, "attention_mask": mask}, tmp_path / "bert.onnx",
                              int8_format=int8_format)
    assert result.output_names == ["last_hidden_state"]
    assert result.kind == ("float" if stage == "pruned" else "int8")
    assert result.errors["last_hidden_state"] <= nnic.export.TOLERANCES[result.kind]
    # another batch and sequence length than the example
    ids2, mask2 = torch.randint(0, 100, (3, 24)), torch.ones(3, 24, dtype=torch.long)
    got = session_run(tmp_path / "bert.onnx", {"input_ids": ids2, "attention_mask": mask2})[0]
    with torch.no_grad():
        ref = model(input_ids=ids2, attention_mask=mask2).last_hidden_state.numpy()
    assert np.abs(got - ref).max() <= nnic.export.TOLERANCES[result.kind] * np.abs(ref).max()


E, H, D = 64, 4, 16


def gpt2() -> nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    cfg = GPT2Config(n_layer=2, n_embd=E, n_head=H, n_positions=64, vocab_size=100, bos_token_id=0, eos_token_id=0,
                     attn_implementation="eager", use_cache=False)
    return GPT2LMHeadModel(cfg).eval()


def pruned_gpt2() -> nn.Module:
    """Heads 1 and 2 of block 0 removed (value columns of the fused c_attn), block by block as GPT-2 needs."""
    model = gpt2()
    block = model.transformer.h[0]
    w = torch.ones_like(block.attn.c_attn.weight, dtype=torch.bool)
    b = torch.ones_like(block.attn.c_attn.bias, dtype=torch.bool)
    for h in (1, 2):
        w[:, 2 * E + h * D:2 * E + (h + 1) * D], b[2 * E + h * D:2 * E + (h + 1) * D] = False, False
    before = sum(p.numel() for p in model.parameters())
    nnic.speedup_model(block, torch.randn(2, 8, E), {"attn.c_attn": {"weight": w, "bias": b}})
    assert sum(p.numel() for p in model.parameters()) < before
    return model


def lowered(model: nn.Module) -> nn.Module:
    """int8 ``quantization_speedup`` of every Linear and GPT-2 Conv1D (nnic-transformers' Conv1D lowering)."""
    from transformers.pytorch_utils import Conv1D

    layers = {name: 8 for name, m in model.named_modules() if isinstance(m, (nn.Linear, Conv1D))}
    nnic.quantization_speedup(model, layers)
    assert not any(isinstance(m, (nn.Linear, Conv1D)) for m in model.modules())
    return model


@pytest.mark.parametrize("stage", ["pruned", "pruned+int8", "pruned+int8-qdq"])
def test_gpt2(tmp_path, stage):
    model = pruned_gpt2()
    ids = torch.randint(0, 100, (2, 12))
    # With an attention mask, as a tokenizer gives: without one, transformers looks for packed sequences with
    # torch.diff, which torch's ONNX exporter cannot convert (the error names the op).
    feeds = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    if stage != "pruned":
        with torch.no_grad():
            float_logits = model(**feeds).logits
        lowered(model)
        with torch.no_grad():
            int8_logits = model(**feeds).logits
        assert float((int8_logits - float_logits).abs().max() / float_logits.abs().max()) < 0.05
    int8_format = "qdq" if stage.endswith("qdq") else "integer"
    result = nnic.export_onnx(model, feeds, tmp_path / "gpt2.onnx", int8_format=int8_format)
    assert result.output_names == ["logits"]
    assert result.kind == ("float" if stage == "pruned" else "int8")
    assert result.errors["logits"] <= nnic.export.TOLERANCES[result.kind]
    ids2 = torch.randint(0, 100, (1, 20))
    got = session_run(tmp_path / "gpt2.onnx", {"input_ids": ids2, "attention_mask": torch.ones_like(ids2)})[0]
    with torch.no_grad():
        ref = model(input_ids=ids2, attention_mask=torch.ones_like(ids2)).logits.numpy()
    assert np.abs(got - ref).max() <= nnic.export.TOLERANCES[result.kind] * np.abs(ref).max()
