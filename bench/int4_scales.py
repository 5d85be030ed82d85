"""What storing int4 group scales in float16, or as 8-bit codes times a float32 step per output column
(``torch.uint8``: double-quantized), instead of float32 does to a language model's outputs.

    python bench/int4_scales.py                      # tiny LLaMA (4 layers, hidden 256) and llama-110m shapes
    python bench/int4_scales.py --models tiny --seqs 4

Each model (random weights from a transformers config, seeded) is run teacher-forced on ``--seqs`` random token
sequences of ``--len`` tokens as float32, as nnic int4 (every Linear, ``lm_head`` included, groups of 32) with
float32 scales, with float16 scales and with 8-bit scale codes. Printed per int4 variant, against the float model: the
logits' RMS difference, the mean KL divergence of the next-token distributions, the top-1 agreement, and a perplexity
proxy (the perplexity of the float model's own top-1 tokens). Then the float16 and 8-bit variants against the
float32 one: their logits' RMS and max difference as a fraction of the int4 error itself. One process, no timing.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

MODELS = {
    "tiny": {"hidden_size": 256, "intermediate_size": 688, "num_hidden_layers": 4, "num_attention_heads": 8,
             "num_key_value_heads": 2, "vocab_size": 8000, "max_position_embeddings": 512},
    "llama-110m": {"hidden_size": 768, "intermediate_size": 2048, "num_hidden_layers": 12, "num_attention_heads": 12,
                   "num_key_value_heads": 4, "vocab_size": 32000, "max_position_embeddings": 1024},
}


def build(name: str) -> nn.Module:
    import transformers

    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(**MODELS[name], attn_implementation="sdpa")
    return transformers.LlamaForCausalLM(cfg).eval()


def int4(model: nn.Module, scale_dtype: torch.dtype) -> nn.Module:
    import copy

    import nnic

    m = copy.deepcopy(model)
    m.lm_head.weight = nn.Parameter(m.lm_head.weight.detach().clone())  # untied: quantized on its own
    names = [n for n, mod in m.named_modules() if isinstance(mod, nn.Linear)]
    return nnic.quantization_speedup(m, {n: 4 for n in names}, int4_scale_dtype=scale_dtype)


@torch.inference_mode()
def logits(model: nn.Module, seqs: torch.Tensor) -> torch.Tensor:
    return torch.cat([model(input_ids=s[None]).logits[0] for s in seqs]).double()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="*", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--seqs", type=int, default=8)
    ap.add_argument("--len", type=int, default=128)
    args = ap.parse_args()
    torch.set_num_threads(2)
    for name in args.models:
        base = build(name)
        vocab = base.config.vocab_size
        seqs = torch.randint(0, vocab, (args.seqs, args.len), generator=torch.Generator().manual_seed(1))
        ref = logits(base, seqs)
        p_ref = ref.log_softmax(-1)
        label = ref.argmax(-1)
        print(f"\n{name}: {args.seqs} x {args.len} tokens, teacher-forced; float32 perplexity proxy "
              f"{torch.exp(-p_ref.gather(1, label[:, None]).mean()):.4f}")
        got = {}
        for dt in (torch.float32, torch.float16, torch.uint8):
            got[dt] = logits(int4(base, dt), seqs)
            lp = got[dt].log_softmax(-1)
            kl = (p_ref.exp() * (p_ref - lp)).sum(-1).mean()
            print(f"  int4 g32, {str(dt)[6:]} scales: logits RMS diff {(got[dt] - ref).pow(2).mean().sqrt():.5f} "
                  f"(float logits RMS {ref.pow(2).mean().sqrt():.4f}), KL {kl:.3e}, top-1 agreement "
                  f"{(got[dt].argmax(-1) == label).double().mean():.4f}, perplexity proxy "
                  f"{torch.exp(-lp.gather(1, label[:, None]).mean()):.4f}")
        e = got[torch.float32] - ref
        for dt in (torch.float16, torch.uint8):
            d = got[dt] - got[torch.float32]
            print(f"  {str(dt)[6:]} vs float32 scales: logits RMS diff {d.pow(2).mean().sqrt():.5f} = "
                  f"{d.pow(2).mean().sqrt() / e.pow(2).mean().sqrt():.3f} of int4's own RMS error; max |diff| "
                  f"{d.abs().max():.5f} (int4's own max {e.abs().max():.5f}); top-1 agreement between the two "
                  f"{(got[dt].argmax(-1) == got[torch.float32].argmax(-1)).double().mean():.4f}")


if __name__ == "__main__":
    main()
