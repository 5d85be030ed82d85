"""``FastDecoderLayer`` (swapped in by ``fast_decode`` on fused low-bit decoders): one-token steps with about half
the torch ops of transformers' layer, and float32 logits, greedy tokens and ``generate`` output equal bit for bit
to the fused model's own, for LLaMA, Qwen2 and Mistral, int4 and int8, batch 1 and 2; everything else (prefill,
unfused or float layers, hidden-state recording) behaves as before."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

import nnic

transformers = pytest.importorskip("transformers")
from test_fast_decode import FAMILIES, decode_logits, decoder  # noqa: E402

from nnic_transformers import fast_decode, fuse_projections  # noqa: E402
from nnic_transformers.decode_layer import FastDecoderLayer, fast_decoder_layer, why_not_fast  # noqa: E402


def quantized(family: str, bits: int, fuse: bool = True) -> nn.Module:
    model = decoder(family)
    model = nnic.quantization_speedup(model, {n: bits for n, m in model.named_modules() if isinstance(m, nn.Linear)})
    if fuse:
        fuse_projections(model)
    return model


@pytest.fixture
def torch_on_one_thread():
    """torch's own ops on one thread (nnic's kernels keep theirs): the reference model's torch ops then sum in the
    order the fused layer reproduces. With torch on two threads on the Zen 3 machine (torch 2.15), int8 LLaMA's
    batch-2 logits came out one float32 ulp (1.2e-7) from the fused layer's, deterministically, at either nnic thread
    count: a torch op of the reference changes its summation order with its thread count."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_decode_logits_tokens_and_generate_are_bit_identical(family, bits, torch_on_one_thread):
    ref = quantized(family, bits)
    fast = copy.deepcopy(ref)
    names = fast_decode(fast)
    assert names[:2] == ["model.layers.0", "model.layers.1"]
    layer_cls = type(ref.model.layers[0])
    assert all(isinstance(layer, (FastDecoderLayer, layer_cls)) for layer in fast.model.layers)
    for batch, seed in ((1, 5), (2, 6)):
        ids = torch.randint(0, 100, (batch, 11), generator=torch.Generator().manual_seed(seed))
        want, want_tokens = decode_logits(ref, ids, 7)
        got, got_tokens = decode_logits(fast, ids, 7)
        assert torch.equal(got, want)
        assert torch.equal(got_tokens, want_tokens)
    ids = torch.randint(0, 100, (1, 9), generator=torch.Generator().manual_seed(7))
    with torch.inference_mode():
        kw = {"max_new_tokens": 6, "do_sample": False, "pad_token_id": 0}
        assert torch.equal(fast.generate(ids, **kw), ref.generate(ids, **kw))


