"""The built-in default job: prune a small network with Level, fine-tune it, quantize it with Naive, report.

Needs no data and no download: the model is randomly initialised and the inputs are random, with a fixed seed.
The fine-tuning distils the dense model into the pruned one on random inputs, which shows the two things a
user relies on: the masks stay applied while training, and training recovers what pruning took away.
"""

from __future__ import annotations

import copy
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

import nnic
from nnic import io
from nnic.selection import count_nonzero


def demo_model() -> nn.Module:
    """A small CNN classifier for 1x28x28 inputs (MNIST-sized)."""
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(32 * 7 * 7, 128), nn.ReLU(), nn.Linear(128, 10),
    )


@dataclass
class LayerRow:
    layer: str
    params: int
    nonzero_before: int
    nonzero_after: int
    max_quant_error: float
    scale: float


def _cosine(model: nn.Module, x: torch.Tensor, reference: torch.Tensor) -> float:
    with torch.no_grad():
        return float(nn.functional.cosine_similarity(model(x).flatten(), reference.flatten(), dim=0))


def _distill(student: nn.Module, teacher: nn.Module, steps: int, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed + 1)
    optimizer = torch.optim.Adam(student.parameters(), lr=1e-3)
    for _ in range(steps):
        x = torch.randn(32, 1, 28, 28, generator=generator)
        with torch.no_grad():
            target = teacher(x)
        optimizer.zero_grad()
        nn.functional.mse_loss(student(x), target).backward()
        optimizer.step()


def run(sparsity: float = 0.8, bits: int = 8, steps: int = 100, seed: int = 0,
        out_dir: str | None = None) -> list[LayerRow]:
    """Prune, fine-tune, then quantize :func:`demo_model`; write the artefacts to ``out_dir`` (temporary if None)."""
    torch.manual_seed(seed)
    dense = demo_model().eval()
    model = copy.deepcopy(dense)
    x = torch.randn(256, 1, 28, 28)
    with torch.no_grad():
        dense_out = dense(x)
    layers = {name: m for name, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
    before = {name: count_nonzero(m.weight) for name, m in layers.items()}
    stages = [("dense", sum(before.values()), 1.0)]

    pruner = nnic.pruner("level", model, [{"sparsity": sparsity, "op_types": ["Conv2d", "Linear"]}])
    model, _ = pruner.compress()
    stages.append((f"Level pruning, sparsity {sparsity}", _nonzero(layers), _cosine(model, x, dense_out)))
    _distill(model, dense, steps, seed)
    stages.append((f"fine-tuned {steps} steps (masks stay)", _nonzero(layers), _cosine(model, x, dense_out)))
    pruned = {name: m.weight.detach().clone() for name, m in layers.items()}
    quantizer = nnic.quantizer("naive", model, [
        {"quant_types": ["weight"], "quant_bits": {"weight": bits}, "op_types": ["Conv2d", "Linear"]}
    ])
    quantizer.compress()
    stages.append((f"Naive {bits}-bit weights", _nonzero(layers), _cosine(model, x, dense_out)))

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(out_dir or tmp)
        pruner.export_model(out / "pruned.safetensors", out / "masks.safetensors")
        calibration = quantizer.export_model(out / "quantized.safetensors", out / "calibration.json")
        saved = io.load_tensors(out / "quantized.safetensors")

    rows = [
        LayerRow(
            name, m.weight.numel(), before[name], count_nonzero(saved[f"{name}.weight"]),
            float((saved[f"{name}.weight"] - pruned[name]).abs().max()), calibration[name]["weight_scale"],
        )
        for name, m in layers.items()
    ]
    _print(rows, stages, sparsity, bits)
    return rows


def _nonzero(layers: dict[str, nn.Module]) -> int:
    return sum(count_nonzero(m.weight) for m in layers.values())


def _print(rows: list[LayerRow], stages: list[tuple[str, int, float]], sparsity: float, bits: int) -> None:
    print(f"nnic demo: Level pruning at sparsity {sparsity}, fine-tuning, then Naive {bits}-bit weight quantization\n")
    width = max(len(s[0]) for s in stages)
    print(f"{'stage':<{width}}  {'nonzero weights':>15}  {'output cosine vs dense':>22}")
    for name, nonzero, cosine in stages:
        print(f"{name:<{width}}  {nonzero:>15}  {cosine:>22.4f}")
    print()
    header = f"{'layer':<8}{'weights':>10}{'nonzero before':>16}{'nonzero after':>15}{'sparsity':>10}{'max |w - q(w)|':>16}{'scale/2':>11}"
    print(header)
    print("-" * len(header))
    for r in rows:
        print(f"{r.layer:<8}{r.params:>10}{r.nonzero_before:>16}{r.nonzero_after:>15}"
              f"{1 - r.nonzero_after / r.params:>10.4f}{r.max_quant_error:>16.3e}{r.scale / 2:>11.3e}")
    total = sum(r.params for r in rows)
    print("-" * len(header))
    print(f"{'total':<8}{total:>10}{sum(r.nonzero_before for r in rows):>16}{sum(r.nonzero_after for r in rows):>15}"
          f"{1 - sum(r.nonzero_after for r in rows) / total:>10.4f}")
