"""Saving and loading compression artefacts: atomically written, loaded without unpickling code.

Every file is written to a temporary file next to the target, flushed to disk and renamed over the target, so a
crash, a kill or an error leaves either the previous file or the new one, never a half-written one. The new file
gets the mode the user's umask gives (as ``open`` would), not the temporary file's 0600. Temporaries that a killed
writer left behind are removed by the next write to the same target. Tensors are stored as safetensors when the
path ends in ``.safetensors`` and with ``torch.save`` otherwise; loading uses ``torch.load(weights_only=True)``,
which refuses anything but tensors and plain containers.

Files written together as one export (weights and masks) carry the same export id, stored where each format
keeps metadata (the safetensors header, the ``_metadata`` attribute torch gives state dicts), so
:func:`load_export` can tell a matched pair from files of two different exports.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import glob
import json
import os
import re
import secrets
import shutil
from collections import OrderedDict
from collections.abc import Callable, Collection, Mapping
from pathlib import Path
from typing import Any

import torch

PathLike = str | os.PathLike

_TMP_SUFFIX = ".nnic-tmp"
EXPORT_KEY = "__nnic_export__"  # the metadata key of the export id (state-dict metadata keys are module prefixes)


_TMP_NAME = re.compile(rf"\.(.+)\.(\d+)-[0-9a-f]{{8}}{re.escape(_TMP_SUFFIX)}")


def _tmp_name(target: Path) -> Path:
    return target.with_name(f".{target.name}.{os.getpid()}-{secrets.token_hex(4)}{_TMP_SUFFIX}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def remove_stale_temporaries(target: PathLike) -> list[Path]:
    """Delete the temporaries of ``target`` whose writing process no longer runs (killed mid-write)."""
    target = Path(target)
    removed = []
    for entry in target.parent.glob(f".{glob.escape(target.name)}.*{_TMP_SUFFIX}"):
        match = _TMP_NAME.fullmatch(entry.name)
        if match and match[1] == target.name and int(match[2]) != os.getpid() and not _alive(int(match[2])):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                with contextlib.suppress(FileNotFoundError, PermissionError):
                    entry.unlink()
            removed.append(entry)
    return removed


def fsync_directory(directory: Path) -> None:
    """Make a rename in ``directory`` durable (a no-op where directories cannot be opened, e.g. Windows)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: PathLike, write: Callable[[str], None]) -> Path:
    """Call ``write(tmp_path)`` and rename the result to ``path``; on any error nothing is left behind."""
    target = Path(path)
    if target.is_dir():
        raise IsADirectoryError(f"cannot write to {str(target)!r}: it is a directory")
    parent = target.parent
    if not parent.is_dir():
        raise FileNotFoundError(f"cannot write {str(target)!r}: directory {str(parent)!r} does not exist")
    remove_stale_temporaries(target)
    tmp = _tmp_name(target)
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))  # the umask applies, as for open()
    try:
        write(str(tmp))
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_directory(parent)
    return target


