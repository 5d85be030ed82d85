"""Moving an element-wise activation into the epilogue of nnic's int8 GEMM or sparse kernels.

A transformer MLP computes ``act(dense(x))``: after ``quantization_speedup`` the GEMM writes ``dense``'s float
output and the activation reads and writes it again (a 12 MB pass per BERT-base layer at batch 8 and sequence
128, plus its allocation). :func:`fuse_activation` gives the activation to the :class:`Int8Linear` instead,
which applies it to each output block while it is in cache, and puts ``nn.Identity`` where the activation was.
A :class:`~nnic.sparse.SparseLinear` takes it the same way (its kernels apply it to each task's outputs): for a
sparse model the saving is mostly the torch call itself, which right after a product that streamed the weights
through the caches costs far more than its arithmetic.
Which modules compute ``act(linear(x))`` is model knowledge: the caller names them (``nnic-transformers``
finds them in Hugging Face models).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from nnic.quantization.modules import Int8Linear


def activation_kind(module: nn.Module) -> str | None:
    """``"relu"`` / ``"gelu"`` when ``module`` computes exactly that (``nn.ReLU``, ``nn.GELU()`` in the erf form,
    Hugging Face's ``GELUActivation`` when it calls ``F.gelu``); else ``None`` (the tanh GELU approximation among
    them: the epilogue computes the erf form only)."""
    if type(module) is nn.ReLU:
        return "relu"
    if type(module) is nn.GELU:
        return "gelu" if module.approximate == "none" else None
    if type(module).__name__ == "GELUActivation" and getattr(module, "act", None) is F.gelu:
        return "gelu"
    return None


def fusable_layers() -> tuple[type, ...]:
    """The layer classes whose kernels apply a fused activation (``.activation``): ``Int8Linear`` and
    ``SparseLinear`` (imported when asked, so that importing the quantization package does not load the sparse one)."""
    from nnic.sparse.modules import SparseLinear

    return Int8Linear, SparseLinear


def fuse_activation(parent: nn.Module, linear: str, activation: str) -> str:
    """Fuses ``parent.<activation>`` into the epilogue of ``parent.<linear>`` (an :class:`Int8Linear` or a
    :class:`~nnic.sparse.SparseLinear`) and replaces it with ``nn.Identity``; returns the activation's kind. The
    caller guarantees that ``parent`` applies that activation to that linear layer's output and uses the output
    nowhere else.

    Raises ``TypeError`` when ``linear`` is neither, ``ValueError`` when it already has an activation or when the
    activation module is not one the epilogue computes (:func:`activation_kind`)."""
    lin, act = getattr(parent, linear, None), getattr(parent, activation, None)
    where = f"{type(parent).__name__}.{linear}"
    if not isinstance(lin, fusable_layers()):
        raise TypeError(f"{where} must be an Int8Linear or a SparseLinear to take a fused activation, got "
                        f"{type(lin).__name__}")
    if lin.activation is not None:
        raise ValueError(f"{where} already applies {lin.activation!r}")
    kind = activation_kind(act) if isinstance(act, nn.Module) else None
    if kind is None:
        raise ValueError(f"{type(parent).__name__}.{activation} ({type(act).__name__}) is not an activation the int8 "
                         f"epilogue computes (ReLU, or GELU in its erf form)")
    lin.activation = kind
    setattr(parent, activation, nn.Identity())
    return kind
