"""quantization_speedup: Naive-quantizer calibrations and plain bits dicts, end to end."""

from __future__ import annotations

import logging

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

import nnic
from nnic.quantization.modules import Int4Linear, Int8Conv2d, Int8Linear
from nnic.quantization.speedup import quantization_speedup

#: Logits of the low-bit model against the float model.
COSINE = 0.99


def cos(a, b):
    return F.cosine_similarity(a.flatten().double(), b.flatten().double(), dim=0).item()


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, padding=1)
        self.pw = nn.Conv2d(16, 16, 1)
        self.fc1 = nn.Linear(16 * 8 * 8, 128)
        self.fc2 = nn.Linear(128, 64)
        self.head = nn.Linear(64, 10)

    def forward(self, x):
        x = F.relu(self.pw(F.relu(self.conv(x))))
        x = F.relu(self.fc1(x.flatten(1)))
        return self.head(F.relu(self.fc2(x)))


@pytest.fixture
def net():
    torch.manual_seed(0)
    return Net().eval()


@pytest.fixture
def x():
    torch.manual_seed(1)
    return torch.randn(4, 3, 8, 8)


@pytest.mark.parametrize(
    "config",
    [
        {"quant_bits": 8},
        {"quant_bits": 8, "quant_scheme": "per_channel_symmetric"},
        {"quant_bits": 8, "quant_scheme": "per_tensor_affine"},
        {"quant_bits": 8, "quant_scheme": "per_channel_affine", "quant_dtype": "uint"},
        {"quant_bits": 8, "quant_dtype": "uint"},
        {"quant_bits": 6, "quant_scheme": "per_channel_symmetric"},
    ],
)
def test_naive_calibration_end_to_end(net, x, config):
    ref = net(x)
    q = nnic.quantizer("naive", net, [{"quant_types": ["weight"], "op_types": ["Linear", "Conv2d"], **config}])
    q.compress()
    simulated = net(x)
    cal = q.calibration()
    quantization_speedup(net, cal)
    for name in cal:
        assert isinstance(net.get_submodule(name), (Int8Linear, Int8Conv2d)), name
        assert not parametrize.is_parametrized(net.get_submodule(name))
    y = net(x)
    assert cos(y, ref) > COSINE
    assert cos(y, simulated) > 0.999  # the same integer weights as the fake-quantized model


def test_naive_linear_only_leaves_conv_float(net, x):
    ref = net(x)
    q = nnic.quantizer("naive", net, [{"quant_types": ["weight"], "quant_bits": 8, "op_types": ["Linear"]}])
    q.compress()
    quantization_speedup(net, q.calibration())
    assert type(net.conv) is nn.Conv2d and isinstance(net.fc1, Int8Linear)
    assert cos(net(x), ref) > COSINE


def test_codes_equal_the_quantizers(net):
    q = nnic.quantizer("naive", net, [{"quant_types": ["weight"], "quant_bits": 8, "op_types": ["Linear"],
                                       "quant_scheme": "per_channel_symmetric"}])
    q.compress()
    cal = q.calibration()
    w = net.fc2.weight.detach().clone()  # fake-quantized: exactly (code * scale)
    quantization_speedup(net, cal)
    s = torch.tensor(cal["fc2"]["weight_scale"])
    torch.testing.assert_close(net.fc2.weight.float() * s[:, None], w, rtol=1e-6, atol=1e-7)


def test_four_bits_uses_int4(net, x):
    ref = net(x)
    q = nnic.quantizer("naive", net, [
        {"quant_types": ["weight"], "quant_bits": 8, "op_types": ["Linear", "Conv2d"]},
        {"quant_types": ["weight"], "quant_bits": 4, "op_names": ["fc2"], "quant_scheme": "per_channel_symmetric"},
    ])
    q.compress()
    simulated = net(x)
    quantization_speedup(net, q.calibration())
    assert isinstance(net.fc2, Int4Linear) and isinstance(net.fc1, Int8Linear)
    assert cos(net(x), simulated) > 0.999
    assert cos(net(x), ref) > 0.95  # 4-bit per-channel weights themselves cost accuracy


