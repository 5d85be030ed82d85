"""Quantization: the :class:`Quantizer` base class, quantization parameters and the built-in quantizers."""

from typing import Any

from nnic.quantization.base import Quantizer
from nnic.quantization.qparams import QuantSpec

_BUILTINS = {"NaiveQuantizer": "nnic.builtins.naive"}


def __getattr__(name: str) -> Any:
    # Lazy, because the built-in modules import this package's base class.
    if name in _BUILTINS:
        import importlib

        return getattr(importlib.import_module(_BUILTINS[name]), name)
    raise AttributeError(f"module 'nnic.quantization' has no attribute {name!r}")


__all__ = ["NaiveQuantizer", "QuantSpec", "Quantizer"]
