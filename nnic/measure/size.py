"""Model size on disk, measured by writing the model the way nnic saves it: safetensors, no pickle."""

from __future__ import annotations

import tempfile
from pathlib import Path

from torch import nn

from nnic import io
from nnic.masking import plain_state_dict


def size_on_disk(model: nn.Module) -> int:
    """Bytes of ``model``'s weights saved as safetensors (what ``nnic.speedup.save_pruned`` writes as
    ``model.safetensors``; the JSON shape manifest beside it, a few kilobytes, is not counted). A sped-up model
    is measured at its shrunk shapes, a quantized one (after ``quantization_speedup``) with its integer codes,
    and a masked model as the dense file its export would write: masks do not make a file smaller."""
    with tempfile.TemporaryDirectory(prefix="nnic-size-") as tmp:
        path = Path(tmp) / "model.safetensors"
        io.save_tensors(plain_state_dict(model), path)
        return path.stat().st_size
