"""Save and load a pruned architecture without pickling: a JSON shape manifest and a safetensors state dict.

``save_pruned(model, directory)`` writes ``manifest.json`` (for each module with parameters or buffers: its class,
its plain attributes such as ``out_channels``, and the shape of each tensor) and ``model.safetensors``.
``load_pruned(fresh_model, directory)`` re-applies the shapes to a freshly constructed model of the original
architecture (modules that speedup replaced by another class are rebuilt through that class's
``from_manifest(attrs)``, which builds their submodules too; only classes from ``nnic`` or from installed
speedup-rule plugins are accepted), then loads the weights.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from nnic import io
from nnic.channels.propagate import RuleTable
from nnic.selection import replace_module
from nnic.speedup import manifest

FORMAT = manifest.FORMAT
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


def load_pruned(model: nn.Module, directory: io.PathLike) -> nn.Module:
    """Give a freshly constructed ``model`` the pruned shapes saved in ``directory`` and load the weights.

    The manifest is checked before the model changes (see :mod:`nnic.speedup.manifest`): a malformed one, a
    class no installed speedup rule handles, or an attribute change a rule does not declare raises ValueError. A
    module with an ``adopt_state_format(state_dict, prefix)`` method (``Int4Linear``: its scale format, zero points
    and input permutation) takes the saved format before the manifest's shapes are applied to it, so a model built
    with another default (or another calibration's options) loads the file as saved."""
    from nnic.speedup.api import registered_rules

    directory = Path(directory)
    modules = manifest.check_structure(io.load_json(directory / MANIFEST), str(directory / MANIFEST))
    table = RuleTable(registered_rules())
    state = io.load_tensors(directory / WEIGHTS)
    for name, entry in modules.items():  # the weights must be what the manifest says, before the model changes
        for k, shape in entry["tensors"].items():
            saved = state.get(f"{name}.{k}" if name else k)
            if saved is not None and list(saved.shape) != list(shape):
                raise ValueError(f"load_pruned: {directory / MANIFEST}['modules'][{name!r}]['tensors'][{k!r}] says "
                                 f"{list(shape)}, but {WEIGHTS} holds {list(saved.shape)}")
    allowed: dict[str, type] | None = None
    rebuilt: list[str] = []  # modules built from the manifest: their from_manifest also built their children
    for name, entry in modules.items():
        try:
            m = model.get_submodule(name)
        except AttributeError:
            raise ValueError(f"load_pruned: the manifest names module {name!r}, which {type(model).__name__} "
                             f"does not have; is this the same architecture?") from None
        ref = next(iter(m.parameters()), None)
        if _class_path(type(m)) != entry["class"]:
            if allowed is None:
                allowed = {_class_path(cls): cls for cls in manifest.rebuildable_classes(table)}
            new = manifest.rebuild(name, entry, m, allowed)
            if ref is not None:
                new = new.to(device=ref.device, dtype=ref.dtype if ref.is_floating_point() else None)
            new.train(m.training)
            replace_module(model, name, new)
            m = new
            rebuilt.append(name)
        elif not any(name.startswith(f"{r}.") for r in rebuilt):
            manifest.apply_attrs(name, m, entry["attrs"], table.for_module(m))
        adopt = getattr(m, "adopt_state_format", None)
        if callable(adopt):  # the file's format first (int4 scale formats, optional buffers), then its shapes
            adopt(state, f"{name}." if name else "")
        tensors = _direct_tensors(m)
        for k, shape in entry["tensors"].items():
            t = tensors.get(k)
            new_shape = manifest.tensor_shape(name, m, k, shape, t)
            if new_shape is None:
                continue
            like = t if t is not None else (ref if ref is not None else torch.empty(0))
            new_t = torch.empty(new_shape, dtype=like.dtype, device=like.device)
            if t is None or isinstance(t, nn.Parameter):
                setattr(m, k, nn.Parameter(new_t, requires_grad=t.requires_grad if t is not None else True))
            else:
                m._buffers[k] = new_t
    expected = model.state_dict()
    wrong = sorted(set(expected) ^ set(state)) or [k for k in state if state[k].shape != expected[k].shape]
    if wrong:
        k = wrong[0]
        what = ("is missing from" if k in expected and k not in state else "is not a tensor of the model, yet is in"
                if k not in expected else f"has shape {list(state[k].shape)} in")
        raise ValueError(f"load_pruned: {k!r} {what} {directory / WEIGHTS}"
                         + (f", where the manifest's shapes give {list(expected[k].shape)}" if k in expected
                            and k in state else "") + "; the manifest and the weights do not belong together")
    model.load_state_dict(state, strict=True)
    return model
