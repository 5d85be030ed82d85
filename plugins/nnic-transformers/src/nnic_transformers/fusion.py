"""Fusions for Hugging Face models after ``nnic.quantization_speedup``: the MLP activation of encoders into nnic's
int8 GEMM (see ``nnic.quantization.fusion``), and the projections of decoder blocks that read one input into one
GEMM (see ``nnic.quantization.shared_input``).

BERT's ``BertIntermediate`` computes ``intermediate_act_fn(dense(x))``; transformers copies that class into
many models (RoBERTa, ELECTRA, XLM-R, ...). A module qualifies when its ``forward`` is the same code as
BERT's, so a model whose intermediate block does anything else is left alone.
"""

from __future__ import annotations

import inspect

from torch import nn


def _same_code(a, b) -> bool:
    """Whether functions ``a`` and ``b`` run the same code (decorators such as transformers' ``deprecate_kwarg``
    unwrapped: their wrappers are one code object for every function they wrap)."""
    ca, cb = inspect.unwrap(a).__code__, inspect.unwrap(b).__code__
    return (ca.co_code, ca.co_names, ca.co_consts) == (cb.co_code, cb.co_names, cb.co_consts)


def fuse_mlp_activations(model: nn.Module) -> list[str]:
    """Moves the activation of every BERT-style intermediate block whose ``dense`` layer is an ``Int8Linear``
    (after ``nnic.quantization_speedup``) or a ``SparseLinear`` (after ``nnic.sparsify``) into that layer's
    kernel epilogue; returns the names of the fused blocks. Blocks whose activation the epilogue does not compute
    (the tanh GELU, SiLU) are skipped."""
    from transformers.models.bert.modeling_bert import BertIntermediate

    from nnic.quantization.fusion import activation_kind, fuse_activation, takes_activation

    fused = []
    for name, m in model.named_modules():
        if not _same_code(type(m).forward, BertIntermediate.forward):
            continue
        dense, act = getattr(m, "dense", None), getattr(m, "intermediate_act_fn", None)
        if takes_activation(dense) and dense.activation is None and activation_kind(act) is not None:
            fuse_activation(m, "dense", "intermediate_act_fn")
            fused.append(name)
    return fused


#: Layers that a block calls on one input (LLaMA, Qwen2, Mistral, and others that use these names; BERT-style
#: encoders' self-attention), and the name the fused GEMM takes on their parent.
SHARED_INPUT_GROUPS = ((("q_proj", "k_proj", "v_proj"), "qkv_proj"), (("gate_proj", "up_proj"), "gate_up_proj"),
                       (("query", "key", "value"), "qkv"))


def fuse_projections(model: nn.Module) -> list[str]:
    """Runs the query/key/value projections of every attention block, and the gate/up projections of every gated
    MLP, as one int4 or int8 GEMM each (``nnic.quantization.shared_input``: one activation quantization and one
    kernel call instead of three or two; outputs exactly those of the separate layers); returns the names of the
    fused GEMMs (``model.layers.0.self_attn.qkv_proj``, ...).

    A group is fused when its layers are all ``Int4Linear`` or all ``Int8Linear`` with the same settings (so, after
    ``quantization_speedup`` of every projection, or ``Int4Linear.from_float``); other groups are left alone. Fusing
    only changes how the outputs are computed: a parent that called the layers on different inputs would still get
    exact outputs (each call then runs the whole fused GEMM). Apply it to the model you run, after loading: the
    fused layout is not what ``save_pretrained`` or nnic's manifest describe."""
    from nnic.quantization.shared_input import fuse_shared_input, why_not_shared

    fused = []
    for name, parent in list(model.named_modules()):
        for names, fused_name in SHARED_INPUT_GROUPS:
            layers = [getattr(parent, n, None) for n in names]
            if hasattr(parent, fused_name) or any(why_not_shared(layers[0], lin) for lin in layers):
                continue
            fuse_shared_input(parent, list(names), fused_name)
            fused.append(f"{name}.{fused_name}" if name else fused_name)
    return fused
