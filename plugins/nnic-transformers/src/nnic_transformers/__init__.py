"""nnic plugin for Hugging Face transformers: the ``transformer_head`` pruner (whole attention heads, grouped-query
attention respected), the ``transformer_hidden`` pruner (the hidden size of LLaMA / Qwen2 / Mistral decoders),
speedup rules for transformers' attention classes, RMSNorms, GPT-2's ``Conv1D`` and embeddings, the ``Conv1D``
lowering for ``nnic.quantization_speedup`` (int8 / int4, as the Linear it is), :func:`fuse_mlp_activations`
(BERT-style MLP activations into the int8 GEMM's epilogue), :func:`fuse_projections` (a decoder block's
q/k/v and gate/up projections as one int4/int8 GEMM each), :func:`fuse_encoder` (BERT-style self-attention
and residual + LayerNorm block endings on nnic's fused encoder kernels), :func:`fast_decode` (one-token decoder-layer
steps with about half the torch ops, and RMSNorms as one ``F.rms_norm`` call; bit-identical in float32), and :func:`pruned_config` (with
:func:`standard_norms` after hidden-size pruning) to write a pruned model's shape back into its config for
``save_pretrained``.

Loading the plugin (every nnic registry lookup does) does not import transformers."""

from __future__ import annotations

import nnic
from nnic_transformers.decode_layer import FastDecoderLayer
from nnic_transformers.decoding import FastRMSNorm, fast_decode
from nnic_transformers.encoder import (
    EmbedLayerNorm,
    FusedEncoder,
    FusedEncoderLayer,
    FusedSelfAttention,
    SkipLayerNormOutput,
    fuse_encoder,
)
from nnic_transformers.fusion import fuse_mlp_activations, fuse_projections
from nnic_transformers.head_pruner import TransformerHeadPruner
from nnic_transformers.hidden_pruner import HiddenSizePruner
from nnic_transformers.layouts import Heads, Layout, find_heads
from nnic_transformers.lowerings import Conv1DLowering
from nnic_transformers.norms import PrunedRMSNorm, RMSNormRule, standard_norms
from nnic_transformers.pretrained import pruned_config
from nnic_transformers.rules import RULES


@nnic.hookimpl
def register_speedup_rules(register) -> None:
    for rule in (*RULES, RMSNormRule):
        register(rule())


@nnic.hookimpl
def register_pruners(register) -> None:
    register(TransformerHeadPruner, name="transformer_head")
    register(HiddenSizePruner, name="transformer_hidden")


@nnic.hookimpl
def register_lowerings(register) -> None:
    register(Conv1DLowering())


__all__ = ["EmbedLayerNorm", "FastDecoderLayer", "FastRMSNorm", "FusedEncoder", "FusedEncoderLayer",
           "FusedSelfAttention", "Heads", "HiddenSizePruner", "Layout", "PrunedRMSNorm", "SkipLayerNormOutput",
           "TransformerHeadPruner", "fast_decode", "find_heads", "fuse_encoder", "fuse_mlp_activations",
           "fuse_projections", "pruned_config", "standard_norms"]
