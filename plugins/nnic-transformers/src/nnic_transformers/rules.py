"""nnic speedup rules for Hugging Face transformers self-attention (whole heads, grouped-query attention
respected), GPT-2's ``Conv1D`` and embeddings."""

from __future__ import annotations

import operator
from collections.abc import Callable

import torch
from torch import nn

from nnic.channels import Spec
from nnic.speedup.rules import ChannelMixRule, Rule, slice_param
from nnic_transformers.layouts import heads_of, layout_of, layouts, loaded_class


def _lazy_targets(find: Callable[[], tuple[type, ...]]) -> property:
    """A rule's ``targets``, read when a speedup builds its rule table, from the transformers modules imported by
    then (:func:`~nnic_transformers.layouts.loaded_class`): neither loading the plugin (every nnic registry lookup
    does) nor speeding up a model without transformers classes imports transformers, which takes seconds."""
    return property(lambda self: find())


def _embedding_classes() -> tuple[type, ...]:
    found = (loaded_class("transformers.models.bert.modeling_bert", "BertEmbeddings"),
             loaded_class("transformers.models.vit.modeling_vit", "ViTEmbeddings"))
    return tuple(cls for cls in found if cls is not None)


def _attention_targets() -> tuple[type, ...]:
    return tuple(cls for cls, layout in layouts().items() if not layout.fused)


def _hidden(call) -> tuple[object, object]:
    """The hidden states argument (first positional, or ``hidden_states=``) and its spec."""
    if call.node.args:
        return call.value(0), call.spec(0)
    return call.value("hidden_states"), call.spec("hidden_states")


def _cross(call) -> bool:
    return any(isinstance(call.value(k), torch.Tensor) for k in ("key_value_states", "encoder_hidden_states"))


def _with_rest(call, spec):
    out = call.output
    return (spec,) + (None,) * (len(out) - 1) if isinstance(out, tuple) else spec


