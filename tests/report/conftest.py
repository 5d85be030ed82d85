from __future__ import annotations

import pytest
import torch
from torch import nn

import nnic
from nnic.report import build_report


def small_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1),
                         nn.ReLU(), nn.Flatten(), nn.Linear(16 * 8 * 8, 32), nn.ReLU(), nn.Linear(32, 10)).eval()


@pytest.fixture(scope="session")
def compressed_pair():
    """A small CNN, and a copy with half its conv channels removed for real and int8 Linear/Conv layers."""
    dense = small_cnn()
    model = small_cnn()
    x = torch.randn(2, 3, 8, 8)
    _, masks = nnic.pruner("l1norm", model, [{"sparsity": 0.5, "op_types": ["Conv2d"]}],
                           dependency_aware=True, dummy_input=x).compress()
    nnic.speedup_model(model, x, masks)
    nnic.quantization_speedup(model, {"0": 8, "3": 8, "6": 8, "8": 8})
    return dense, model, x


@pytest.fixture(scope="session")
def report(compressed_pair):
    dense, model, x = compressed_pair
    return build_report(dense, model, x, measure={"threads": 1, "warmup": 1, "repeats": 5},
                        recipe={"name": "small-cnn"})
