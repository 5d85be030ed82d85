"""Saving and loading compression artefacts: atomically written, loaded without unpickling code.

Every file is written to a temporary file in the target directory and renamed over the target, so a crash or
an error never leaves a half-written file. Tensors are stored as safetensors when the path ends in
``.safetensors`` and with ``torch.save`` otherwise; loading uses ``torch.load(weights_only=True)``, which
refuses anything but tensors and plain containers.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

PathLike = str | os.PathLike


def atomic_write(path: PathLike, write: Callable[[str], None]) -> Path:
    """Call ``write(tmp_path)`` and rename the result to ``path``; on any error nothing is left behind."""
    target = Path(path)
    if target.is_dir():
        raise IsADirectoryError(f"cannot write to {str(target)!r}: it is a directory")
    parent = target.parent
    if not parent.is_dir():
        raise FileNotFoundError(f"cannot write {str(target)!r}: directory {str(parent)!r} does not exist")
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def _is_safetensors(path: PathLike) -> bool:
    return str(path).endswith(".safetensors")


def save_tensors(tensors: Mapping[str, torch.Tensor], path: PathLike) -> Path:
    """Write a flat ``{name: tensor}`` mapping (a state dict) atomically."""
    if _is_safetensors(path):
        from safetensors.torch import save_file

        plain = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
        return atomic_write(path, lambda tmp: save_file(_unshare(plain), tmp))
    plain = {k: v.detach() for k, v in tensors.items()}
    return atomic_write(path, lambda tmp: torch.save(plain, tmp))


def _unshare(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """safetensors refuses tensors that share memory (tied weights); give each its own copy."""
    seen: set[int] = set()
    out = {}
    for name, t in tensors.items():
        ptr = t.untyped_storage().data_ptr() if t.numel() else 0
        out[name] = t.clone() if ptr and ptr in seen else t
        seen.add(ptr)
    return out


def load_tensors(path: PathLike) -> dict[str, Any]:
    """Read what :func:`save_tensors` or :func:`save_masks` wrote, without unpickling arbitrary objects."""
    if _is_safetensors(path):
        from safetensors.torch import load_file

        return load_file(str(path))
    return torch.load(path, map_location="cpu", weights_only=True)


def save_masks(masks: Mapping[str, Mapping[str, torch.Tensor | None]], path: PathLike) -> Path:
    """Write masks ``{layer: {param: bool tensor | None}}``; safetensors files flatten keys to ``layer.param``."""
    if _is_safetensors(path):
        flat = {f"{layer}.{param}": m.bool() for layer, ms in masks.items() for param, m in ms.items() if m is not None}
        return save_tensors(flat, path)
    plain = {layer: {p: (None if m is None else m.detach().bool().cpu()) for p, m in ms.items()} for layer, ms in masks.items()}
    return atomic_write(path, lambda tmp: torch.save(plain, tmp))


def load_masks(path: PathLike) -> dict[str, dict[str, torch.Tensor | None]]:
    """Read masks written by :func:`save_masks` (either format)."""
    data = load_tensors(path)
    if not _is_safetensors(path):
        return data
    masks: dict[str, dict[str, torch.Tensor | None]] = {}
    for key, mask in data.items():
        layer, _, param = key.rpartition(".")
        masks.setdefault(layer, {})[param] = mask
    return masks


def save_json(obj: Any, path: PathLike) -> Path:
    """Write JSON atomically (indented, keys in insertion order)."""
    text = json.dumps(obj, indent=2, allow_nan=False)

    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text + "\n")

    return atomic_write(path, write)


def load_json(path: PathLike) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)
