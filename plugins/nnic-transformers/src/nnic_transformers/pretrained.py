"""Write a sped-up model's shape back into its transformers config, so ``save_pretrained`` + ``from_pretrained``
rebuild it.

A transformers config holds one head count and one MLP width for all layers, so this works when every layer
was pruned to the same shape, in families whose config says the head size explicitly (LLaMA, Qwen2, Mistral:
``head_dim``). A pruned hidden size needs its norms in the config's form first (:func:`standard_norms`: an exact
rewrite that moves the kept divisor into the weights and ``rms_norm_eps``). Anything else (layers of different
widths, a hidden size derived from the head count) raises, naming what differs; nnic's own manifest
(:func:`nnic.speedup.save_pruned`) saves any pruned shape.
"""

from __future__ import annotations

import copy
from typing import Any

from torch import nn

from nnic_transformers.layouts import find_heads
from nnic_transformers.norms import PrunedRMSNorm, rms_norm_classes

_EXPLICIT_HEAD_DIM = ("LlamaConfig", "Qwen2Config", "MistralConfig")


def _one(values: dict[str, int], what: str) -> int:
    distinct = sorted(set(values.values()))
    if len(distinct) != 1:
        listing = ", ".join(f"{k}: {v}" for k, v in list(values.items())[:6])
        raise ValueError(f"pruned_config: the layers have different {what} ({listing}); a transformers config "
                         f"holds one value for all layers: save with nnic.speedup.save_pruned instead")
    return distinct[0]


def pruned_config(model: nn.Module) -> Any:
    """A copy of ``model.config`` with the pruned head counts, head size and MLP width of ``model`` (sped up).

    Assign it (``model.config = pruned_config(model)``) before ``model.save_pretrained(path)``; then
    ``AutoModelForCausalLM.from_pretrained(path)`` builds the pruned shape and loads its weights."""
    config = getattr(model, "config", None)
    if config is None or type(config).__name__ not in _EXPLICIT_HEAD_DIM:
        raise ValueError(f"pruned_config: model.config ({type(config).__name__}) cannot express a pruned shape; "
                         f"supported: {', '.join(_EXPLICIT_HEAD_DIM)} (save with nnic.speedup.save_pruned)")
    pruned_norms = [n for n, m in model.named_modules() if isinstance(m, PrunedRMSNorm)]
    if pruned_norms:
        m = model.get_submodule(pruned_norms[0])
        raise ValueError(f"pruned_config: the hidden size was pruned ({m.num_features} of {m.full_features} channels) "
                         f"and {pruned_norms[0]!r} (and {len(pruned_norms) - 1} more) still divide by "
                         f"{m.full_features}, which a transformers config cannot say; call "
                         f"nnic_transformers.standard_norms(model) first (an exact rewrite into the config's RMSNorm)"
                         f", or save with nnic.speedup.save_pruned")
    heads = find_heads(model)
    if not heads:
        raise ValueError(f"pruned_config: no attention module found in {type(model).__name__}")
    new = copy.deepcopy(config)
    new.num_attention_heads = _one({h.name: h.num_heads for h in heads}, "query head counts")
    new.num_key_value_heads = _one({h.name: h.num_kv_heads for h in heads}, "key/value head counts")
    new.head_dim = _one({h.name: h.head_dim for h in heads}, "head sizes")
    mlps = {n: m.gate_proj.out_features for n, m in model.named_modules() if hasattr(m, "gate_proj")}
    if mlps:
        new.intermediate_size = _one(mlps, "MLP widths")
    hidden = {n: m.q_proj.in_features for n, m in model.named_modules() if hasattr(m, "q_proj")}
    new.hidden_size = _one(hidden, "hidden sizes")
    norms = {n: float(m.variance_epsilon) for n, m in model.named_modules() if isinstance(m, rms_norm_classes())}
    if norms:
        new.rms_norm_eps = _one(norms, "RMSNorm epsilons")
    return new
