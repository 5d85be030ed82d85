"""What the built-in quantizers share: straight-through rounding, calibration runs.

Not a plugin itself (no hooks): ``qat``, ``ptq``, ``lsq``, ``dorefa`` and ``bnn`` build on it.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

__all__ = ["grad_scale", "round_ste", "run_batches"]


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """``round(x)`` with a straight-through gradient."""
    return x + (torch.round(x) - x).detach()


def grad_scale(x: torch.Tensor, scale: float) -> torch.Tensor:
    """``x`` in the forward pass; its gradient multiplied by ``scale`` in the backward pass (LSQ)."""
    return (x - x * scale).detach() + x * scale


def run_batches(model: nn.Module, data: Iterable[Any], steps: int | None = None) -> int:
    """Run ``model`` in eval mode without gradients over ``data`` (tensors, or ``(input, ...)`` tuples)."""
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    was_training = model.training
    model.eval()
    seen = 0
    try:
        with torch.no_grad():
            for batch in data:
                if steps is not None and seen >= steps:
                    break
                x = batch[0] if isinstance(batch, (tuple, list)) else batch
                model(x.to(device))
                seen += 1
    finally:
        model.train(was_training)
    if seen == 0:
        raise ValueError("calibration_data: expected at least one batch, got none")
    return seen
