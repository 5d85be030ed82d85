"""The recovery experiment that ``tests/test_distill.py`` asserts and ``bench/recovery.py`` reports: a digits
classifier (scikit-learn's 8x8 digits, shipped with the package) trained here, pruned, then given the same
small budget of optimizer steps on a few labelled digits, by plain fine-tuning (``alpha=0``) or by
distillation from the dense model (``nnic.distill``, ``alpha=0.5``, ``T=1``).

Two classifiers: a small CNN that loses half its conv channels (``l1norm``), and a tiny ViT (4 heads, 2
layers, 2x2-pixel patches: 16 tokens) that loses half its attention heads (``transformer_head``), sped up so
the heads are really gone.
"""

from __future__ import annotations

import contextlib
import copy
import functools
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

import nnic
from nnic.distill import distill, logits_of

LABELLED = 200  # the fine-tuning set: the first 200 training digits, batches of 16 (13 per epoch)


@functools.cache
def digits() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(images [N, 1, 8, 8] in [0, 1], labels, training indices (1200), held-out indices (597))."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32)[:, None] / 16.0
    y = torch.tensor(d.target)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    return x, y, perm[:1200], perm[1200:]


def batches(idx: torch.Tensor, size: int, seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``idx``'s digits in batches of ``size``, in an order drawn from ``seed``."""
    x, y, _, _ = digits()
    p = idx[torch.randperm(len(idx), generator=torch.Generator().manual_seed(seed))]
    return [(x[p[i:i + size]], y[p[i:i + size]]) for i in range(0, len(p), size)]


def held_out() -> list[tuple[torch.Tensor, torch.Tensor]]:
    return batches(digits()[3], 600, 0)


def accuracy(model: nn.Module, data: list[tuple[torch.Tensor, torch.Tensor]]) -> float:
    """Top-1 accuracy in percent (eval mode; any output :func:`~nnic.distill.logits_of` reads)."""
    model.eval()
    with torch.no_grad():
        correct = sum(int((logits_of(model(x)).argmax(-1) == y).sum()) for x, y in data)
    return 100.0 * correct / sum(len(y) for _, y in data)


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Results that do not depend on the machine's thread count (reductions split differently)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def tiny_cnn() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(128, 10))


def tiny_vit() -> nn.Module:
    import transformers

    config = transformers.ViTConfig(image_size=8, patch_size=2, num_channels=1, hidden_size=32,
                                    num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, num_labels=10)
    return transformers.ViTForImageClassification(config)


def trained(build: Any, epochs: int) -> nn.Module:
    """``build()`` (seeded) trained on the 1200 training digits with Adam 3e-3, batches of 32; eval mode."""
    torch.manual_seed(0)
    model = build()
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    model.train()
    for epoch in range(epochs):
        for x, y in batches(digits()[2], 32, epoch):
            opt.zero_grad()
            nn.functional.cross_entropy(logits_of(model(x)), y).backward()
            opt.step()
    return model.eval()


def half_the_conv_channels(teacher: nn.Module) -> nn.Module:
    pruned = copy.deepcopy(teacher)
    nnic.pruner("l1norm", pruned, [{"sparsity": 0.5, "op_types": ["Conv2d"]}]).compress()
    return pruned


def half_the_heads(teacher: nn.Module) -> tuple[nn.Module, Any]:
    """The teacher with half the heads of every layer pruned (``l1_weight``) and removed; and the report."""
    pruned = copy.deepcopy(teacher)
    _, masks = nnic.pruner("transformer_head", pruned, [{"sparsity": 0.5}], criterion="l1_weight").compress()
    speedup = nnic.ModelSpeedup(pruned, digits()[0][:2], masks)
    speedup.speedup_model()
    return pruned, speedup.report


def recovered(teacher: nn.Module, pruned: nn.Module, seed: int, alpha: float, epochs: int) -> float:
    """Held-out accuracy of ``pruned`` after ``epochs`` passes over the labelled digits (in the order of
    ``seed``) with :func:`~nnic.distill.distill` (``alpha=0``: plain fine-tuning on the labels)."""
    few = batches(digits()[2][:LABELLED], 16, seed)
    torch.manual_seed(seed)
    student = copy.deepcopy(pruned)
    steps = distill(student, teacher, few, steps=epochs * len(few), alpha=alpha, progress=False)
    assert steps == epochs * len(few)
    return accuracy(student, held_out())


# the two experiments: (model, teacher epochs, prune, fine-tuning epochs over the labelled digits)
EXPERIMENTS = {
    "digits CNN, half the conv channels": (tiny_cnn, 5, half_the_conv_channels, 2),
    "tiny ViT, half the heads": (tiny_vit, 15, lambda teacher: half_the_heads(teacher)[0], 4),
}
