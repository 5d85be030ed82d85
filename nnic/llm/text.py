"""Text that ships with Python, as bytes, for calibration and held-out perplexity; and a tiny GPT to train on it.

No download: the corpus is the standard library's own ``.py`` sources. Files are split by name (every fifth
file in sorted order is held out), so the held-out text is code the model never trained on. Tokens are bytes
(vocabulary 256), so no tokenizer is needed either. :func:`tiny_gpt` needs ``transformers`` (GPT-2 with its
``Conv1D`` layers, or LLaMA), imported only there.
"""

from __future__ import annotations

import math
import sysconfig
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = ["evaluation_tokens", "perplexity", "python_text", "random_windows", "tiny_gpt", "train_tiny_gpt"]


def python_text(split: str = "train", max_bytes: int = 2_000_000) -> bytes:
    """Up to ``max_bytes`` of the standard library's top-level sources; ``split`` is ``"train"`` or ``"heldout"``."""
    if split not in ("train", "heldout"):
        raise ValueError(f"split: expected 'train' or 'heldout', got {split!r}")
    files = sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py"))
    chosen = [f for i, f in enumerate(files) if (i % 5 == 4) == (split == "heldout")]
    out = bytearray()
    for f in chosen:
        out += f.read_bytes()
        if len(out) >= max_bytes:
            break
    if not out:
        raise RuntimeError("no standard-library sources found next to this Python")
    return bytes(out[:max_bytes])


def random_windows(data: bytes, n: int, seq_len: int, seed: int) -> torch.Tensor:
    """``n`` windows of ``seq_len`` bytes at random offsets, as int64 token ids ``[n, seq_len]``."""
    ids = torch.frombuffer(bytearray(data), dtype=torch.uint8).long()
    g = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, ids.numel() - seq_len, (n,), generator=g)
    return torch.stack([ids[s:s + seq_len] for s in starts.tolist()])


def evaluation_tokens(data: bytes, seq_len: int, max_windows: int | None = None) -> torch.Tensor:
    """Consecutive non-overlapping windows of ``data`` (the whole text, or its first ``max_windows``)."""
    ids = torch.frombuffer(bytearray(data), dtype=torch.uint8).long()
    n = ids.numel() // seq_len if max_windows is None else min(max_windows, ids.numel() // seq_len)
    return ids[: n * seq_len].reshape(n, seq_len)


def _logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    out = model(x)
    return out.logits if hasattr(out, "logits") else out


@torch.no_grad()
def perplexity(model: nn.Module, tokens: torch.Tensor, batch_size: int = 16) -> float:
    """exp(mean next-token cross-entropy) of ``model`` (logits, or an output with ``.logits``) over ``tokens``."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    try:
        for i in range(0, tokens.shape[0], batch_size):
            x = tokens[i:i + batch_size]
            logits = _logits(model, x)[:, :-1].float()
            loss = nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1),
                                               reduction="sum")
            total += float(loss)
            count += x[:, 1:].numel()
    finally:
        model.train(was_training)
    return math.exp(total / count)


def tiny_gpt(n_embd: int = 128, n_layer: int = 2, n_head: int = 4, n_positions: int = 128, seed: int = 0,
             arch: str = "gpt2", **config: Any) -> nn.Module:
    """A byte-level causal LM, random init, no dropout: transformers' GPT-2 (``Conv1D`` layers) or, with
    ``arch="llama"``, a LLaMA (``nn.Linear`` layers, RMSNorm, rotary positions; ``n_inner`` = MLP width)."""
    import transformers

    torch.manual_seed(seed)
    if arch == "gpt2":
        cfg = transformers.GPT2Config(vocab_size=256, n_positions=n_positions, n_embd=n_embd, n_layer=n_layer,
                                      n_head=n_head, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                                      bos_token_id=0, eos_token_id=0, **config)
        return transformers.GPT2LMHeadModel(cfg)
    if arch == "llama":
        cfg = transformers.LlamaConfig(vocab_size=256, hidden_size=n_embd, num_hidden_layers=n_layer,
                                       num_attention_heads=n_head, max_position_embeddings=n_positions,
                                       intermediate_size=config.pop("n_inner", 4 * n_embd), bos_token_id=0,
                                       eos_token_id=0, tie_word_embeddings=True, **config)
        return transformers.LlamaForCausalLM(cfg)
    raise ValueError(f"arch: expected 'gpt2' or 'llama', got {arch!r}")


def train_tiny_gpt(model: nn.Module, data: bytes, *, steps: int, batch_size: int = 32, seq_len: int = 128,
                   lr: float = 3e-3, seed: int = 0) -> list[float]:
    """Train ``model`` on random windows of ``data`` (AdamW, warm-up then cosine decay); returns the losses."""
    torch.manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01, betas=(0.9, 0.98))
    warmup = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda t: min(1.0, (t + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(t, steps) / steps)))
    losses = []
    model.train()
    for step in range(steps):
        x = random_windows(data, batch_size, seq_len, seed * 100_003 + step)
        logits = _logits(model, x)[:, :-1]
        loss = nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
    model.eval()
    return losses
