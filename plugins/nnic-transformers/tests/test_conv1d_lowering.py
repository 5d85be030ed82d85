"""GPT-2's ``Conv1D`` (weight ``[in, out]``) is lowered by ``nnic.quantization_speedup`` as the Linear it is: int8
codes exactly the Linear lowering's of the transposed weight, one-shot 4-bit groups on ``Int4Linear`` (and out
through onnxruntime's MatMulNBits), a generic quantizer's per-input scales refused by name, and transformers not
imported for models without it."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from torch import nn

import nnic
from nnic.quantization.calibration import Calibration
from nnic.quantization.lowering import LoweringContext, LoweringTable, float_linear
from nnic.quantization.modules import Int4Linear, Int8Linear

transformers = pytest.importorskip("transformers")
Conv1D = transformers.pytorch_utils.Conv1D


def gpt2(n_embd: int = 64) -> nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    cfg = GPT2Config(n_layer=2, n_embd=n_embd, n_head=4, n_positions=64, vocab_size=100, bos_token_id=0,
                     eos_token_id=0, attn_implementation="eager", use_cache=False)
    model = GPT2LMHeadModel(cfg).eval()
    with torch.no_grad():  # GPT-2 initialises biases to zero: random ones make the checks stricter
        for m in model.modules():
            if isinstance(m, Conv1D):
                m.bias.normal_(0, 0.1)
    return model


def conv1d_names(model: nn.Module) -> list[str]:
    return [name for name, m in model.named_modules() if isinstance(m, Conv1D)]


def logits(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids).logits


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


IDS = torch.randint(0, 100, (2, 16), generator=torch.Generator().manual_seed(1))


def test_int8_codes_are_the_linear_lowerings_of_the_transposed_weight():
    model = gpt2()
    names = conv1d_names(model)
    originals = {name: model.get_submodule(name) for name in names}
    reference = logits(model, IDS)
    nnic.quantization_speedup(model, {name: 8 for name in names})
    linear_lowering = LoweringTable.from_registry().find(nn.Linear(1, 1))
    for name, conv in originals.items():
        lowered = model.get_submodule(name)
        assert isinstance(lowered, Int8Linear), name
        layer = Calibration.from_dict({name: 8})[name]
        expected = linear_lowering.lower(float_linear(conv.weight.detach().t(), conv.bias), layer,
                                         LoweringContext(name))
        assert torch.equal(lowered.weight, expected.weight) and torch.equal(lowered.weight_scale, expected.weight_scale)
        assert torch.equal(lowered.bias, conv.bias.detach())
    assert relative(logits(model, IDS), reference) < 0.05  # int8 weights and dynamic per-token activations


def test_one_shot_4_bit_groups_run_on_int4_and_export_as_matmulnbits(tmp_path):
    pytest.importorskip("onnxruntime")
    model = gpt2()
    q = nnic.quantizer("rtn", model, [{"quant_types": ["weight"], "quant_bits": 4, "group_size": 32,
                                       "quant_scheme": "per_channel_symmetric", "op_types": ["Conv1D"]}])
    q.compress()
    simulated = logits(model, IDS)  # rtn writes the dequantized weights
    weights = {name: model.get_submodule(name).weight.detach().t().clone() for name in conv1d_names(model)}
    nnic.quantization_speedup(model, q.calibration(), int4_scale_dtype=torch.float32)  # rtn's scales, unrounded
    assert conv1d_names(model) == []
    for name, weight in weights.items():  # 4 Conv1D per block, 2 blocks: each holds exactly rtn's 4-bit weight
        lowered = model.get_submodule(name)
        assert isinstance(lowered, Int4Linear) and lowered.group_size == 32
        torch.testing.assert_close(lowered.dequantized_weight(), weight, rtol=0, atol=1e-6)
    assert relative(logits(model, IDS), simulated) < 0.02  # only the on-the-fly int8 activations differ (~2e-3)
    feeds = {"input_ids": IDS, "attention_mask": torch.ones_like(IDS)}
    result = nnic.export_onnx(model, feeds, tmp_path / "gpt2-int4.onnx")
    assert result.kind == "int4" and len(result.handled["int4"]) == 8
    assert result.errors["logits"] <= nnic.export.TOLERANCES["int4"]


def test_a_generic_quantizers_per_input_channel_scales_are_refused_by_name():
    model = gpt2()
    q = nnic.quantizer("naive", model, [{"quant_types": ["weight"], "quant_bits": {"weight": 8},
                                         "quant_scheme": "per_channel_symmetric", "op_types": ["Conv1D"]}])
    q.compress()
    with pytest.raises(ValueError, match=r"layer 'transformer\.h\.0\.attn\.c_attn' stays float: .*along the inputs"):
        nnic.quantization_speedup(model, q.calibration())
    assert len(conv1d_names(model)) == 8  # nothing swapped


def test_a_generic_quantizers_per_tensor_scales_are_the_quantizers_codes():
    model = gpt2()
    q = nnic.quantizer("naive", model, [{"quant_types": ["weight"], "quant_bits": {"weight": 8},
                                         "quant_scheme": "per_tensor_symmetric", "op_types": ["Conv1D"]}])
    q.compress()
    calibration = q.calibration()
    name = "transformer.h.1.mlp.c_fc"
    simulated_weight = model.get_submodule(name).weight.detach().t()
    nnic.quantization_speedup(model, calibration)
    lowered = model.get_submodule(name)
    scale = calibration[name]["weight_scale"]
    assert isinstance(lowered, Int8Linear)
    assert torch.equal(lowered.weight, torch.round(simulated_weight / scale).to(torch.int8))


def test_quantizing_a_model_without_conv1d_does_not_import_transformers():
    code = ("import sys, torch, nnic\n"
            "nnic.quantization_speedup(torch.nn.Sequential(torch.nn.Linear(8, 8)), {'0': 8})\n"
            "assert 'transformers.pytorch_utils.conv1d' in {i.name for i in nnic.list_plugins('lowering')}\n"
            "assert 'transformers' not in sys.modules, 'imported transformers'\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=300)
