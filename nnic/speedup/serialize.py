"""Save and load a pruned architecture without pickling: a JSON shape manifest and a safetensors state dict.

``save_pruned(model, directory)`` writes ``manifest.json`` (for each module with parameters or buffers: its class,
its plain attributes such as ``out_channels``, and the shape of each tensor) and ``model.safetensors``.
``load_pruned(fresh_model, directory)`` re-applies the shapes to a freshly constructed model of the original
architecture (modules that speedup replaced by another class are rebuilt through that class's
``from_manifest(attrs)``; only classes from ``nnic`` or from installed speedup-rule plugins are accepted), then
loads the weights.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nnic import io

FORMAT = "nnic.pruned/1"
MANIFEST, WEIGHTS = "manifest.json", "model.safetensors"
_SKIP = {"training"}


def _json_value(v: Any) -> Any:
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    if isinstance(v, (tuple, list)) and all(isinstance(x, (bool, int, float, str)) or x is None for x in v):
        return list(v)
    raise TypeError


def _attrs(m: nn.Module) -> dict[str, Any]:
    if hasattr(m, "manifest_attrs"):
        return m.manifest_attrs()
    out = {}
    for k, v in vars(m).items():
        if k.startswith("_") or k in _SKIP:
            continue
        try:
            out[k] = _json_value(v)
        except TypeError:
            continue
    return out


def _class_path(cls: type) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


def _direct_tensors(m: nn.Module) -> dict[str, torch.Tensor]:
    out = {n: p for n, p in m.named_parameters(recurse=False)}
    out.update({n: b for n, b in m.named_buffers(recurse=False) if b is not None})
    return out


def save_pruned(model: nn.Module, directory: io.PathLike) -> Path:
    """Write ``manifest.json`` and ``model.safetensors`` into ``directory``, all or nothing.

    The two files are written into a fresh directory that replaces ``directory`` in one rename
    (:func:`nnic.io.atomic_directory`), so a save that is killed or fails leaves the previous save complete. The
    directory is the saved artefact: it must be new, empty, or hold only a previous save.
    """
    modules = {}
    for name, m in model.named_modules():
        tensors = _direct_tensors(m)
        if not tensors and not hasattr(m, "from_manifest"):
            continue
        modules[name] = {
            "class": _class_path(type(m)),
            "attrs": _attrs(m),
            "tensors": {k: list(t.shape) for k, t in tensors.items()},
        }
    state = model.state_dict()

    def write(new: Path) -> None:
        io.save_tensors(state, new / WEIGHTS)
        io.save_json({"format": FORMAT, "modules": modules}, new / MANIFEST)

    Path(directory).parent.mkdir(parents=True, exist_ok=True)
    io.atomic_directory(directory, write, owned=(MANIFEST, WEIGHTS))
    return Path(directory)


def _allowed_class(path: str) -> type:
    module_name, _, qualname = path.partition(":")
    allowed = module_name == "nnic" or module_name.startswith("nnic.") or module_name.startswith("nnic_")
    if not allowed:
        raise ValueError(f"load_pruned: refusing to construct {path}: only nnic's own and nnic plugin "
                         f"(nnic_*) module classes are rebuilt from a manifest")
    obj: Any = importlib.import_module(module_name)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    if not hasattr(obj, "from_manifest"):
        raise ValueError(f"load_pruned: {path} has no from_manifest(attrs)")
    return obj


def load_pruned(model: nn.Module, directory: io.PathLike) -> nn.Module:
    """Give a freshly constructed ``model`` the pruned shapes saved in ``directory`` and load the weights."""
    directory = Path(directory)
    manifest = io.load_json(directory / MANIFEST)
    if manifest.get("format") != FORMAT:
        raise ValueError(f"load_pruned: {directory / MANIFEST} is not a {FORMAT} manifest")
    for name, entry in manifest["modules"].items():
        try:
            m = model.get_submodule(name)
        except AttributeError:
            raise ValueError(f"load_pruned: the manifest names module {name!r}, which {type(model).__name__} "
                             f"does not have; is this the same architecture?") from None
        ref = next(iter(m.parameters()), None)
        if _class_path(type(m)) != entry["class"]:
            new = _allowed_class(entry["class"]).from_manifest(entry["attrs"])
            if ref is not None:
                new = new.to(device=ref.device, dtype=ref.dtype if ref.is_floating_point() else None)
            new.train(m.training)
            parent, _, attr = name.rpartition(".")
            setattr(model.get_submodule(parent), attr, new)
            m = new
        else:
            for k, v in entry["attrs"].items():
                current = getattr(m, k, None)
                setattr(m, k, tuple(v) if isinstance(current, tuple) and isinstance(v, list) else v)
        tensors = _direct_tensors(m)
        for k, shape in entry["tensors"].items():
            t = tensors.get(k)
            if t is None or list(t.shape) == shape:
                continue
            new_t = torch.empty(shape, dtype=t.dtype, device=t.device)
            if isinstance(t, nn.Parameter):
                setattr(m, k, nn.Parameter(new_t, requires_grad=t.requires_grad))
            else:
                m._buffers[k] = new_t
    state = io.load_tensors(directory / WEIGHTS)
    model.load_state_dict(state, strict=True)
    return model
