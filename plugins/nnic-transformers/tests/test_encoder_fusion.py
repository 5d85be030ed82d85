"""``fuse_encoder``: BERT-style embeddings, self-attention and residual + LayerNorm block endings on nnic's fused
encoder kernels, with the unfused model's output (float32 rounding apart); anything the kernels do not compute (training,
decoders, masks that differ between query rows) runs the original code."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import nnic

transformers = pytest.importorskip("transformers")
from nnic_transformers import (  # noqa: E402
    EmbedLayerNorm,
    FusedEncoder,
    FusedEncoderLayer,
    FusedSelfAttention,
    SkipLayerNormOutput,
    fuse_encoder,
    fuse_mlp_activations,
    fuse_projections,
)

LAYER_BLOCKS = ("attention.self", "attention.output", "output")
#: The layers and the encoder ``fuse_encoder`` wraps whole (transformers 5's ``BertLayer``, which returns a tensor, and
#: ``BertEncoder``), after their blocks.
WHOLE_LAYERS = ["encoder.layer.0", "encoder.layer.1", "encoder"] if int(transformers.__version__.split(".")[0]) >= 5 \
    else []


def bert(model_cls=None, attn="sdpa", **kw) -> nn.Module:
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    cfg = BertConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
                     vocab_size=200, max_position_embeddings=64, **kw)
    cfg._attn_implementation = attn
    return (model_cls or BertModel)(cfg, add_pooling_layer=False).eval()


def inputs(batch: int = 3, seq: int = 24) -> dict:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 200, (batch, seq), generator=g)
    mask = torch.ones(batch, seq, dtype=torch.long)
    mask[1, seq // 2:] = 0  # a padded sequence
    return {"input_ids": ids, "attention_mask": mask}


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("padded", [False, True])
def test_float_bert_gives_the_same_output_within_float32_rounding(attn, padded):
    model = bert(attn=attn)
    fused = copy.deepcopy(model)
    names = fuse_encoder(fused)
    assert names == ["embeddings"] + [f"encoder.layer.{i}.{b}" for i in range(2) for b in LAYER_BLOCKS] + WHOLE_LAYERS
    assert isinstance(fused.embeddings, EmbedLayerNorm)
    assert isinstance(fused.encoder.layer[0].attention.self, FusedSelfAttention)
    assert isinstance(fused.encoder.layer[1].output, SkipLayerNormOutput)
    kw = inputs()
    if not padded:
        kw.pop("attention_mask")
    with torch.inference_mode():
        want, got = model(**kw).last_hidden_state, fused(**kw).last_hidden_state
    valid = kw.get("attention_mask", torch.ones(3, 24)).bool()  # padded positions' outputs are not used
    torch.testing.assert_close(got[valid], want[valid], atol=2e-5, rtol=1e-5)
    assert fuse_encoder(fused) == []  # already wrapped


def test_int8_bert_with_one_qkv_gemm_reads_it_in_place_with_the_same_output():
    q = nnic.quantization_speedup(copy.deepcopy(bert()), {
        n: 8 for n, m in bert().named_modules() if isinstance(m, nn.Linear)})
    fuse_mlp_activations(q)
    fuse_projections(q)
    fused = copy.deepcopy(q)
    assert len(fuse_encoder(fused, attention_products="float32")) == 7 + len(WHOLE_LAYERS)  # the switch back
    assert fused.encoder.layer[0].attention.self.products_now() == "float32"
    kw = inputs()
    with torch.inference_mode():
        want, got = q(**kw).last_hidden_state, fused(**kw).last_hidden_state
    valid = kw["attention_mask"].bool()
    # float32 rounding differences can move an activation across an int8 rounding boundary in the next layer:
    # a code step there (1/255 of a token's range) is the scale of the largest differences
    cos = torch.nn.functional.cosine_similarity(got[valid].flatten(), want[valid].flatten(), 0)
    assert cos > 0.99999
    assert (got[valid] - want[valid]).abs().max() < 0.05


def test_int8_block_endings_run_as_one_call_with_the_bits_of_the_linear_then_the_skip_layer_norm(monkeypatch):
    """With nnic's int8 ``dense``, each block ending is one ``linear_skip_layer_norm`` call (4 in 2 layers), and the
    model's output is bit for bit the one its ``dense`` forward followed by ``skip_layer_norm`` gives (the layers
    as their own modules: whole, each is one native call, tested below)."""
    from nnic import kernels

    q = nnic.quantization_speedup(copy.deepcopy(bert()), {
        n: 8 for n, m in bert().named_modules() if isinstance(m, nn.Linear)})
    fuse_mlp_activations(q)
    fuse_projections(q)
    fuse_encoder(q)
    q = unwrapped_layers(q)
    kw = inputs()
    calls = []
    one_call = kernels.linear_skip_layer_norm
    monkeypatch.setattr(kernels, "linear_skip_layer_norm", lambda *a, **k: calls.append(1) or one_call(*a, **k))
    with torch.inference_mode():
        got = q(**kw).last_hidden_state
        assert len(calls) == 4
        monkeypatch.setattr(SkipLayerNormOutput, "_in_one_region", lambda self, h, r: None)
        want = q(**kw).last_hidden_state
    assert len(calls) == 4
    assert torch.equal(got, want)


def int8_bert() -> nn.Module:
    model = bert()
    q = nnic.quantization_speedup(copy.deepcopy(model), {
        n: 8 for n, m in model.named_modules() if isinstance(m, nn.Linear)})
    fuse_projections(q)
    return q


def test_int8_bert_defaults_to_bf16_attention_products_within_its_own_quantization_error():
    """By default (``"auto"``) an attention on int8 projections computes its products in bfloat16 where the CPU
    has AVX512_BF16 (the bits of ``attention_products="bfloat16"``), float32 elsewhere; the output's error against
    the float model stays that of the float32 products."""
    model, q = bert(), int8_bert()
    default, f32, bf16 = copy.deepcopy(q), copy.deepcopy(q), copy.deepcopy(q)
    assert len(fuse_encoder(default)) == 7 + len(WHOLE_LAYERS)
    fuse_encoder(f32, attention_products="float32")
    assert len(fuse_encoder(bf16, attention_products="bfloat16")) == 7 + len(WHOLE_LAYERS)
    attention = default.encoder.layer[1].attention.self
    assert attention.products == "auto" and attention.products_now() == "bfloat16"
    assert "products=auto" in repr(attention)
    assert bf16.encoder.layer[1].attention.self.products == "bfloat16"
    kw = inputs()
    with torch.inference_mode():
        ref, a, b, d = (m(**kw).last_hidden_state.double() for m in (model, f32, bf16, default))
    assert torch.equal(d, b)
    valid = kw["attention_mask"].bool()

    def rel(x: torch.Tensor) -> float:  # the error's norm relative to the float model's output
        return float(x[valid].norm() / ref[valid].norm())

    # the int8 model's own error against the float one (3.666e-4 here) hardly grows: the bfloat16 products move the
    # output by 1.07e-4, mostly across that error (measured 3.666e-4 -> 3.672e-4)
    assert rel(b - ref) < 1.1 * rel(a - ref)
    cos = torch.nn.functional.cosine_similarity(b[valid].flatten(), ref[valid].flatten(), 0)
    assert cos > 1 - 2e-7  # measured 1 - 6.7e-8 with either product
    if nnic.kernels.bf16_products_run():
        assert 0 < rel(b - a) < 0.5 * rel(a - ref)
    else:  # float32 products where the CPU has no bfloat16 ones
        assert rel(b - a) == 0
    with pytest.raises(ValueError, match="attention_products must be one of"):
        fuse_encoder(copy.deepcopy(q), attention_products="float16")
    with pytest.raises(ValueError, match="products must be one of"):
        FusedSelfAttention(q.encoder.layer[0].attention.self, "float16")


def test_float_models_keep_float32_attention_products_by_default():
    """A float model's attention computes float32 products unless asked for bfloat16; quantizing its projections
    after wrapping switches the default to bfloat16 (decided at each call)."""
    model = bert()
    default, bf16 = copy.deepcopy(model), copy.deepcopy(model)
    fuse_encoder(default)
    fuse_encoder(bf16, attention_products="bfloat16")
    assert default.encoder.layer[0].attention.self.products_now() == "float32"
    kw = inputs()
    with torch.inference_mode():
        ref, d, b = (m(**kw).last_hidden_state.double() for m in (model, default, bf16))
    valid = kw["attention_mask"].bool()
    error = float((d - ref)[valid].norm() / ref[valid].norm())
    assert error < 1e-6  # float32 rounding (measured 9.3e-8)
    if nnic.kernels.bf16_products_run():  # bfloat16's own error, without int8's (measured 1.7e-5)
        assert 10 * error < float((b - ref)[valid].norm() / ref[valid].norm()) < 1e-4
    quantized = nnic.quantization_speedup(default, {
        n: 8 for n, m in default.named_modules() if isinstance(m, nn.Linear)})
    assert quantized.encoder.layer[0].attention.self.products_now() == "bfloat16"


@pytest.fixture
def no_avx512():
    """The kernels on a path without AVX512_BF16 (AVX2 where the CPU has it, else scalar) for one test."""
    isas = nnic.kernels.supported_isas()
    nnic.kernels.set_isa("avx2" if "avx2" in isas else "scalar")
    yield
    nnic.kernels.set_isa(None)


def test_the_default_computes_float32_products_where_bfloat16_ones_do_not_run(no_avx512):
    q = int8_bert()
    default, f32 = copy.deepcopy(q), copy.deepcopy(q)
    fuse_encoder(default)
    fuse_encoder(f32, attention_products="float32")
    assert not nnic.kernels.bf16_products_run()
    kw = inputs()
    with torch.inference_mode():
        assert torch.equal(default(**kw).last_hidden_state, f32(**kw).last_hidden_state)


def test_training_mode_runs_the_original_code():
    model = bert(hidden_dropout_prob=0.5, attention_probs_dropout_prob=0.5)
    fused = copy.deepcopy(model)
    fuse_encoder(fused)
    model.train()
    fused.train()
    kw = inputs()
    torch.manual_seed(5)
    want = model(**kw).last_hidden_state
    torch.manual_seed(5)
    got = fused(**kw).last_hidden_state
    torch.testing.assert_close(got, want)  # same dropout draws: the same code ran
    got.sum().backward()  # and it trains
    assert fused.encoder.layer[0].attention.self.inner.query.weight.grad is not None


def test_masks_that_differ_between_query_rows_run_the_original_attention():
    model = bert()
    fused = copy.deepcopy(model)
    fuse_encoder(fused)
    attention = fused.encoder.layer[0].attention.self
    h = torch.randn(2, 6, 64)
    causal = torch.full((6, 6), float("-inf")).triu(1).expand(2, 1, 6, 6)
    with torch.inference_mode():
        want = model.encoder.layer[0].attention.self(h, attention_mask=causal)[0]
        got, weights = attention(h, attention_mask=causal)
    torch.testing.assert_close(got, want)
    padding = torch.zeros(2, 1, 6, 6)
    padding[1, :, :, 4:] = torch.finfo(torch.float32).min
    with torch.inference_mode():
        want = model.encoder.layer[0].attention.self(h, attention_mask=padding)[0]
        got, weights = attention(h, attention_mask=padding)
    assert weights is None  # the fused kernel ran
    torch.testing.assert_close(got, want, atol=2e-5, rtol=1e-5)


def test_decoders_and_other_blocks_are_left_alone():
    from transformers import GPT2Config, GPT2Model

    gpt2 = GPT2Model(GPT2Config(n_embd=32, n_layer=1, n_head=2, vocab_size=50, n_positions=16)).eval()
    assert fuse_encoder(gpt2) == []
    decoder = bert(is_decoder=True)
    names = fuse_encoder(decoder)
    assert not any(n.endswith("attention.self") for n in names)  # causal self-attention keeps its code


def test_other_dtypes_run_the_original_code():
    model = bert().to(torch.bfloat16)
    fused = copy.deepcopy(model)
    fuse_encoder(fused)
    kw = inputs()
    with torch.inference_mode():
        torch.testing.assert_close(fused(**kw).last_hidden_state, model(**kw).last_hidden_state)


def test_embeddings_run_as_one_kernel_with_the_original_defaults_and_ids():
    model = bert(type_vocab_size=3)
    fused = copy.deepcopy(model)
    fuse_encoder(fused)
    emb, original = fused.embeddings, model.embeddings
    ids = inputs()["input_ids"]
    types = torch.randint(0, 3, ids.shape, generator=torch.Generator().manual_seed(2))
    positions = torch.arange(5, 29).expand(3, 24)
    with torch.inference_mode():
        for kw in ({}, {"token_type_ids": types}, {"position_ids": positions}, {"cache_length": 7}):
            want = original(input_ids=ids, **kw)
            # the sums are torch's; the LayerNorm differs by float32 rounding
            torch.testing.assert_close(emb(input_ids=ids, **kw), want, atol=2e-6, rtol=1e-6)
    assert emb.word_embeddings is emb.inner.word_embeddings
    assert fused.get_input_embeddings() is emb.inner.word_embeddings  # attributes read through


def test_embeddings_fall_back_to_the_original_code():
    model = bert()
    fused = copy.deepcopy(model)
    fuse_encoder(fused)
    ids = inputs()["input_ids"]
    embeds = torch.randn(3, 24, 64)
    with torch.inference_mode():  # inputs_embeds: nothing to look up, so the original code, bit for bit
        assert torch.equal(fused.embeddings(inputs_embeds=embeds), model.embeddings(inputs_embeds=embeds))
    model.train()
    fused.train()
    torch.manual_seed(3)
    want = model.embeddings(input_ids=ids)
    torch.manual_seed(3)
    assert torch.equal(fused.embeddings(input_ids=ids), want)  # training: same dropout draws, same code


def fused_int8_bert() -> nn.Module:
    """The int8 model as the benches run it: GELU in the MLP's GEMM, one QKV GEMM, ``fuse_encoder``."""
    q = int8_bert()
    fuse_mlp_activations(q)
    fuse_encoder(q)
    return q


