"""A decode step of a LLaMA / Qwen2 / Mistral decoder layer with the fewest torch ops: the per-token work outside
the GEMVs.

At batch 1 a decode step of a compressed model is ~90 torch ops per layer (transformers' attention, rotary, norms
and glue, plus the views, output allocations and numpy hand-offs of the quantized layers' module calls) beside four
GEMVs; on a 110M model each GEMV's kernel takes a few tens of microseconds and each op 1.5-3 us plus its Python, so
that glue is a large part of the token (README, "Where a decode token goes"). :class:`FastDecoderLayer` computes
the same function for one-token steps with about half the ops:

- the fused q/k/v GEMM (``fuse_projections``' ``qkv_proj``) and the fused gate/up GEMM are called once, directly
  (their forward, not the parts' slice bookkeeping);
- rotary runs once on the query and key heads together (they are adjacent in the fused output), with
  transformers' own elementwise formula ``x cos + rotate_half(x) sin``, so every value is computed by the same
  float operations;
- the norms are ``F.rms_norm`` (as :class:`~nnic_transformers.decoding.FastRMSNorm`: float32 bit-identical);
- the four GEMMs read and write arrays kept per layer and batch size (``_StepIO``), called on the packed
  weights directly (no module call, no hooks, no fresh numpy view per call);
- torch's own ops of the step run on one thread (:data:`SMALL_OP_THREADS`; the GEMMs keep nnic's threads): at one
  token they are a few kilobytes each (the cache's ``cat``, attention over it, norms), too small to split, and on
  torch's OpenMP team each one waits at its barrier for the second thread, which on a shared machine may be
  descheduled for milliseconds (a 139 KB ``cat`` took 4 us on one thread, 6 us median but 8 ms at the 90th
  percentile on two, load 5). Same values: none of these ops splits a reduction across threads at this size.

While the small ops run, the other core is idle and so is DRAM: with ``fast_decode(model, prefetch=True)``, after
each GEMM the layer hands the next two GEMMs' packed weights (across layers: :func:`link_layers` chains them, and the last layer's successor is the
model's low-bit ``lm_head``) to ``nnic.kernels.prefetch_weights``, whose background thread walks them into the
cache until the next GEMM starts (which stops it). Only reads: outputs are unchanged.

The cache update and the attention are transformers' own calls (``cache.update``, the configured attention
function with the module's arguments), so the result is **bit-identical** in float32 to the layer's own forward
(tests: ``torch.equal`` on logits of KV-cached decode and greedy tokens, LLaMA, Qwen2 and Mistral, int4 and
int8). Anything else (prefill, other dtypes, grad mode, attention weights requested, unfused or float
projections) runs the original class's forward. Like ``fuse_projections``, a swapped model serves one thread at a
time (the kept arrays are per layer), and it is for the model you run: ``copy.deepcopy`` works, pickling the whole
module does not (its class is made at run time; state dicts are unchanged).


``fast_decode(model, exact=False)`` (opt-in) gives up bit-identity for speed (:meth:`FastDecoderLayer._kernel_step`):
the whole layer step is one call of nnic's decode kernels (``nnic.kernels.decode_layer``'s native call, the GIL
released once): RMSNorm, the q/k/v GEMM, rotary + key/value write + grouped-query attention of the one query over a
preallocated cache adopted from transformers' ``DynamicLayer`` (:class:`_KernelKV`: written in place, no ``cat``;
the layer's tensors become views of it), the output GEMM, the residual add with the second RMSNorm, the gate/up
GEMM, SiLU times up, the down GEMM and the last residual add. Nine Python-level calls per layer had cost more than
their microbenchmarks said: after a GEMM has streamed megabytes of weights, the interpreter's and torch's code and
data come back from DRAM, so each call between two GEMMs took tens of microseconds of CPU (~300 us of Python per
layer measured in a 1B model under load, against ~60 us hot). Equal up to float32 rounding; steps
it does not cover (a mask, a sliding window about to drop positions, other caches) run the exact step."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from nnic_transformers.layouts import loaded_class
from nnic_transformers.norms import rms_norm_classes

# (module, decoder layer class, attention class, MLP class) whose forwards this module reproduces.
_DECODERS = (("transformers.models.llama.modeling_llama", "LlamaDecoderLayer", "LlamaAttention", "LlamaMLP"),
             ("transformers.models.qwen2.modeling_qwen2", "Qwen2DecoderLayer", "Qwen2Attention", "Qwen2MLP"),
             ("transformers.models.mistral.modeling_mistral", "MistralDecoderLayer", "MistralAttention",
              "MistralMLP"))


def decoder_layer_classes() -> dict[type, tuple[type, type]]:
    """The transformers decoder layer classes imported so far -> (attention class, MLP class); never imports
    transformers."""
    found = {}
    for module, layer, attn, mlp in _DECODERS:
        classes = [loaded_class(module, name) for name in (layer, attn, mlp)]
        if all(c is not None for c in classes):
            found[classes[0]] = (classes[1], classes[2])
    return found


def why_not_fast(layer: nn.Module) -> str | None:
    """Why :class:`FastDecoderLayer` cannot take ``layer`` (``None`` when it can): the layer must be a LLaMA /
    Qwen2 / Mistral decoder layer whose q/k/v and gate/up projections ``fuse_projections`` fused into int4 / int8
    GEMMs, with ``o_proj`` and ``down_proj`` quantized too and SiLU as the MLP activation."""
    from nnic.quantization import Int4Linear, Int8Linear
    from nnic.quantization.shared_input import SharedInputLinear, SharedInputPart

    classes = decoder_layer_classes()
    if type(layer) not in classes:
        return f"{type(layer).__qualname__} is not a LLaMA / Qwen2 / Mistral decoder layer"
    attn_cls, mlp_cls = classes[type(layer)]
    attn, mlp = getattr(layer, "self_attn", None), getattr(layer, "mlp", None)
    if type(attn) is not attn_cls or type(mlp) is not mlp_cls:
        return "its attention or MLP is not the transformers class"
    for parent, fused, parts, outs in ((attn, "qkv_proj", ("q_proj", "k_proj", "v_proj"), ("o_proj",)),
                                       (mlp, "gate_up_proj", ("gate_proj", "up_proj"), ("down_proj",))):
        shared = getattr(parent, fused, None)
        if not isinstance(shared, SharedInputLinear):
            return f"{fused} is not fused (run nnic_transformers.fuse_projections after quantization_speedup)"
        got = [getattr(parent, n, None) for n in parts]
        if not all(isinstance(p, SharedInputPart) and p.shared is shared and p.index == i for i, p in enumerate(got)):
            return f"{', '.join(parts)} are not the parts of {fused}, in that order"
        for lin in (shared.fused, *(getattr(parent, n) for n in outs)):
            if not isinstance(lin, (Int4Linear, Int8Linear)):
                return f"{type(lin).__name__} in {fused} / {outs[0]}: expected Int4Linear or Int8Linear"
            if getattr(lin, "input_perm", None) is not None:
                return f"{fused} / {outs[0]} permute their input (act order)"
    if type(mlp.act_fn).__name__ != "SiLUActivation":
        return f"MLP activation {type(mlp.act_fn).__name__}: expected SiLU"
    for norm in (layer.input_layernorm, layer.post_attention_layernorm):
        if type(norm) not in rms_norm_classes() and type(norm).__name__ != "FastRMSNorm":
            return f"norm {type(norm).__name__}: expected a transformers RMSNorm"
    return None


class FastDecoderLayer(nn.Module):
    """Stands where a decoder layer was, sharing its submodules (same names, same state dict), and runs one-token
    steps with fewer ops (module docstring). ``type(self).reference`` is the replaced class, whose forward runs
    every other call. Built by :func:`fast_decoder_layer`, which subclasses it per decoder class so that
    ``isinstance(layer, LlamaDecoderLayer)`` still holds (transformers records hidden states by that class)."""

    reference: type

    def _decode_ready(self, hidden_states: torch.Tensor, cache, position_embeddings, kwargs: dict) -> bool:
        return (hidden_states.dim() == 3 and hidden_states.shape[1] == 1 and cache is not None
                and position_embeddings is not None and type(hidden_states) is torch.Tensor
                and hidden_states.dtype is torch.float32 and hidden_states.is_cpu and not torch.is_grad_enabled()
                and not self.training and not kwargs.get("output_attentions")
                and self.self_attn.config._attn_implementation == "sdpa" and self._float32_norms())

    def _float32_norms(self) -> bool:
        return self.input_layernorm.weight.dtype is torch.float32 and \
            self.post_attention_layernorm.weight.dtype is torch.float32

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None, cache=None, use_cache: bool | None = False,
                position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None, **kwargs) -> torch.Tensor:
        if "past_key_values" in kwargs and cache is None:  # transformers' deprecated spelling of ``cache``
            cache = kwargs.pop("past_key_values")
        if not self._decode_ready(hidden_states, cache, position_embeddings, kwargs):
            return self.reference.forward(self, hidden_states, attention_mask=attention_mask,
                                          position_ids=position_ids, cache=cache, use_cache=use_cache,
                                          position_embeddings=position_embeddings, **kwargs)
        threads = torch.get_num_threads()
        torch.set_num_threads(SMALL_OP_THREADS or threads)
        try:
            link = self.__dict__.get("_decode_link")
            if link is not None and not link.exact:
                out = self._kernel_step(hidden_states, attention_mask, cache, position_embeddings)
                if out is not None:
                    return out
            return self._decode_step(hidden_states, attention_mask, position_ids, cache, use_cache,
                                     position_embeddings, kwargs)
        finally:
            torch.set_num_threads(threads)

    def _decode_step(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None,
                     position_ids: torch.Tensor | None, cache, use_cache: bool | None,
                     position_embeddings: tuple[torch.Tensor, torch.Tensor], kwargs: dict) -> torch.Tensor:
        attn, mlp = self.self_attn, self.mlp
        b, d = hidden_states.shape[0], attn.head_dim
        io = self._io(b)
        io.qkv_in.copy_(_rms_norm(self.input_layernorm, hidden_states))
        qkv = io.gemm(attn.qkv_proj.fused, "qkv")  # [B, 1, (heads + 2 kv heads) * head_dim]
        self._prefetch_after(0)
        q_out, k_out = attn.qkv_proj.splits[0], attn.qkv_proj.splits[1]
        heads, kv_heads = q_out // d, k_out // d
        qk = qkv[..., :q_out + k_out].view(b, 1, heads + kv_heads, d).transpose(1, 2)
        # A copy: a cache may keep the tensor it is given, and ``qkv`` is overwritten by the next step.
        value = qkv[..., q_out + k_out:].view(b, 1, kv_heads, d).transpose(1, 2).clone()
        cos, sin = position_embeddings
        cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
        half = d // 2
        # transformers' apply_rotary_pos_emb, once for query and key heads: (x * cos) + (rotate_half(x) * sin).
        qk = (qk * cos) + (torch.cat((-qk[..., half:], qk[..., :half]), dim=-1) * sin)
        query, key = qk[:, :heads], qk[:, heads:]
        # The attention's own keyword arguments, as the layer and the attention forward pass them on.
        kw = {"position_ids": position_ids, "use_cache": use_cache, **kwargs}
        key, value = cache.update(key, value, attn.layer_idx, kwargs=kw)
        if hasattr(attn, "sliding_window"):  # Qwen2 / Mistral
            kw["sliding_window"] = attn.sliding_window
        out, _ = _attention(attn)(attn, query, key, value, attention_mask, dropout=0.0, scaling=attn.scaling, **kw)
        io.o_in.copy_(out.view(b, 1, -1))
        o = io.gemm(attn.o_proj, "o")
        self._prefetch_after(1)
        h = hidden_states + o
        io.gate_up_in.copy_(_rms_norm(self.post_attention_layernorm, h))
        gate_up = io.gemm(mlp.gate_up_proj.fused, "gate_up")
        self._prefetch_after(2)
        inner = mlp.gate_up_proj.splits[0]
        # In place in the kept GEMM output (read only here): no fresh tensor for silu(gate).
        torch.mul(F.silu(gate_up[..., :inner], inplace=True), gate_up[..., inner:], out=io.down_in)
        down = io.gemm(mlp.down_proj, "down")
        self._prefetch_after(3)
        return h + down

    def _kernel_step(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None, cache,
                     position_embeddings: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor | None:
        """The step of ``fast_decode(model, exact=False)``: the whole layer as one call of nnic's decode kernels
        (``decode_layer_step``: the norms, the four GEMMs, rotary + in-place key/value write + attention, the
        SiLU-gated product and both residual adds, with the GIL released once), the keys and values written in
        place into a preallocated cache (:class:`_KernelKV`). ``None`` (the caller then runs the exact step) where the step is
        not plain causal attention over a transformers ``DynamicCache`` layer: an attention mask (padding), a
        sliding window about to drop a position, an offloaded or other cache, an uninitialised layer."""
        attn, mlp = self.self_attn, self.mlp
        found = _KernelKV.of(cache, attn.layer_idx, attention_mask)
        if found is None or not hidden_states.is_contiguous():
            return None
        kv, cache_layer = found
        b, d = hidden_states.shape[0], attn.head_dim
        rotary = _rotary_rows(position_embeddings, b)
        if rotary is None:
            return None
        heads, kv_heads = attn.qkv_proj.splits[0] // d, attn.qkv_proj.splits[1] // d
        pos = kv.reserve(cache_layer, b, kv_heads, d)
        if pos is None:
            return None
        gemms = self.gemms()
        packed = [g._packed_weight() for g in gemms]
        link = self.__dict__["_decode_link"]
        ahead = link.ahead_packed(gemms, packed) if link.prefetch else None
        weights = self._norm_weights()
        out = torch.empty_like(hidden_states)
        _native().decode_layer_step(
            hidden_states.numpy(), out.numpy(), weights[0], self.input_layernorm.variance_epsilon, weights[1],
            self.post_attention_layernorm.variance_epsilon, packed,
            [None if g.bias is None else g.bias.numpy() for g in gemms],
            [g.kernel_args() or _INT4_SETTINGS for g in gemms], rotary[0], rotary[1], kv.k, kv.v, heads, pos,
            attn.scaling, ahead, link.budget)
        kv.publish(cache_layer, pos + 1)
        return out

    def _norm_weights(self) -> tuple:
        """The two norms' weights as numpy arrays (kept: a fresh view per call costs microseconds), made again
        when a norm's weight tensor is replaced."""
        w1, w2 = self.input_layernorm.weight, self.post_attention_layernorm.weight
        held = self.__dict__.get("_norm_arrays")
        if held is None or held[0] is not w1 or held[1] is not w2:
            held = self.__dict__["_norm_arrays"] = (w1, w2, w1.detach().contiguous().numpy(),
                                                    w2.detach().contiguous().numpy())
        return held[2], held[3]

    def gemms(self) -> tuple[nn.Module, nn.Module, nn.Module, nn.Module]:
        """The layer's four low-bit GEMMs in the order a decode step runs them."""
        attn, mlp = self.self_attn, self.mlp
        return attn.qkv_proj.fused, attn.o_proj, mlp.gate_up_proj.fused, mlp.down_proj

    def _prefetch_after(self, step: int) -> None:
        """Queues the packed weights of the two GEMMs after GEMM ``step`` (0-3) for the background walk."""
        link = self.__dict__.get("_decode_link")
        if link is not None and link.prefetch and link.ahead[step]:
            link.warm([m._packed_weight() for m in link.ahead[step]], link.budget)

    def _io(self, batch: int) -> _StepIO:
        held = self.__dict__.get("_step_io")
        if held is None:
            held = self.__dict__["_step_io"] = _Held()
        io = held.by_batch.get(batch)
        if io is None:
            attn, mlp = self.self_attn, self.mlp
            io = held.by_batch[batch] = _StepIO(batch, {
                "qkv": (attn.qkv_proj.fused.in_features, attn.qkv_proj.fused.out_features),
                "o": (attn.o_proj.in_features, attn.o_proj.out_features),
                "gate_up": (mlp.gate_up_proj.fused.in_features, mlp.gate_up_proj.fused.out_features),
                "down": (mlp.down_proj.in_features, mlp.down_proj.out_features)})
        return io


