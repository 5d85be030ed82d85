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

import math

import torch
from torch import nn

from nnic_transformers.fusion import _same_code


#: What :func:`fuse_encoder` and :class:`FusedSelfAttention` take for the attention's two products: ``"auto"`` (the
#: default: bfloat16 when the attention's query/key/value projections are nnic's int8 or int4 layers, float32
#: otherwise), or one of ``nnic.kernels.encoder.PRODUCTS`` always.
ATTENTION_PRODUCTS = ("auto", "float32", "bfloat16")


def direct_calls(*modules: nn.Module) -> bool:
    """Whether calling ``modules`` runs nothing but their ``forward``: no forward or backward hook on any of them
    or on all modules, and no tracing or compiling (which record module calls). Then a fused block calls their
    ``forward`` directly, saving ``nn.Module.__call__``'s Python (see :class:`FusedEncoderLayer`)."""
    from torch.nn.modules import module as torch_module

    if torch_module._global_forward_hooks or torch_module._global_forward_pre_hooks \
            or torch_module._global_backward_hooks or torch_module._global_backward_pre_hooks \
            or torch._C._get_tracing_state() or torch.compiler.is_compiling():
        return False
    return not any(m._forward_hooks or m._forward_pre_hooks or m._backward_hooks or m._backward_pre_hooks
                   for m in modules)


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

    def _projections(self, hidden_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``inner``'s query, key and value of ``hidden_states``. When they are the three parts of one fused GEMM
        (:func:`nnic_transformers.fuse_projections`) and no hook watches the parts or the GEMM, that GEMM's
        ``forward`` runs once, directly, and its output is split as the parts would split it (the same views of
        the same bits); else the three module calls."""
        from nnic.quantization.shared_input import SharedInputPart

        inner = self.inner
        q, k, v = inner.query, inner.key, inner.value
        if type(q) is SharedInputPart and type(k) is SharedInputPart and type(v) is SharedInputPart:
            shared = q.shared
            if k.shared is shared and v.shared is shared and (q.index, k.index, v.index) == (0, 1, 2) \
                    and len(shared.splits) == 3 and direct_calls(q, k, v, shared, shared.fused):
                return tuple(torch.split(shared.fused.forward(hidden_states), shared.splits, dim=-1))
        return q(hidden_states), k(hidden_states), v(hidden_states)

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

        q, k, v = self._projections(hidden_states)
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

    def _one_region_norm(self) -> bool:
        """Whether this block ending runs as one :func:`nnic.kernels.linear_skip_layer_norm` call on float32 CPU
        tensors, as far as the module decides it (the inputs decide the rest): not training, ``dense`` nnic's int8
        Linear without a fused activation, a plain float32 CPU ``LayerNorm`` over the last dimension."""
        from nnic.quantization.modules import Int8Linear

        inner = self.inner
        norm, dense = inner.LayerNorm, inner.dense
        return not self.training and isinstance(norm, nn.LayerNorm) and len(norm.normalized_shape) == 1 \
            and norm.weight is not None and norm.bias is not None and norm.weight.dtype == torch.float32 \
            and norm.bias.dtype == torch.float32 and norm.weight.is_cpu and norm.bias.is_cpu \
            and type(dense) is Int8Linear and not dense.activation

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
        act, symmetric, act_scale, act_zero_point, path, _, reduce_range = dense.kernel_args()
        return kernels.linear_skip_layer_norm(
            hidden_states, dense._packed_weight(), input_tensor, norm.weight, norm.bias, norm.eps,
            linear_bias=dense.bias, act=act, symmetric=symmetric, act_scale=act_scale, act_zero_point=act_zero_point,
            path=path, reduce_range=reduce_range)


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


class _ReadThrough(nn.Module):
    """A wrapper module whose wrapped ``inner`` module's attributes read through, so code that walks the original
    structure keeps working (``BertModel.prune_heads`` reads ``layer.attention``, users read
    ``model.encoder.layer``)."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(super().__getattr__("inner"), name)


class FusedEncoderLayer(_ReadThrough):
    """A BERT-style encoder layer (``inner``: transformers 5's ``BertLayer`` code) whose fused blocks
    (:class:`FusedSelfAttention`, :class:`SkipLayerNormOutput`, the MLP's GEMM with its GELU) run without the
    module calls between them (``BertLayer`` → ``BertAttention`` → ..., transformers' ``apply_chunking_to_forward``,
    each part of the fused QKV GEMM): the same kernel calls on the same tensors, so the same bits.

    - When all four GEMMs are nnic's int8 layers (query, key and value fused) on plain float32 CPU input, the
      layer is one :func:`nnic.kernels.encoder_layer` call: the five kernels one after another in Rust.
    - Else the blocks' ``forward`` methods are called directly, one after another.
    - Else (training, a cache or cross-attention inputs, other keyword arguments, a chunked feed-forward, blocks
      that are not the fused wrappers, a hook on the layer or on a module it would skip: :func:`direct_calls`)
      ``inner`` runs.

    Why: the Python between the kernels runs right after a GEMM has pushed the interpreter's and torch's code and
    data out of the caches, which makes each call cost tens of microseconds: measured with ``perf``, 5-6 % of a
    batch-8 int8 BERT-base forward's one-thread time was outside nnic's kernels (docs/performance/onnx.md, round of
    2026-12-02), and at two threads that time is serial."""

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None,
                encoder_hidden_states: torch.Tensor | None = None, *args, **kwargs) -> torch.Tensor:
        inner = self.inner
        if self.training or encoder_hidden_states is not None or args \
                or any(v is not None for v in kwargs.values()) or not self._direct(inner):
            return inner(hidden_states, attention_mask, encoder_hidden_states, *args, **kwargs)
        attention, intermediate = inner.attention, inner.intermediate
        y = self._one_call(hidden_states, attention_mask, attention.self, attention.output, intermediate,
                           inner.output)
        if y is not None:
            return y
        # BertAttention.forward, then BertLayer.feed_forward_chunk (unchunked), as their forwards call them
        context, _ = attention.self.forward(hidden_states, encoder_hidden_states=None, attention_mask=attention_mask,
                                            cache=None)
        attention_output = attention.output.forward(context, hidden_states)
        dense, act = intermediate.dense, intermediate.intermediate_act_fn
        if type(act) is nn.Identity and direct_calls(intermediate, dense, act):  # the GELU is in dense's epilogue
            mlp = dense.forward(attention_output)
        else:
            mlp = intermediate(attention_output)
        return inner.output.forward(mlp, attention_output)

    @staticmethod
    def _one_call(hidden_states: torch.Tensor, attention_mask: torch.Tensor | None, attention: FusedSelfAttention,
                  ending: SkipLayerNormOutput, intermediate: nn.Module, output: SkipLayerNormOutput,
                  ) -> torch.Tensor | None:
        """The layer as one :func:`nnic.kernels.encoder_layer` call where :meth:`_one_call_args` allows it; else
        ``None``."""
        from nnic import kernels

        args = FusedEncoderLayer._one_call_args(hidden_states, attention_mask, attention, ending, intermediate, output)
        if args is None:
            return None
        try:
            return kernels.encoder_layer(hidden_states, *args)
        except (RuntimeError, TypeError, ValueError):  # the step-by-step calls name what is wrong
            return None

    @staticmethod
    def _one_call_args(hidden_states: torch.Tensor, attention_mask: torch.Tensor | None,
                       attention: FusedSelfAttention, ending: SkipLayerNormOutput, intermediate: nn.Module,
                       output: SkipLayerNormOutput) -> tuple | None:
        """:func:`nnic.kernels.encoder_layer`'s arguments after ``x`` for this layer, when every step would run the
        native call that it makes (its four GEMMs nnic's int8 layers on the CPU, the query, key and value one
        fused GEMM, the block endings in one region, the MLP's activation in its GEMM, a contiguous float32 input
        without autograd); else ``None``."""
        from nnic.quantization.modules import Int8Linear
        from nnic.quantization.shared_input import SharedInputPart

        if type(hidden_states) is not torch.Tensor or not hidden_states.is_cpu \
                or hidden_states.dtype != torch.float32 or hidden_states.dim() != 3 \
                or hidden_states.requires_grad or not hidden_states.is_contiguous() or attention.training:
            return None
        batch, seq, _ = hidden_states.shape
        mask = attention._key_mask(attention_mask, batch, seq)
        inner = attention.inner
        q, k, v = inner.query, inner.key, inner.value
        if mask is False or type(q) is not SharedInputPart or type(k) is not SharedInputPart \
                or type(v) is not SharedInputPart:
            return None
        shared = q.shared
        qkv, up, act = shared.fused, intermediate.dense, intermediate.intermediate_act_fn
        if not (k.shared is shared and v.shared is shared and (q.index, k.index, v.index) == (0, 1, 2)
                and len(shared.splits) == 3 and type(act) is nn.Identity
                and direct_calls(q, k, v, shared, qkv, intermediate, up, act)):
            return None
        gemms = (qkv, ending.inner.dense, up, output.inner.dense)
        if any(type(g) is not Int8Linear or (g.bias is not None and not g.bias.is_cpu) for g in gemms) \
                or qkv.activation or any(not e._one_region_norm() for e in (ending, output)):
            return None
        scale = float(inner.scaling)
        if not math.isfinite(scale):
            return None
        (qkv, out, up, down) = ((g._packed_weight(), g.bias, g.kernel_args()) for g in gemms)
        norm1, norm2 = ((n.weight, n.bias, n.eps) for n in (ending.inner.LayerNorm, output.inner.LayerNorm))
        return qkv, inner.num_attention_heads, scale, mask, attention.products_now(), out, norm1, up, down, norm2

    @staticmethod
    def _direct(inner: nn.Module) -> bool:
        """Whether ``inner``'s blocks are the fused wrappers and plain BERT code, so that calling their forwards in
        order computes ``inner``'s forward."""
        attention, intermediate, output = (inner._modules.get(n) for n in ("attention", "intermediate", "output"))
        if attention is None or intermediate is None or output is None or inner.chunk_size_feed_forward \
                or getattr(attention, "is_cross_attention", True):
            return False
        parts = attention._modules.get("self"), attention._modules.get("output")
        if type(parts[0]) is not FusedSelfAttention or type(parts[1]) is not SkipLayerNormOutput \
                or type(output) is not SkipLayerNormOutput:
            return False
        codes = _layer_classes()
        return _code_is(type(inner).forward, codes[0].forward) \
            and _code_is(type(inner).feed_forward_chunk, codes[0].feed_forward_chunk) \
            and _code_is(type(attention).forward, codes[1].forward) \
            and _code_is(type(intermediate).forward, codes[2].forward) \
            and direct_calls(inner, attention, *parts, output)


