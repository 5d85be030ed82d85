"""Recovery after pruning: distillation from the dense model against plain fine-tuning at the same step budget,
on scikit-learn's digits (shipped with the package), over several data orders; mean +- standard deviation.

The experiment is the one ``tests/test_distill.py`` asserts (``tests/distill_recovery.py``): a digits CNN that
loses half its conv channels (26 steps), and a tiny ViT (4 heads, 2 layers, 16 tokens) that loses half its
heads, sped up (52 steps); 200 labelled digits, Adam 1e-3, ``alpha=0.5``, ``T=1``; 597 held-out digits. One
thread, so the numbers do not depend on the machine's thread count.

    python bench/recovery.py           # data orders 0-4
    python bench/recovery.py --quick   # orders 0-1 (what the tests assert on)
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from distill_recovery import (
    EXPERIMENTS,
    accuracy,
    held_out,
    one_thread,
    recovered,
    trained,
)


def spread(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.1f} ± {sd:.1f}"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=5, help="data orders 0..N-1")
    ap.add_argument("--quick", action="store_true", help="2 data orders")
    args = ap.parse_args()
    seeds = range(2 if args.quick else args.seeds)
    print("| model, pruning | dense | pruned | plain fine-tuning | distillation | gain (points) | gain per order |")
    print("|---|---|---|---|---|---|---|")
    with one_thread():
        for name, (build, teacher_epochs, prune, epochs) in EXPERIMENTS.items():
            teacher = trained(build, teacher_epochs)
            pruned = prune(teacher)
            plain = [recovered(teacher, pruned, s, 0.0, epochs) for s in seeds]
            distilled = [recovered(teacher, pruned, s, 0.5, epochs) for s in seeds]
            gains = [d - p for d, p in zip(distilled, plain)]
            print(f"| {name} | {accuracy(teacher, held_out()):.1f} | {accuracy(pruned, held_out()):.1f} | "
                  f"{spread(plain)} | {spread(distilled)} | {spread(gains)} | "
                  f"{', '.join(f'{g:+.1f}' for g in gains)} |", flush=True)


if __name__ == "__main__":
    main()
