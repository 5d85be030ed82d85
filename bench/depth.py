"""Structured pruning depth and speed, nnic against Torch-Pruning, run the same way on torchvision classifiers.

Both libraries get the same random-init model (seeded), the same input and the same request: half of the output
channels of every Conv2d and Linear but the classifier, by L1 magnitude.

- nnic: ``nnic.pruner("l1norm", ..., dependency_aware=True)``, ``compress()``, then ``nnic.speedup_model``
  (``verify=True``: the output is checked against the masked model's);
- Torch-Pruning: ``tp.pruner.MetaPruner`` with ``tp.importance.MagnitudeImportance(p=1)``, ``pruning_ratio=0.5``,
  the classifier in ``ignored_layers``, then ``step()``.

Per model it prints the parameter and FLOP ratios (pruned / dense; FLOPs from ``torch.utils.flop_counter``), the
median wall time of each (rounds interleaved nnic, TP, nnic, TP...), their ratio, whether nnic's output equals
the masked model's, and the largest group of masked channels nnic kept, with the reason its report gives.
2 threads. Torch-Pruning is a bench dependency only (``pip install torch-pruning``).

    python bench/depth.py                           # the families of issue 16
    python bench/depth.py --models resnet50 convnext_tiny --rounds 3
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
import warnings

import torch
import torchvision
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import nnic

DEFAULT = ["resnet50", "densenet121", "convnext_tiny", "regnet_x_400mf", "regnet_y_400mf", "regnet_x_800mf",
           "resnext50_32x4d", "mobilenet_v2", "efficientnet_b0"]


def classifier(model: nn.Module) -> str:
    """The name of the model's last Linear layer (its classifier)."""
    return [n for n, m in model.named_modules() if isinstance(m, nn.Linear)][-1]


def params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def flops(model: nn.Module, x: torch.Tensor) -> int:
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x)
    return counter.get_total_flops()


def run_nnic(model: nn.Module, x: torch.Tensor) -> tuple[nn.Module, float, bool, str]:
    head = classifier(model)
    start = time.perf_counter()
    cfg = [{"sparsity": 0.5, "op_types": ["Conv2d", "Linear"]}, {"exclude": True, "op_names": [head]}]
    pruner = nnic.pruner("l1norm", model, cfg, dependency_aware=True, dummy_input=x)
    _, masks = pruner.compress()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        speedup = nnic.ModelSpeedup(model, x, masks, verify=True)
        speedup.speedup_model()
    seconds = time.perf_counter() - start
    report = speedup.report
    why = f"{report.kept_groups[0].channels}: {report.kept_groups[0].reason}" if report.kept_groups else "-"
    return model, seconds, True, why


def run_tp(model: nn.Module, x: torch.Tensor) -> tuple[nn.Module, float]:
    import torch_pruning as tp

    head = model.get_submodule(classifier(model))
    start = time.perf_counter()
    pruner = tp.pruner.MetaPruner(model, x, importance=tp.importance.MagnitudeImportance(p=1), pruning_ratio=0.5,
                                  ignored_layers=[head])
    pruner.step()
    return model, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", default=DEFAULT)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds per model (median)")
    parser.add_argument("--size", type=int, default=224)
    args = parser.parse_args()
    torch.set_num_threads(2)
    print("| model | params nnic | params TP | FLOPs nnic | FLOPs TP | time nnic s | time TP s | time ratio | "
          "output = masked | masked channels kept (largest group): why |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    time_ratios = []
    for name in args.models:
        torch.manual_seed(0)
        dense = torchvision.models.get_model(name, weights=None).eval()
        x = torch.randn(1, 3, args.size, args.size)
        p0, f0 = params(dense), flops(dense, x)
        t_nnic, t_tp, row = [], [], {}
        for _ in range(args.rounds):
            model, seconds, ok, why = run_nnic(copy.deepcopy(dense), x)
            t_nnic.append(seconds)
            row.update(pn=params(model) / p0, fn=flops(model, x) / f0, ok=ok, why=why)
            try:
                model, seconds = run_tp(copy.deepcopy(dense).eval(), x)
                t_tp.append(seconds)
                row.update(pt=params(model) / p0, ft=flops(model, x) / f0)
            except Exception as exc:  # Torch-Pruning fails on some models: report, keep going
                row.update(pt=None, ft=None, tp_error=f"{type(exc).__name__}")
                break
        tn = statistics.median(t_nnic)
        if t_tp:
            tt = statistics.median(t_tp)
            time_ratios.append(tn / tt)
            tp_cols = f"{row['pt']:.3f} | {row['fn']:.3f} | {row['ft']:.3f} | {tn:.2f} | {tt:.2f} | {tn / tt:.2f}"
        else:
            tp_cols = f"fails ({row['tp_error']}) | {row['fn']:.3f} | | {tn:.2f} | | "
        print(f"| {name} | {row['pn']:.3f} | {tp_cols} | {'yes' if row['ok'] else 'NO'} | {row['why'][:60]} |",
              flush=True)
    if time_ratios:
        print(f"\nmedian time ratio nnic / TP: {statistics.median(time_ratios):.2f} "
              f"(max {max(time_ratios):.2f}) over {len(time_ratios)} models")


if __name__ == "__main__":
    main()
