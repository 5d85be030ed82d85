"""nnic's prune + speedup time, two versions of the code against each other and against Torch-Pruning, on a
machine others load: the protocol of ``bench/depth.py`` (same models, request and input), timed as interleaved
rounds of single-threaded thread CPU time.

Two long-lived worker processes, one importing nnic from ``--before`` (the older code, e.g. ``mkdir DIR; git
archive <commit> | tar -x -C DIR``, with the built extension ``nnic/_kernels*.so`` copied in) and one from this
tree, never run at the same time: per model a warm-up round each, then ``--rounds`` of (before, now,
Torch-Pruning in the "now" worker); medians. nnic runs ``nnic.prune_and_speedup`` where the version has it, else
``compress()`` then ``speedup_model``; ``--two-calls`` adds the two-call path of both versions as columns (before
two calls, now two calls, in the same rounds). Other users' load slows both versions alike within a round, which
``bench/depth.py``'s two concurrent processes do not guarantee.

    python bench/depth_ab.py --before DIR                    # the --quick models but ViT and DenseNet
    python bench/depth_ab.py --before DIR --models resnet50 --rounds 9
    python bench/depth_ab.py --before DIR --two-calls        # and compress() + speedup_model of both
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path

MODELS = ["resnet50", "convnext_tiny", "regnet_x_400mf", "mobilenet_v3_large", "efficientnet_b0"]


def worker() -> None:
    """Answer ``nnic NAME`` (``nnic.prune_and_speedup``, or the two calls where this nnic has no helper),
    ``nnic2 NAME`` (``compress()`` then ``speedup_model``) and ``tp NAME`` lines with the thread CPU seconds of
    one run on a fresh copy."""
    import torch
    import torchvision

    import nnic

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from depth import input_size, prune_and_speedup, run_tp

    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    nnic.list_plugins()
    import torch_pruning  # noqa: F401  imported before any round is timed

    dense: dict[str, tuple] = {}
    for line in sys.stdin:
        what, name = line.split()
        if name not in dense:
            torch.manual_seed(0)
            side = input_size(name, 224)
            dense[name] = (torchvision.models.get_model(name, weights=None).eval(), torch.randn(1, 3, side, side))
        model, x = copy.deepcopy(dense[name][0]), dense[name][1]
        start = time.thread_time()
        if what == "tp":
            run_tp(model, x)
        else:
            prune_and_speedup(model, x, two_calls=what == "nnic2")
        print(time.thread_time() - start, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", required=True, help="a checkout of the older code (its nnic/ is imported)")
    parser.add_argument("--models", nargs="*", default=MODELS)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--two-calls", action="store_true",
                        help="also time compress() then speedup_model of both versions in the same rounds (columns)")
    args = parser.parse_args()
    before = Path(args.before).resolve()
    if not (before / "nnic" / "__init__.py").is_file():
        raise SystemExit(f"--before: {before} holds no nnic/ package")
    here = [sys.executable, str(Path(__file__).resolve()), "--worker"]
    old = subprocess.Popen(here, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=before.parent,
                           env={**os.environ, "PYTHONPATH": str(before)})
    new = subprocess.Popen(here, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def ask(proc: subprocess.Popen, what: str, name: str) -> float:
        proc.stdin.write(f"{what} {name}\n")
        proc.stdin.flush()
        answer = proc.stdout.readline()
        if not answer:
            raise SystemExit(f"a worker failed on {name} ({what})")
        return float(answer)

    print(f"load average at start: {' '.join(f'{v:.2f}' for v in os.getloadavg())}; 1 thread, thread CPU time")
    extra = " before, two calls s | now, two calls s | ratio two calls before | ratio two calls now |" \
        if args.two_calls else ""
    print(f"| model | nnic before s | nnic now s | Torch-Pruning s | ratio before | ratio now |{extra}\n"
          f"|---|---|---|---|---|---|{'---|---|---|---|' if args.two_calls else ''}")
    ratios: list[tuple[float, ...]] = []
    for name in args.models:
        ask(old, "nnic", name)  # warm-up: imports, first-call caches
        ask(new, "nnic", name)
        a, b, c2, d2, t = [], [], [], [], []
        for _ in range(args.rounds):
            a.append(ask(old, "nnic", name))
            b.append(ask(new, "nnic", name))
            if args.two_calls:
                c2.append(ask(old, "nnic2", name))
                d2.append(ask(new, "nnic2", name))
            t.append(ask(new, "tp", name))
        ma, mb, mt = statistics.median(a), statistics.median(b), statistics.median(t)
        mc = statistics.median(c2) if c2 else float("nan")
        md = statistics.median(d2) if d2 else float("nan")
        ratios.append((ma / mt, mb / mt, mc / mt, md / mt))
        two = f" {mc:.3f} | {md:.3f} | {mc / mt:.2f} | {md / mt:.2f} |" if c2 else ""
        print(f"| {name} | {ma:.3f} | {mb:.3f} | {mt:.3f} | {ma / mt:.2f} | {mb / mt:.2f} |{two}", flush=True)
    print(f"\nload average at end: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    print(f"median ratio nnic / TP: before {statistics.median(r[0] for r in ratios):.2f}, "
          f"now {statistics.median(r[1] for r in ratios):.2f}"
          + (f"; two calls: before {statistics.median(r[2] for r in ratios):.2f}, "
             f"now {statistics.median(r[3] for r in ratios):.2f}" if args.two_calls else ""))
    for proc in (old, new):
        proc.stdin.close()
        proc.wait()


if __name__ == "__main__":
    worker() if sys.argv[1:] == ["--worker"] else main()
