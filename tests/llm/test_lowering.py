"""The one-shot quantizers' calibrations are the standard (typed) format, and ``quantization_speedup`` runs them:
4-bit symmetric group-wise weights on the int4 kernel, SmoothQuant's W8A8 on the int8 kernel with static
activations, and layouts without a fast kernel yet (3-bit, affine groups) said and kept float."""

from __future__ import annotations

import logging

import pytest
import torch
from torch import nn

import nnic
from nnic.quantization.calibration import Calibration
from nnic.quantization.modules import Int4Linear, Int8Linear

from .helpers import hf_model, token_batches

EXCLUDE = {"exclude": True, "op_names": ["lm_head"]}


def logits(model, x):
    with torch.no_grad():
        return model(x).logits


def cosine(a, b):
    return float(nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0))


@pytest.mark.parametrize("name", ["rtn", "gptq", "awq"])
def test_4_bit_symmetric_groups_run_on_the_int4_kernel(name):
    model = hf_model("llama")
    cfg = [{"quant_types": ["weight"], "quant_bits": 4, "group_size": 32, "quant_scheme": "per_channel_symmetric",
            "op_types": ["Linear"]}, EXCLUDE]
    q = nnic.quantizer(name, model, cfg, calibration_data=token_batches(), progress=False)
    q.compress()
    x = token_batches(n=1, seq=24, seed=5)[0]
    simulated = logits(model, x)
    calibration = Calibration.from_dict(q.calibration())  # the standard format, checked key by key
    assert calibration["model.layers.0.self_attn.q_proj"].weight.group_size == 32
    nnic.quantization_speedup(model, q.calibration())
    lowered = [n for n, m in model.named_modules() if isinstance(m, Int4Linear)]
    assert len(lowered) == 2 * 7
    assert cosine(logits(model, x), simulated) > 0.999  # only the on-the-fly int8 activations differ


def test_smoothquant_runs_as_int8_with_static_activations():
    model = hf_model("opt")
    cfg = [{"quant_types": ["weight", "input"], "quant_bits": 8, "op_types": ["Linear"],
            "quant_scheme": {"weight": "per_channel_symmetric", "input": "per_tensor_affine"}}, EXCLUDE]
    q = nnic.quantizer("smoothquant", model, cfg, calibration_data=token_batches(), progress=False)
    q.compress()
    x = token_batches(n=1, seq=24, seed=5)[0]
    simulated = logits(model, x)
    nnic.quantization_speedup(model, q.calibration())
    int8 = [m for m in model.modules() if isinstance(m, Int8Linear)]
    assert len(int8) == 2 * 6 and all(m.act == "static" for m in int8)
    assert cosine(logits(model, x), simulated) > 0.999


def test_3_bit_affine_groups_run_on_the_int4_kernel_as_the_simulated_model():
    model = hf_model("llama")
    cfg = [{"quant_types": ["weight"], "quant_bits": 3, "group_size": 32, "quant_scheme": "per_channel_affine",
            "op_types": ["Linear"]}, EXCLUDE]
    q = nnic.quantizer("gptq", model, cfg, calibration_data=token_batches(), progress=False)
    q.compress()
    x = token_batches(n=1, seq=24, seed=5)[0]
    simulated = logits(model, x)
    nnic.quantization_speedup(model, q.calibration())
    assert len([m for m in model.modules() if isinstance(m, Int4Linear)]) == len(q.calibration())
    assert cosine(logits(model, x), simulated) > 0.999


def test_layouts_without_a_fast_kernel_say_so_and_stay_exactly_the_simulated_model(caplog):
    model = hf_model("llama")
    cfg = [{"quant_types": ["weight"], "quant_bits": 6, "group_size": 32, "quant_scheme": "per_channel_affine",
            "op_types": ["Linear"]}, EXCLUDE]
    q = nnic.quantizer("gptq", model, cfg, calibration_data=token_batches(), progress=False)
    q.compress()
    x = token_batches(n=1, seq=24, seed=5)[0]
    simulated = logits(model, x)
    with pytest.raises(ValueError, match="group-wise 6-bit weights have no int8 layout yet"):
        nnic.quantization_speedup(model, q.calibration())
    with caplog.at_level(logging.WARNING, logger="nnic.quantization"):
        nnic.quantization_speedup(model, q.calibration(), on_unsupported="warn")
    assert "group-wise 6-bit weights have no int8 layout yet" in caplog.text
    torch.testing.assert_close(logits(model, x), simulated, rtol=0, atol=0)


