"""Speedup benchmark: dense vs masked vs sped-up latency (CPU, float32), parameters and FLOPs.

Models: ResNet-50 and MobileNetV2 (torchvision, random weights) pruned by the dependency-aware L1-norm channel
pruner on every Conv2d; a BERT-base-sized encoder (12 layers, hidden 768, 12 heads, FFN 3072) with whole heads
and FFN channels pruned by L1 norm. Sparsities 30/50/70%, batch 1 and 32. Ratios are relative to dense.

    python bench/speedup.py                     # the full run
    python bench/speedup.py --size 128 --repeats 2 --models resnet50
"""

from __future__ import annotations

import argparse
import copy
import time

import torch
import torch.nn.functional as F
from torch import nn

import nnic
from nnic.measure import count_flops, count_params


class Encoder(nn.Module):
    def __init__(self, d=768, heads=12, ffn=3072, layers=12, vocab=30522):
        super().__init__()
        self.emb = nn.Embedding(vocab, d)
        self.attn = nn.ModuleList(nn.MultiheadAttention(d, heads, batch_first=True) for _ in range(layers))
        self.ln1 = nn.ModuleList(nn.LayerNorm(d) for _ in range(layers))
        self.fc1 = nn.ModuleList(nn.Linear(d, ffn) for _ in range(layers))
        self.fc2 = nn.ModuleList(nn.Linear(ffn, d) for _ in range(layers))
        self.ln2 = nn.ModuleList(nn.LayerNorm(d) for _ in range(layers))

    def forward(self, ids):
        x = self.emb(ids)
        for attn, ln1, fc1, fc2, ln2 in zip(self.attn, self.ln1, self.fc1, self.fc2, self.ln2):
            x = ln1(x + attn(x, x, x, need_weights=False)[0])
            x = ln2(x + fc2(F.gelu(fc1(x))))
        return x


def encoder_masks(model: Encoder, sparsity: float) -> dict:
    masks = {}
    for i, attn in enumerate(model.attn):
        e, h = attn.embed_dim, attn.num_heads
        d = e // h
        wv = attn.in_proj_weight.detach()[2 * e:]
        order = torch.argsort(wv.reshape(h, -1).abs().sum(1))[: int(sparsity * h)]
        w = torch.ones_like(attn.in_proj_weight, dtype=torch.bool)
        b = torch.ones_like(attn.in_proj_bias, dtype=torch.bool)
        for head in order.tolist():
            w[2 * e + head * d: 2 * e + (head + 1) * d] = False
            b[2 * e + head * d: 2 * e + (head + 1) * d] = False
        masks[f"attn.{i}"] = {"in_proj_weight": w, "in_proj_bias": b}
    pruner = nnic.pruner("l1norm", model, [{"sparsity": sparsity, "op_partial_names": ["fc1"],
                                            "op_types": ["Linear"]}])
    masks.update(pruner.calculate_masks())
    return masks


def build(name: str):
    import torchvision.models as tvm

    if name == "resnet50":
        return tvm.resnet50().eval()
    if name == "mobilenet_v2":
        return tvm.mobilenet_v2().eval()
    return Encoder().eval()


def inputs(name: str, batch: int, size: int, seq: int):
    if name == "bert_base_encoder":
        return torch.randint(0, 30522, (batch, seq))
    return torch.randn(batch, 3, size, size)


def latency(model: nn.Module, x, repeats: int) -> float:
    with torch.inference_mode():
        model(x)  # warm-up
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            model(x)
            best = min(best, time.perf_counter() - start)
    return best


def masked_model(name: str, dense: nn.Module, sparsity: float, x1):
    model = copy.deepcopy(dense)
    if name == "bert_base_encoder":
        masks = encoder_masks(model, sparsity)
        for layer, per in masks.items():
            mod = model.get_submodule(layer)
            for p, m in per.items():
                if m is not None:
                    from nnic.masking import attach_mask

                    attach_mask(mod, p, m)
        return model, masks
    pruner = nnic.pruner("l1norm", model, [{"sparsity": sparsity, "op_types": ["Conv2d"]}],
                         dependency_aware=True, dummy_input=x1)
    return pruner.compress()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["resnet50", "mobilenet_v2", "bert_base_encoder"])
    parser.add_argument("--sparsities", nargs="+", type=float, default=[0.3, 0.5, 0.7])
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 32])
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, float32 CPU, input {args.size}px / "
          f"seq {args.seq}; latency = best of {args.repeats} interleaved rounds, each after a warm-up")
    header = f"{'model':18s} {'sparsity':>8s} {'batch':>5s} {'dense ms':>9s} {'masked':>7s} {'sped-up':>7s} " \
             f"{'params':>7s} {'FLOPs':>7s} {'speedup(s)':>10s}"
    print(header)
    for name in args.models:
        dense = build(name)
        x1 = inputs(name, 1, args.size, args.seq)
        p0, f0 = count_params(dense), count_flops(dense, x1)
        for s in args.sparsities:
            masked, masks = masked_model(name, dense, s, x1)
            fast = copy.deepcopy(dense)  # parametrized (masked) modules do not deep-copy
            start = time.perf_counter()
            nnic.speedup_model(fast, x1, masks)
            took = time.perf_counter() - start
            p1, f1 = count_params(fast), count_flops(fast, x1)
            for b in args.batches:
                x = inputs(name, b, args.size, args.seq)
                # Interleaved rounds, best of each: fair when other processes share the machine.
                best = {"dense": float("inf"), "masked": float("inf"), "fast": float("inf")}
                for _ in range(args.repeats):
                    for key, model in (("dense", dense), ("masked", masked), ("fast", fast)):
                        best[key] = min(best[key], latency(model, x, 1))
                d = best["dense"]
                print(f"{name:18s} {s:8.0%} {b:5d} {d * 1e3:9.1f} {d / best['masked']:6.2f}x "
                      f"{d / best['fast']:6.2f}x {p1 / p0:7.2f} {f1 / f0:7.2f} {took:10.1f}", flush=True)


if __name__ == "__main__":
    main()
