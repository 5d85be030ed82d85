"""Small measurements used in reports, the demo and tests."""

from __future__ import annotations

from fractions import Fraction

import torch


def count_nonzero(t: torch.Tensor) -> int:
    return int(torch.count_nonzero(t.detach()))


def amount(fraction: float, n: int) -> int:
    """floor(fraction * n), computed on the decimal value the user wrote (0.29 * 100 is 29, not 28)."""
    return int(Fraction(repr(float(fraction))) * n)
