"""Speedup coverage over every torchvision classification model: does ``nnic.speedup_model`` run, verify and shrink?

For each model in ``torchvision.models.list_models(module=torchvision.models)`` (random weights, nothing
downloaded): random 50 % output-channel masks on every Conv2d and Linear, ``speedup_model(..., verify=True)``
(which checks the output against the masked model's), and the parameter ratio. Prints a markdown table and the
pass rate; models that fail are listed with the error.

    python bench/torchvision_coverage.py                 # every model
    python bench/torchvision_coverage.py --only resnet   # names containing "resnet"
    python bench/torchvision_coverage.py --onnx          # also nnic.export_onnx each sped-up model, verified in
                                                         # onnxruntime (at the example's batch and twice it)
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
import traceback
import warnings

import sys
from pathlib import Path

# bench/onnx.py is named like the onnx package that --onnx needs: this folder must not shadow it.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import torch  # noqa: E402
import torchvision  # noqa: E402
from torch import nn  # noqa: E402

import nnic  # noqa: E402

# Models whose architecture fixes the input size (position embeddings, windows) or needs a minimum one.
INPUT_SIZE = {"vit": 224, "swin": 224, "maxvit": 224, "inception": 96}


def input_size(name: str) -> int:
    return next((size for prefix, size in INPUT_SIZE.items() if name.startswith(prefix)), 64)


def random_channel_masks(model: nn.Module, fraction: float, seed: int) -> dict:
    generator = torch.Generator().manual_seed(seed)
    masks = {}
    for name, m in model.named_modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)) and m.weight.shape[0] > 1:
            out = m.weight.shape[0]
            keep = torch.ones(out, dtype=torch.bool)
            keep[torch.randperm(out, generator=generator)[: int(out * fraction)]] = False
            shape = (out,) + (1,) * (m.weight.dim() - 1)
            masks[name] = {"weight": keep.reshape(shape).expand_as(m.weight).clone(),
                           "bias": keep.clone() if m.bias is not None else None}
    return masks


def run_one(name: str, fraction: float, onnx_dir: str | None = None) -> tuple[float, float]:
    """Speed up one model (and export it to ``onnx_dir`` when given); returns (parameters after / before, seconds
    spent in speedup_model)."""
    torch.manual_seed(0)
    model = torchvision.models.get_model(name, weights=None).eval()
    size = input_size(name)
    x = torch.randn(1, 3, size, size)
    before = sum(p.numel() for p in model.parameters())
    masks = random_channel_masks(model, fraction, seed=1)
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        nnic.speedup_model(model, x, masks, verify=True)
    seconds = time.perf_counter() - start
    after = sum(p.numel() for p in model.parameters())
    if onnx_dir is not None:
        path = os.path.join(onnx_dir, f"{name}.onnx")
        try:
            nnic.export_onnx(model, x, path, verify=True)
        finally:
            if os.path.exists(path):
                os.remove(path)
    return after / before, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="", help="substring of the model names to run")
    parser.add_argument("--fraction", type=float, default=0.5)
    parser.add_argument("--onnx", action="store_true", help="export each sped-up model to ONNX and verify it")
    args = parser.parse_args()
    onnx_dir = tempfile.mkdtemp(prefix="nnic-coverage-onnx-") if args.onnx else None
    torch.set_grad_enabled(False)
    names = [n for n in torchvision.models.list_models(module=torchvision.models) if args.only in n]
    rows, failures = [], []
    for name in names:
        try:
            ratio, seconds = run_one(name, args.fraction, onnx_dir)
            rows.append(f"| {name} | ok | {ratio:.2f} | {seconds:.1f} |")
        except Exception as exc:  # a coverage report lists every failure instead of stopping at the first
            failures.append((name, f"{type(exc).__name__}: {exc}".splitlines()[0][:300]))
            rows.append(f"| {name} | FAILED | | |")
            traceback.print_exc(limit=2)
        print(rows[-1], flush=True)
    print("\n| model | speedup | params after / before | seconds |\n|---|---|---|---|")
    print("\n".join(rows))
    passed = len(names) - len(failures)
    what = "sped up, exported to ONNX and verified in onnxruntime" if args.onnx else "sped up and verified"
    print(f"\n{passed} of {len(names)} torchvision classification models {what} "
          f"({100 * passed / max(len(names), 1):.1f} %)")
    for name, error in failures:
        print(f"- {name}: {error}")


if __name__ == "__main__":
    main()
