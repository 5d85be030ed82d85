"""Whole-head pruning of ``nn.MultiheadAttention``, and the module that replaces it when heads go.

``nn.MultiheadAttention`` ties the query width, the inner width (heads x head_dim) and the output width to one
``embed_dim``, so a model with fewer heads, or pruned input/output channels, needs
:class:`PrunedMultiheadAttention`, which computes the same function with independent widths.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from nnic.channels.graph import Call, Spec
from nnic.speedup.rules import Rule


class PrunedMultiheadAttention(nn.Module):
    """Multi-head attention with independent query/key/value/output widths; same call signature and outputs as
    ``nn.MultiheadAttention`` (``head_index`` maps kept heads to the original ones, for 3-D ``attn_mask``)."""

    def __init__(self, q_dim: int, k_dim: int, v_dim: int, num_heads: int, head_dim: int, out_dim: int, *,
                 bias: bool = True, add_bias_kv: bool = False, add_zero_attn: bool = False, dropout: float = 0.0,
                 batch_first: bool = False, orig_heads: int | None = None, head_index: list[int] | None = None,
                 device=None, dtype=None) -> None:
        super().__init__()
        kw = {"device": device, "dtype": dtype}
        inner = num_heads * head_dim
        self.num_heads, self.head_dim, self.batch_first, self.dropout = num_heads, head_dim, batch_first, dropout
        self.add_zero_attn = add_zero_attn
        self.orig_heads = orig_heads or num_heads
        self.head_index = list(range(num_heads)) if head_index is None else list(head_index)
        self.q_proj = nn.Linear(q_dim, inner, bias=bias, **kw)
        self.k_proj = nn.Linear(k_dim, inner, bias=bias, **kw)
        self.v_proj = nn.Linear(v_dim, inner, bias=bias, **kw)
        self.out_proj = nn.Linear(inner, out_dim, bias=bias, **kw)
        self.bias_k = nn.Parameter(torch.zeros(1, 1, inner, **kw)) if add_bias_kv else None
        self.bias_v = nn.Parameter(torch.zeros(1, 1, inner, **kw)) if add_bias_kv else None

    def manifest_attrs(self) -> dict:
        return {"q_dim": self.q_proj.in_features, "k_dim": self.k_proj.in_features, "v_dim": self.v_proj.in_features,
                "num_heads": self.num_heads, "head_dim": self.head_dim, "out_dim": self.out_proj.out_features,
                "bias": self.q_proj.bias is not None, "add_bias_kv": self.bias_k is not None,
                "add_zero_attn": self.add_zero_attn, "dropout": self.dropout, "batch_first": self.batch_first,
                "orig_heads": self.orig_heads, "head_index": self.head_index}

    @classmethod
    def from_manifest(cls, attrs: dict) -> PrunedMultiheadAttention:
        return cls(**attrs)

    def forward(self, query, key, value, key_padding_mask=None, need_weights=True, attn_mask=None,
                average_attn_weights=True, is_causal=False):
        unbatched = query.dim() == 2
        if unbatched:
            query, key, value = query.unsqueeze(1), key.unsqueeze(1), value.unsqueeze(1)
            if key_padding_mask is not None:
                key_padding_mask = key_padding_mask.unsqueeze(0)
        if not self.batch_first:
            query, key, value = query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1)
        n, L, _ = query.shape
        h, d = self.num_heads, self.head_dim
        q = self.q_proj(query).view(n, L, h, d).transpose(1, 2)
        k, v = self.k_proj(key), self.v_proj(value)
        if self.bias_k is not None:
            k = torch.cat([k, self.bias_k.expand(n, 1, -1)], 1)
            v = torch.cat([v, self.bias_v.expand(n, 1, -1)], 1)
            attn_mask = F.pad(attn_mask, (0, 1)) if attn_mask is not None else None
            key_padding_mask = F.pad(key_padding_mask, (0, 1)) if key_padding_mask is not None else None
        if self.add_zero_attn:
            k = torch.cat([k, k.new_zeros(n, 1, k.shape[-1])], 1)
            v = torch.cat([v, v.new_zeros(n, 1, v.shape[-1])], 1)
            attn_mask = F.pad(attn_mask, (0, 1)) if attn_mask is not None else None
            key_padding_mask = F.pad(key_padding_mask, (0, 1)) if key_padding_mask is not None else None
        S = k.shape[1]
        k, v = k.view(n, S, h, d).transpose(1, 2), v.view(n, S, h, d).transpose(1, 2)
        scores = (q * (1.0 / math.sqrt(d))) @ k.transpose(-2, -1)
        if attn_mask is None and is_causal:
            attn_mask = torch.ones(L, S, dtype=torch.bool, device=q.device).triu(1)
        if attn_mask is not None:
            if attn_mask.dim() == 3:
                attn_mask = attn_mask.view(n, self.orig_heads, L, S)[:, self.head_index]
            scores = scores.masked_fill(attn_mask, float("-inf")) if attn_mask.dtype == torch.bool else scores + attn_mask
        if key_padding_mask is not None:
            kpm = key_padding_mask.view(n, 1, 1, S)
            scores = scores.masked_fill(kpm, float("-inf")) if kpm.dtype == torch.bool else scores + kpm
        attn = torch.softmax(scores, -1)
        if self.training and self.dropout > 0:
            attn = F.dropout(attn, self.dropout)
        out = self.out_proj((attn @ v).transpose(1, 2).reshape(n, L, h * d))
        if not self.batch_first:
            out = out.transpose(0, 1)
        if unbatched:
            out = out.squeeze(1)
        weights = None
        if need_weights:
            weights = attn.mean(1) if average_attn_weights else attn
            if unbatched:
                weights = weights.squeeze(0)
        return out, weights


def _parts(m: nn.Module) -> dict:
    """Projection weights of either class as ``[inner, in]`` tensors, biases, heads and head_dim."""
    if isinstance(m, PrunedMultiheadAttention):
        return {"w": [m.q_proj.weight, m.k_proj.weight, m.v_proj.weight],
                "b": [m.q_proj.bias, m.k_proj.bias, m.v_proj.bias], "out": m.out_proj,
                "h": m.num_heads, "d": m.head_dim, "bias_v": m.bias_v, "bias_k": m.bias_k}
    e = m.embed_dim
    if m._qkv_same_embed_dim:
        w = list(m.in_proj_weight.chunk(3, 0))
    else:
        w = [m.q_proj_weight, m.k_proj_weight, m.v_proj_weight]
    b = list(m.in_proj_bias.chunk(3, 0)) if m.in_proj_bias is not None else [None] * 3
    return {"w": w, "b": b, "out": m.out_proj, "h": m.num_heads, "d": e // m.num_heads,
            "bias_v": m.bias_v, "bias_k": m.bias_k}


class MultiheadAttentionRule(Rule):
    """Input channels of query/key/value, whole heads, and output channels of ``nn.MultiheadAttention``.

    A head goes when its value projection (weights, bias, ``bias_v``) is all zero or the output projection never
    reads it; the attention-weights output, when used, keeps every head (it averages over them)."""

    name = "torch.nn.multiheadattention"
    targets = (nn.MultiheadAttention, PrunedMultiheadAttention)
    shrink_in_place = False  # its shrink replaces the tensors it slices
    value_free = True

    def propagate(self, call: Call) -> None:
        m, p = call.module, _parts(call.module)
        h, d = p["h"], p["d"]
        arg_of = {"q_in": (0, "query"), "k_in": (1, "key"), "v_in": (2, "value")}
        for slot, w in zip(("q_in", "k_in", "v_in"), p["w"]):
            pos, kw = arg_of[slot]
            key = pos if pos < len(call.node.args) else kw
            x, spec = call.value(key), call.spec(key)
            ids = call.slot(slot, w.shape[1])
            if spec is not None and spec.dim == x.ndim - 1:
                call.couple(ids, spec.ids)
                unused = ~(w.detach() != 0).any(0).cpu()
                call.sink(ids, unused | call.zero_dead(x, spec), slot=slot)
            else:
                call.pin(ids)
        wv, bv, out = p["w"][2].detach(), p["b"][2], p["out"]
        v_zero = (wv.reshape(h, d, -1) == 0).flatten(1).all(1)
        if bv is not None:
            v_zero &= (bv.detach().reshape(h, d) == 0).all(1)
        if p["bias_v"] is not None:
            v_zero &= (p["bias_v"].detach().reshape(h, d) == 0).all(1)
        unread = (out.weight.detach().reshape(out.out_features, h, d) == 0).all(2).all(0)
        heads = call.slot("heads", h)
        removable = (v_zero | unread).cpu()
        weights_used = any(u.target is __import__("operator").getitem and u.args[1] == 1 for u in call.node.users)
        if weights_used and call.value("need_weights") is not False:
            removable = torch.zeros_like(removable)
        call.sink(heads, removable, slot="heads")
        out_ids = call.slot("out", out.out_features)
        dead = (out.weight.detach() == 0).all(1).cpu()
        const = None
        if call.state.value_free and bool(dead.any()):  # a zero row of the output projection: its bias there
            b = out.bias
            const = b.detach().double().cpu() if b is not None else torch.zeros(len(out_ids), dtype=torch.float64)
            const = torch.where(dead, const, torch.full_like(const, float("nan")))
        y = call.output[0]
        call.set_output((Spec(y.ndim - 1, out_ids, dead, const), None))

    def shrink(self, module, keep):
        p = _parts(module)
        h, d = p["h"], p["d"]
        heads = keep.get("heads", torch.arange(h))
        inner = (heads[:, None] * d + torch.arange(d)[None, :]).flatten()
        ins = []
        for slot, w in zip(("q_in", "k_in", "v_in"), p["w"]):
            ins.append(keep.get(slot, torch.arange(w.shape[1])))
        out = p["out"]
        kout = keep.get("out", torch.arange(out.out_features))
        ref = out.weight
        old_index = getattr(module, "head_index", list(range(h)))
        new = PrunedMultiheadAttention(
            len(ins[0]), len(ins[1]), len(ins[2]), len(heads), d, len(kout), bias=p["b"][0] is not None,
            add_bias_kv=p["bias_k"] is not None, add_zero_attn=module.add_zero_attn, dropout=module.dropout,
            batch_first=module.batch_first, orig_heads=getattr(module, "orig_heads", h),
            head_index=[old_index[i] for i in heads.tolist()], device=ref.device, dtype=ref.dtype)
        dev = ref.device
        with torch.no_grad():
            for proj, w, b, idx in zip((new.q_proj, new.k_proj, new.v_proj), p["w"], p["b"], ins):
                proj.weight.copy_(w.detach()[inner.to(dev)][:, idx.to(dev)])
                if b is not None:
                    proj.bias.copy_(b.detach()[inner.to(dev)])
            new.out_proj.weight.copy_(out.weight.detach()[kout.to(dev)][:, inner.to(dev)])
            if out.bias is not None:
                new.out_proj.bias.copy_(out.bias.detach()[kout.to(dev)])
            if p["bias_k"] is not None:
                new.bias_k.copy_(p["bias_k"].detach()[..., inner.to(dev)])
                new.bias_v.copy_(p["bias_v"].detach()[..., inner.to(dev)])
        return new
