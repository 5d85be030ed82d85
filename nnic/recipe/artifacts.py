"""Saving a compressed model without pickle, and loading it back into its architecture.

``save_model(model, directory, model_spec)`` writes nnic's pruned-model format (``manifest.json`` + ``model.safetensors``,
see :mod:`nnic.speedup.serialize`) plus ``source.json``, the recipe's ``model`` section, so that
``load_model(directory)`` can build the architecture afresh and give it the saved shapes and modules. A masked
model is saved with its masks folded into the weights (the masks go to their own file); a model with simulated
quantization is saved with its quantized-then-dequantized weights (its calibration, activation ranges
included, goes to ``calibration.json``); a sped-up or low-bit model is saved with its shrunk and integer modules.
"""

from __future__ import annotations

import copy
import inspect
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize

from nnic import io
from nnic.masking import is_parametrized
from nnic.recipe.errors import RecipeError
from nnic.recipe.resolve import build_fresh_model, resolve_path
from nnic.selection import replace_module

SOURCE = "source.json"


def _plain_copy(model: nn.Module) -> nn.Module:
    """A copy with every parametrization applied and removed, and no activation fake-quant attached."""
    from nnic.quantization import activation

    has_extras = any(is_parametrized(m) or activation.find(m, "input") is not None
                     or activation.find(m, "output") is not None for m in model.modules())
    if not has_extras:
        return model
    plain = copy.deepcopy(model)
    for m in list(plain.modules()):
        for quant_type in ("input", "output"):
            activation.detach(m, quant_type)
        if is_parametrized(m):
            # Not parametrize.remove_parametrizations: it deletes the property from the parametrized class,
            # which the copy shares with the original model. Give the copy its plain class back instead.
            with torch.no_grad():
                values = {name: getattr(m, name).detach().clone() for name in m.parametrizations.keys()}
            del m._modules["parametrizations"]
            m.__class__ = type(m).__bases__[0]
            for name, value in values.items():
                m.register_parameter(name, nn.Parameter(value, requires_grad=False))
    return plain


def save_model(model: nn.Module, directory: str | Path, model_spec: dict[str, Any]) -> Path:
    """Write ``model`` into ``directory`` (see the module docstring); returns the directory."""
    from nnic.speedup import save_pruned

    directory = Path(directory)
    save_pruned(_plain_copy(model), directory)
    # the weights file a recipe started from is not needed again: the saved weights replace it
    io.save_json({"model": {k: v for k, v in model_spec.items() if k != "weights"}}, directory / SOURCE)
    return directory


def _constructed(cls: type, attrs: dict[str, Any], tensors: dict[str, Any]) -> nn.Module:
    """A module class without ``from_manifest`` (nnic's low-bit modules) is built by calling its constructor
    with the manifest attributes its signature names; ``bias`` is whether a bias tensor was saved, and a static
    activation range gets placeholder values that the saved tensors then overwrite."""
    params = inspect.signature(cls.__init__).parameters
    kwargs = {k: v for k, v in attrs.items() if k in params}
    if "bias" in params:
        kwargs["bias"] = "bias" in tensors
    for name, placeholder in (("act_scale", 1.0), ("act_zero_point", 0)):
        if name in params and name in tensors:
            kwargs[name] = placeholder
    return cls(**kwargs)


def _replace_constructed_modules(model: nn.Module, manifest: dict[str, Any]) -> None:
    import importlib

    for name, entry in manifest["modules"].items():
        module_name, _, qualname = entry["class"].partition(":")
        if not (module_name == "nnic" or module_name.startswith(("nnic.", "nnic_"))):
            continue
        try:
            current = model.get_submodule(name)
        except AttributeError:
            continue  # load_pruned names it
        if f"{type(current).__module__}:{type(current).__qualname__}" == entry["class"]:
            continue
        cls: Any = importlib.import_module(module_name)
        for part in qualname.split("."):
            cls = getattr(cls, part)
        if hasattr(cls, "from_manifest"):
            continue
        replace_module(model, name, _constructed(cls, entry["attrs"], entry["tensors"]))


def build_model(spec: dict[str, Any], base_dir: Path, source: str) -> nn.Module:
    """The model a recipe's ``model`` section names, in eval mode: built by code, or a saved one loaded."""
    if "saved" in spec:
        return load_model(resolve_path(base_dir, spec["saved"]))
    return build_fresh_model(spec, base_dir, source)


def load_model(directory: str | Path) -> nn.Module:
    """The model saved by :func:`save_model` in ``directory``, rebuilt and loaded (eval mode)."""
    from nnic.speedup import load_pruned

    directory = Path(directory)
    if directory.is_dir() and (directory / "model" / SOURCE).is_file():
        directory = directory / "model"  # an nnic compress output folder
    source = directory / SOURCE
    if not source.is_file():
        raise RecipeError(f"{directory}: not a saved nnic model (no {SOURCE}; expected a folder written by "
                          f"nnic compress, or its model/ subfolder)")
    spec = io.load_json(source)["model"]
    model = build_model(spec, directory, str(source))
    manifest = io.load_json(directory / "manifest.json")
    _replace_constructed_modules(model, manifest)
    return load_pruned(model, directory).eval()