class _CountOps(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.n = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.n += 1
        return func(*args, **(kwargs or {}))


@torch.inference_mode()
def _ops_per_layer(model: nn.Module) -> float:
    """Torch ops of one decode step inside the decoder layers, per layer."""
    ids = torch.randint(0, 100, (1, 8), generator=torch.Generator().manual_seed(8))
    out = model(input_ids=ids, use_cache=True)
    nxt = out.logits[:, -1:].argmax(-1)
    counts, layers = [], model.model.layers
    handles = [layer.register_forward_pre_hook(lambda *_: counts.append(count.n)) for layer in layers]
    handles += [layer.register_forward_hook(lambda *_: counts.append(count.n)) for layer in layers]
    with _CountOps() as count:
        model(input_ids=nxt, cache=out.cache, use_cache=True)
    for h in handles:
        h.remove()
    return sum(b - a for a, b in zip(counts[::2], counts[1::2])) / len(layers)


def test_a_decode_step_runs_about_half_the_torch_ops():
    """The point of the layer (measured on this config: 70 -> 53 torch ops per layer, the bound leaves a margin;
    94 -> 53 before the quantized modules' forward became one native call, which took 24 ops off the reference)."""
    ref = quantized("llama", 4)
    fast = copy.deepcopy(ref)
    fast_decode(fast)
    per_layer_ref, per_layer_fast = _ops_per_layer(ref), _ops_per_layer(fast)
    assert per_layer_fast < 0.8 * per_layer_ref, (per_layer_fast, per_layer_ref)


class _ThreadsOf(TorchDispatchMode):
    """Records torch's intra-op thread count at every call of one op."""

    def __init__(self, op: str) -> None:
        super().__init__()
        self.op, self.seen = op, []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket.__name__ == self.op:
            self.seen.append(torch.get_num_threads())
        return func(*args, **(kwargs or {}))


def test_a_decode_step_runs_its_torch_ops_on_one_thread_and_restores_the_thread_count():
    """The small ops of a one-token step (attention over the cache, the cache's ``cat``, norms) are too small to
    split, and on torch's team each may wait for a descheduled second thread; the GEMMs keep their own threads."""
    fast = quantized("llama", 4)
    fast_decode(fast)
    ids = torch.randint(0, 100, (1, 8), generator=torch.Generator().manual_seed(12))
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with torch.inference_mode():
            out = fast(input_ids=ids, use_cache=True)
            with _ThreadsOf("scaled_dot_product_attention") as step:
                fast(input_ids=out.logits[:, -1:].argmax(-1), cache=out.cache, use_cache=True)
            assert torch.get_num_threads() == 2
            with _ThreadsOf("scaled_dot_product_attention") as prefill:
                fast(input_ids=ids, use_cache=True)
    finally:
        torch.set_num_threads(threads)
    assert step.seen == [1] * len(fast.model.layers)
    assert prefill.seen == [2] * len(fast.model.layers)  # prefill runs the original forward, on the team


def test_prefill_hidden_states_and_state_dict_are_unchanged():
    ref = quantized("llama", 4)
    fast = copy.deepcopy(ref)
    fast_decode(fast)
    assert fast.state_dict().keys() == ref.state_dict().keys()
    assert isinstance(fast.model.layers[0], type(ref.model.layers[0]))  # transformers records hidden states by class
    ids = torch.randint(0, 100, (1, 6), generator=torch.Generator().manual_seed(9))
    with torch.inference_mode():
        a = ref(ids, output_hidden_states=True, use_cache=True)
        b = fast(ids, output_hidden_states=True, use_cache=True)
        assert len(b.hidden_states) == len(a.hidden_states) == 3
        assert all(torch.equal(x, y) for x, y in zip(a.hidden_states, b.hidden_states))
        step_a = ref(a.logits[:, -1:].argmax(-1), cache=a.cache, use_cache=True, output_hidden_states=True)
        step_b = fast(b.logits[:, -1:].argmax(-1), cache=b.cache, use_cache=True, output_hidden_states=True)
        assert all(torch.equal(x, y) for x, y in zip(step_a.hidden_states, step_b.hidden_states))
    with torch.no_grad():  # not inference mode: the fast path's kept arrays work there too
        pa, pb = ref(ids, use_cache=True), fast(ids, use_cache=True)
        nxt = pa.logits[:, -1:].argmax(-1)
        assert torch.equal(fast(nxt, cache=pb.cache).logits, ref(nxt, cache=pa.cache).logits)
    # Grad mode: the original forward runs (the kernels are not differentiable), same values.
    cache_a, cache_b = ref(ids, use_cache=True).cache, fast(ids, use_cache=True).cache
    torch.testing.assert_close(fast(nxt, cache=cache_b).logits, ref(nxt, cache=cache_a).logits, rtol=0, atol=0)
    assert fast_decode(fast) == []  # idempotent
    twin = copy.deepcopy(fast)  # a copy of a swapped model runs on its own weights
    assert twin.model.layers[0].self_attn is not fast.model.layers[0].self_attn
    assert torch.equal(decode_logits(twin, ids, 3)[0], decode_logits(ref, ids, 3)[0])


def test_layers_that_do_not_qualify_keep_their_forward():
    float_model = decoder("llama")
    assert why_not_fast(float_model.model.layers[0]) == ("qkv_proj is not fused (run nnic_transformers."
                                                         "fuse_projections after quantization_speedup)")
    unfused = quantized("llama", 4, fuse=False)
    assert "qkv_proj is not fused" in why_not_fast(unfused.model.layers[0])
    assert all(not n.startswith("model.layers.") or n.endswith("layernorm") for n in fast_decode(unfused))
    assert "is not a LLaMA / Qwen2 / Mistral decoder layer" in why_not_fast(nn.Linear(2, 2))
    with pytest.raises(ValueError, match="fast_decoder_layer: qkv_proj is not fused"):
        fast_decoder_layer(float_model.model.layers[0])


def test_prefetch_links_each_gemm_to_the_next_two_and_keeps_outputs_bit_identical():
    """``fast_decode(model, prefetch=True)``: after each GEMM the next two GEMMs' packed weights (across layers, then
    the low-bit lm_head) are queued for the background walk; logits and tokens stay those of the model without it;
    a copy starts unlinked; ``prefetch=False`` queues nothing."""
    from nnic import kernels

    ref = quantized("llama", 4)
    fast = copy.deepcopy(ref)
    fast_decode(fast, prefetch=True)
    layers = fast.model.layers
    gemms = [g for layer in layers for g in layer.gemms()] + [fast.lm_head]
    for i, layer in enumerate(layers):
        link = layer.__dict__["_decode_link"]
        assert link.prefetch
        for step in range(4):
            at = 4 * i + step
            assert [id(m) for m in link.ahead[step]] == [id(m) for m in gemms[at + 1:at + 3]]
    assert layers[-1].__dict__["_decode_link"].ahead[3] == (fast.lm_head,)
    ids = torch.randint(0, 100, (1, 10), generator=torch.Generator().manual_seed(11))
    before = kernels.prefetch_stats()["jobs"]
    got, got_tokens = decode_logits(fast, ids, 5)
    queued = kernels.prefetch_stats()["jobs"] - before
    want, want_tokens = decode_logits(ref, ids, 5)
    assert torch.equal(got, want) and torch.equal(got_tokens, want_tokens)
    assert queued >= 4 * 4 * len(layers)  # four decode steps x four GEMMs per layer (prefill runs no fast path)
    assert copy.deepcopy(fast).model.layers[0].__dict__["_decode_link"].ahead == ((), (), (), ())
    fast_decode(fast)  # re-linked without prefetch
    assert not layers[0].__dict__["_decode_link"].prefetch
    before = kernels.prefetch_stats()["jobs"]
    assert torch.equal(decode_logits(fast, ids, 5)[0], want)
    assert kernels.prefetch_stats()["jobs"] == before
