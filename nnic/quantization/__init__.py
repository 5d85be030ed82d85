"""Quantization: the :class:`Quantizer` base class, quantization parameters and the built-in quantizers.

``from nnic.quantization import NaiveQuantizer`` and ``nnic.quantizer("naive", ...)`` give the same class.
"""

from nnic._lazy import lazy_getattr
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
    "RTNQuantizer": "nnic.builtins.rtn",
    "GPTQQuantizer": "nnic.builtins.gptq",
    "AWQQuantizer": "nnic.builtins.awq",
    "SmoothQuantizer": "nnic.builtins.smoothquant",
}

__getattr__ = lazy_getattr("nnic.quantization", {name: f"{module}:{name}" for name, module in _BUILTINS.items()})


__all__ = ["QuantSpec", "Quantizer", *_BUILTINS]