def test_export_writes_weights_and_a_calibration_that_loads(tmp_path):
    model = hf_model("gpt2")
    cfg = [{"quant_types": ["weight"], "quant_bits": 4, "group_size": 32, "op_types": ["Conv1D"]}]
    q = nnic.quantizer("rtn", model, cfg)  # RTN needs no data
    q.compress()
    q.export_model(tmp_path / "model.safetensors", tmp_path / "calibration.json")
    loaded = Calibration.load(tmp_path / "calibration.json")
    assert set(loaded) == set(q.layers)
    codes = model.transformer.h[0].attn.c_attn.weight.detach().t()  # Conv1D stores [in, out]
    tc = loaded["transformer.h.0.attn.c_attn"].weight
    s = tc.scale.float().repeat_interleave(32, dim=1)
    torch.testing.assert_close(codes / s, (codes / s).round(), rtol=0, atol=1e-4)  # on the grid


FOLDABLE = {"llama": ["model.layers.0.self_attn.q_proj", "model.layers.0.mlp.gate_proj"],
            "opt": ["model.decoder.layers.0.self_attn.q_proj", "model.decoder.layers.0.fc1"]}
NOT_FOLDABLE = {"llama": ["model.layers.0.self_attn.o_proj", "model.layers.0.mlp.down_proj"],
                "opt": ["model.decoder.layers.0.self_attn.out_proj", "model.decoder.layers.0.fc2"]}


@pytest.mark.parametrize("arch", ["llama", "opt"])
def test_channel_scales_fold_into_the_norms_that_feed_the_layers(arch):
    """AWQ and SmoothQuant scale input channels only where the scale folds into the norm before the layers
    (q/k/v after the attention norm, the MLP's first layers after its norm); at 8 bits the model computes what
    it computed before, up to the 8-bit rounding."""
    model = hf_model(arch)
    x = token_batches(n=1, seq=24, seed=5)[0]
    before = logits(model, x)
    cfg = [{"quant_types": ["weight"], "quant_bits": 8, "group_size": 32, "op_types": ["Linear"]}, EXCLUDE]
    q = nnic.quantizer("awq", model, cfg, calibration_data=token_batches(), progress=False, clip_grid=0)
    q.compress()
    assert all(q.runner.can_fold([name], 64) for name in FOLDABLE[arch])
    assert not any(q.runner.can_fold([name], 64) for name in NOT_FOLDABLE[arch])
    assert cosine(logits(model, x), before) > 0.999  # 8-bit weights alone; folding itself is exact (below)


def test_folding_a_scale_is_exact():
    model = hf_model("llama")
    x = token_batches(n=1, seq=24, seed=5)[0]
    before = logits(model, x)
    q = nnic.quantizer("awq", model, [{"quant_types": ["weight"], "quant_bits": 8, "group_size": 32,
                                       "op_names": ["model.layers.0.self_attn.q_proj"]}],
                       calibration_data=token_batches(), progress=False)
    q.compress()
    group = ["model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.k_proj", "model.layers.0.self_attn.v_proj"]
    s = torch.linspace(0.5, 2.0, 64)
    norm = model.model.layers[0].input_layernorm
    norm_before = norm.weight.detach().clone()
    with torch.no_grad():
        assert q.runner.fold_scale(group, s)
        for name in group:
            dict(model.named_modules())[name].weight.mul_(s)
    torch.testing.assert_close(norm.weight.detach(), norm_before / s)
    torch.testing.assert_close(logits(model, x), before, rtol=1e-3, atol=1e-3)
