"""nnic's default job, on an embedded default: a small CNN on scikit-learn's handwritten digits.

``nnic demo`` runs the shipped recipe ``nnic/recipe/examples/digits.yaml`` (``nnic compress --example digits``):
the CNN is trained for a few seconds, pruned by whole channels (L1 norm, dependency aware), fine-tuned,
physically shrunk by speedup; its largest layer is pruned weight by weight (Level) and fine-tuned again; it is
quantized to int8 and lowered to nnic's int8 kernels, and ``sparsify`` moves the fine-grained zeros to sparse
kernels where a measurement at the report's batch shows them faster (and says why not elsewhere). Then one
before/after table (accuracy, params, FLOPs, size on disk, measured latency) is printed and the HTML report is
written.
No download: the digits (1797 8x8 images) ship with scikit-learn.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

N_CLASSES = 10


class DigitsCNN(nn.Module):
    """Two 3x3 convolutions (with BatchNorm) and a two-layer classifier, for 1x8x8 digit images."""

    def __init__(self, width: int = 32, hidden: int = 128) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.BatchNorm2d(2 * width), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(nn.Linear(2 * width * 4 * 4, hidden), nn.ReLU(), nn.Linear(hidden, N_CLASSES))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).flatten(1))


def _digits(seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The digits as float images in [0, 1] (1x8x8), split 80 / 20 with a fixed seed."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(digits.target, dtype=torch.long)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    split = int(0.8 * len(y))
    return x[order[:split]], y[order[:split]], x[order[split:]], y[order[split:]]


class _Batches:
    """Shuffled (seeded anew each pass) or fixed-order batches of tensors; re-iterable, with a length."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch_size: int, shuffle: bool, seed: int) -> None:
        self.x, self.y, self.batch_size, self.shuffle = x, y, batch_size, shuffle
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return -(-len(self.y) // self.batch_size)

    def __iter__(self):
        order = torch.randperm(len(self.y), generator=self.generator) if self.shuffle else torch.arange(len(self.y))
        for i in range(0, len(order), self.batch_size):
            idx = order[i:i + self.batch_size]
            yield self.x[idx], self.y[idx]


def digits_data(batch_size: int = 64, seed: int = 0) -> Any:
    """The recipe's data: shuffled training batches, the held-out fifth as eval batches, top-1 accuracy."""
    from nnic.recipe import Data

    xt, yt, xe, ye = _digits(seed)
    return Data(train=_Batches(xt, yt, batch_size, True, seed), eval=_Batches(xe, ye, 512, False, seed))


def trained_digits_cnn(epochs: int = 6, width: int = 32, seed: int = 0) -> DigitsCNN:
    """A :class:`DigitsCNN` trained for ``epochs`` on the training split (a few seconds on 2 cores)."""
    torch.manual_seed(seed)
    model = DigitsCNN(width)
    data = digits_data(seed=seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    for _ in range(epochs):
        for x, y in data.train:
            optimizer.zero_grad()
            loss_fn(model(x), y).backward()
            optimizer.step()
    return model.eval()


def summary_rows(report: Any) -> list[tuple[str, str, str, str]]:
    """The demo's one table: accuracy, params, FLOPs, size on disk, latency, before and after."""
    from nnic.report.text import totals_rows

    keep = ("accuracy", "params", "nonzero params", "MACs", "size on disk", "latency median")
    return [r for r in totals_rows(report) if r[0].startswith(keep)]


def run(out_dir: str | Path | None = None, *, quiet: bool = False) -> Any:
    """Run the digits recipe into ``out_dir`` (a new temporary folder if None); print the before/after table."""
    from rich.console import Console
    from rich.table import Table

    from nnic.recipe import compress, example, load_recipe

    out = Path(out_dir) if out_dir is not None else Path(tempfile.mkdtemp(prefix="nnic-demo-"))
    recipe = load_recipe(example("digits"))
    result = compress(recipe, out, quiet=quiet)
    from nnic.report.text import latency_caption

    table = Table(title="nnic demo: digits CNN, channel pruning 60 % + speedup, Level 90 % on the largest layer, "
                        "int8, sparse where faster",
                  title_justify="left")
    for h in ("", "dense", "compressed", "compressed/dense"):
        table.add_column(h, justify="left" if not h else "right")
    for row in summary_rows(result.report):
        table.add_row(*row)
    console = Console()
    console.print(table)
    console.print(latency_caption(result.report))
    for note in result.report.notes:
        console.print(f"• {note}")
    for stage in result.status["stages"]:
        for layer, why in stage.get("summary", {}).get("kept_dense", {}).items():
            console.print(f"• sparsify kept {layer} dense: {why}")
        for layer in stage.get("summary", {}).get("sparse_layers", []):
            console.print(f"• sparsify made {layer} sparse (measured faster)")
    console.print(f"recipe: {example('digits')}\nreport: {out / 'report.html'}  (nnic report {out})")
    return result
