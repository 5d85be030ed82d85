"""Held-out perplexity of a small GPT-2 trained on Python's own sources: the orderings the one-shot algorithms
promise (SparseGPT and Wanda beat magnitude pruning, GPTQ and AWQ beat round-to-nearest, SmoothQuant beats
plain W8A8 on a model with outlier activation channels).

The model trains for 400 steps in one thread (so it is the same model whatever the machine's thread count).
Margins measured on models trained from seeds 0 and 1, at 1 and 2 threads for the algorithms: see each test.
"""

from __future__ import annotations

import copy

import pytest
import torch

import nnic
from nnic.llm import text

pytest.importorskip("transformers")
SEQ = 32


@pytest.fixture(scope="module")
def lm():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model = text.tiny_gpt(n_embd=96, n_layer=2, n_head=4, n_positions=SEQ, n_inner=384, seed=0)
        text.train_tiny_gpt(model, text.python_text("train", 1_000_000), steps=400, batch_size=32, seq_len=SEQ,
                            lr=6e-3, seed=0)
    finally:
        torch.set_num_threads(threads)
    heldout = text.evaluation_tokens(text.python_text("heldout", 200_000), SEQ, 256)
    calibration = list(text.random_windows(text.python_text("train", 1_000_000), 64, SEQ, seed=123).split(16))
    return model, heldout, calibration


def compressed_copy(lm, kind: str, name: str, config_list: list[dict], **kw) -> torch.nn.Module:
    model, _, calibration = lm
    model = copy.deepcopy(model)
    if name not in ("level", "nm", "rtn", "ptq"):
        kw = {"calibration_data": calibration, "progress": False, **kw}
    (nnic.pruner if kind == "pruner" else nnic.quantizer)(name, model, config_list, **kw).compress()
    return model


def ppl_after(lm, kind: str, name: str, config_list: list[dict], **kw) -> float:
    return text.perplexity(compressed_copy(lm, kind, name, config_list, **kw), lm[1])


def test_the_model_learned_something(lm):
    model, heldout, _ = lm
    assert text.perplexity(model, heldout) < 16  # a uniform guess over bytes is 256; measured 13.5


@pytest.mark.parametrize("pattern, baseline", [({"sparsity": 0.5}, "level"), ({"n": 2, "m": 4}, "nm")])
def test_sparsegpt_beats_magnitude_at_the_same_sparsity(lm, pattern, baseline):
    cfg = [{**pattern, "op_types": ["Conv1D"]}]
    dense = text.perplexity(lm[0], lm[1])
    magnitude = ppl_after(lm, "pruner", baseline, cfg)
    # measured increases over dense: 50 %: magnitude 0.21 / 0.22 (Intel, seeds 0 / 1), 0.07 / 0.23 / 0.44 (AMD
    # Zen 4, seeds 0-2), sparsegpt 0.06 / -0.01 and 0.02 / 0.04 / 0.08; 2:4: magnitude 0.14 / 1.0 and
    # 0.26 / 0.49 / 1.78, sparsegpt -0.02 / 0.09 and 0.07 / 0.11 / 0.08
    assert ppl_after(lm, "pruner", "sparsegpt", cfg) - dense < 0.6 * (magnitude - dense)


def test_wanda_beats_magnitude_at_half_the_weights(lm):
    # measured increases over dense: magnitude 0.21 / 0.22 (Intel, seeds 0 / 1), 0.07 / 0.23 / 0.44 (AMD Zen 4,
    # seeds 0-2); wanda 0.14 / 0.19 and 0.01 / 0.04 / 0.25
    cfg = [{"sparsity": 0.5, "op_types": ["Conv1D"]}]
    assert ppl_after(lm, "pruner", "wanda", cfg) < ppl_after(lm, "pruner", "level", cfg)


def test_wanda_keeps_layer_outputs_closer_than_magnitude_at_2_4(lm):
    """At 2:4 this small model's perplexity does not order Wanda and magnitude pruning: the order flips with the
    seed and the machine (increases over dense, magnitude vs wanda: Intel seed 0 0.14 vs 0.12, AMD Zen 4 seed 0
    0.26 vs 0.41, seed 2 1.78 vs 0.68). What Wanda promises is smaller layer outputs' error on the data it saw,
    and that holds: each pruned layer's output error on held-out text (dense inputs), relative to its output,
    averaged over the layers, is 0.025-0.030 for Wanda against 0.051-0.053 for magnitude (AMD, seeds 0-2)."""
    model, heldout, _ = lm
    cfg = [{"n": 2, "m": 4, "op_types": ["Conv1D"]}]
    errors = {name: mean_layer_output_error(model, compressed_copy(lm, "pruner", name, cfg), heldout[:64])
              for name in ("nm", "wanda")}
    assert errors["wanda"] < 0.75 * errors["nm"], errors



