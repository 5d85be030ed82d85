"""Structured pruning depth and speed, nnic against Torch-Pruning, run the same way on torchvision classifiers.

Both libraries get the same random-init model (seeded), the same input and the same request: half of the output
channels of every Conv2d and Linear but the classifier, by L1 magnitude.

- nnic: ``nnic.pruner("l1norm", ..., dependency_aware=True)`` then ``nnic.prune_and_speedup(pruner)`` (the masks
  go straight into speedup; ``--two-calls``: ``compress()`` then ``nnic.ModelSpeedup(...).speedup_model()``, the
  masks attached as parametrizations in between), ``verify=True``: the output is checked against the masked
  model's, and a mismatch raises (the goal is judged on this default); each round also times the same with
  ``verify=False`` (its own columns: what verification costs);
- Torch-Pruning: ``tp.pruner.MetaPruner`` with ``tp.importance.MagnitudeImportance(p=1)``, ``pruning_ratio=0.5``,
  the classifier in ``ignored_layers``, then ``step()``.

Per model it prints the parameter and FLOP ratios (pruned / dense; FLOPs from ``torch.utils.flop_counter``), the
median wall time and process CPU time of each (rounds interleaved nnic, TP, nnic, TP...), their ratios, whether
the depth goal holds (nnic's parameter ratio at most Torch-Pruning's + 0.01), whether nnic's output equals the
masked model's, and the largest group of masked channels nnic kept, with the reason its report gives. A summary
follows: median and largest time ratios over the models both handle, the rows that miss a goal, the models
Torch-Pruning fails. 2 threads (``--threads``). Torch-Pruning is a bench dependency only
(``pip install 'nnic[bench]'``).

    python bench/depth.py --quick                   # 7 families, 3 rounds: a few minutes
    python bench/depth.py --all --rounds 1          # every torchvision classifier up to 200M parameters
    python bench/depth.py --all --rounds 1 --size 64   # the same, depth only in a fraction of the time
    python bench/depth.py --models resnet50 convnext_tiny --rounds 5
    python bench/depth.py --quick --threads 1       # single-threaded CPU time: comparable on a loaded machine
    python bench/depth.py --quick --two-calls       # compress() and speedup_model as two calls
    python bench/depth.py --quick --values          # speedup propagates on the masked model's values (A/B)
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import os
import statistics
import time
import warnings

import torch
import torchvision
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import nnic

warnings.filterwarnings("ignore", category=FutureWarning)  # GoogLeNet's and Inception's notes on their init

DEFAULT = ["resnet50", "densenet121", "convnext_tiny", "regnet_x_400mf", "regnet_y_400mf", "regnet_x_800mf",
           "resnext50_32x4d", "mobilenet_v2", "efficientnet_b0"]
QUICK = ["resnet50", "convnext_tiny", "regnet_x_400mf", "densenet121", "mobilenet_v3_large", "efficientnet_b0",
         "vit_b_16"]
MAX_PARAMS = 200_000_000
# Models whose architecture fixes the input size (position embeddings, attention windows) or needs a minimum.
MIN_SIZE = {"vit": 224, "maxvit": 224, "inception": 96, "swin": 96}


def input_size(name: str, size: int) -> int:
    return max([size] + [need for prefix, need in MIN_SIZE.items() if name.startswith(prefix)])


def all_models() -> list[str]:
    """Every torchvision classifier up to 200M parameters (counted on the meta device where the model builds
    there: nothing is allocated)."""
    names = []
    for name in torchvision.models.list_models(module=torchvision.models):
        try:
            with torch.device("meta"):
                n = params(torchvision.models.get_model(name, weights=None))
        except NotImplementedError:  # RegNet computes its widths with tensors: build it for real
            n = params(torchvision.models.get_model(name, weights=None))
        if n <= MAX_PARAMS:
            names.append(name)
    return names


def classifier(model: nn.Module) -> str:
    """The name of the model's classifier: its last Linear layer, or its last Conv2d (SqueezeNet has no Linear)."""
    linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    return linears[-1] if linears else [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)][-1]


def params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def flops(model: nn.Module, x: torch.Tensor) -> int:
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x)
    return counter.get_total_flops()


class Clock:
    """Wall and process CPU seconds of one block."""

    def __enter__(self) -> Clock:
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall, self.cpu = time.perf_counter() - self.wall, time.process_time() - self.cpu


