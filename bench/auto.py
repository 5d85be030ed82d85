"""Benchmark of ``nnic.auto_compress``.

``python bench/auto.py digits [--quick]``: on sklearn's digits, the Pareto front of accuracy against measured
latency that the search finds in a fixed budget, against uniform sparsity at 30/50/70 % with the same pruner
(l1norm) and the same fine-tuning budget. The uniform points are the study's first trials (``start_points``),
so they are built exactly as the search builds every trial. For each, it reports the most accurate other
configuration no slower than it, and the fastest one at least as accurate; every latency compared there is
measured again at the end, dense, uniform and found model interleaved (rounds, median, process CPU time), and
"no slower" allows a stated tolerance for noise.

``python bench/auto.py scale [--quick] [--model resnet18 mobilenet_v2] [--workers 1 2]``: the search on real
networks with a proxy evaluator (output agreement with the dense model on random inputs: logits' cosine
similarity; no fine-tuning): seconds per trial and trials per hour with 1 and 2 local worker processes
sharing one study file.
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
UNIFORM = (0.3, 0.5, 0.7)


def _ratios(models: dict, x: torch.Tensor, batch: int) -> dict[str, float]:
    """Median latency of each model / the dense one's, all timed in the same interleaved rounds."""
    from nnic.measure import measure_latencies

    stats = measure_latencies(models, x, rounds=5, threads=1, batch=batch, warmup=2, repeats=25, clock="cpu")
    return {name: s.median_ms / stats["dense"].median_ms for name, s in stats.items()}


def _compare(model, result, uniform, x, batch: int, tolerance: float, tries: int = 6) -> dict:
    """For one uniform trial: the most accurate other trial no slower than it, and the fastest other trial at
    least as accurate, both checked by measuring again (interleaved with the uniform and dense models)."""
    u_model = result.apply(model, uniform)
    others = [t for t in result.feasible if not t.start_point]
    u_ratio = uniform.measured["latency_ratio"]
    row = {"uniform": uniform, "u_ratio": None, "accurate": None, "fast": None}

    def check(trial):
        r = _ratios({"dense": model, "uniform": u_model, "found": result.apply(model, trial)}, x, batch)
        row["u_ratio"] = row["u_ratio"] or r["uniform"]
        return r["found"], r["uniform"]

    # Most accurate at equal or lower latency: candidates by score, those the search measured no slower first.
    near = sorted((t for t in others if t.measured["latency_ratio"] <= u_ratio * (1 + 3 * tolerance)),
                  key=lambda t: -t.measured["score"])
    for t in near[:tries]:
        f, u = check(t)
        if f <= u * (1 + tolerance):
            row["accurate"] = (t, f, u)
            break
    # Fastest at equal or higher accuracy.
    good = sorted((t for t in others if t.measured["score"] >= uniform.measured["score"]),
                  key=lambda t: t.measured["latency_ratio"])
    for t in good[:2]:
        f, u = check(t)
        if row["fast"] is None or f / u < row["fast"][1] / row["fast"][2]:
            row["fast"] = (t, f, u)
    if row["u_ratio"] is None:
        row["u_ratio"] = _ratios({"dense": model, "uniform": u_model}, x, batch)["uniform"]
    return row


