"""nnic: model compression for PyTorch (pruning, quantization, and speedup that makes the model really smaller).

Importing nnic is cheap: plugins load on the first registry lookup, and torch-dependent parts and the native
kernels load on first attribute access.
"""

from __future__ import annotations

import importlib
import importlib.metadata
from typing import TYPE_CHECKING, Any

from nnic.hookspecs import hookimpl

if TYPE_CHECKING:
    import torch

    from nnic.pruning import Pruner
    from nnic.quantization import Quantizer
    from nnic.registry import PluginInfo

try:
    __version__ = importlib.metadata.version("nnic")
except importlib.metadata.PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"


def list_plugins(kind: str | None = None) -> list[PluginInfo]:
    """Every registered pruner, quantizer and speedup rule (or those of one ``kind``), with their source."""
    from nnic.plugins import get_registry

    return get_registry().list(kind)


def pruner(name: str, model: torch.nn.Module, config_list: list[dict], **kwargs: Any) -> Pruner:
    """The pruner registered as ``name``, built on ``model`` with ``config_list``; see ``nnic.list_plugins()``."""
    from nnic.plugins import get_registry

    return get_registry().get("pruner", name).obj(model, config_list, **kwargs)


def quantizer(name: str, model: torch.nn.Module, config_list: list[dict], **kwargs: Any) -> Quantizer:
    """The quantizer registered as ``name``, built on ``model`` with ``config_list``."""
    from nnic.plugins import get_registry

    return get_registry().get("quantizer", name).obj(model, config_list, **kwargs)


_LAZY = {
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
    """The torch-dependent names, imported on first access so that ``import nnic`` stays cheap."""
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
