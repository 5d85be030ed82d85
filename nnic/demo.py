"""The built-in default job: prune a small network with Level, quantize it with Naive, report before/after.

Needs no data and no download: the model is randomly initialised and the input is random, with a fixed seed.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

import nnic
from nnic import io
from nnic.quantities import count_nonzero


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


def run(sparsity: float = 0.8, bits: int = 8, seed: int = 0, out_dir: str | None = None) -> list[LayerRow]:
    """Prune then quantize :func:`demo_model`; write the artefacts to ``out_dir`` (a temporary dir if None)."""
    torch.manual_seed(seed)
    model = demo_model().eval()
    x = torch.randn(64, 1, 28, 28)
    with torch.no_grad():
        dense_out = model(x)
    layers = {name: m for name, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
    before = {name: count_nonzero(m.weight) for name, m in layers.items()}

    pruner = nnic.pruner("level", model, [{"sparsity": sparsity, "op_types": ["Conv2d", "Linear"]}])
    model, _ = pruner.compress()
    pruned = {name: m.weight.detach().clone() for name, m in layers.items()}
    quantizer = nnic.quantizer("naive", model, [
        {"quant_types": ["weight"], "quant_bits": {"weight": bits}, "op_types": ["Conv2d", "Linear"]}
    ])
    quantizer.compress()
    with torch.no_grad():
        compressed_out = model(x)

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
    cosine = float(nn.functional.cosine_similarity(dense_out.flatten(), compressed_out.flatten(), dim=0))
    _print(rows, sparsity, bits, cosine)
    return rows


def _print(rows: list[LayerRow], sparsity: float, bits: int, cosine: float) -> None:
    print(f"nnic demo: Level pruning at sparsity {sparsity}, then Naive {bits}-bit weight quantization\n")
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
    print(f"\noutput cosine similarity, compressed vs dense model: {cosine:.4f}")
