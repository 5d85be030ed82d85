"""Naive quantizer: weight-only fake quantization from min/max, exported as a calibration."""

from __future__ import annotations

import json

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

import nnic
from nnic import kernels
from nnic.quantization import NaiveQuantizer
from nnic.quantization.qparams import SCHEMES


def mlp(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))


def weight_config(bits=8, scheme="per_tensor_symmetric", dtype="int", op_types=("Linear",)):
    return [{"quant_types": ["weight"], "quant_bits": {"weight": bits}, "quant_scheme": scheme,
             "quant_dtype": dtype, "op_types": list(op_types)}]


def test_the_issue_example_runs_end_to_end(tmp_path):
    model = mlp()
    q = nnic.quantizer("naive", model, weight_config())
    assert q.compress() is model
    calibration = q.export_model(tmp_path / "qmodel.pt", tmp_path / "calibration.json")
    assert json.loads((tmp_path / "calibration.json").read_text()) == calibration
    assert calibration["0"] == {
        "weight_bits": 8, "weight_dtype": "int", "weight_scheme": "per_tensor_symmetric",
        "weight_scale": pytest.approx(float(mlp()[0].weight.detach().abs().max()) / 127),
        "weight_zero_point": 0,
    }
    state = torch.load(tmp_path / "qmodel.pt", weights_only=True)
    assert set(state) == {"0.weight", "0.bias", "2.weight", "2.bias"}


@given(
    bits=st.integers(2, 8),
    scheme=st.sampled_from(SCHEMES),
    dtype=st.sampled_from(["int", "uint"]),
    seed=st.integers(0, 2**31 - 1),
)
def test_every_weight_comes_back_within_half_a_step(bits, scheme, dtype, seed):
    model = mlp(seed)
    original = {name: m.weight.detach().clone() for name, m in model.named_children() if isinstance(m, nn.Linear)}
    q = NaiveQuantizer(model, weight_config(bits, scheme, dtype))
    q.compress()
    calibration = q.calibration()
    for name, w in original.items():
        scale = torch.tensor(calibration[name]["weight_scale"])
        if scheme.startswith("per_channel"):
            assert calibration[name]["weight_axis"] == 0 and scale.shape == (w.shape[0],)
            scale = scale[:, None]
        error = (model.get_submodule(name).weight.detach() - w).abs()
        # Exactly half a step at ties (x / scale = 25.5), plus the rounding of q * scale in float32.
        rounding = 2 * torch.finfo(torch.float32).eps * w.abs()
        assert bool((error <= scale / 2 + rounding).all())


def test_the_simulated_weight_is_the_kernels_quantize_then_dequantize():
    model = mlp()
    q = NaiveQuantizer(model, weight_config(4, "per_channel_affine"))
    w = model[0].weight.detach().clone()
    q.compress()
    cal = q.calibration()["0"]
    scale, zero = torch.tensor(cal["weight_scale"]), torch.tensor(cal["weight_zero_point"])
    codes = kernels.quantize(w, scale, zero, axis=0, bits=4)
    assert int(codes.min()) >= -8 and int(codes.max()) <= 7
    torch.testing.assert_close(model[0].weight.detach(), kernels.dequantize(codes, scale, zero, axis=0), rtol=0, atol=1e-6)


def test_pruned_zeros_stay_exactly_zero_after_quantization():
    model = mlp()
    _, masks = nnic.pruner("level", model, [{"sparsity": 0.5, "op_types": ["Linear"]}]).compress()
    NaiveQuantizer(model, weight_config(8, "per_tensor_affine")).compress()
    assert torch.count_nonzero(model[0].weight[~masks["0"]["weight"]]) == 0


def test_gradients_pass_straight_through():
    model = mlp()
    NaiveQuantizer(model, weight_config(4)).compress()
    model(torch.randn(8, 64)).sum().backward()
    grad = model[0].parametrizations.weight.original.grad
    assert grad is not None and torch.count_nonzero(grad) > 0


def test_inputs_and_outputs_are_not_the_naive_quantizers_job():
    config = [{"quant_types": ["weight", "input"], "quant_bits": 8, "op_types": ["Linear"]}]
    with pytest.raises(ValueError, match=r"config_list\[0\]\['quant_types'\]: the naive quantizer quantizes weights only"):
        NaiveQuantizer(mlp(), config)


@pytest.mark.parametrize("bits", [1, 9, 16])
def test_bits_outside_2_to_8_are_refused(bits):
    with pytest.raises(ValueError, match=rf"config_list\[0\]\['quant_bits'\]: the naive quantizer supports 2 to 8 bits, got {bits}"):
        NaiveQuantizer(mlp(), weight_config(bits))


def test_calibration_before_compress_is_an_error(tmp_path):
    q = NaiveQuantizer(mlp(), weight_config())
    with pytest.raises(RuntimeError, match=r"call compress\(\) first"):
        q.export_model(tmp_path / "m.pt", tmp_path / "c.json")
    assert list(tmp_path.iterdir()) == []


def test_an_all_zero_weight_quantizes_to_zero():
    model = nn.Sequential(nn.Linear(4, 4))
    with torch.no_grad():
        model[0].weight.zero_()
    q = NaiveQuantizer(model, weight_config(8, "per_channel_symmetric"))
    q.compress()
    assert torch.count_nonzero(model[0].weight) == 0
    assert q.calibration()["0"]["weight_scale"] == [1.0] * 4