def digits(args: argparse.Namespace) -> None:
    import digits as data  # tests/auto/digits.py

    import nnic

    if args.quick:
        args.trials, args.steps = min(args.trials, 20), min(args.steps, 30)
    torch.manual_seed(0)
    torch.set_num_threads(1)
    model = data.trained_model(width=args.width, epochs=10)
    evaluator = data.evaluator()
    x = data.data()[2][:64]
    measure = {"batch": args.batch, "repeats": 15, "warmup": 2, "rounds": 5}
    out = Path(args.out or tempfile.mkdtemp(prefix="nnic-bench-auto-"))
    start = time.perf_counter()
    result = nnic.auto_compress(model, evaluator, x, objectives=("score", "latency_ratio"), n_trials=args.trials,
                                strategy=args.strategy, fine_tune_steps=args.steps, measure=measure,
                                space={"sparsity": (0.0, 0.9)}, start_points=UNIFORM, out_dir=out, seed=0,
                                progress=True)
    search_s = time.perf_counter() - start
    dense = result.baseline
    print(f"\ndigits MLP 64-{args.width}-{args.width}-10, dense accuracy {dense['score']:.2f} %, "
          f"latency {dense['latency_ms']:.3f} ms (batch {args.batch}, 1 thread); load average "
          f"{' '.join(f'{v:.1f}' for v in os.getloadavg())}")
    print(f"search: {args.trials} trials ({args.strategy}, {args.steps} fine-tuning steps each; the first "
          f"{len(UNIFORM)} are the uniform points) in {search_s:.0f} s; {len(result.pareto)} configurations on "
          f"the front; files in {out}")
    uniform = {round(next(iter(t.configuration.sparsity.values())), 2): t for t in result.trials if t.start_point}
    rows = [_compare(model, result, uniform[s], x, args.batch, args.tolerance) for s in UNIFORM]
    print(f"\nlatency: ratio to the dense model, measured again at the end (process CPU time; dense, uniform, "
          f"found interleaved, 5 rounds x 5 runs, median); 'no slower' allows {args.tolerance:.0%} for noise")
    print("\n| uniform | uniform acc. / latency | most accurate trial, no slower | acc. | latency | gain "
          "| fastest found, as accurate | latency | vs uniform |")
    print("|---|---|---|---|---|---|---|---|---|")
    met = []
    for s, row in zip(UNIFORM, rows):
        u = row["uniform"]
        cells = [f"{s:.0%}", f"{u.measured['score']:.2f} % / {row['u_ratio']:.3f}"]
        gain = row["accurate"][0].measured["score"] - u.measured["score"] if row["accurate"] else None
        if gain is not None and gain >= 0:
            t, f, uu = row["accurate"]
            cells += [f"#{t.number} {_describe(t)}", f"{t.measured['score']:.2f} %", f"{f:.3f} (uniform {uu:.3f})",
                      f"{gain:+.2f}"]
        else:  # no other trial is as accurate at no more latency: the start point itself is the search's answer
            cells += [f"#{u.number}: the uniform start point itself", f"{u.measured['score']:.2f} %",
                      f"{row['u_ratio']:.3f}", "+0.00"]
        if row["fast"]:
            t, f, uu = row["fast"]
            cells += [f"#{t.number}", f"{f:.3f} (uniform {uu:.3f})", f"{f / uu:.2f}x"]
        else:
            cells += ["none", "", ""]
        print("| " + " | ".join(cells) + " |")
        met.append((s, gain, row["fast"][1] / row["fast"][2] if row["fast"] else None))
    print()
    for s, gain, speed in met:
        ok = gain is not None and gain >= 0
        line = (f"{s:.0%}: at least as accurate at no more latency: yes ("
                + ("another configuration" if ok else "the uniform start point itself; no other configuration") + ")")
        if s == 0.5:
            line += (f"; 50 % goal (>= +1 point, or >= 10 % faster at equal accuracy): "
                     f"{'met' if (gain or 0) >= 1 or (speed is not None and speed <= 0.9) else 'missed'}")
        print(line)
    print("\n" + result.report())


def _describe(trial) -> str:
    """``sparsity 80%/75%, int8 on 2 layer(s)``: per pruned layer, then the low-bit layers."""
    config = trial.configuration
    bits = config.quantization_bits()
    low = f"int{'/int'.join(str(b) for b in sorted(set(bits.values())))} on {len(bits)} layer(s)" if bits else "float"
    return f"sparsity {'/'.join(f'{v:.0%}' for v in config.sparsity.values())}, {low}"


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