def unwrapped_layers(model: nn.Module, layers: bool = True) -> nn.Module:
    """A copy of ``model`` whose :class:`FusedEncoder` (and, with ``layers``, :class:`FusedEncoderLayer`) wrappers
    are replaced by the modules they wrap."""
    copied = copy.deepcopy(model)
    if isinstance(copied.encoder, FusedEncoder):
        copied.encoder = copied.encoder.inner
    for i, layer in enumerate(copied.encoder.layer):
        if layers and isinstance(layer, FusedEncoderLayer):
            copied.encoder.layer[i] = layer.inner
    return copied


@pytest.mark.skipif(not WHOLE_LAYERS, reason="transformers before 5: BertLayer returns a tuple, not wrapped")
def test_int8_layers_call_their_fused_blocks_directly_with_the_same_bits(monkeypatch):
    """The encoder's layers run as one native call (``encoder_layers``); without the encoder's wrapper each layer is
    one native call (``encoder_layer``); without that, its blocks' forwards are called one after another. In every
    form there are no transformers module calls between the blocks (no ``apply_chunking_to_forward``), and the
    output is bit for bit that of the layers' own forward."""
    from transformers.models.bert import modeling_bert

    q = fused_int8_bert()
    assert isinstance(q.encoder, FusedEncoder)
    assert all(isinstance(layer, FusedEncoderLayer) for layer in q.encoder.layer)  # read through
    layer = q.encoder.layer[0]
    assert layer.attention is layer.inner.attention and layer.output is layer.inner.output
    per_layer, reference = unwrapped_layers(q, layers=False), unwrapped_layers(q)
    calls: list[str] = []
    original = modeling_bert.apply_chunking_to_forward
    monkeypatch.setattr(modeling_bert, "apply_chunking_to_forward",
                        lambda *a, **k: calls.append("module") or original(*a, **k))
    for name in ("encoder_layer", "encoder_layers"):
        def counted(*args, name=name, call=getattr(nnic.kernels, name)):  # counts the calls that returned
            y = call(*args)
            calls.append(name)
            return y

        monkeypatch.setattr(nnic.kernels, name, counted)
    for kw in (inputs(), {"input_ids": inputs()["input_ids"]}):  # a padding mask, and none
        with torch.inference_mode():
            got = q(**kw).last_hidden_state
            assert calls == ["encoder_layers"]
            calls.clear()
            assert torch.equal(per_layer(**kw).last_hidden_state, got)
            assert calls == ["encoder_layer"] * 2
            calls.clear()
            want = reference(**kw).last_hidden_state
            assert calls == ["module"] * 2  # the layers' own forwards ran
            calls.clear()
        assert torch.equal(got, want)
    # the blocks' forwards called one after another (the one call refused): the same bits again
    monkeypatch.setattr(FusedEncoderLayer, "_one_call_args", staticmethod(lambda *a: None))
    with torch.inference_mode():
        assert torch.equal(q(**kw).last_hidden_state, want)
    assert not calls
    assert fuse_encoder(q) == []  # already wrapped


