"""BERT-style encoder blocks on nnic's fused encoder kernels (:mod:`nnic.kernels.encoder`): the self-attention as
one kernel that reads Q, K and V where the projections wrote them, each block's residual add + LayerNorm
(``BertSelfOutput``, ``BertOutput``) as one skip LayerNorm, and the embedding layer (``BertEmbeddings``: three
lookups, two adds, a LayerNorm) as one embedding LayerNorm.

Hugging Face's BERT attention views each projection as ``[batch, heads, seq, head_dim]``, runs
``scaled_dot_product_attention`` and copies the result back into ``[batch, seq, hidden]``; its block endings add
the residual and normalise in two passes over fresh tensors. Together these are about a quarter of an int8
BERT-base forward on nnic's GEMMs. The embeddings are little work (1.7 ms of a 570 ms forward on one thread) but
six torch kernels with static thread splits: at two threads beside other processes each waits for its slower
thread, 40-90 ms per forward where nnic's kernels take their chunks dynamically. With :func:`nnic_transformers.fuse_projections` applied first, the query, key
and value are column slices of one GEMM output, which the attention kernel reads in place.

Modules qualify by code, not by class: a module whose ``forward`` is the same code as BERT's
``BertSelfAttention`` (or ``BertSelfOutput`` / ``BertOutput`` / ``BertEmbeddings``) is wrapped, so the many "copied from BERT"
encoders (RoBERTa, ELECTRA, XLM-R, ...) are too, and anything else is left alone. A wrapped module runs its
original ``forward`` whenever the fused one would not compute the same thing: in training (dropout), with a cache
or cross-attention inputs, with an attention mask that is not one padding mask per sequence, or in a dtype other
than float32 (the kernels compute in float32).
"""

from __future__ import annotations

import torch
from torch import nn

from nnic_transformers.fusion import _same_code


#: What :func:`fuse_encoder` and :class:`FusedSelfAttention` take for the attention's two products: ``"auto"`` (the
#: default: bfloat16 when the attention's query/key/value projections are nnic's int8 or int4 layers, float32
#: otherwise), or one of ``nnic.kernels.encoder.PRODUCTS`` always.
ATTENTION_PRODUCTS = ("auto", "float32", "bfloat16")


def _quantized_projections(inner: nn.Module) -> bool:
    """Whether ``inner``'s query, key and value are nnic int8/int4 layers (also as parts of one fused QKV GEMM)."""
    from nnic.quantization.modules import Int4Linear, Int8Linear
    from nnic.quantization.shared_input import SharedInputPart

    for name in ("query", "key", "value"):
        layer = getattr(inner, name, None)
        if type(layer) is SharedInputPart:
            layer = layer.shared.fused
        if not isinstance(layer, (Int8Linear, Int4Linear)):
            return False
    return True


class FusedSelfAttention(nn.Module):
    """A BERT-style self-attention (``inner``, its projections kept) computed by :func:`nnic.kernels.attention`
    with its two products in ``products``: ``"float32"``, ``"bfloat16"`` (see that function; float32 where the CPU
    has no AVX512_BF16), or ``"auto"``: bfloat16 when ``inner``'s query, key and value are nnic's int8/int4 layers
    (decided at each call, so quantizing after wrapping counts), float32 otherwise. Returns ``(context, None)``
    like the original (no attention weights).

    Why bfloat16 for quantized projections: q, k and v from int8 GEMMs already carry quantization errors well above
    bfloat16's rounding (2^-9 of a value), and an int8 BERT-base's output agrees with the float32 model as well
    with bfloat16 products as with float32 ones (within the int8 error's spread), and as well as or better than
    onnxruntime's ``quantize_dynamic`` (``bench/attention_precision.py``, docs/performance/onnx.md), while the
    attention runs 1.3x faster. A float model keeps float32 products (bfloat16 would add an error it does not
    otherwise have)."""

    def __init__(self, inner: nn.Module, products: str = "auto") -> None:
        super().__init__()
        if products not in ATTENTION_PRODUCTS:
            raise ValueError(f"FusedSelfAttention: products must be one of {ATTENTION_PRODUCTS}, got {products!r}")
        self.inner = inner
        self.products = products

    def extra_repr(self) -> str:
        return f"products={self.products}"

    def products_now(self) -> str:
        """The products the next call computes in, as :func:`nnic.kernels.attention` takes them (``"auto"``
        resolved; ``"bfloat16"`` still computes float32 where :func:`nnic.kernels.bf16_products_run` is false)."""
        if self.products != "auto":
            return self.products
        return "bfloat16" if _quantized_projections(self.inner) else "float32"

    def _key_mask(self, mask: torch.Tensor | None, batch: int, seq: int) -> torch.Tensor | None | bool:
        """The ``[batch, seq]`` key mask of transformers' ``[batch, 1, seq|1, seq]`` mask, or ``False`` when it
        varies between query rows (a causal or 2-D mask: the kernel takes one mask row per sequence)."""
        if mask is None:
            return None
        if mask.dim() != 4 or mask.shape[0] != batch or mask.shape[1] != 1 or mask.shape[-1] != seq:
            return False
        rows = mask[:, 0]
        first = rows[:, :1]
        if rows.shape[1] != 1 and not bool((rows == first).all()):
            return False
        return first[:, 0]

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None, cache=None,
                **kwargs):
        inner = self.inner
        mask = False
        if not (self.training or cache is not None or kwargs.get("encoder_hidden_states") is not None
                or hidden_states.dim() != 3 or hidden_states.dtype != torch.float32):
            mask = self._key_mask(attention_mask, hidden_states.shape[0], hidden_states.shape[1])
        if mask is False:
            return inner(hidden_states, attention_mask=attention_mask, cache=cache, **kwargs)
        from nnic import kernels

        q, k, v = inner.query(hidden_states), inner.key(hidden_states), inner.value(hidden_states)
        out = kernels.attention(q, k, v, inner.num_attention_heads, inner.scaling, mask, products=self.products_now())
        return out.to(hidden_states.dtype), None