def _scale_run(model: str, workers: int, trials: int, size: int) -> dict:
    """One study on ``model`` with ``workers`` local worker processes sharing its SQLite file."""
    import optuna

    import nnic

    with tempfile.TemporaryDirectory(prefix="nnic-bench-auto-") as tmp:
        url = f"sqlite:///{tmp}/study.db"
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]),
               "BENCH_TRIALS": str(trials), "BENCH_SIZE": str(size), "OMP_NUM_THREADS": "1",
               "NNIC_DISABLE_PLUGIN_AUTOLOAD": "1"}
        cmd = [sys.executable, "-m", "nnic.cli", "auto", "worker", "--storage", url, "--study", "bench",
               "--no-progress", f"auto:{model}_spec"]
        first = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, text=True)
        while not _ready(url):
            if first.poll() is not None:
                raise RuntimeError(f"the first {model} worker exited with {first.returncode}")
            time.sleep(0.5)
        others = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, text=True) for _ in range(workers - 1)]
        for p in (first, *others):
            p.communicate()
            if p.returncode:
                raise RuntimeError(f"a {model} worker exited with {p.returncode}")
        result = nnic.auto.load_result(url, "bench")
        study = optuna.load_study(study_name="bench", storage=nnic.auto.storage.open_storage(url))
        done = [t for t in study.get_trials() if t.state.name in ("COMPLETE", "PRUNED")]
        span = (max(t.datetime_complete for t in done) - min(t.datetime_start for t in done)).total_seconds()
        per_trial = statistics.median((t.datetime_complete - t.datetime_start).total_seconds() for t in done)
        return {"model": model, "workers": workers, "trials": len(done), "span": span, "per_trial": per_trial,
                "per_hour": 3600 * len(done) / span, "best": result.best, "load": os.getloadavg()[0]}


def scale(args: argparse.Namespace) -> None:
    if args.quick:
        args.trials, args.size = min(args.trials, 4), min(args.size, 96)
    rows = [_scale_run(m, w, args.trials, args.size) for m in args.model for w in args.workers]
    print(f"\nproxy evaluator (logits' cosine similarity with the dense model on 16 random inputs, %), no "
          f"fine-tuning, flops <= 0.6, {args.size} px, tpe; latency timed in-trial against the dense model")
    print("\n| network | workers | finished trials | wall time (first start to last end) | s per trial (median) "
          "| trials per hour | best agreement @ flops | load average (1 min, at the end) |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        best = r["best"]
        found = f"{best.measured['score']:.1f} % @ {best.measured['flops']:.2f}" if best else "none feasible"
        print(f"| {r['model']} | {r['workers']} | {r['trials']} | {r['span']:.0f} s | {r['per_trial']:.1f} | "
              f"{r['per_hour']:.0f} | {found} | {r['load']:.1f} |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="what", required=True)
    d = sub.add_parser("digits")
    d.add_argument("--trials", type=int, default=60)
    d.add_argument("--steps", type=int, default=60, help="fine-tuning steps per trial and per uniform point")
    d.add_argument("--width", type=int, default=512)
    d.add_argument("--batch", type=int, default=256, help="batch latency is measured at")
    d.add_argument("--strategy", default="tpe")
    d.add_argument("--tolerance", type=float, default=0.03, help="noise allowed when checking 'no slower'")
    d.add_argument("--quick", action="store_true", help="20 trials of 30 fine-tuning steps (a few minutes)")
    d.add_argument("--out")
    d.set_defaults(run=digits)
    s = sub.add_parser("scale")
    s.add_argument("--model", nargs="+", default=["resnet18", "mobilenet_v2"], choices=("resnet18", "mobilenet_v2"))
    s.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    s.add_argument("--trials", type=int, default=8)
    s.add_argument("--size", type=int, default=128, help="input height and width")
    s.add_argument("--quick", action="store_true", help="4 trials at 96 px per run (a few minutes in all)")
    s.set_defaults(run=scale)
    args = p.parse_args()
    args.run(args)


if __name__ == "__main__":
    main()