def prune_and_speedup(model: nn.Module, x: torch.Tensor, two_calls: bool = False, verify: bool = True,
                      values: bool = False) -> nnic.speedup.SpeedupReport:
    """nnic's side of the comparison: ``nnic.prune_and_speedup`` (the masks go straight into speedup), or with
    ``two_calls`` ``pruner.compress()`` then ``ModelSpeedup(...).speedup_model()`` (the masks attached as
    parametrizations first, for training in between). An nnic without the helper (an older checkout timed by
    ``bench/depth_ab.py``) takes the two calls. ``values``: speedup propagates on the masked model's values
    even where it could derive the dead channels from the masks (``value_free=False``). Returns speedup's
    report."""
    cfg = [{"sparsity": 0.5, "op_types": ["Conv2d", "Linear"]}, {"exclude": True, "op_names": [classifier(model)]}]
    pruner = nnic.pruner("l1norm", model, cfg, dependency_aware=True, dummy_input=x)
    kwargs = {"verify": verify}
    if "value_free" in nnic.ModelSpeedup.__init__.__code__.co_varnames:  # an older checkout has no such choice
        kwargs["value_free"] = not values
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if two_calls or not hasattr(nnic, "prune_and_speedup"):
            _, masks = pruner.compress()
            speedup = nnic.ModelSpeedup(model, x, masks, **kwargs)
            speedup.speedup_model()
            return speedup.report
        return nnic.prune_and_speedup(pruner, **kwargs).report


def run_nnic(model: nn.Module, x: torch.Tensor, two_calls: bool = False, verify: bool = True,
             values: bool = False) -> tuple[nn.Module, Clock, str, str]:
    """The pruned model, the clock, the largest kept group and why, and how speedup propagated."""
    with Clock() as clock:
        report = prune_and_speedup(model, x, two_calls, verify, values)
    why = f"{report.kept_groups[0].channels}: {report.kept_groups[0].reason}" if report.kept_groups else "-"
    return model, clock, why, getattr(report, "propagation", "values")