class _StepIO:
    """The inputs and outputs of a layer's four GEMMs for one batch size, allocated once: each is a numpy array
    and a torch tensor over the same memory. A numpy view made afresh from a torch tensor for every kernel call
    cost 8-17 us more per call than a kept one (measured: 22 us kernel, 31 / 39 us with a fresh input / output
    view); a decode step makes four such calls per layer. Outputs are read (or copied) before the next step
    overwrites them."""

    def __init__(self, batch: int, shapes: dict[str, tuple[int, int]]) -> None:
        from nnic.kernels import run_packed_linear

        self.run = run_packed_linear  # the one call of a packed weight's kernel, imported once per layer
        self.arrays: dict[str, tuple] = {}
        # Normal tensors even when first called under inference mode, so that later steps outside it (no_grad)
        # may write them.
        with torch.inference_mode(False):
            for name, (k, n) in shapes.items():
                x, y = np.zeros((batch, k), np.float32), np.zeros((batch, n), np.float32)
                setattr(self, f"{name}_in", torch.from_numpy(x).view(batch, 1, k))
                self.arrays[name] = (x, y, torch.from_numpy(y).view(batch, 1, n))

    def gemm(self, layer: nn.Module, name: str) -> torch.Tensor:
        """``layer``'s output for the input in ``<name>_in``, written into (and returned as) ``name``'s output."""
        x, y, out = self.arrays[name]
        bias = None if layer.bias is None else layer.bias.numpy()
        self.run(layer._packed_weight(), x, y, bias, *layer.kernel_args())
        return out


