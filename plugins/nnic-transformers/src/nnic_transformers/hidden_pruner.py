"""``transformer_hidden``: prune the hidden size (the residual stream) of LLaMA, Qwen2 and Mistral decoders.

One hidden channel is one column of the residual stream that every block reads and writes, so it has many
members, and all of them go together: the token embedding's column, every RMSNorm's weight, the input columns
of ``q/k/v_proj``, ``gate_proj``, ``up_proj`` and ``lm_head``, the output rows (and biases) of ``o_proj`` and
``down_proj``. A channel's score (higher is more important) sums, over all of these members, the channel's L1
or L2 norm in that member divided by the member's mean over channels: every member has an equal vote, whatever
its size (the embedding and ``lm_head`` would otherwise outweigh every block). The ``floor(sparsity x
hidden_size)`` lowest-scored channels are masked in every member (``round_to``: the kept count rounded up to a
multiple, e.g. 32 for the int4 kernels' groups).

The masked model is the pruned model: the embedding and every residual write are zero at the pruned channels,
so the residual stream is exactly zero there, and so is every norm's output (the norms still divide by the
full size, see :mod:`nnic_transformers.norms`). Speedup removes them when it sees the whole model in one graph:
pass ``{"input_ids": ids, "use_cache": False}`` as the dummy input (a key/value cache object stops the tracer
at each attention module, and the channels crossing such a boundary are kept; the report says so). Masks from
earlier pruners on the same weights (heads, MLP channels) are kept: this pruner's masks include them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from nnic.masking import Masks, current_mask, parameter
from nnic.pruning import Pruner
from nnic.selection import amount
from nnic_transformers.norms import rms_norm_classes

CRITERIA = ("l1_weight", "l2_weight")
_READERS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "mlp.gate_proj", "mlp.up_proj")
_WRITERS = ("self_attn.o_proj", "mlp.down_proj")
_NORMS = ("input_layernorm", "post_attention_layernorm")


@dataclass(frozen=True)
class Member:
    """Parameter ``param`` of module ``module`` holds one slice per hidden channel along ``dim``."""

    module: str
    param: str
    dim: int


def _is_stack(module: nn.Module) -> bool:
    has = all(hasattr(module, a) for a in ("embed_tokens", "layers", "norm"))
    return has and isinstance(module.layers, nn.ModuleList)


def stack_members(model: nn.Module, name: str) -> list[Member]:
    """Every parameter slice that one hidden channel of decoder stack ``name`` owns (module docstring)."""
    stack = model.get_submodule(name)
    if not _is_stack(stack):
        raise ValueError(f"transformer_hidden: {name!r} ({type(stack).__name__}) is not a LLaMA-style decoder stack "
                         f"(embed_tokens, layers, norm)")
    p = f"{name}." if name else ""
    norms = rms_norm_classes()
    for norm_name, norm in [("norm", stack.norm)] + [(f"layers.{i}.{n}", _get(layer, n)) for i, layer in
                                                      enumerate(stack.layers) for n in _NORMS]:
        if not isinstance(norm, norms):
            raise ValueError(f"transformer_hidden: {p}{norm_name} is a {type(norm).__name__}; hidden-size pruning "
                             f"knows the RMSNorms of LLaMA, Qwen2 and Mistral ({', '.join(c.__name__ for c in norms)})")
    members = [Member(f"{p}embed_tokens", "weight", 1)]
    for i, layer in enumerate(stack.layers):
        at = f"{p}layers.{i}"
        for sub in (*_NORMS, *_READERS, *_WRITERS):
            if not isinstance(_get(layer, sub), nn.Module):
                raise ValueError(f"transformer_hidden: {at} ({type(layer).__name__}) has no {sub!r}; hidden-size "
                                 f"pruning knows LLaMA, Qwen2 and Mistral decoder layers")
        members += [Member(f"{at}.{n}", "weight", 0) for n in _NORMS]
        members += [Member(f"{at}.{n}", "weight", 1) for n in _READERS]
        for n in _WRITERS:
            members.append(Member(f"{at}.{n}", "weight", 0))
            if _get(layer, n).bias is not None:
                members.append(Member(f"{at}.{n}", "bias", 0))
    members.append(Member(f"{p}norm", "weight", 0))
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    base = getattr(model, getattr(model, "base_model_prefix", ""), None)
    if isinstance(head, nn.Linear) and base is stack:
        head_name = next(n for n, m in model.named_modules() if m is head)
        if parameter(head, "weight") is not parameter(stack.embed_tokens, "weight"):  # tied: masked with the embedding
            members.append(Member(head_name, "weight", 1))
    return members


def _get(module: nn.Module, path: str) -> object:
    for part in path.split("."):
        module = getattr(module, part, None)
    return module


class HiddenSizePruner(Pruner):
    """The hidden size of LLaMA / Qwen2 / Mistral decoders (see the module docstring).

    :param config_list: entries select decoder stacks (``LlamaModel``...; an entry without ``op_types`` selects
        every stack nnic finds in the model) with ``sparsity``: the fraction of hidden channels to remove.
    :param criterion: ``"l2_weight"`` (default) or ``"l1_weight"``.
    :param round_to: keep a multiple of this many channels (rounded up; at most the hidden size).
    """

    name = "transformer_hidden"

    def __init__(self, model: nn.Module, config_list: list[dict], *, criterion: str = "l2_weight",
                 round_to: int = 1) -> None:
        if criterion not in CRITERIA:
            raise ValueError(f"criterion: expected one of {', '.join(CRITERIA)}, got {criterion!r}")
        if not isinstance(round_to, int) or isinstance(round_to, bool) or round_to < 1:
            raise ValueError(f"round_to: expected an int >= 1, got {round_to!r}")
        found = sorted({type(m).__name__ for m in model.modules() if _is_stack(m)})
        if isinstance(config_list, list):
            config_list = [dict(e, op_types=found) if isinstance(e, dict) and "op_types" not in e else e
                           for e in config_list]
        super().__init__(model, config_list)
        for cfg in self.layers.values():
            if "total_sparsity" in cfg.config:
                raise ValueError(f"config_list[{cfg.entry_index}]: transformer_hidden takes 'sparsity' (one hidden "
                                 f"size per decoder stack), not 'total_sparsity'")
        self.criterion, self.round_to = criterion, round_to
        self.members = {name: stack_members(model, name) for name in self.layers}

    def channel_scores(self) -> dict[str, torch.Tensor]:
        """``{stack: score per hidden channel}``, float64, higher is more important."""
        p = 1 if self.criterion == "l1_weight" else 2
        out = {}
        for name, members in self.members.items():
            total = None
            for m in members:
                t = parameter(self.model.get_submodule(m.module), m.param).detach().double()
                other = [d for d in range(t.ndim) if d != m.dim]
                s = t.abs().pow(p).sum(other).pow(1 / p) if other else t.abs()
                mean = s.mean()
                s = (s / mean if mean > 0 else s).cpu()
                total = s if total is None else total + s
            out[name] = total
        return out

    def calculate_masks(self) -> Masks:
        masks: Masks = {}
        for name, scores in self.channel_scores().items():
            n = scores.numel()
            keep_n = n - amount(self.layers[name].config["sparsity"], n)
            keep_n = max(1, min(n, -(-keep_n // self.round_to) * self.round_to))
            keep = torch.zeros(n, dtype=torch.bool)
            keep[torch.argsort(scores, descending=True, stable=True)[:keep_n]] = True
            for m in self.members[name]:
                module = self.model.get_submodule(m.module)
                t = parameter(module, m.param)
                shape = [1] * t.ndim
                shape[m.dim] = n
                mask = keep.to(t.device).reshape(shape).expand_as(t).clone()
                old = current_mask(module, m.param)
                masks.setdefault(m.module, {})[m.param] = mask if old is None else mask & old
        return masks


__all__ = ["CRITERIA", "HiddenSizePruner", "Member", "stack_members"]
