"""Where the attention heads of Hugging Face models live: one :class:`Layout` per attention class.

This module is the plugin's model-family knowledge: which attributes hold the query/key/value/output
projections, the head size and the head count, so that the head pruner, the speedup rule and the config
writer read heads the same way. Classes are looked up only among the modules already imported
(:func:`loaded_class`): importing transformers takes seconds, and a model holding one of these classes has
imported its module already.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

from torch import nn


@dataclass(frozen=True)
class Layout:
    """How one attention class holds its heads.

    ``q``/``k``/``v``/``o``: projection attributes (``o=None``: the module returns the heads' context and the
    next module projects it, as BERT's self-attention); ``fused``: one projection ``q`` holds q|k|v along its
    output (GPT-2's ``c_attn``, a ``Conv1D`` whose weight is ``[in, out]``); ``head_dim``: the attribute with
    the head size; ``counts``: attributes holding the number of query heads, ``inners``: those holding heads x
    head size (both rewritten when heads go); ``norm_inside``: the module adds its input and normalises
    (ALBERT); ``kept_whole``: why speedup cannot remove its heads (``None``: it can)."""

    q: str
    k: str | None
    v: str | None
    o: str | None
    head_dim: str
    counts: tuple[str, ...] = ()
    inners: tuple[str, ...] = ()
    fused: bool = False
    norm_inside: bool = False
    kept_whole: str | None = None


_BERT = Layout("query", "key", "value", None, "attention_head_size", ("num_attention_heads",), ("all_head_size",))
_LLAMA = Layout("q_proj", "k_proj", "v_proj", "o_proj", "head_dim")
_BART = Layout("q_proj", "k_proj", "v_proj", "out_proj", "head_dim", ("num_heads",))

# (module path, class name) -> layout
_TABLE: dict[tuple[str, str], Layout] = {
    ("transformers.models.bert.modeling_bert", "BertSelfAttention"): _BERT,
    ("transformers.models.roberta.modeling_roberta", "RobertaSelfAttention"): _BERT,
    ("transformers.models.distilbert.modeling_distilbert", "DistilBertSelfAttention"):
        Layout("q_lin", "k_lin", "v_lin", "out_lin", "attention_head_size", ("n_heads",)),
    ("transformers.models.albert.modeling_albert", "AlbertAttention"):
        Layout("query", "key", "value", "dense", "attention_head_size", ("num_attention_heads",),
               ("all_head_size",), norm_inside=True),
    ("transformers.models.vit.modeling_vit", "ViTAttention"):
        Layout("q_proj", "k_proj", "v_proj", "o_proj", "head_dim", ("num_attention_heads",)),
    ("transformers.models.vit.modeling_vit", "ViTSelfAttention"): _BERT,
    ("transformers.models.gpt2.modeling_gpt2", "GPT2Attention"):
        Layout("c_attn", None, None, "c_proj", "head_dim", ("num_heads",), ("split_size",), fused=True),
    ("transformers.models.opt.modeling_opt", "OPTAttention"): _BART,
    ("transformers.models.bart.modeling_bart", "BartAttention"): _BART,
    ("transformers.models.llama.modeling_llama", "LlamaAttention"): _LLAMA,
    ("transformers.models.qwen2.modeling_qwen2", "Qwen2Attention"): _LLAMA,
    ("transformers.models.mistral.modeling_mistral", "MistralAttention"): _LLAMA,
    ("transformers.models.t5.modeling_t5", "T5Attention"):
        Layout("q", "k", "v", "o", "key_value_proj_dim", ("n_heads",), ("inner_dim",),
               kept_whole="T5 layers share one relative position bias with a column per head"),
}


def loaded_class(module: str, name: str) -> type | None:
    """``module.name`` if ``module`` is already imported, else ``None`` (never imports anything).

    A model that holds an instance of a class (or of a subclass) has imported the class's module, so a rule table
    built from the imported modules alone misses no class the model being sped up contains; and a speedup of a
    torchvision model does not pay for importing transformers."""
    found = getattr(sys.modules.get(module), name, None)
    return found if isinstance(found, type) else None


def layouts() -> dict[type, Layout]:
    """The attention classes of the transformers modules imported so far, with their layouts."""
    found: dict[type, Layout] = {}
    for (module, name), layout in _TABLE.items():
        cls = loaded_class(module, name)
        if cls is not None:
            found[cls] = layout
    return found


def layout_of(module: nn.Module, extra: dict[type, Layout] | None = None) -> Layout | None:
    """The layout of ``module``'s class (or of a base class whose forward it keeps)."""
    table = {**layouts(), **(extra or {})}
    for cls in type(module).__mro__:
        if cls in table and (cls is type(module) or type(module).forward is cls.forward):
            return table[cls]
    return None


@dataclass
class Heads:
    """The heads of one attention module: ``num_heads`` query heads of ``head_dim``, in ``num_kv_heads``
    key/value groups of ``group`` query heads each (grouped-query attention; ``group == 1`` otherwise)."""

    name: str
    module: nn.Module
    layout: Layout
    num_heads: int
    num_kv_heads: int
    head_dim: int

    @property
    def group(self) -> int:
        return self.num_heads // self.num_kv_heads


def heads_of(name: str, module: nn.Module, layout: Layout) -> Heads:
    d = int(getattr(module, layout.head_dim))
    q = getattr(module, layout.q)
    if layout.fused:
        inner = int(getattr(module, layout.inners[0]))
        return Heads(name, module, layout, inner // d, inner // d, d)
    h, kvh = q.out_features // d, getattr(module, layout.k).out_features // d
    if h % kvh:
        raise ValueError(f"{name}: {h} query heads do not split into {kvh} key/value heads")
    return Heads(name, module, layout, h, kvh, d)


def find_heads(model: nn.Module, extra: dict[type, Layout] | None = None) -> list[Heads]:
    """Every attention module of ``model`` that a layout describes, in module order."""
    out = []
    for name, module in model.named_modules():
        layout = layout_of(module, extra)
        if layout is not None:
            out.append(heads_of(name, module, layout))
    return out