@pytest.mark.skipif(not WHOLE_LAYERS, reason="transformers before 5: BertLayer returns a tuple, not wrapped")
def test_layers_with_hooks_or_in_training_run_their_own_forward():
    """A hook on a module the direct calls would skip sees its calls (that module was called), with the same
    output; training runs the original code, with the original's dropout draws."""
    q = fused_int8_bert()
    reference = unwrapped_layers(q)
    kw = inputs()
    seen = []
    dense = q.encoder.layer[1].intermediate.dense
    handle = dense.register_forward_hook(lambda m, args, out: seen.append(out.shape))
    with torch.inference_mode():
        assert torch.equal(q(**kw).last_hidden_state, reference(**kw).last_hidden_state)
    assert seen == [(3, 24, 128)]
    handle.remove()
    handle = q.encoder.layer[0].attention.self.inner.query.register_forward_pre_hook(lambda m, args: seen.append(0))
    with torch.inference_mode():
        assert torch.equal(q(**kw).last_hidden_state, reference(**kw).last_hidden_state)
    assert seen[1:] == [0]  # the query's part ran as a module
    handle.remove()

    model = bert(hidden_dropout_prob=0.5)
    fused = copy.deepcopy(model)
    fuse_encoder(fused)
    assert isinstance(fused.encoder.layer[0], FusedEncoderLayer)
    model.train()
    fused.train()
    torch.manual_seed(5)
    want = model(**kw).last_hidden_state
    torch.manual_seed(5)
    torch.testing.assert_close(fused(**kw).last_hidden_state, want)  # same draws: the same code ran


