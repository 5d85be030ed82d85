"""nnic speedup rules for Hugging Face transformers self-attention (whole heads), GPT-2's ``Conv1D`` and
embeddings."""

from __future__ import annotations

import functools
import operator
from collections.abc import Callable

import torch
from torch import nn

import nnic
from nnic.channels import Spec
from nnic.speedup.rules import ChannelMixRule, Rule, slice_param


def _lazy_targets(find: Callable[[], tuple[type, ...]]) -> functools.cached_property:
    """A rule's ``targets``, found at speedup time: loading the plugin (every nnic registry lookup does) must not
    import transformers, which takes seconds."""
    return functools.cached_property(lambda self: find())


def _attention_classes() -> tuple[type, ...]:
    found = []
    for module, names in (("transformers.models.bert.modeling_bert", ("BertSelfAttention",)),
                          ("transformers.models.roberta.modeling_roberta", ("RobertaSelfAttention",)),
                          ("transformers.models.vit.modeling_vit", ("ViTAttention", "ViTSelfAttention"))):
        try:
            mod = __import__(module, fromlist=list(names))
        except ImportError:
            continue
        found += [getattr(mod, n) for n in names if hasattr(mod, n)]
    return tuple(found)


def _embedding_classes() -> tuple[type, ...]:
    found = []
    for module, name in (("transformers.models.bert.modeling_bert", "BertEmbeddings"),
                         ("transformers.models.vit.modeling_vit", "ViTEmbeddings")):
        try:
            found.append(getattr(__import__(module, fromlist=[name]), name))
        except (ImportError, AttributeError):
            continue
    return tuple(found)


def _projections(m: nn.Module) -> tuple[list[nn.Linear], nn.Linear | None]:
    if hasattr(m, "query"):
        return [m.query, m.key, m.value], None
    return [m.q_proj, m.k_proj, m.v_proj], getattr(m, "o_proj", None)


def _heads(m: nn.Module) -> tuple[int, int]:
    h = m.num_attention_heads
    d = getattr(m, "attention_head_size", None) or m.head_dim
    return h, d


class HFSelfAttentionRule(Rule):
    """Whole-head pruning of BERT-style (``query``/``key``/``value``, output = the heads' context) and ViT-style
    (``q_proj``/``k_proj``/``v_proj``/``o_proj``) self-attention."""

    name = "transformers.self_attention"
    targets = _lazy_targets(_attention_classes)
    shape_attrs = ("num_attention_heads", "all_head_size")

    def propagate(self, call) -> None:
        m = call.module
        (q, k, v), o = _projections(m)
        h, d = _heads(m)
        x, spec = call.value(0), call.spec(0)
        in_ids = call.slot("in", q.in_features)
        if spec is not None and spec.dim == x.ndim - 1:
            call.couple(in_ids, spec.ids)
            used = torch.stack([(p.weight.detach() != 0).any(0) for p in (q, k, v)]).any(0).cpu()
            call.sink(in_ids, ~used | (spec.dead & call.stats(x, spec.dim).zero))
        else:
            call.pin(in_ids)
        v_zero = (v.weight.detach().reshape(h, d, -1) == 0).flatten(1).all(1)
        if v.bias is not None:
            v_zero &= (v.bias.detach().reshape(h, d) == 0).all(1)
        v_zero = v_zero.cpu()
        weights_used = any(u.target is operator.getitem and u.args[1] == 1 and u.users for u in call.node.users)
        y = call.output[0] if isinstance(call.output, tuple) else call.output
        if o is None:
            out_ids = call.slot("out", h * d)
            if weights_used:
                call.pin(out_ids, f"{call.name}: its attention weights are used")
            dead = v_zero.repeat_interleave(d)
            heads = [out_ids[i * d:(i + 1) * d] for i in range(h)]
            call.constraint(lambda removed: [i for g in heads if not all(removed(j) for j in g) for i in g])
        else:
            head_ids = call.slot("heads", h)
            unread = (o.weight.detach().reshape(o.out_features, h, d) == 0).all(2).all(0).cpu()
            removable = (v_zero | unread) & ~torch.tensor(weights_used)
            call.sink(head_ids, removable, slot="heads")
            out_ids = call.slot("out", o.out_features)
            dead = (o.weight.detach() == 0).all(1).cpu()
        spec_out = Spec(y.ndim - 1, out_ids, dead)
        call.set_output((spec_out, None) if isinstance(call.output, tuple) else spec_out)

    def shrink(self, module, keep):
        (q, k, v), o = _projections(module)
        h, d = _heads(module)
        if o is None:
            kout = keep.get("out")
            heads = torch.arange(h) if kout is None else torch.unique(kout // d)
        else:
            heads = keep.get("heads", torch.arange(h))
        inner = (heads[:, None] * d + torch.arange(d)[None, :]).flatten()
        kin = keep.get("in")
        with torch.no_grad():
            for p in (q, k, v):
                _shrink_linear(p, inner, kin)
            if o is not None:
                _shrink_linear(o, keep.get("out"), inner)
        module.num_attention_heads = len(heads)
        if hasattr(module, "all_head_size"):
            module.all_head_size = len(heads) * d
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
    try:
        from transformers.models.gpt2.modeling_gpt2 import GPT2Attention
    except ImportError:
        return ()
    return (GPT2Attention,)


def _conv1d_classes() -> tuple[type, ...]:
    try:
        from transformers.pytorch_utils import Conv1D
    except ImportError:
        return ()
    return (Conv1D,)


def _weights_used(call) -> bool:
    return any(u.target is operator.getitem and u.args[1] == 1 and u.users for u in call.node.users)


class GPT2AttentionRule(Rule):
    """Whole-head pruning of GPT-2 self-attention: the fused ``c_attn`` Conv1D (weight ``[embed, 3 * inner]``,
    q|k|v blocks along the output dimension) loses each removed head's columns in the three blocks, ``c_proj``
    (weight ``[inner, embed]``) its rows. A head goes when its value block (weights and bias) is all zero or
    ``c_proj`` never reads it, unless the attention weights output is used. Cross-attention is kept whole."""

    name = "transformers.gpt2_attention"
    targets = _lazy_targets(_gpt2_classes)
    shape_attrs = ("num_heads", "split_size")

    def propagate(self, call) -> None:
        m = call.module
        x, spec = call.value(0), call.spec(0)
        cross = getattr(m, "is_cross_attention", False) or call.value("encoder_hidden_states") is not None
        w_in = m.c_attn.weight.detach()
        in_ids = call.slot("in", w_in.shape[0])
        if spec is not None and spec.dim == x.ndim - 1 and not cross:
            call.couple(in_ids, spec.ids)
            used = (w_in != 0).any(1).cpu()
            call.sink(in_ids, ~used | (spec.dead & call.stats(x, spec.dim).zero))
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


@nnic.hookimpl
def register_speedup_rules(register) -> None:
    register(HFSelfAttentionRule())
    register(HFEmbeddingsRule())
    register(GPT2AttentionRule())
    register(Conv1DRule())
