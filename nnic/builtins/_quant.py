"""What the built-in quantizers share: config checks, straight-through rounding, calibration runs.

Not a plugin itself (no hooks): ``qat``, ``ptq``, ``lsq``, ``dorefa`` and ``bnn`` build on it.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

__all__ = ["check_config", "grad_scale", "round_ste", "run_batches"]


def check_config(quantizer: Any, *, quant_types: Iterable[str], bits: tuple[int, int]) -> None:
    """Refuse quant types and bit widths the quantizer does not support, naming the config entry."""
    allowed = tuple(quant_types)
    lo, hi = bits
    for cfg in quantizer.layers.values():
        where = f"config_list[{cfg.entry_index}]"
        extra = [t for t in cfg.config["quant_types"] if t not in allowed]
        if extra:
            raise ValueError(f"{where}['quant_types']: the {quantizer.name} quantizer quantizes "
                             f"{', '.join(allowed)} only, got {cfg.config['quant_types']}")
        for quant_type, b in cfg.config["quant_bits"].items():
            if not lo <= b <= hi:
                span = f"{lo} bit" if lo == hi else f"{lo} to {hi} bits"
                raise ValueError(f"{where}['quant_bits']: the {quantizer.name} quantizer supports {span}, got {b} "
                                 f"for {quant_type!r}")


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
