"""``fast_decode(model, exact=False)``: one-token steps in nnic's decode kernels over a preallocated KV cache written
in place. Within float32 rounding of the exact path (logits) and the same greedy tokens and ``generate`` output,
for LLaMA, Qwen2 and Mistral, int4 and int8, batch 1 and 2; the transformers cache stays a valid cache (length,
later multi-token steps, crop, copies); steps the kernels do not cover run the exact path, bit for bit."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

transformers = pytest.importorskip("transformers")
from test_decode_layer import quantized  # noqa: E402
from test_fast_decode import FAMILIES, decode_logits  # noqa: E402

from nnic_transformers import fast_decode  # noqa: E402
from nnic_transformers.decode_layer import FastDecoderLayer, _KernelKV  # noqa: E402

#: Largest |logit difference| / max |logit| allowed against the exact path. Measured on these 2-layer configs: 1e-7
#: to 3e-7 (float32 rounding of other summation orders, rarely moving an int8 activation code); the bound leaves a
#: wide margin and is still far below any difference a wrong rotary, cache position, group or norm makes (O(1)).
#: Deep models differ more (fast_decode's docstring: a moved activation code is carried through the layers).
LOGIT_TOLERANCE = 1e-5


def pair(family: str, bits: int) -> tuple[nn.Module, nn.Module]:
    exact = quantized(family, bits)
    fast = copy.deepcopy(exact)
    fast_decode(exact)
    fast_decode(fast, exact=False)
    return exact, fast


def close(got: torch.Tensor, want: torch.Tensor) -> bool:
    return bool((got - want).abs().max() <= LOGIT_TOLERANCE * want.abs().max())


@torch.inference_mode()
def last_cache(model: nn.Module, ids: torch.Tensor, steps: int = 2):
    """The cache after a prefill of ``ids`` and ``steps`` greedy one-token steps."""
    out = model(input_ids=ids, use_cache=True)
    for _ in range(steps):
        out = model(input_ids=out.logits[:, -1:].argmax(-1), cache=out.cache, use_cache=True)
    return out.cache


def kernel_owned(cache) -> list[bool]:
    """Per cache layer: are its keys and values the views the kernel step published last?"""
    out = []
    for layer in cache.layers:
        kv = layer.__dict__.get("_nnic_kv")
        out.append(kv is not None and layer.keys is kv.views[0] and layer.values is kv.views[1])
    return out


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_logits_within_rounding_and_the_same_greedy_tokens(family, bits):
    exact, fast = pair(family, bits)
    for batch, seed in ((1, 5), (2, 6)):
        ids = torch.randint(0, 100, (batch, 11), generator=torch.Generator().manual_seed(seed))
        want, want_tokens = decode_logits(exact, ids, 7)
        got, got_tokens = decode_logits(fast, ids, 7)
        assert close(got, want)
        assert torch.equal(got_tokens, want_tokens)
        assert all(kernel_owned(last_cache(fast, ids)))  # the kernels ran the steps, not the exact path
    ids = torch.randint(0, 100, (1, 9), generator=torch.Generator().manual_seed(7))
    with torch.inference_mode():
        kw = {"max_new_tokens": 6, "do_sample": False, "pad_token_id": 0}
        assert torch.equal(fast.generate(ids, **kw), exact.generate(ids, **kw))


def test_the_default_stays_exact_and_a_second_call_switches():
    model = quantized("llama", 4)
    fast_decode(model)
    assert all(layer.__dict__["_decode_link"].exact for layer in model.model.layers)
    fast_decode(model, exact=False)
    assert not any(layer.__dict__["_decode_link"].exact for layer in model.model.layers)


@torch.inference_mode()
def test_the_cache_is_written_in_place_and_stays_a_transformers_cache():
    """Kernel steps write into the layer's buffers (the published views), the length counts every step, and a
    multi-token step afterwards (the exact path: ``cat`` onto the view) then more kernel steps (the cache adopted
    again) give what the exact path gives."""
    exact, fast = pair("llama", 4)
    ids = torch.randint(0, 100, (1, 6), generator=torch.Generator().manual_seed(1))
    more = torch.randint(0, 100, (1, 3), generator=torch.Generator().manual_seed(2))
    outs = {}
    for name, model in (("exact", exact), ("fast", fast)):
        out = model(input_ids=ids, use_cache=True)
        logits = []
        for step in range(3):
            nxt = out.logits[:, -1:].argmax(-1)
            out = model(input_ids=nxt, cache=out.cache, use_cache=True)
            logits.append(out.logits[:, -1])
            if name == "fast":
                assert all(kernel_owned(out.cache))
                assert out.cache.get_seq_length() == 6 + step + 1
        out = model(input_ids=more, cache=out.cache, use_cache=True)  # three tokens at once
        logits.append(out.logits[:, -1])
        assert out.cache.get_seq_length() == 12
        if name == "fast":
            assert not any(kernel_owned(out.cache))  # the exact path's cat made new tensors
        for _ in range(2):
            out = model(input_ids=out.logits[:, -1:].argmax(-1), cache=out.cache, use_cache=True)
            logits.append(out.logits[:, -1])
        if name == "fast":
            assert all(kernel_owned(out.cache))
        outs[name] = (torch.stack(logits), out.cache)
    assert close(outs["fast"][0], outs["exact"][0])
    (fk, fv), (ek, ev) = ((c.layers[0].keys, c.layers[0].values) for c in (outs["fast"][1], outs["exact"][1]))
    assert fk.shape == ek.shape == (1, 2, 14, 16)
    assert torch.allclose(fk, ek, atol=1e-5) and torch.allclose(fv, ev, atol=1e-5)


@torch.inference_mode()
@pytest.mark.parametrize("views_ahead", [1, 2, 32])
def test_buffers_grow_and_copies_of_the_cache_are_independent(monkeypatch, views_ahead):
    monkeypatch.setattr(_KernelKV, "GROW", 1)  # a remake every few steps
    monkeypatch.setattr(_KernelKV, "VIEWS_AHEAD", views_ahead)  # views made one, two or all lengths at a time
    exact, fast = pair("qwen2", 8)
    ids = torch.randint(0, 100, (2, 3), generator=torch.Generator().manual_seed(3))
    want, want_tokens = decode_logits(exact, ids, 12)
    got, got_tokens = decode_logits(fast, ids, 12)
    assert close(got, want) and torch.equal(got_tokens, want_tokens)
    cache = last_cache(fast, ids, 12)
    for layer in cache.layers:  # the published views are the buffers' first `length` positions, nothing stale
        kv = layer.__dict__["_nnic_kv"]
        assert layer.keys.shape[2] == kv.length == cache.get_seq_length() == 3 + 12
        assert layer.keys.data_ptr() == kv.kt.data_ptr() and layer.values.data_ptr() == kv.vt.data_ptr()
    # a deep copy of a cache mid-decode continues like the original (the copy adopts its own buffers)
    out = fast(input_ids=ids, use_cache=True)
    out = fast(input_ids=out.logits[:, -1:].argmax(-1), cache=out.cache, use_cache=True)
    nxt = out.logits[:, -1:].argmax(-1)
    twin = copy.deepcopy(out.cache)
    a = fast(input_ids=nxt, cache=out.cache, use_cache=True).logits
    b = fast(input_ids=nxt, cache=twin, use_cache=True).logits
    assert torch.equal(a, b)


@torch.inference_mode()
def test_crop_then_decode_matches_the_exact_path():
    exact, fast = pair("llama", 8)
    ids = torch.randint(0, 100, (1, 7), generator=torch.Generator().manual_seed(4))
    res = {}
    for name, model in (("exact", exact), ("fast", fast)):
        out = model(input_ids=ids, use_cache=True)
        for _ in range(4):
            out = model(input_ids=out.logits[:, -1:].argmax(-1), cache=out.cache, use_cache=True)
        out.cache.crop(-2)
        nxt = torch.tensor([[5]])
        logits = []
        for _ in range(3):
            out = model(input_ids=nxt, cache=out.cache, use_cache=True)
            logits.append(out.logits[:, -1])
            nxt = out.logits[:, -1:].argmax(-1)
        res[name] = torch.stack(logits)
    assert close(res["fast"], res["exact"])


def test_padded_batches_and_full_sliding_windows_run_the_exact_path_bit_for_bit():
    """An attention mask (left padding) and a sliding window that drops positions are the exact path's steps."""
    exact, fast = pair("mistral", 4)
    ids = torch.randint(1, 100, (2, 9), generator=torch.Generator().manual_seed(8))
    mask = torch.ones_like(ids)
    mask[1, :3] = 0
    with torch.inference_mode():
        kw = {"max_new_tokens": 5, "do_sample": False, "pad_token_id": 0, "attention_mask": mask,
              "output_logits": True, "return_dict_in_generate": True}
        got, want = fast.generate(ids, **kw), exact.generate(ids, **kw)
    assert torch.equal(got.sequences, want.sequences)
    assert all(torch.equal(a, b) for a, b in zip(got.logits, want.logits))
    for model in (exact, fast):
        model.config.sliding_window = 6  # the layers read it from the config when the cache is made
    ids = torch.randint(0, 100, (1, 3), generator=torch.Generator().manual_seed(9))
    want, want_tokens = decode_logits(exact, ids, 8)
    got, got_tokens = decode_logits(fast, ids, 8)
    assert close(got, want) and torch.equal(got_tokens, want_tokens)
    with torch.inference_mode():  # kernel steps while the window holds every position, the exact path after
        out = fast(input_ids=ids, use_cache=True)
        owned = []
        for _ in range(5):
            out = fast(input_ids=out.logits[:, -1:].argmax(-1), cache=out.cache, use_cache=True)
            owned.append(all(kernel_owned(out.cache)))
    assert owned == [True, True, False, False, False]