class AttentionRule(Rule):
    """Whole-head pruning of the self-attention classes :mod:`~nnic_transformers.layouts` describes (BERT,
    RoBERTa, DistilBERT, ALBERT, ViT, OPT, BART, LLaMA, Qwen2, Mistral; T5 kept whole).

    The unit of removal is a key/value head with all the query heads that read it (one query head without
    grouped-query attention): it goes when its value rows (weights and bias) are all zero, or when the output
    projection reads none of its query heads, and the attention weights are not used downstream. Modules
    without an output projection (BERT) expose the heads' context as their output channels instead.
    Cross-attention, and T5's heads, are kept whole."""

    name = "transformers.attention"
    targets = _lazy_targets(_attention_targets)
    shape_attrs = ("num_attention_heads", "all_head_size", "num_heads", "n_heads")
    shrink_in_place = False  # its shrink replaces the tensors it slices

    def propagate(self, call) -> None:
        m = call.module
        heads = heads_of(call.name, m, layout_of(m))
        lay, d, g = heads.layout, heads.head_dim, heads.group
        q, k, v = (getattr(m, a) for a in (lay.q, lay.k, lay.v))
        o = getattr(m, lay.o) if lay.o else None
        x, spec = _hidden(call)
        whole = lay.kept_whole or ("cross-attention is kept whole" if _cross(call) else None)
        in_ids = call.slot("in", q.in_features)
        if spec is not None and spec.dim == x.ndim - 1 and not whole and not lay.norm_inside:
            call.couple(in_ids, spec.ids)
            used = torch.stack([(p.weight.detach() != 0).any(0) for p in (q, k, v)]).any(0).cpu()
            call.sink(in_ids, ~used | call.zero_dead(x, spec))
        else:
            why = f"{call.name}: {whole}" if whole else (
                f"{call.name}: adds its input and normalises it" if lay.norm_inside else None)
            call.pin(in_ids, why or f"{call.name}: its input channels are not tracked")
            if whole or lay.norm_inside:
                call.pin_inputs(why)
        v_zero = (v.weight.detach().reshape(heads.num_kv_heads, -1) == 0).all(1)
        if v.bias is not None:
            v_zero &= (v.bias.detach().reshape(heads.num_kv_heads, -1) == 0).all(1)
        v_zero = v_zero.cpu()
        y = call.output[0] if isinstance(call.output, tuple) else call.output
        if o is None:
            out_ids = call.slot("out", heads.num_heads * d)
            if _weights_used(call) or whole:
                call.pin(out_ids, f"{call.name}: {whole or 'its attention weights are used'}")
            groups = [out_ids[i * d:(i + 1) * d] for i in range(heads.num_heads)]
            call.constraint(lambda removed: [i for grp in groups if not all(removed(j) for j in grp) for i in grp])
            call.set_output(_with_rest(call, Spec(y.ndim - 1, out_ids, v_zero.repeat_interleave(d))))
            return
        head_ids = call.slot("heads", heads.num_kv_heads)
        if whole:
            call.pin(head_ids, f"{call.name}: {whole}")
        else:
            unread = (o.weight.detach().reshape(o.out_features, heads.num_kv_heads, g * d) == 0).all(2).all(0).cpu()
            call.sink(head_ids, (v_zero | unread) & ~torch.tensor(_weights_used(call)), slot="heads")
        out_ids = call.slot("out", o.out_features)
        if whole or lay.norm_inside:
            call.pin(out_ids, f"{call.name}: {whole or 'adds its input and normalises it'}")
            call.set_output(_with_rest(call, None))
            return
        dead = (o.weight.detach() == 0).all(1)
        if o.bias is not None:  # a zero row still writes its bias
            dead &= o.bias.detach() == 0
        call.set_output(_with_rest(call, Spec(y.ndim - 1, out_ids, dead.cpu())))

    def shrink(self, module, keep):
        heads = heads_of("", module, layout_of(module))
        lay, d, g = heads.layout, heads.head_dim, heads.group
        q, k, v = (getattr(module, a) for a in (lay.q, lay.k, lay.v))
        o = getattr(module, lay.o) if lay.o else None
        if o is None:
            kout = keep.get("out")
            kv = torch.arange(heads.num_kv_heads) if kout is None else torch.unique(kout // d)
        else:
            kv = keep.get("heads", torch.arange(heads.num_kv_heads))
        qh = (kv[:, None] * g + torch.arange(g)[None, :]).flatten()
        q_inner = (qh[:, None] * d + torch.arange(d)[None, :]).flatten()
        kv_inner = (kv[:, None] * d + torch.arange(d)[None, :]).flatten()
        kin = keep.get("in")
        with torch.no_grad():
            _shrink_linear(q, q_inner, kin)
            for p in (k, v):
                _shrink_linear(p, kv_inner, kin)
            if o is not None:
                _shrink_linear(o, keep.get("out"), q_inner)
        for attr in lay.counts:
            setattr(module, attr, int(len(qh)))
        for attr in lay.inners:
            setattr(module, attr, int(len(qh)) * d)
        return module


def _shrink_linear(lin: nn.Linear, rows: torch.Tensor | None, cols: torch.Tensor | None) -> None:
    w = lin.weight.detach()
    if rows is not None:
        w = w[rows.to(w.device)]
        if lin.bias is not None:
            lin.bias = nn.Parameter(lin.bias.detach()[rows.to(w.device)].clone(), lin.bias.requires_grad)
    if cols is not None:
        w = w[:, cols.to(w.device)]
    lin.weight = nn.Parameter(w.clone(), lin.weight.requires_grad)
    lin.out_features, lin.in_features = w.shape


def _gpt2_classes() -> tuple[type, ...]:
    cls = loaded_class("transformers.models.gpt2.modeling_gpt2", "GPT2Attention")
    return () if cls is None else (cls,)


def _conv1d_classes() -> tuple[type, ...]:
    cls = loaded_class("transformers.pytorch_utils", "Conv1D")
    return () if cls is None else (cls,)


def _weights_used(call) -> bool:
    """Whether the module's second output (the attention weights) is read downstream."""
    return any(u.target is operator.getitem and u.args[1] == 1 and u.users for u in call.node.users)


class GPT2AttentionRule(Rule):
    """Whole-head pruning of GPT-2 self-attention: the fused ``c_attn`` Conv1D (weight ``[embed, 3 * inner]``,
    q|k|v blocks along the output dimension) loses each removed head's columns in the three blocks, ``c_proj``
    (weight ``[inner, embed]``) its rows. A head goes when its value block (weights and bias) is all zero or
    ``c_proj`` never reads it, unless the attention weights output is used. Cross-attention is kept whole."""

    name = "transformers.gpt2_attention"
    targets = _lazy_targets(_gpt2_classes)
    shape_attrs = ("num_heads", "split_size")
    shrink_in_place = False  # its shrink replaces the tensors it slices

    def propagate(self, call) -> None:
        m = call.module
        x, spec = call.value(0), call.spec(0)
        cross = getattr(m, "is_cross_attention", False) or call.value("encoder_hidden_states") is not None
        w_in = m.c_attn.weight.detach()
        in_ids = call.slot("in", w_in.shape[0])
        if spec is not None and spec.dim == x.ndim - 1 and not cross:
            call.couple(in_ids, spec.ids)
            used = (w_in != 0).any(1).cpu()
            call.sink(in_ids, ~used | call.zero_dead(x, spec))
        else:
            call.pin(in_ids, f"{call.name}: its input channels are not tracked" if not cross
                     else f"{call.name}: cross-attention is kept whole")
            call.pin_inputs(f"{call.name}: cross-attention is kept whole" if cross else None)
        h, d, inner = m.num_heads, m.head_dim, m.split_size
        head_ids = call.slot("heads", h)
        if cross:
            call.pin(head_ids, f"{call.name}: cross-attention is kept whole")
        else:
            wv = w_in[:, 2 * inner:3 * inner].reshape(-1, h, d)
            v_zero = (wv == 0).all(2).all(0)
            if m.c_attn.bias is not None:
                v_zero &= (m.c_attn.bias.detach()[2 * inner:3 * inner].reshape(h, d) == 0).all(1)
            unread = (m.c_proj.weight.detach().reshape(h, d, -1) == 0).all(2).all(1)
            removable = (v_zero | unread).cpu() & ~torch.tensor(_weights_used(call))
            call.sink(head_ids, removable, slot="heads")
        w_out = m.c_proj.weight.detach()
        out_ids = call.slot("out", w_out.shape[1])
        if cross:
            call.pin(out_ids, f"{call.name}: cross-attention is kept whole")
        dead = (w_out == 0).all(0).cpu()
        y = call.output[0] if isinstance(call.output, tuple) else call.output
        spec_out = Spec(y.ndim - 1, out_ids, dead)
        call.set_output((spec_out, None) if isinstance(call.output, tuple) else spec_out)

    def shrink(self, module, keep):
        h, d, inner = module.num_heads, module.head_dim, module.split_size
        heads = keep.get("heads", torch.arange(h))
        cols = (heads[:, None] * d + torch.arange(d)[None, :]).flatten()
        with torch.no_grad():
            _shrink_conv1d(module.c_attn, keep.get("in"), torch.cat([cols, cols + inner, cols + 2 * inner]))
            _shrink_conv1d(module.c_proj, cols, keep.get("out"))
        module.num_heads = int(len(heads))
        module.split_size = int(len(heads)) * d
        return module


def _shrink_conv1d(conv: nn.Module, rows: torch.Tensor | None, cols: torch.Tensor | None) -> None:
    """Keep input features ``rows`` and output features ``cols`` of a transformers ``Conv1D`` (weight [in, out])."""
    w = conv.weight.detach()
    if rows is not None:
        w = w[rows.to(w.device)]
    if cols is not None:
        w = w[:, cols.to(w.device)]
        slice_param(conv, "bias", cols, 0)
    conv.weight = nn.Parameter(w.clone(), conv.weight.requires_grad)
    conv.nx, conv.nf = w.shape


class Conv1DRule(ChannelMixRule):
    """transformers' ``Conv1D`` (GPT-2's MLP and projections): a Linear whose weight is ``[in, out]``."""

    name = "transformers.pytorch_utils.conv1d"
    targets = _lazy_targets(_conv1d_classes)
    shape_attrs = ("nx", "nf")
    shrink_in_place = False  # its shrink replaces the tensors it slices

    def groups(self, module) -> int:
        return 1

    def usage(self, module):
        return (module.weight.detach() != 0).t().cpu()

    def can_fold(self, module, x):
        return True

    def fold(self, module, slot, positions, values):
        w = module.weight.detach().double()[positions.to(module.weight.device)]
        delta = values.to(w.device) @ w
        if module.bias is None:
            module.bias = nn.Parameter(torch.zeros(module.nf, dtype=module.weight.dtype,
                                                   device=module.weight.device), module.weight.requires_grad)
        with torch.no_grad():
            module.bias.add_(delta.to(module.bias.dtype))

    def shrink(self, module, keep):
        with torch.no_grad():
            _shrink_conv1d(module, keep.get("in"), keep.get("out"))
        return module


class HFEmbeddingsRule(Rule):
    """Embedding blocks are kept whole (their LayerNorm pins the hidden size); their output is untracked."""

    name = "transformers.embeddings"
    targets = _lazy_targets(_embedding_classes)

    def propagate(self, call) -> None:
        call.pin_inputs()


RULES = (AttentionRule, HFEmbeddingsRule, GPT2AttentionRule, Conv1DRule)