@pytest.mark.skipif(not WHOLE_LAYERS, reason="transformers before 5: BertLayer returns a tuple, not wrapped")
def test_float_layers_call_their_blocks_directly_with_the_same_bits():
    """Without int8 layers (a float model: the MLP's GELU a module of its own) the direct calls give the layers'
    own output too."""
    fused = bert()
    fuse_encoder(fused)
    kw = inputs()
    with torch.inference_mode():
        assert torch.equal(fused(**kw).last_hidden_state, unwrapped_layers(fused)(**kw).last_hidden_state)


@pytest.mark.skipif(not WHOLE_LAYERS, reason="transformers before 5: BertLayer returns a tuple, not wrapped")
def test_requested_hidden_states_are_each_layers_own():
    """transformers records each layer's output when asked (``output_hidden_states``): the wrapped encoder gives the
    same states, bit for bit, as its layers' own forwards."""
    q = fused_int8_bert()
    reference = unwrapped_layers(q)
    kw = inputs()
    with torch.inference_mode():
        got, want = q(**kw, output_hidden_states=True), reference(**kw, output_hidden_states=True)
    assert len(got.hidden_states) == len(want.hidden_states) == 3
    assert all(torch.equal(g, w) for g, w in zip(got.hidden_states, want.hidden_states))