def test_plain_bits_dict(net, x):
    ref = net(x)
    quantization_speedup(net, {"conv": 8, "pw": 8, "fc1": 8, "fc2": 4, "head": 32})
    assert isinstance(net.conv, Int8Conv2d) and isinstance(net.pw, Int8Conv2d)
    assert isinstance(net.fc1, Int8Linear) and isinstance(net.fc2, Int4Linear) and type(net.head) is nn.Linear
    assert cos(net(x), ref) > COSINE


def test_pruned_and_quantized_model(net, x):
    pruner = nnic.pruner("level", net, [{"sparsity": 0.5, "op_types": ["Linear"]}])
    pruner.compress()
    # op_names, not op_types: the pruned layers' classes are now ParametrizedLinear.
    layers = ["fc1", "fc2", "head"]
    q = nnic.quantizer("naive", net, [{"quant_types": ["weight"], "quant_bits": 8, "op_names": layers}])
    q.compress()
    simulated = net(x)
    mask = (net.fc1.weight != 0)
    quantization_speedup(net, q.calibration())
    assert isinstance(net.fc1, Int8Linear)
    assert torch.equal(net.fc1.weight != 0, mask)  # pruned weights stay exactly zero
    assert cos(net(x), simulated) > 0.999


def test_static_activation_entry(net, x):
    ref = net(x)
    with torch.no_grad():
        h = F.relu(net.pw(F.relu(net.conv(x)))).flatten(1)
    cal = {"fc1": {"weight_bits": 8, "weight_dtype": "int", "weight_scheme": "per_tensor_symmetric",
                   "weight_scale": float(net.fc1.weight.detach().abs().max() / 127), "weight_zero_point": 0,
                   "input_bits": 8, "tracked_min_input": float(h.min()), "tracked_max_input": float(h.max())}}
    quantization_speedup(net, cal)
    assert net.fc1.act == "static"
    assert cos(net(x), ref) > COSINE


def test_unsupported_layer_error_or_warning(caplog):
    model = nn.Sequential(nn.Embedding(10, 8), nn.Conv2d(4, 4, 3, groups=2), nn.Linear(8, 8))
    with pytest.raises(ValueError, match=r"'0' stays float: Embedding"):
        quantization_speedup(model, {"0": 8})
    with pytest.raises(ValueError, match="grouped"):
        quantization_speedup(model, {"1": 8})
    with caplog.at_level(logging.WARNING, logger="nnic.quantization"):
        quantization_speedup(model, {"0": 8, "1": 8, "2": 8}, on_unsupported="warn")
    assert "Embedding" in caplog.text and "grouped" in caplog.text
    assert type(model[0]) is nn.Embedding and isinstance(model[2], Int8Linear)


def test_bad_calibration():
    model = nn.Sequential(nn.Linear(4, 4))
    with pytest.raises(KeyError, match="fc9"):
        quantization_speedup(model, {"fc9": 8})
    with pytest.raises(ValueError, match="weight_bits"):
        quantization_speedup(model, {"0": 12})
    with pytest.raises(ValueError, match="on_unsupported"):
        quantization_speedup(model, {"0": 8}, on_unsupported="ignore")
    with pytest.raises(TypeError, match="calibration"):
        quantization_speedup(model, [("0", 8)])


@pytest.mark.parametrize("entry, message", [
    ({"weight_scale": -1.0}, r"calibration\['0'\]\['weight_scale'\]: expected positive finite scales"),
    ({"weight_scale": float("inf")}, r"expected positive finite scales"),
    ({"weight_scale": [0.1, 0.2], "weight_scheme": "per_channel_symmetric"},
     r"calibration\['0'\]\['weight_scale'\]: expected 4 scale\(s\) for per_channel_symmetric on a weight of shape "
     r"\(4, 4\), got 2"),
    ({"weight_scale": [0.1] * 4, "weight_zero_point": [0, 0], "weight_scheme": "per_channel_affine"},
     r"calibration\['0'\]\['weight_zero_point'\]: expected 1 or 4 zero point\(s\), got 2"),
])
def test_bad_scales_and_zero_points_are_named_and_leave_the_model_alone(entry, message):
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4))
    with pytest.raises(ValueError, match=message):
        quantization_speedup(model, {"1": 8, "0": {"weight_bits": 8, "weight_zero_point": 0, **entry}})
    assert type(model[0]) is nn.Linear and type(model[1]) is nn.Linear  # the good layer was not swapped either
