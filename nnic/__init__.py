"""nnic: model compression for PyTorch (pruning, quantization, and speedup that makes the model really smaller).

Importing nnic is cheap: plugins load on the first registry lookup, and torch-dependent parts and the native
kernels load on first attribute access.
"""

from __future__ import annotations

import importlib
import importlib.metadata
from typing import Any

from nnic.hookspecs import hookimpl

try:
    __version__ = importlib.metadata.version("nnic")
except importlib.metadata.PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"


_LAZY = {
    "list_plugins": "nnic.api:list_plugins",
    "pruner": "nnic.api:pruner",
    "quantizer": "nnic.api:quantizer",
    "export_onnx": "nnic.export:export_onnx",
    "auto_compress": "nnic.auto:auto_compress",
    "sensitivity": "nnic.auto:sensitivity",
    "kernels": "nnic.kernels",
    "Pruner": "nnic.pruning:Pruner",
    "Quantizer": "nnic.quantization:Quantizer",
    "quantization_speedup": "nnic.quantization.speedup:quantization_speedup",
    "sparse": "nnic.sparse",
    "sparsify": "nnic.sparse:sparsify",
    "speedup": "nnic.speedup",
    "speedup_model": "nnic.speedup:speedup_model",
    "prune_and_speedup": "nnic.speedup:prune_and_speedup",
    "ModelSpeedup": "nnic.speedup:ModelSpeedup",
}


def __getattr__(name: str) -> Any:
    """Every public name but ``hookimpl``, imported on first access so that ``import nnic`` stays cheap (and this
    face of the package imports nothing above the ground floor)."""
    if name not in _LAZY:
        raise AttributeError(f"module 'nnic' has no attribute {name!r}")
    module_name, _, attr = _LAZY[name].partition(":")
    module = importlib.import_module(module_name)
    return getattr(module, attr) if attr else module


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = ["ModelSpeedup", "Pruner", "Quantizer", "__version__", "auto_compress", "export_onnx", "hookimpl", "kernels",
           "list_plugins", "prune_and_speedup", "pruner", "quantization_speedup", "quantizer", "sensitivity", "sparse",
           "sparsify", "speedup", "speedup_model"]
