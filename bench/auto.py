"""Benchmark of ``nnic.auto_compress``.

``python bench/auto.py digits``: on sklearn's digits, the Pareto front of accuracy against measured latency
that the search finds in a fixed budget, against uniform sparsity at 30/50/70 % with the same pruner (l1norm)
and the same fine-tuning budget. For each uniform point it reports the most accurate found configuration at
equal or lower latency. The latencies compared there are measured again at the end, the uniform model and the
found one interleaved (A, B, A, B, ... rounds, median), so that machine noise does not pick the winner.

``python bench/auto.py scale [--model resnet18|mobilenet_v2] [--workers 1 2]``: the search on a real network
with a proxy evaluator (output agreement with the dense model on random inputs: logits' cosine similarity; no
fine-tuning): seconds per trial and trials per hour with 1 and 2 local worker processes sharing one study file.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests" / "auto"))


# ---------------------------------------------------------------------------------------------------- digits
def _interleaved_latency(a: nn.Module, b: nn.Module, x: torch.Tensor, batch: int, rounds: int = 5) -> tuple[float, float]:
    from nnic.measure import measure_latency

    ta, tb = [], []
    for _ in range(rounds):
        ta.append(measure_latency(a, x, threads=1, batch=batch, warmup=2, repeats=15).median_ms)
        tb.append(measure_latency(b, x, threads=1, batch=batch, warmup=2, repeats=15).median_ms)
    return statistics.median(ta), statistics.median(tb)


def digits(args: argparse.Namespace) -> None:
    import digits as data  # tests/auto/digits.py

    import nnic
    from nnic.auto.space import Configuration
    from nnic.auto.trial import build

    torch.manual_seed(0)
    torch.set_num_threads(1)
    model = data.trained_model(width=args.width, epochs=10)
    evaluator = data.evaluator()
    x = data.data()[2][:64]
    measure = {"batch": args.batch, "repeats": 15, "warmup": 2}
    out = Path(args.out or tempfile.mkdtemp(prefix="nnic-bench-auto-"))
    start = time.perf_counter()
    result = nnic.auto_compress(model, evaluator, x, objectives=("score", "latency_ms"), n_trials=args.trials,
                                strategy=args.strategy, fine_tune_steps=args.steps, measure=measure,
                                space={"sparsity": (0.0, 0.9)}, out_dir=out, seed=0, progress=True)
    search_s = time.perf_counter() - start
    dense = result.baseline
    print(f"\ndigits MLP 64-{args.width}-{args.width}-10, dense accuracy {dense['score']:.2f} %, "
          f"latency {dense['latency_ms']:.3f} ms (batch {args.batch}, 1 thread)")
    print(f"search: {args.trials} trials ({args.strategy}, {args.steps} fine-tuning steps each) in {search_s:.0f} s; "
          f"{len(result.pareto)} configurations on the front; files in {out}")
    layers = [layer for members in result.space.groups.values() for layer in members]
    found = {t.number: result.apply(model, t) for t in result.pareto}  # rebuilt exactly as the search scored them
    rows = []
    for s in (0.3, 0.5, 0.7):
        uniform_cfg = Configuration("l1norm", {layer: s for layer in layers}, {})
        uniform = build(model, x, uniform_cfg, evaluator, fine_tune_steps=args.steps, evaluations=4, seed=0)
        u_acc = evaluator.evaluate(uniform)
        # Every front member is measured again against this uniform model, interleaved; the most accurate one
        # that is no slower wins.
        best = None
        for t in result.pareto:
            u_lat, f_lat = _interleaved_latency(uniform, found[t.number], x, args.batch)
            if f_lat <= u_lat and (best is None or t.measured["score"] > best[0].measured["score"]):
                best = (t, u_lat, f_lat)
        if best is None:
            rows.append((s, u_acc, u_lat, None, None, None))
        else:
            t, u_lat, f_lat = best
            rows.append((s, u_acc, u_lat, t.number, t.measured["score"], f_lat))
    dense_ms, _ = _interleaved_latency(model, model, x, args.batch, rounds=3)
    print(f"dense latency measured again: {dense_ms:.3f} ms")
    print("\n| uniform sparsity | uniform acc. | uniform latency | found trial | found acc. | found latency | "
          "acc. gain | latency ratio |")
    print("|---|---|---|---|---|---|---|---|")
    for s, ua, ul, n, fa, fl in rows:
        if n is None:
            print(f"| {s:.0%} | {ua:.2f} | {ul:.3f} ms | none at <= latency | | | | |")
        else:
            print(f"| {s:.0%} | {ua:.2f} | {ul:.3f} ms | #{n} | {fa:.2f} | {fl:.3f} ms | {fa - ua:+.2f} | "
                  f"{fl / ul:.2f} |")
    print("\n" + result.report())


# ----------------------------------------------------------------------------------------------------- scale
def _proxy_spec(name: str, size: int) -> tuple:
    """A torchvision network (random init) and an evaluator scoring output agreement with the dense model: the
    mean cosine similarity of the logits, in percent (top-1 agreement says little on random weights, whose
    logits are nearly tied)."""
    import torchvision

    from nnic.evaluator import Evaluator

    torch.manual_seed(0)
    model = getattr(torchvision.models, name)(weights=None).eval()
    inputs = torch.randn(16, 3, size, size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        reference = model(inputs)

    def agreement(m: nn.Module) -> float:
        return 100.0 * float(torch.nn.functional.cosine_similarity(m(inputs), reference, dim=-1).mean())

    evaluator = Evaluator(lambda *a: None, lambda p: torch.optim.SGD(p, lr=0.0), nn.CrossEntropyLoss(),
                          evaluating_func=agreement)
    options = {"constraints": {"flops": 0.6}, "n_trials": int(os.environ.get("BENCH_TRIALS", "8")),
               "strategy": "tpe", "space": {"bits": [8, "float"], "sparsity": (0.0, 0.7)},
               "measure": {"repeats": 5, "warmup": 1}}
    return model, evaluator, inputs[:1], options


def resnet18_spec() -> tuple:
    return _proxy_spec("resnet18", int(os.environ.get("BENCH_SIZE", "128")))


def mobilenet_v2_spec() -> tuple:
    return _proxy_spec("mobilenet_v2", int(os.environ.get("BENCH_SIZE", "128")))


def _ready(url: str) -> bool:
    """Whether the first worker has created the study and stored its settings."""
    import nnic.auto

    try:
        nnic.auto.load_result(url, "bench")
    except ValueError:
        return False
    return True


def scale(args: argparse.Namespace) -> None:
    import nnic

    for workers in args.workers:
        with tempfile.TemporaryDirectory(prefix="nnic-bench-auto-") as tmp:
            url = f"sqlite:///{tmp}/study.db"
            env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]),
                   "BENCH_TRIALS": str(args.trials), "BENCH_SIZE": str(args.size), "OMP_NUM_THREADS": "1",
                   "NNIC_DISABLE_PLUGIN_AUTOLOAD": "1"}
            cmd = [sys.executable, "-m", "nnic.cli", "auto", "worker", "--storage", url, "--study", "bench",
                   "--no-progress", f"auto:{args.model}_spec"]
            first = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, text=True)
            while not _ready(url):
                time.sleep(0.5)
            others = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, text=True) for _ in range(workers - 1)]
            for p in (first, *others):
                p.communicate()
            result = nnic.auto.load_result(url, "bench")
            import optuna

            study = optuna.load_study(study_name="bench", storage=nnic.auto.storage.open_storage(url))
            done = [t for t in study.get_trials() if t.datetime_complete is not None and t.state.name == "COMPLETE"]
            span = (max(t.datetime_complete for t in done) - min(t.datetime_start for t in done)).total_seconds()
            per_trial = statistics.median((t.datetime_complete - t.datetime_start).total_seconds() for t in done)
            print(f"{args.model} {args.size}px, {workers} worker(s): {len(done)} trials in {span:.0f} s of search "
                  f"(first trial start to last end): {per_trial:.1f} s per trial (median), "
                  f"{3600 * len(done) / span:.0f} trials/hour; best agreement "
                  f"{result.best.measured['score'] if result.best else float('nan'):.1f} % at flops "
                  f"{result.best.measured['flops'] if result.best else float('nan'):.2f}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="what", required=True)
    d = sub.add_parser("digits")
    d.add_argument("--trials", type=int, default=40)
    d.add_argument("--steps", type=int, default=60, help="fine-tuning steps per trial and per uniform point")
    d.add_argument("--width", type=int, default=512)
    d.add_argument("--batch", type=int, default=256, help="batch latency is measured at")
    d.add_argument("--strategy", default="tpe")
    d.add_argument("--out")
    d.set_defaults(run=digits)
    s = sub.add_parser("scale")
    s.add_argument("--model", default="resnet18", choices=("resnet18", "mobilenet_v2"))
    s.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    s.add_argument("--trials", type=int, default=8)
    s.add_argument("--size", type=int, default=128, help="input height and width")
    s.set_defaults(run=scale)
    args = p.parse_args()
    args.run(args)


if __name__ == "__main__":
    main()
