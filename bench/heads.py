"""Head-pruning benchmark: BERT-base-shaped and GPT-2-shaped Hugging Face models (random weights), 50 % of the
attention heads pruned by each ``transformer_head`` criterion, sped up in one ``speedup_model`` call (the
whole model: fx, or the capture that follows the real execution), latency vs dense (CPU float32, batch 1,
sequence 128, interleaved rounds, median).

    python bench/heads.py            # 12 layers, as the real models (about 20 min on 2 quiet cores)
    python bench/heads.py --quick    # 2 layers, sequence 64: every row in a few minutes
    python bench/heads.py --clock cpu  # 1 thread, the calling thread's CPU time: steadier on a shared machine
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import nnic

sys.path.insert(0, str(Path(__file__).parent))
from _timing import timeit_interleaved

CRITERIA = ("l1_weight", "l2_weight", "l1_activation", "l2_activation", "taylorfo")


def build(kind: str, layers: int):
    import transformers as T

    torch.manual_seed(0)
    if kind == "bert":
        cfg = T.BertConfig(num_hidden_layers=layers, num_labels=2)
        return T.BertForSequenceClassification(cfg).eval()
    return T.GPT2LMHeadModel(T.GPT2Config(n_layer=layers)).eval()


def loss_fn(kind: str):
    if kind == "bert":
        return lambda out, y: F.cross_entropy(out.logits, y)
    return lambda out, y: F.cross_entropy(out.logits[:, :-1].flatten(0, 1), y[:, 1:].flatten())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--models", default="bert,gpt2")
    ap.add_argument("--criteria", default=",".join(CRITERIA))
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                    help="wall: 2 threads, wall time; cpu: 1 thread, its CPU time (time.thread_time)")
    ap.add_argument("--quick", action="store_true", help="2 layers, sequence 64 (overrides the above)")
    args = ap.parse_args()
    from nnic_transformers import find_heads  # the plugin; it imports transformers

    if args.quick:
        args.layers, args.seq = 2, 64
    torch.set_num_threads(2 if args.clock == "wall" else 1)
    clock = time.perf_counter if args.clock == "wall" else time.thread_time
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 1000, (1, args.seq), generator=gen)
    calib = [torch.randint(0, 1000, (2, args.seq), generator=gen) for _ in range(2)]
    print("| model | criterion | capture | heads kept | params (sped-up / dense) | speedup s | latency vs dense |")
    print("|---|---|---|---|---|---|---|")
    for kind in args.models.split(","):
        dense = build(kind, args.layers)
        n_dense = sum(p.numel() for p in dense.parameters())
        for criterion in args.criteria.split(","):
            model = copy.deepcopy(dense)
            extra = {}
            if criterion.endswith("activation"):
                extra["data"] = calib
            elif criterion == "taylorfo":
                labels = [torch.tensor([0, 1]) if kind == "bert" else x for x in calib]
                extra = {"data": list(zip(calib, labels)), "loss_fn": loss_fn(kind)}
            _, masks = nnic.pruner("transformer_head", model, [{"sparsity": 0.5}], criterion=criterion,
                                   **extra).compress()
            t0 = time.perf_counter()
            speedup = nnic.ModelSpeedup(model, ids, masks)
            speedup.speedup_model()
            took = time.perf_counter() - t0
            heads = sum(h.num_heads for h in find_heads(model))
            total = sum(h.num_heads for h in find_heads(dense))
            with torch.no_grad():
                times = timeit_interleaved({"dense": lambda m=dense: m(ids), "pruned": lambda m=model: m(ids)},
                                           args.repeats, budget=60.0, clock=clock)
            ratio = statistics.median(times["dense"]) / statistics.median(times["pruned"])
            n = sum(p.numel() for p in model.parameters())
            print(f"| {kind} ({args.layers} layers) | {criterion} | {speedup.report.capture} | {heads}/{total} | "
                  f"{n / n_dense:.2f} | {took:.1f} | {ratio:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