class _Held:
    """The per-batch :class:`_StepIO` of one layer; a copy of the layer (``copy.deepcopy``, pickling) starts
    without any, since a copied torch view would no longer share memory with its copied numpy array."""

    def __init__(self) -> None:
        self.by_batch: dict[int, _StepIO] = {}

    def __deepcopy__(self, memo: dict) -> _Held:
        return _Held()

    def __reduce__(self):
        return (_Held, ())


class _KernelKV:
    """The keys and values of one transformers ``DynamicLayer`` in preallocated ``[batch, kv_heads, capacity,
    head_dim]`` buffers, for ``fast_decode(model, exact=False)``: the decode kernel writes each step's key and value
    in place (``DynamicLayer.update`` copies the whole cache into a fresh tensor per step: ``torch.cat``), and the
    layer's ``keys`` / ``values`` become views of the first positions, so the cache's length, masks and any later
    step the exact path runs (``cat`` onto the view) see what they saw before.

    Held in the layer's ``__dict__``. A step adopts the layer's tensors (one copy into a fresh buffer with room for
    ``max(length, GROW)`` more positions) whenever they are not the views it published last: the first step after
    a prefill, after a step the exact path ran, after ``crop`` or a beam reorder (which replace the tensors). A
    copy of the cache (``copy.deepcopy``) starts without buffers (its copied views would not share memory with
    copied numpy arrays)."""

    GROW = 256  # positions added beside the current length when the buffers are (re)made: amortised O(1) growth
    VIEWS_AHEAD = 32  # the cache views publish() makes in one go, for this length and the next ones

    def __init__(self) -> None:
        self.k = self.v = None  # numpy buffers, written by the kernel
        self.kt = self.vt = None  # torch tensors over the same memory
        self.views: tuple = (None, None)  # what publish() last set as the layer's keys / values
        self.length = 0  # their length
        self.prepared: dict[int, tuple] = {}  # length -> views of the current buffers, made ahead by publish()

    @staticmethod
    def of(cache, layer_idx: int, attention_mask: torch.Tensor | None) -> tuple | None:
        """(the ``_KernelKV``, the cache layer) for layer ``layer_idx`` of ``cache``, or ``None`` where the kernel
        step does not apply: a mask (padding; the kernel attends every cached position, which is the causal mask
        of the newest token), a cache that is not a ``DynamicCache`` of ``DynamicLayer`` or
        ``DynamicSlidingWindowLayer`` (offloading, quantized or static caches), an uninitialised layer."""
        if attention_mask is not None:
            return None
        from transformers.cache_utils import DynamicCache, DynamicLayer, DynamicSlidingWindowLayer

        if not isinstance(cache, DynamicCache) or getattr(cache, "offloading", False):
            return None
        layers = getattr(cache, "layers", ())
        if layer_idx is None or layer_idx >= len(layers):
            return None
        layer = layers[layer_idx]
        if type(layer) not in (DynamicLayer, DynamicSlidingWindowLayer) or not layer.is_initialized or \
                not isinstance(layer.keys, torch.Tensor):
            return None
        kv = layer.__dict__.get("_nnic_kv")
        if kv is None:
            kv = layer.__dict__["_nnic_kv"] = _KernelKV()
        return kv, layer

    def reserve(self, layer, batch: int, kv_heads: int, head_dim: int) -> int | None:
        """The position this step writes (the layer's current length), after making room for it; ``None`` when
        the layer's tensors are not float32 ``[batch, kv_heads, length, head_dim]``, or when a sliding-window layer
        would drop a position this step (the kernel keeps them all: it runs while the window is not full)."""
        keys, values = layer.keys, layer.values
        if keys is self.views[0] and values is self.views[1]:  # our own views: shape and dtype known
            n, own = self.length, True
            if self.k.shape[0] != batch or self.k.shape[1] != kv_heads or self.k.shape[3] != head_dim:
                return None
        else:
            if keys.dim() != 4 or keys.dtype is not torch.float32 or not isinstance(values, torch.Tensor):
                return None
            n, own = keys.shape[2], False
            if tuple(keys.shape) != (batch, kv_heads, n, head_dim) or values.shape != keys.shape:
                return None
        if layer.is_sliding and (layer.record_past or layer.cumulative_length != n or n + 1 >= layer.sliding_window):
            return None
        if not own:
            self._remake(keys, values, n)
        elif n + 1 > self.k.shape[2]:
            self._remake(self.kt[:, :, :n], self.vt[:, :, :n], n)
        return n

    def _remake(self, keys: torch.Tensor, values: torch.Tensor, n: int) -> None:
        b, h, _, d = keys.shape
        cap = n + 1 + max(n, self.GROW)
        k, v = np.empty((b, h, cap, d), np.float32), np.empty((b, h, cap, d), np.float32)
        with torch.inference_mode(False):  # normal tensors: a later step outside inference mode may read them
            kt, vt = torch.from_numpy(k), torch.from_numpy(v)
        kt[:, :, :n].copy_(keys)
        vt[:, :, :n].copy_(values)
        self.k, self.v, self.kt, self.vt = k, v, kt, vt
        self.prepared = {}

    def publish(self, layer, length: int) -> None:
        """The layer's keys and values become the buffers' first ``length`` positions: views made
        :attr:`VIEWS_AHEAD` lengths at a time (a view made alone, between two GEMMs that evicted torch's code and
        data from the caches, took ~100 us of CPU in a 1B model; made in a row, a few us each)."""
        views = self.prepared.get(length)
        if views is None:
            last = min(length + self.VIEWS_AHEAD, self.k.shape[2] + 1)
            with torch.inference_mode(False):
                self.prepared = {n: (self.kt[:, :, :n], self.vt[:, :, :n]) for n in range(length, last)}
            views = self.prepared[length]
        self.views, self.length = views, length
        layer.keys, layer.values = views
        if layer.is_sliding:  # what DynamicSlidingWindowLayer.update counts (all positions kept: see reserve)
            layer.cumulative_length = length

    def __deepcopy__(self, memo: dict) -> _KernelKV:
        return _KernelKV()

    def __reduce__(self):
        return (_KernelKV, ())


