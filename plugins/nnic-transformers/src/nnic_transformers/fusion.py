"""Fusing the MLP activation of Hugging Face encoders into nnic's int8 GEMM (see ``nnic.quantization.fusion``).

BERT's ``BertIntermediate`` computes ``intermediate_act_fn(dense(x))``; transformers copies that class into
many models (RoBERTa, ELECTRA, XLM-R, ...). A module qualifies when its ``forward`` is the same code as
BERT's, so a model whose intermediate block does anything else is left alone.
"""

from __future__ import annotations

from torch import nn


def _same_code(a, b) -> bool:
    ca, cb = a.__code__, b.__code__
    return (ca.co_code, ca.co_names, ca.co_consts) == (cb.co_code, cb.co_names, cb.co_consts)


def fuse_mlp_activations(model: nn.Module) -> list[str]:
    """Moves the activation of every BERT-style intermediate block whose ``dense`` layer is an ``Int8Linear``
    (after ``nnic.quantization_speedup``) into that layer's GEMM epilogue; returns the names of the fused
    blocks. Blocks whose activation the epilogue does not compute (the tanh GELU, SiLU) are skipped."""
    from transformers.models.bert.modeling_bert import BertIntermediate

    from nnic.quantization.fusion import activation_kind, fuse_activation
    from nnic.quantization.modules import Int8Linear

    fused = []
    for name, m in model.named_modules():
        if not _same_code(type(m).forward, BertIntermediate.forward):
            continue
        dense, act = getattr(m, "dense", None), getattr(m, "intermediate_act_fn", None)
        if isinstance(dense, Int8Linear) and dense.activation is None and activation_kind(act) is not None:
            fuse_activation(m, "dense", "intermediate_act_fn")
            fused.append(name)
    return fused