def mean_layer_output_error(dense: torch.nn.Module, pruned: torch.nn.Module, tokens: torch.Tensor) -> float:
    """Mean over the Conv1D layers of ||pruned(x) - dense(x)||^2 / ||dense(x) - bias||^2, x the dense model's
    input to that layer on ``tokens``."""
    from transformers.pytorch_utils import Conv1D

    layers = {n: m for n, m in dense.named_modules() if isinstance(m, Conv1D)}
    inputs: dict[str, torch.Tensor] = {}
    hooks = [m.register_forward_hook(lambda m, i, o, n=n: inputs.__setitem__(n, i[0].detach()))
             for n, m in layers.items()]
    try:
        with torch.no_grad():
            dense(tokens)
    finally:
        for h in hooks:
            h.remove()
    pruned_layers = dict(pruned.named_modules())
    with torch.no_grad():
        errors = [float(((pruned_layers[n](x) - layers[n](x)) ** 2).sum()
                        / ((layers[n](x) - layers[n].bias) ** 2).sum()) for n, x in inputs.items()]
    return sum(errors) / len(errors)


@pytest.mark.parametrize("bits, group", [(3, 0), (3, 32)])
def test_gptq_and_awq_beat_round_to_nearest_at_the_same_group_size(lm, bits, group):
    # This small model shrugs off 4-bit weights: RTN moves its perplexity by -0.007 (per row) to +0.03, within
    # the spread between seeds, so 4 bits are asserted on layer outputs (tests/llm/test_obs.py), not here.
    # Measured increases over dense (seed 0): 3 bits per row rtn +0.046, gptq +0.011, awq +0.019; 3 bits in
    # groups of 32: rtn +0.085, gptq +0.004, awq -0.004.
    # On a Zen 3 machine (AVX2, torch 2.15) the same seed trains another model: 3 bits per row rtn +0.090, gptq
    # -0.011, awq +0.083 (perplexity does not order AWQ and RTN there); in groups of 32 rtn +0.168, gptq +0.000,
    # awq +0.020. What AWQ promises is smaller layer outputs' error, and that holds on both machines' models:
    # mean relative error 0.0040 against RTN's 0.0074 per row, 0.0030 against 0.0048 in groups (Zen 3, seed 0).
    cfg = [{"quant_types": ["weight"], "quant_bits": bits, "group_size": group,
            "quant_scheme": "per_channel_symmetric", "op_types": ["Conv1D"]}]
    model, heldout, _ = lm
    dense = text.perplexity(model, heldout)
    rtn = compressed_copy(lm, "quantizer", "rtn", cfg)
    awq = compressed_copy(lm, "quantizer", "awq", cfg)
    assert ppl_after(lm, "quantizer", "gptq", cfg) - dense < 0.7 * (text.perplexity(rtn, heldout) - dense)
    errors = {name: mean_layer_output_error(model, m, heldout[:64]) for name, m in (("rtn", rtn), ("awq", awq))}
    assert errors["awq"] < 0.8 * errors["rtn"], errors
    if group:
        assert text.perplexity(awq, heldout) - dense < 0.8 * (text.perplexity(rtn, heldout) - dense)


def with_outlier_channels(model: torch.nn.Module, factor: float = 40.0) -> torch.nn.Module:
    """The same function with a few huge activation channels after every LayerNorm, as large LLMs have:
    the norm's weight and bias scaled up on those channels, the next layer's input rows scaled down."""
    model = copy.deepcopy(model)
    channels = torch.tensor([3, 17, 40, 77])
    with torch.no_grad():
        for block in model.transformer.h:
            for norm, layer in ((block.ln_1, block.attn.c_attn), (block.ln_2, block.mlp.c_fc)):
                norm.weight[channels] *= factor
                norm.bias[channels] *= factor
                layer.weight[channels] /= factor  # Conv1D weight is [in, out]
    return model


def test_smoothquant_w8a8_beats_plain_w8a8_with_outlier_activation_channels(lm):
    model, heldout, calibration = lm
    outliers = with_outlier_channels(model)
    dense = text.perplexity(outliers, heldout)
    assert dense == pytest.approx(text.perplexity(model, heldout), rel=1e-4)
    schemes = {"weight": "per_channel_symmetric", "input": "per_tensor_affine"}
    cfg = [{"quant_types": ["weight", "input"], "quant_bits": 8, "quant_scheme": schemes, "op_types": ["Conv1D"]}]
    plain = ppl_after((outliers, heldout, calibration), "quantizer", "ptq", cfg, calibration_data=calibration)
    smooth = ppl_after((outliers, heldout, calibration), "quantizer", "smoothquant", [{**cfg[0], "alpha": 0.5}])
    # measured increases over dense (seed 0): plain W8A8 +0.333 (+0.004 without the outliers), SmoothQuant +0.001
    assert smooth - dense < 0.5 * (plain - dense)