class _RotaryRows:
    """The rotary ``cos`` / ``sin`` of the current step as ``[batch, head_dim]`` numpy arrays (one row repeated
    when transformers broadcasts one position over the batch), made once per step (every layer gets the same two
    tensors) instead of once per layer."""

    def __init__(self) -> None:
        self.held: tuple = (None, None, None)

    def __call__(self, position_embeddings: tuple[torch.Tensor, torch.Tensor], batch: int) -> tuple | None:
        cos, sin = position_embeddings
        held = self.held
        if held[0] is cos and held[1] is sin and held[2][0].shape[0] == batch:
            return held[2]
        if cos.dtype is not torch.float32 or sin.dtype is not torch.float32 or cos.dim() != 3 or \
                cos.shape[1] != 1 or sin.shape != cos.shape or cos.shape[0] not in (1, batch) or not cos.is_cpu:
            return None
        rows = tuple(t.reshape(t.shape[0], -1).expand(batch, -1).contiguous().numpy() for t in (cos, sin))
        self.held = (cos, sin, rows)
        return rows


_rotary_rows = _RotaryRows()


class _Link:
    """The GEMMs that follow each of a layer's four in a decode step (its own, then the next layer's, or the model's
    low-bit ``lm_head`` after the last layer), fixed when the layers are linked, and whether to prefetch them.
    Kept in the layer's ``__dict__`` (not a submodule: no state-dict entry, no recursion); a copy of the layer
    (``copy.deepcopy``, pickling) starts unlinked, since it would otherwise point into the original model.

    ``seen`` is shared by the linked layers of a model: each GEMM module's packed weight as its layer's last
    ``exact=False`` step used it, so that the step's prefetch list names the next layer's weights without asking
    each module again (``_packed_weight()`` checks a module's tensors: ~3 us, eight per layer). A weight repacked
    since then is walked once more in its old form (only reads: a wasted walk, never a wrong output)."""

    AHEAD = 2  # GEMMs queued after each GEMM: the next one, and the one after it for a gap the first fills

    def __init__(self, ahead: tuple[tuple[nn.Module, ...], ...] = ((), (), (), ()), prefetch: bool = False,
                 exact: bool = True, seen: dict | None = None) -> None:
        from nnic.kernels import prefetch_weights
        from nnic.kernels.runtime import last_level_cache_bytes

        self.ahead, self.prefetch, self.warm = ahead, prefetch, prefetch_weights
        self.exact = exact  # False: the step runs nnic's decode kernels (FastDecoderLayer._kernel_step)
        self.seen = {} if seen is None else seen
        llc = last_level_cache_bytes()
        # Bytes queued per GEMM: half the last-level cache, so that a walk never evicts its own first lines (nor
        # the KV cache and activations) before the GEMM reads them. With a 32 MiB L3 the next two GEMMs of an int8
        # 1B layer (gate/up 23 MB + down 11.5 MB) would not fit; with a 260 MB L3 the cap never bound.
        self.budget = None if llc is None else llc // 2

    def ahead_packed(self, gemms: tuple[nn.Module, ...], packed: list) -> list[list]:
        """The packed weights to walk after each of the layer's four GEMMs (``gemms``, whose current packed weights
        are ``packed``), from :attr:`seen` where a step recorded them."""
        seen = self.seen
        for g, p in zip(gemms, packed):
            seen[g] = p
        return [[seen[m] if m in seen else m._packed_weight() for m in mods] for mods in self.ahead]

    def __deepcopy__(self, memo: dict) -> _Link:
        return _Link()

    def __reduce__(self):
        return (_Link, ())


