"""Moving an element-wise activation into the epilogue of nnic's int8 GEMM or sparse kernels.

A transformer MLP computes ``act(dense(x))``: after ``quantization_speedup`` the GEMM writes ``dense``'s float
output and the activation reads and writes it again (a 12 MB pass per BERT-base layer at batch 8 and sequence
128, plus its allocation). :func:`fuse_activation` gives the activation to the ``Int8Linear`` instead,
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


def takes_activation(layer: object) -> bool:
    """Whether ``layer`` applies a fused activation in its kernels' epilogue: its class declares
    ``takes_fused_activation = True`` and reads its ``activation`` attribute (``Int8Linear``, ``SparseLinear``).
    A declaration rather than a list of classes, so that this module needs no layer type above it and a
    third-party layer can take part."""
    return bool(getattr(type(layer), "takes_fused_activation", False))


def fuse_activation(parent: nn.Module, linear: str, activation: str) -> str:
    """Fuses ``parent.<activation>`` into the epilogue of ``parent.<linear>`` (a layer that
    :func:`takes_activation`: an ``Int8Linear`` or a :class:`~nnic.sparse.SparseLinear`) and replaces it with
    ``nn.Identity``; returns the activation's kind. The caller guarantees that ``parent`` applies that activation
    to that linear layer's output and uses the output nowhere else.

    Raises ``TypeError`` when ``linear`` takes no fused activation, ``ValueError`` when it already has an activation or when the
    activation module is not one the epilogue computes (:func:`activation_kind`)."""
    lin, act = getattr(parent, linear, None), getattr(parent, activation, None)
    where = f"{type(parent).__name__}.{linear}"
    if not takes_activation(lin):
        raise TypeError(f"{where} must be a layer that takes a fused activation (Int8Linear, SparseLinear), got "
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
