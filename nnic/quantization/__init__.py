"""Quantization: the :class:`Quantizer` base class, quantization parameters, the typed calibration, the int8/int4
modules, and every registered quantizer importable by its class name.

``from nnic.quantization import NaiveQuantizer`` and ``nnic.quantizer("naive", ...)`` give the same class: class
names are looked up in the plugin registry (on first use, so ``import nnic`` loads no plugin).
"""

import importlib
from typing import Any

from nnic.quantization.base import Quantizer
from nnic.quantization.calibration import Calibration, LayerCalibration, TensorCalibration
from nnic.quantization.qparams import QuantSpec
from nnic.plugins import class_lookup

# The int modules load the GEMM kernels: only when asked for.
_MODULES = ("Int4Linear", "Int8Conv2d", "Int8Linear")
_FUSION = ("activation_kind", "fuse_activation", "takes_activation")
_SHARED = ("SharedInputLinear", "SharedInputPart", "fuse_shared_input")
_registered, _registered_dir = class_lookup(__name__, "quantizer", globals())


def __getattr__(name: str) -> Any:
    if name in _MODULES:
        return getattr(importlib.import_module("nnic.quantization.modules"), name)
    if name in _FUSION:
        return getattr(importlib.import_module("nnic.quantization.fusion"), name)
    if name in _SHARED:
        return getattr(importlib.import_module("nnic.quantization.shared_input"), name)
    return _registered(name)


def __dir__() -> list[str]:
    return sorted(set(_registered_dir()) | set(_MODULES) | set(_FUSION) | set(_SHARED))


__all__ = ["Calibration", "LayerCalibration", "QuantSpec", "Quantizer", "TensorCalibration", *_MODULES, *_FUSION, *_SHARED]