class FusedEncoder(_ReadThrough):
    """A BERT-style encoder (``inner``: transformers 5's ``BertEncoder`` code, its ``layer`` list) whose layers all
    run as one native call each (:class:`FusedEncoderLayer`) run as one :func:`nnic.kernels.encoder_layers` call,
    the same bits: the layers' arguments are gathered in one Python pass before the kernels start, instead of
    between them, where each layer's Python ran on caches its GEMMs had just emptied (~0.45 ms a layer of a batch-8
    BERT-base at one thread). Anything else (training, cross-attention or a cache, other keyword arguments, hooks
    on the encoder or a layer, a layer that would not be one call) runs ``inner``."""

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None,
                encoder_hidden_states: torch.Tensor | None = None,
                encoder_attention_mask: torch.Tensor | None = None, cache=None, use_cache: bool | None = None,
                **kwargs):
        y = None
        if not (self.training or encoder_hidden_states is not None or encoder_attention_mask is not None
                or cache is not None or any(v is not None for v in kwargs.values())):
            y = self._one_call(hidden_states, attention_mask)
        if y is None:
            return self.inner(hidden_states, attention_mask, encoder_hidden_states,
                              encoder_attention_mask=encoder_attention_mask, cache=cache, use_cache=use_cache,
                              **kwargs)
        from transformers.models.bert import modeling_bert

        return modeling_bert.BaseModelOutputWithPastAndCrossAttentions(last_hidden_state=y, cache=None)

    def _one_call(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor | None:
        from nnic import kernels

        inner = self.inner
        layers = inner._modules.get("layer")
        if not layers or not _code_is(type(inner).forward, _encoder_class().forward) or not direct_calls(inner):
            return None
        args = []
        for layer in layers:
            if type(layer) is not FusedEncoderLayer or layer.training or not direct_calls(layer) \
                    or not FusedEncoderLayer._direct(layer.inner):
                return None
            block = layer.inner
            one = FusedEncoderLayer._one_call_args(hidden_states, attention_mask, block.attention.self,
                                                   block.attention.output, block.intermediate, block.output)
            if one is None:
                return None
            args.append(one)
        try:
            return kernels.encoder_layers(hidden_states, args)
        except (RuntimeError, TypeError, ValueError):  # the layers one by one name what is wrong
            return None


#: :func:`_code_is`'s answers, per pair of functions (class lookups are the same function objects every call).
_SAME_CODE: dict[tuple, bool] = {}


def _code_is(f, reference) -> bool:
    """:func:`~nnic_transformers.fusion._same_code`, remembered per pair (it is asked per layer call)."""
    key = (f, reference)
    same = _SAME_CODE.get(key)
    if same is None:
        same = _SAME_CODE[key] = _same_code(f, reference)
    return same


def _layer_classes() -> tuple[type, type, type]:
    from transformers.models.bert.modeling_bert import BertAttention, BertIntermediate, BertLayer

    return BertLayer, BertAttention, BertIntermediate


def _encoder_class() -> type:
    from transformers.models.bert.modeling_bert import BertEncoder

    return BertEncoder


def _layers_return_tensors() -> bool:
    """Whether this transformers' ``BertLayer`` returns its hidden states as a tensor (version 5 on; earlier ones
    return a tuple, which :class:`FusedEncoderLayer` does not reproduce)."""
    import transformers

    return int(transformers.__version__.split(".")[0]) >= 5


def _forward_classes() -> tuple[type, type, type, type]:
    from transformers.models.bert.modeling_bert import BertEmbeddings, BertOutput, BertSelfAttention, BertSelfOutput

    return BertSelfAttention, BertEmbeddings, BertSelfOutput, BertOutput


def fuse_encoder(model: nn.Module, attention_products: str = "auto") -> list[str]:
    """Wraps, in place, every BERT-style self-attention in :class:`FusedSelfAttention`, every BERT-style block
    ending (residual add + LayerNorm) in :class:`SkipLayerNormOutput` and every BERT-style embedding layer in
    :class:`EmbedLayerNorm`, then (with transformers 5 or later) every ``BertLayer``-style layer whose
    self-attention it wrapped in :class:`FusedEncoderLayer` and every ``BertEncoder``-style stack of such layers in
    :class:`FusedEncoder`; returns the wrapped modules' names.

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
    ours = (FusedSelfAttention, SkipLayerNormOutput, EmbedLayerNorm, FusedEncoderLayer, FusedEncoder)
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
    if _layers_return_tensors():
        layer = _layer_classes()[0]
        for name, m in list(model.named_modules()):
            if name and not name.startswith(tuple(done)) and _same_code(type(m).forward, layer.forward) \
                    and type(getattr(getattr(m, "attention", None), "self", None)) is FusedSelfAttention:
                new = FusedEncoderLayer(m)
                new.train(m.training)
                replace_module(model, name, new)
                wrapped.append(name)
        encoder = _encoder_class()
        for name, m in list(model.named_modules()):
            layers = getattr(m, "layer", None)
            if name and not name.startswith(tuple(done)) and _same_code(type(m).forward, encoder.forward) \
                    and isinstance(layers, nn.ModuleList) and len(layers) \
                    and all(type(layer) is FusedEncoderLayer for layer in layers):
                new = FusedEncoder(m)
                new.train(m.training)
                replace_module(model, name, new)
                wrapped.append(name)
    return wrapped


__all__ = ["ATTENTION_PRODUCTS", "EmbedLayerNorm", "FusedEncoder", "FusedEncoderLayer", "FusedSelfAttention",
           "SkipLayerNormOutput", "direct_calls", "fuse_encoder"]
