"""nnic plugin for Hugging Face transformers: the ``transformer_head`` pruner (whole attention heads, grouped-query
attention respected), speedup rules for transformers' attention classes, GPT-2's ``Conv1D`` and embeddings, the
``Conv1D`` lowering for ``nnic.quantization_speedup`` (int8 / int4, as the Linear it is),
:func:`fuse_mlp_activations` (BERT-style MLP activations into the int8 GEMM's epilogue), and
:func:`pruned_config` to write a pruned model's shape back into its config for ``save_pretrained``.

Loading the plugin (every nnic registry lookup does) does not import transformers."""

from __future__ import annotations

import nnic
from nnic_transformers.fusion import fuse_mlp_activations
from nnic_transformers.head_pruner import TransformerHeadPruner
from nnic_transformers.layouts import Heads, Layout, find_heads
from nnic_transformers.lowerings import Conv1DLowering
from nnic_transformers.pretrained import pruned_config
from nnic_transformers.rules import RULES


@nnic.hookimpl
def register_speedup_rules(register) -> None:
    for rule in RULES:
        register(rule())


@nnic.hookimpl
def register_pruners(register) -> None:
    register(TransformerHeadPruner, name="transformer_head")


@nnic.hookimpl
def register_lowerings(register) -> None:
    register(Conv1DLowering())


__all__ = ["Heads", "Layout", "TransformerHeadPruner", "find_heads", "fuse_mlp_activations", "pruned_config"]
