"""Quantization: the :class:`Quantizer` base class, quantization parameters, and every registered quantizer
importable by its class name.

``from nnic.quantization import NaiveQuantizer`` and ``nnic.quantizer("naive", ...)`` give the same class: class
names are looked up in the plugin registry (on first use, so ``import nnic`` loads no plugin).
"""

from nnic.quantization.base import Quantizer
from nnic.quantization.qparams import QuantSpec
from nnic.registry import class_lookup

__getattr__, __dir__ = class_lookup(__name__, "quantizer", globals())

__all__ = ["QuantSpec", "Quantizer"]