class SkipLayerNormOutput(nn.Module):
    """A BERT-style block ending (``inner``: ``dense``, ``dropout``, ``LayerNorm``) whose residual add and
    LayerNorm run as one :func:`nnic.kernels.skip_layer_norm`; with nnic's int8 ``dense`` on the CPU, the
    projection too (:func:`nnic.kernels.linear_skip_layer_norm`: one parallel region, the same bits)."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, hidden_states: torch.Tensor, input_tensor: torch.Tensor) -> torch.Tensor:
        inner = self.inner
        norm = inner.LayerNorm
        if self.training or not isinstance(norm, nn.LayerNorm) or len(norm.normalized_shape) != 1 \
                or norm.weight is None or norm.bias is None or norm.weight.dtype != torch.float32 \
                or input_tensor.dtype != torch.float32:
            return inner(hidden_states, input_tensor)
        from nnic import kernels

        y = self._in_one_region(hidden_states, input_tensor)
        if y is not None:
            return y
        h = inner.dense(hidden_states)
        if h.dtype != torch.float32:
            return norm(inner.dropout(h) + input_tensor)
        return kernels.skip_layer_norm(h, input_tensor, norm.weight, norm.bias, norm.eps)

    def _in_one_region(self, hidden_states: torch.Tensor, input_tensor: torch.Tensor) -> torch.Tensor | None:
        """The block ending as one :func:`nnic.kernels.linear_skip_layer_norm` call when ``dense`` is nnic's int8
        Linear without a fused activation and the inputs are plain float32 CPU tensors (the same bits as its
        forward then :func:`nnic.kernels.skip_layer_norm`); else ``None``."""
        from nnic import kernels
        from nnic.quantization.modules import Int8Linear

        dense, norm = self.inner.dense, self.inner.LayerNorm
        if type(dense) is not Int8Linear or dense.activation or type(hidden_states) is not torch.Tensor \
                or not hidden_states.is_cpu or hidden_states.dtype != torch.float32 or not input_tensor.is_cpu \
                or hidden_states.shape[:-1] != input_tensor.shape[:-1]:
            return None
        act, symmetric, act_scale, act_zero_point, path, _ = dense.kernel_args()
        return kernels.linear_skip_layer_norm(
            hidden_states, dense._packed_weight(), input_tensor, norm.weight, norm.bias, norm.eps,
            linear_bias=dense.bias, act=act, symmetric=symmetric, act_scale=act_scale, act_zero_point=act_zero_point,
            path=path)


class EmbedLayerNorm(nn.Module):
    """A BERT-style embedding layer (``inner``: word, position and token type tables, ``LayerNorm``, ``dropout``)
    whose three lookups, two adds and LayerNorm run as one :func:`nnic.kernels.embed_layer_norm` (the rows summed
    in the original's order). Falls back to ``inner`` in training, for ``inputs_embeds``, for tables or norms that
    are not float32 ``nn.Embedding`` / ``nn.LayerNorm`` with weight and bias, and off the CPU."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def __getattr__(self, name: str):
        """The wrapped module's attributes read through (``BertModel.get_input_embeddings`` reads
        ``embeddings.word_embeddings``)."""
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(super().__getattr__("inner"), name)

    def _ids(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None, position_ids: torch.Tensor | None,
             cache_length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The token type and position ids the original forward would use (its defaults), as ``[batch, seq]``."""
        inner = self.inner
        batch, seq = input_ids.shape
        if position_ids is None:
            position_ids = inner.position_ids[:, cache_length:seq + cache_length]
        if token_type_ids is None:
            if hasattr(inner, "token_type_ids"):
                buffered = inner.token_type_ids.expand(position_ids.shape[0], -1)
                token_type_ids = torch.gather(buffered, dim=1, index=position_ids).expand(batch, seq)
            else:
                token_type_ids = torch.zeros((batch, seq), dtype=torch.long, device=input_ids.device)
        return token_type_ids.expand(batch, seq), position_ids.expand(batch, seq)

    def forward(self, input_ids: torch.Tensor | None = None, token_type_ids: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None, inputs_embeds: torch.Tensor | None = None,
                cache_length: int = 0, **kwargs) -> torch.Tensor:
        inner = self.inner
        tables = (inner.word_embeddings, inner.token_type_embeddings, inner.position_embeddings)
        norm = inner.LayerNorm
        if self.training or kwargs or inputs_embeds is not None or input_ids is None or input_ids.dim() != 2 \
                or input_ids.device.type != "cpu" or not isinstance(norm, nn.LayerNorm) \
                or len(norm.normalized_shape) != 1 or norm.weight is None or norm.bias is None \
                or norm.weight.dtype != torch.float32 \
                or not all(type(t) is nn.Embedding and t.weight.dtype == torch.float32 for t in tables):
            return inner(input_ids=input_ids, token_type_ids=token_type_ids, position_ids=position_ids,
                         inputs_embeds=inputs_embeds, cache_length=cache_length, **kwargs)
        from nnic import kernels

        types, positions = self._ids(input_ids, token_type_ids, position_ids, cache_length)
        ids = (input_ids, types, positions)
        return kernels.embed_layer_norm([(t.weight, i) for t, i in zip(tables, ids)], norm.weight, norm.bias,
                                        norm.eps)


def _forward_classes() -> tuple[type, type, type, type]:
    from transformers.models.bert.modeling_bert import BertEmbeddings, BertOutput, BertSelfAttention, BertSelfOutput

    return BertSelfAttention, BertEmbeddings, BertSelfOutput, BertOutput


def fuse_encoder(model: nn.Module, attention_products: str = "auto") -> list[str]:
    """Wraps, in place, every BERT-style self-attention in :class:`FusedSelfAttention`, every BERT-style block
    ending (residual add + LayerNorm) in :class:`SkipLayerNormOutput` and every BERT-style embedding layer in
    :class:`EmbedLayerNorm`; returns the wrapped modules' names.

    The attention's two products (``q kᵀ``, ``p v``) run in ``attention_products``. The default, ``"auto"``, is
    bfloat16 (AVX512_BF16's ``vdpbf16ps``, float32 sums, :func:`nnic.kernels.attention`) in attentions whose
    query/key/value are nnic's int8/int4 layers, where the CPU has AVX512_BF16, and float32 elsewhere. On int8
    BERT-base models the output's agreement with the float32 model is the same with either at the default init
    (cosine 0.99979; onnxruntime's ``quantize_dynamic`` 0.99968) and 1-2 % more relative error with bfloat16 where
    the attention is peaked (larger weights: level with onnxruntime there); the attention runs 1.3x faster
    (``bench/attention_precision.py``, docs/performance/onnx.md). ``"float32"`` switches back (float32 products
    always: the unwrapped model's output up to float32 rounding for a float model, and the int8 model's without
    the bfloat16 rounding); ``"bfloat16"`` rounds in float models too.

    Apply it to the model you run, in eval mode, after ``quantization_speedup`` and
    :func:`nnic_transformers.fuse_projections` (either order works for the outputs; the attention reads a fused
    QKV output in place). The wrapped layout (``...self.inner.query``) is not what ``save_pretrained`` or nnic's
    manifest describe. Calling it twice wraps nothing new."""
    from nnic.selection import replace_module

    if attention_products not in ATTENTION_PRODUCTS:
        raise ValueError(f"fuse_encoder: attention_products must be one of {ATTENTION_PRODUCTS}, got "
                         f"{attention_products!r}")
    attention, embeddings, *outputs = _forward_classes()
    ours = (FusedSelfAttention, SkipLayerNormOutput, EmbedLayerNorm)
    wrapped: list[str] = []
    done = [f"{n}." for n, m in model.named_modules() if isinstance(m, ours)]
    for name, m in list(model.named_modules()):
        if not name or isinstance(m, ours) or name.startswith(tuple(done)):
            continue
        forward = type(m).forward
        if _same_code(forward, attention.forward) and not getattr(m, "is_decoder", False):
            new: nn.Module = FusedSelfAttention(m, attention_products)
        elif _same_code(forward, embeddings.forward):
            new = EmbedLayerNorm(m)
        elif any(_same_code(forward, cls.forward) for cls in outputs):
            new = SkipLayerNormOutput(m)
        else:
            continue
        new.train(m.training)
        replace_module(model, name, new)
        wrapped.append(name)
    return wrapped


__all__ = ["ATTENTION_PRODUCTS", "EmbedLayerNorm", "FusedSelfAttention", "SkipLayerNormOutput", "fuse_encoder"]