def link_layers(layers: list[FastDecoderLayer], lm_head: nn.Module | None, prefetch: bool,
                exact: bool = True) -> None:
    """Chains ``layers`` (in the order a decode step runs them) and ``lm_head`` (a low-bit output projection, or
    None) for :meth:`FastDecoderLayer._prefetch_after`; ``prefetch=False`` turns the warming off; ``exact=False``
    makes the layers run nnic's decode kernels (:meth:`FastDecoderLayer._kernel_step`). Link again after swapping
    any of these modules."""
    seq = [g for layer in layers for g in layer.gemms()] + ([lm_head] if lm_head is not None else [])
    seen: dict = {}
    for i, layer in enumerate(layers):
        ahead = tuple(tuple(seq[4 * i + step + 1:4 * i + step + 1 + _Link.AHEAD]) for step in range(4))
        layer.__dict__["_decode_link"] = _Link(ahead, prefetch, exact, seen)


def _rms_norm(norm: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """transformers' RMSNorm of float32 ``x`` with float32 weights, in one op (bit-identical: see FastRMSNorm)."""
    eps = norm.variance_epsilon
    return F.rms_norm(x, norm.weight.shape, norm.weight, eps)


def _native():
    from nnic.kernels.runtime import native

    return native


#: A packed int4 weight's activation settings (``Int4Linear.kernel_args()`` is empty: the defaults), spelled out
#: for ``decode_layer_step``, which takes each GEMM's seven.
_INT4_SETTINGS = ("per_token", True, None, None, None, "none", False)


def _attention(attn: nn.Module):
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    return ALL_ATTENTION_FUNCTIONS.get_interface(attn.config._attn_implementation, None)


#: torch's intra-op threads for the torch ops of a one-token step (module docstring); ``None`` leaves torch's setting.
SMALL_OP_THREADS: int | None = 1

_SUBCLASSES: dict[type, type] = {}


def fast_decoder_layer(layer: nn.Module) -> FastDecoderLayer:
    """A :class:`FastDecoderLayer` sharing ``layer``'s submodules and attributes (its class subclasses both
    :class:`FastDecoderLayer` and ``type(layer)``). Raises ``ValueError`` saying why when ``layer`` does not
    qualify (:func:`why_not_fast`)."""
    why = why_not_fast(layer)
    if why:
        raise ValueError(f"fast_decoder_layer: {why}")
    cls = type(layer)
    sub = _SUBCLASSES.get(cls)
    if sub is None:
        sub = type(f"Fast{cls.__name__}", (FastDecoderLayer, cls),
                   {"reference": cls, "forward": FastDecoderLayer.forward, "__module__": __name__})
        _SUBCLASSES[cls] = sub
    new = sub.__new__(sub)
    # Its own dicts (submodules, parameters, hooks...), holding the same objects: a module swapped in later on one
    # layer object does not change the other, so the original can be put back.
    new.__dict__.update({k: type(v)(v) if isinstance(v, dict) else v for k, v in layer.__dict__.items()})
    return new


__all__ = ["FastDecoderLayer", "decoder_layer_classes", "fast_decoder_layer", "link_layers", "why_not_fast"]
