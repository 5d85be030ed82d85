"""Small language models for the one-shot tests: Hugging Face architectures built from configs (random init)."""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")


def hf_model(arch: str, layers: int = 2, hidden: int = 64, vocab: int = 256) -> torch.nn.Module:
    """A random-init causal LM of the given architecture, small enough for unit tests."""
    torch.manual_seed(0)
    common = dict(vocab_size=vocab, num_hidden_layers=layers, hidden_size=hidden, num_attention_heads=4,
                  intermediate_size=2 * hidden, max_position_embeddings=128)
    if arch == "gpt2":
        cfg = transformers.GPT2Config(vocab_size=vocab, n_layer=layers, n_embd=hidden, n_head=4, n_positions=128)
        model = transformers.GPT2LMHeadModel(cfg)
    elif arch == "opt":
        cfg = transformers.OPTConfig(vocab_size=vocab, num_hidden_layers=layers, hidden_size=hidden,
                                     num_attention_heads=4, ffn_dim=2 * hidden, word_embed_proj_dim=hidden,
                                     max_position_embeddings=128)
        model = transformers.OPTForCausalLM(cfg)
    elif arch == "llama":
        model = transformers.LlamaForCausalLM(transformers.LlamaConfig(num_key_value_heads=2, **common))
    elif arch == "qwen2":
        model = transformers.Qwen2ForCausalLM(transformers.Qwen2Config(num_key_value_heads=2, **common))
    elif arch == "mistral":
        model = transformers.MistralForCausalLM(transformers.MistralConfig(num_key_value_heads=2, **common))
    else:
        raise ValueError(arch)
    return model.eval()


def token_batches(n: int = 4, batch: int = 2, seq: int = 16, vocab: int = 256, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, vocab, (batch, seq), generator=g) for _ in range(n)]


def snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def same_state(model: torch.nn.Module, before: dict[str, torch.Tensor]) -> bool:
    now = model.state_dict()
    return set(now) == set(before) and all(torch.equal(now[k], before[k]) for k in before)