def test_every_layer_stays_a_fast_layer_with_the_same_state_dict():
    exact, fast = pair("llama", 4)
    assert all(isinstance(layer, FastDecoderLayer) for layer in fast.model.layers)
    assert fast.state_dict().keys() == exact.state_dict().keys()


def test_prefetch_in_the_one_call_step_queues_the_next_weights_and_changes_no_bit():
    """``fast_decode(model, exact=False, prefetch=True)``: the one native call per layer queues the next two GEMMs'
    packed weights after each of its four (the next layer's as its last step used them, then the lm_head); the
    logits are those of the same model without prefetch, bit for bit, also after a weight is repacked."""
    from nnic import kernels

    plain = quantized("llama", 4)
    warm = copy.deepcopy(plain)
    fast_decode(plain, exact=False)
    fast_decode(warm, exact=False, prefetch=True)
    ids = torch.randint(0, 100, (1, 10), generator=torch.Generator().manual_seed(12))
    before = kernels.prefetch_stats()["jobs"]
    got, got_tokens = decode_logits(warm, ids, 5)
    queued = kernels.prefetch_stats()["jobs"] - before
    want, want_tokens = decode_logits(plain, ids, 5)
    assert torch.equal(got, want) and torch.equal(got_tokens, want_tokens)
    layers = warm.model.layers
    assert queued >= 4 * 4 * len(layers)  # four decode steps x four GEMMs per layer
    seen = layers[0].__dict__["_decode_link"].seen
    assert all(seen[g] is g._packed_weight() for layer in layers for g in layer.gemms())
    with torch.no_grad():  # a new packed weight for layer 1's q/k/v in both models: a stale prefetch changes nothing
        for model in (plain, warm):
            fused = model.model.layers[1].self_attn.qkv_proj.fused  # 8-bit scales: codes times these steps
            (fused.weight_scales if fused.weight_scale_step is None else fused.weight_scale_step).mul_(0.5)
    got, _ = decode_logits(warm, ids, 3)
    assert torch.equal(got, decode_logits(plain, ids, 3)[0])
