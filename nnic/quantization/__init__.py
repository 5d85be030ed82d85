"""Quantization: the :class:`Quantizer` base class, quantization parameters and the built-in quantizers.

``from nnic.quantization import NaiveQuantizer`` and ``nnic.quantizer("naive", ...)`` give the same class.
"""

from nnic._lazy import lazy_getattr
from nnic.quantization.base import Quantizer
from nnic.quantization.calibration import Calibration, LayerCalibration, TensorCalibration
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

# The int modules load the GEMM kernels: only when asked for.
_MODULES = {name: f"nnic.quantization.modules:{name}" for name in ("Int4Linear", "Int8Conv2d", "Int8Linear")}
__getattr__ = lazy_getattr("nnic.quantization", {**{name: f"{module}:{name}" for name, module in _BUILTINS.items()},
                                                 **_MODULES})


__all__ = ["Calibration", "LayerCalibration", "QuantSpec", "Quantizer", "TensorCalibration", *_MODULES, *_BUILTINS]
