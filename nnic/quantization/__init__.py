"""Quantization: the :class:`Quantizer` base class, quantization parameters and the built-in quantizers.

``from nnic.quantization import NaiveQuantizer`` and ``nnic.quantizer("naive", ...)`` give the same class.
"""

import importlib
from typing import Any

from nnic.quantization.base import Quantizer
from nnic.quantization.qparams import QuantSpec

# Lazy, because the built-in modules import this package's base classes.
_BUILTINS = {
    "NaiveQuantizer": "nnic.builtins.naive",
    "QATQuantizer": "nnic.builtins.qat",
    "PTQQuantizer": "nnic.builtins.ptq",
    "LSQQuantizer": "nnic.builtins.lsq",
    "DoReFaQuantizer": "nnic.builtins.dorefa",
    "BNNQuantizer": "nnic.builtins.bnn",
}


def __getattr__(name: str) -> Any:
    if name in _BUILTINS:
        return getattr(importlib.import_module(_BUILTINS[name]), name)
    raise AttributeError(f"module 'nnic.quantization' has no attribute {name!r}")


__all__ = ["QuantSpec", "Quantizer", *_BUILTINS]