def _rename_exchange() -> Callable[[Path, Path], None] | None:
    """Linux's renameat2(RENAME_EXCHANGE): swap two paths in one step; None where the C library lacks it."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (AttributeError, OSError):
        return None
    at_fdcwd, rename_exchange = -100, 2

    def exchange(a: Path, b: Path) -> None:
        if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err), str(b))

    return exchange


def atomic_directory(path: PathLike, write: Callable[[Path], None], owned: Collection[str]) -> Path:
    """Replace the directory ``path`` by what ``write(new_directory)`` puts into a fresh one, all or nothing.

    The new directory is built beside the old one and swapped in with one rename (``renameat2`` exchange on
    Linux), so a kill or an error leaves the complete old directory or the complete new one. The directory is
    the artefact: an existing ``path`` may hold only the names in ``owned`` (and nnic's temporaries), never a
    user's other files, which would be replaced with it. Elsewhere than Linux the swap takes two renames, and a
    kill between them leaves the old directory only under its temporary name.
    """
    target = Path(path)
    if target.exists():
        if not target.is_dir():
            raise NotADirectoryError(f"cannot write directory {str(target)!r}: it is a file")
        foreign = sorted(e.name for e in target.iterdir() if e.name not in owned and not _TMP_NAME.fullmatch(e.name))
        if foreign:
            raise ValueError(f"cannot write {str(target)!r}: it holds files nnic did not write there "
                             f"({', '.join(foreign[:5])}{', ...' if len(foreign) > 5 else ''}); the whole directory "
                             f"is replaced on every save, so choose a new or empty directory")
    target = target.resolve()
    if not target.parent.is_dir():
        raise FileNotFoundError(f"cannot write {str(target)!r}: directory {str(target.parent)!r} does not exist")
    remove_stale_temporaries(target)
    new = _tmp_name(target)
    new.mkdir()
    try:
        if target.exists():
            os.chmod(new, target.stat().st_mode & 0o7777)
        write(new)
        exchange = _rename_exchange()
        if not target.exists():
            os.rename(new, target)
        elif exchange is not None:
            exchange(new, target)  # `new` now holds the old directory
        else:
            old = _tmp_name(target)
            os.rename(target, old)
            os.rename(new, target)
            new = old
    finally:
        shutil.rmtree(new, ignore_errors=True)
    fsync_directory(target.parent)
    return target


def _is_safetensors(path: PathLike) -> bool:
    return str(path).endswith(".safetensors")


def _with_export_id(data: Mapping[str, Any], export_id: str | None) -> Any:
    """``data`` as an OrderedDict whose ``_metadata`` (kept by torch.save and weights-only loading) holds the id."""
    out = OrderedDict(data)
    metadata = OrderedDict(getattr(data, "_metadata", None) or {})
    if export_id is not None:
        metadata[EXPORT_KEY] = {"export_id": export_id}
    if metadata:
        out._metadata = metadata  # type: ignore[attr-defined]
    return out


def save_tensors(tensors: Mapping[str, torch.Tensor], path: PathLike, *, export_id: str | None = None) -> Path:
    """Write a flat ``{name: tensor}`` mapping (a state dict) atomically, tagged with ``export_id`` if given."""
    if _is_safetensors(path):
        from safetensors.torch import save

        plain = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
        metadata = None if export_id is None else {EXPORT_KEY: export_id}

        def write(tmp: str) -> None:  # bytes, not save_file: it renames its own 0600 temporary over ours
            with open(tmp, "wb") as f:
                f.write(save(_unshare(plain), metadata=metadata))

        return atomic_write(path, write)
    plain = _with_export_id({k: v.detach() for k, v in tensors.items()}, export_id)
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
    """Read what :func:`save_tensors` or :func:`save_masks` wrote, without unpickling arbitrary objects.

    An empty or truncated file is a ``ValueError`` naming the path; a pickle that is not plain data stays a
    ``pickle.UnpicklingError`` (what ``torch.load(weights_only=True)`` raises), so refusals are not mistaken for
    damage.
    """
    if os.path.getsize(path) == 0:
        raise ValueError(f"cannot load {str(path)!r}: the file is empty (0 bytes); it was not written by nnic, "
                         f"or its writer was stopped before the first byte")
    if _is_safetensors(path):
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except SafetensorError as exc:
            raise ValueError(f"cannot load {str(path)!r}: not a valid safetensors file ({exc})") from exc
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (EOFError, RuntimeError, OSError) as exc:
        if isinstance(exc, OSError) and exc.errno != errno.EINVAL:  # a missing file, a permission: not damage
            raise
        raise ValueError(f"cannot load {str(path)!r}: truncated or not a torch.save file "
                         f"({type(exc).__name__}: {exc})") from exc


def _load_with_export_id(path: PathLike) -> tuple[dict[str, Any], str | None]:
    data = load_tensors(path)
    if _is_safetensors(path):
        from safetensors import safe_open

        with safe_open(str(path), "pt") as f:
            return data, (f.metadata() or {}).get(EXPORT_KEY)
    entry = (getattr(data, "_metadata", None) or {}).get(EXPORT_KEY)
    return data, entry.get("export_id") if isinstance(entry, dict) else None


def new_export_id() -> str:
    """A fresh id to tag the files of one export with (see :func:`load_export`)."""
    return secrets.token_hex(16)


def save_masks(masks: Mapping[str, Mapping[str, torch.Tensor | None]], path: PathLike, *,
               export_id: str | None = None) -> Path:
    """Write masks ``{layer: {param: bool tensor | None}}``; safetensors files flatten keys to ``layer.param``."""
    if _is_safetensors(path):
        flat = {f"{layer}.{param}": m.bool() for layer, ms in masks.items() for param, m in ms.items() if m is not None}
        return save_tensors(flat, path, export_id=export_id)
    plain = {layer: {p: (None if m is None else m.detach().bool().cpu()) for p, m in ms.items()} for layer, ms in masks.items()}
    tagged = _with_export_id(plain, export_id)
    return atomic_write(path, lambda tmp: torch.save(tagged, tmp))


def load_masks(path: PathLike) -> dict[str, dict[str, torch.Tensor | None]]:
    """Read masks written by :func:`save_masks` (either format)."""
    return _nested_masks(load_tensors(path), path)


def _nested_masks(data: dict[str, Any], path: PathLike) -> dict[str, dict[str, torch.Tensor | None]]:
    if not _is_safetensors(path):
        return data
    masks: dict[str, dict[str, torch.Tensor | None]] = {}
    for key, mask in data.items():
        layer, _, param = key.rpartition(".")
        masks.setdefault(layer, {})[param] = mask
    return masks


def load_export(model_path: PathLike, mask_path: PathLike) -> tuple[dict[str, Any], dict[str, Any]]:
    """The weights and masks of one ``Pruner.export_model``, checked to come from the same export.

    Two files cannot be replaced in one step; an export interrupted between them leaves one file from each
    export. Both carry the export's id, and a mismatch is a ``ValueError`` naming both files.
    """
    state, model_id = _load_with_export_id(model_path)
    masks, mask_id = _load_with_export_id(mask_path)
    if model_id is None or model_id != mask_id:
        raise ValueError(f"{str(model_path)!r} and {str(mask_path)!r} are not the two halves of one export "
                         f"(export ids {model_id} and {mask_id}): an export_model() was interrupted between them, "
                         f"or the files come from different exports; export again")
    return state, _nested_masks(masks, mask_path)


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
