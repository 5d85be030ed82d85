"""Model size on disk, measured by writing the model the way nnic saves it: safetensors, no pickle."""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch
from torch import nn

from nnic import io


def plain_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict a saved model holds: a masked (or fake-quantized) parameter appears once, under its own
    name, with its effective value (``original * mask``), and the masks themselves are left out. Buffers of
    nnic's low-bit modules (int8 codes, packed int4 codes, scales) are kept as they are."""
    state = model.state_dict()
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if ".parametrizations." not in f".{key}":
            out[key] = value
            continue
        owner, _, rest = f".{key}".rpartition(".parametrizations.")
        name, _, leaf = rest.partition(".")
        if leaf != "original":  # a mask or another parametrization's buffer
            continue
        owner = owner[1:]
        module = model.get_submodule(owner)
        with torch.no_grad():
            out[f"{owner}.{name}" if owner else name] = getattr(module, name).detach()
    return out


def size_on_disk(model: nn.Module) -> int:
    """Bytes of ``model``'s weights saved as safetensors (what ``nnic.speedup.save_pruned`` writes as
    ``model.safetensors``; the JSON shape manifest beside it, a few kilobytes, is not counted). A sped-up model
    is measured at its shrunk shapes, a quantized one (after ``quantization_speedup``) with its integer codes,
    and a masked model as the dense file its export would write: masks do not make a file smaller."""
    with tempfile.TemporaryDirectory(prefix="nnic-size-") as tmp:
        path = Path(tmp) / "model.safetensors"
        io.save_tensors(plain_state_dict(model), path)
        return path.stat().st_size