@contextlib.contextmanager
def memory_limit(gib: float):
    """At most ``gib`` GiB more of heap for the block (Linux ``RLIMIT_DATA``): Torch-Pruning's dependency graph
    grows past 7-23 GB on Swin and MaxViT, on a machine others share; beyond the limit it fails with
    MemoryError (a row of its own) instead. No limit where the platform has none."""
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_DATA)
        with open("/proc/self/status") as status:
            data = next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmData:"))
    except (ImportError, OSError, StopIteration):
        yield
        return
    cap = data + int(gib * 2**30)
    resource.setrlimit(resource.RLIMIT_DATA, (cap if hard == resource.RLIM_INFINITY else min(cap, hard), hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_DATA, (soft, hard))


def run_tp(model: nn.Module, x: torch.Tensor, memory_gib: float = 6.0) -> tuple[nn.Module, Clock]:
    import torch_pruning as tp

    head = model.get_submodule(classifier(model))
    with memory_limit(memory_gib), Clock() as clock, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # its notes on unwrapped parameters (layer scales), every round
        pruner = tp.pruner.MetaPruner(model, x, importance=tp.importance.MagnitudeImportance(p=1),
                                      pruning_ratio=0.5, ignored_layers=[head])
        pruner.step()
    return model, clock


def bench_model(name: str, rounds: int, size: int, tp_memory_gib: float = 6.0, two_calls: bool = False,
                values: bool = False) -> dict:
    """One row: interleaved rounds of nnic (verify=True, then verify=False) and Torch-Pruning on copies of one
    dense model."""
    torch.manual_seed(0)
    dense = torchvision.models.get_model(name, weights=None).eval()
    side = input_size(name, size)
    x = torch.randn(1, 3, side, side)
    p0, f0 = params(dense), flops(dense, x)
    row: dict = {"name": name, "nnic": [], "nnic_noverify": [], "tp": [], "tp_error": None, "error": None}
    for _ in range(rounds):
        try:
            model, clock, why, how = run_nnic(copy.deepcopy(dense), x, two_calls, True, values)
            _, unverified, _, _ = run_nnic(copy.deepcopy(dense), x, two_calls, False, values)
        except Exception as exc:  # a failed nnic speedup is a row of its own, never a crash of the table
            row["error"] = f"{type(exc).__name__}: {str(exc)[:80]}"
            break
        row["nnic"].append(clock)
        row["nnic_noverify"].append(unverified)
        row.update(pn=params(model) / p0, fn=flops(model, x) / f0, why=why,
                   how="value-free" if how == "value-free" else "values")
        if row["tp_error"] is None:
            try:
                model, clock = run_tp(copy.deepcopy(dense).eval(), x, tp_memory_gib)
                row.update(pt=params(model) / p0, ft=flops(model, x) / f0)  # its model must still run
                row["tp"].append(clock)
            except Exception as exc:  # Torch-Pruning fails on some models: report, keep going
                row["tp_error"] = type(exc).__name__
    return row


def median(clocks: list[Clock], attr: str) -> float:
    return statistics.median(getattr(c, attr) for c in clocks)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--models", nargs="*", default=None)
    group.add_argument("--quick", action="store_true", help=f"the {len(QUICK)} families {', '.join(QUICK)}")
    group.add_argument("--all", action="store_true", help="every torchvision classifier up to 200M parameters")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds per model (median)")
    parser.add_argument("--tp-memory-gib", type=float, default=6.0,
                        help="heap Torch-Pruning may grow by per model before it fails with MemoryError")
    parser.add_argument("--threads", type=int, default=2,
                        help="torch threads (1: CPU time compares the single-threaded work of both, under load too)")
    parser.add_argument("--two-calls", action="store_true",
                        help="time pruner.compress() then speedup_model (masks attached in between) instead of "
                             "nnic.prune_and_speedup")
    parser.add_argument("--values", action="store_true",
                        help="speedup propagates on the masked model's values (value_free=False): the A/B baseline")
    parser.add_argument("--size", type=int, default=224,
                        help="input side (ViT and MaxViT always get 224, Inception and Swin at least 96)")
    args = parser.parse_args()
    names = all_models() if args.all else QUICK if args.quick else args.models or DEFAULT
    torch.set_num_threads(args.threads)
    import torch_pruning  # noqa: F401  imported, and nnic's plugins loaded, before any round is timed

    nnic.list_plugins()
    print(f"load average at start: {' '.join(f'{v:.2f}' for v in os.getloadavg())}; {args.threads} thread(s); nnic: "
          f"{'compress() + speedup_model' if args.two_calls else 'prune_and_speedup'}"
          f"{' (value_free=False)' if args.values else ''}")
    print("| model | params nnic | params TP | FLOPs nnic | FLOPs TP | nnic s (wall / cpu) | TP s (wall / cpu) | "
          "time ratio (wall / cpu) | nnic verify=False s (wall / cpu) | its ratio (wall / cpu) | depth ok | "
          "output = masked | propagation | masked channels kept (largest group): why |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    wall_ratios, cpu_ratios, missed, tp_fails, failed = [], [], [], [], []
    nv_wall_ratios, nv_cpu_ratios = [], []
    for name in names:
        row = bench_model(name, args.rounds, args.size, args.tp_memory_gib, args.two_calls, args.values)
        if row["error"]:
            failed.append(name)
            print(f"| {name} | fails: {row['error']} | | | | | | | | | | NO | | |", flush=True)
            continue
        nw, nc = median(row["nnic"], "wall"), median(row["nnic"], "cpu")
        uw, uc = median(row["nnic_noverify"], "wall"), median(row["nnic_noverify"], "cpu")
        if row["tp"]:
            tw, tc = median(row["tp"], "wall"), median(row["tp"], "cpu")
            wall_ratios.append(nw / tw)
            cpu_ratios.append(nc / tc)
            nv_wall_ratios.append(uw / tw)
            nv_cpu_ratios.append(uc / tc)
            ok = row["pn"] <= row["pt"] + 0.01
            if not ok:
                missed.append(f"{name} ({row['pn']:.3f} vs {row['pt']:.3f})")
            tp_cols = (f"{row['pt']:.3f} | {row['fn']:.3f} | {row['ft']:.3f} | {nw:.2f} / {nc:.2f} | "
                       f"{tw:.2f} / {tc:.2f} | {nw / tw:.2f} / {nc / tc:.2f} | {uw:.2f} / {uc:.2f} | "
                       f"{uw / tw:.2f} / {uc / tc:.2f} | {'yes' if ok else 'NO'}")
        else:
            tp_fails.append(name)
            tp_cols = f"fails ({row['tp_error']}) | {row['fn']:.3f} | | {nw:.2f} / {nc:.2f} | | | {uw:.2f} / {uc:.2f} | | "
        print(f"| {name} | {row['pn']:.3f} | {tp_cols} | yes | {row['how']} | {row['why'][:70]} |", flush=True)
    print(f"\nload average at end: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    if wall_ratios:
        print(f"time ratio nnic / TP over the {len(wall_ratios)} models both handle: wall median "
              f"{statistics.median(wall_ratios):.2f} (max {max(wall_ratios):.2f}), CPU median "
              f"{statistics.median(cpu_ratios):.2f} (max {max(cpu_ratios):.2f})")
        print(f"  with verify=False: wall median {statistics.median(nv_wall_ratios):.2f} "
              f"(max {max(nv_wall_ratios):.2f}), CPU median {statistics.median(nv_cpu_ratios):.2f} "
              f"(max {max(nv_cpu_ratios):.2f})")
    print(f"depth goal missed on {len(missed)}: {', '.join(missed) or '-'}")
    print(f"Torch-Pruning fails on {len(tp_fails)} (nnic passes them): {', '.join(tp_fails) or '-'}")
    print(f"nnic fails on {len(failed)}: {', '.join(failed) or '-'}")


if __name__ == "__main__":
    main()
