"""The typed calibration: files written by earlier nnic load unchanged, every contradiction is named by layer and
key before any module changes, and quantizers' exports round-trip exactly."""

from __future__ import annotations

import copy
import json
import logging

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import nnic
from nnic.quantization import Calibration, Int4Linear, Int8Conv2d, Int8Linear
from nnic.quantization.calibration import LayerCalibration
from nnic.quantization.lowering import LoweringContext, weight_codes
from nnic.quantization.qparams import quantize_codes

# Written by nnic 0.1 (ptq: per-channel int weights, affine uint inputs), kept literally.
OLD_FORMAT = {
    "0": {"weight_bits": 8, "weight_dtype": "int", "weight_scheme": "per_channel_symmetric", "weight_axis": 0,
          "weight_scale": [0.0021602234337478876, 0.002507476368919015], "weight_zero_point": [0, 0],
          "input_bits": 8, "input_dtype": "uint", "input_scheme": "per_tensor_affine",
          "tracked_min_input": -2.6133224964141846, "tracked_max_input": 3.4105026721954346,
          "input_scale": 0.023622844368219376, "input_zero_point": 111},
    "2": {"weight_bits": 8, "weight_dtype": "int", "weight_scheme": "per_channel_symmetric", "weight_axis": 0,
          "weight_scale": [0.0025825274642556906, 0.002607278060168028, 0.002599298721179366],
          "weight_zero_point": [0, 0, 0],
          "input_bits": 8, "input_dtype": "uint", "input_scheme": "per_tensor_affine",
          "tracked_min_input": -1.6771951913833618, "tracked_max_input": 1.4323958158493042,
          "input_scale": 0.01219447422772646, "input_zero_point": 138},
}
OLD_FILE = """{"fc": {"weight_bits": 4, "weight_dtype": "uint", "weight_scheme": "per_tensor_affine",
 "weight_scale": 0.0123, "weight_zero_point": 7}, "conv": 8}"""


def small_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(8, 3))


def test_an_old_format_dict_loads_typed_and_writes_back_identically():
    cal = Calibration.from_dict(copy.deepcopy(OLD_FORMAT))
    conv = cal["0"]
    assert (conv.weight.bits, conv.weight.dtype, conv.weight.scheme, conv.weight.axis) == (8, "int",
                                                                                          "per_channel_symmetric", 0)
    assert conv.weight.scale.shape == (2,) and conv.weight.zero_point.dtype == torch.int64
    assert conv.input.spec.qmin == 0 and conv.input.spec.qmax == 255 and not conv.input.spec.symmetric
    assert float(conv.input.tracked_min) == pytest.approx(-2.6133224964141846)
    assert conv.output is None
    assert json.loads(json.dumps(cal.to_dict())) == json.loads(json.dumps(OLD_FORMAT))


def test_an_old_format_file_loads_and_runs(tmp_path):
    path = tmp_path / "calibration.json"
    path.write_text(OLD_FILE)
    cal = Calibration.load(path)
    assert cal["conv"].weight.bits == 8 and cal["conv"].weight.scale is None  # plain bits
    assert int(cal["fc"].weight.zero_point) == 7 and cal["fc"].weight.dtype == "uint"
    cal.save(tmp_path / "again.json")
    again = json.loads((tmp_path / "again.json").read_text())
    assert again["fc"] == json.loads(OLD_FILE)["fc"]  # every value exactly as written
    assert again["conv"] == {"weight_bits": 8, "weight_dtype": "int", "weight_scheme": "per_tensor_symmetric"}
    assert Calibration.from_dict(again).to_dict() == again
    model = nn.Sequential()
    model.add_module("conv", nn.Conv2d(1, 2, 3))
    model.add_module("flat", nn.Flatten())
    model.add_module("fc", nn.Linear(8, 3))
    nnic.quantization_speedup(model, cal)
    assert isinstance(model.conv, Int8Conv2d) and isinstance(model.fc, Int4Linear)  # affine int4: zero points
    assert int(model.fc.weight_zero_points.unique()) == 7 - 8  # uint zero point 7, shifted into the signed range


def test_old_format_dict_gives_the_quantizers_codes_and_static_activations():
    model = small_model()
    x = torch.randn(4, 1, 4, 4)
    nnic.quantization_speedup(model, copy.deepcopy(OLD_FORMAT))
    fc = model[2]
    assert isinstance(fc, Int8Linear) and fc.act == "static"
    w = small_model()[2].weight  # the same seed's weight, rebuilt
    scale = torch.tensor(OLD_FORMAT["2"]["weight_scale"])
    assert torch.equal(fc.weight, torch.clamp(torch.round(w.detach() / scale[:, None]), -128, 127).to(torch.int8))
    lo, hi = OLD_FORMAT["2"]["tracked_min_input"], OLD_FORMAT["2"]["tracked_max_input"]
    assert float(fc.act_scale) == pytest.approx((hi - lo) / 255, rel=1e-6)
    assert int(fc.act_zero_point) == round(-lo / ((hi - lo) / 255))
    assert model(x).shape == (4, 3)


@pytest.mark.parametrize("name, config", [
    ("naive", [{"quant_types": ["weight"], "quant_bits": 6, "quant_scheme": "per_channel_affine",
                "quant_dtype": "uint", "op_types": ["Conv2d", "Linear"]}]),
    ("ptq", [{"quant_types": ["weight", "input", "output"], "quant_bits": {"weight": 4, "input": 8, "output": 8},
              "op_types": ["Conv2d", "Linear"]}]),
    ("bnn", [{"quant_types": ["weight", "output"], "quant_bits": 1, "op_types": ["Linear"]}]),
    ("lsq", [{"quant_types": ["weight", "input"], "quant_bits": 4, "op_types": ["Conv2d", "Linear"]}]),
    ("dorefa", [{"quant_types": ["weight"], "quant_bits": 3, "op_types": ["Conv2d", "Linear"]}]),
    ("qat", [{"quant_types": ["weight", "output"], "quant_bits": 8, "quant_scheme": "per_channel_affine",
              "op_types": ["Conv2d", "Linear"]}]),
])
def test_every_quantizers_export_round_trips(name, config):
    model = small_model()
    kw = {"calibration_data": [torch.randn(4, 1, 4, 4)]} if name == "ptq" else {}
    q = nnic.quantizer(name, model, config, **kw)
    q.compress()
    model(torch.randn(2, 1, 4, 4))  # the training-time quantizers observe their first batch
    exported = q.calibration()
    assert Calibration.from_dict(exported).to_dict() == exported


# -- contradictions, each named by layer and key -------------------------------------------------------------

GOOD = {"weight_bits": 8, "weight_dtype": "int", "weight_scheme": "per_tensor_symmetric", "weight_scale": 0.01,
        "weight_zero_point": 0, "input_bits": 8, "input_dtype": "uint", "input_scheme": "per_tensor_affine",
        "tracked_min_input": -1.0, "tracked_max_input": 2.0}


@pytest.mark.parametrize("change, error, message", [
    ({"weight_dtype": "float"}, ValueError, r"\['fc1'\]\['weight_dtype'\]: expected 'int' or 'uint', got 'float'"),
    ({"tracked_min_input": 3.0}, ValueError, r"\['fc1'\]\['tracked_min_input'\]: the tracked range is empty: 3.0 > 2.0"),
    ({"weight_scheme": "per_row"}, ValueError, r"\['fc1'\]\['weight_scheme'\]: expected one of 'per_tensor_symmetric'"),
    ({"weight_zero_point": 1.5}, ValueError, r"\['fc1'\]\['weight_zero_point'\]: expected integers, got 1.5"),
    ({"tracked_max_input": float("nan")}, ValueError, r"\['fc1'\]\['tracked_max_input'\]: expected finite numbers, got nan"),
    ({"weight_scale": -0.1}, ValueError, r"\['fc1'\]\['weight_scale'\]: expected positive finite scales, got -0.1"),
    ({"weight_scale": [0.1, 0.2]}, ValueError, r"\['fc1'\]\['weight_scale'\]: expected one number for per_tensor_symmetric"),
    ({"weight_zero_point": 300}, ValueError, r"\['fc1'\]\['weight_zero_point'\]: expected values in \[-128, 127\]"),
    ({"weight_bits": 0}, ValueError, r"\['fc1'\]\['weight_bits'\]: expected an int in \[1, 32\], got 0"),
    ({"weight_bits": True}, TypeError, r"\['fc1'\]\['weight_bits'\]: expected an int, got True"),
    ({"weight_bits": 1}, ValueError, r"\['fc1'\]\['weight_dtype'\]: 1 bit is only 'binary'"),
    ({"weight_axis": 0}, ValueError, r"\['fc1'\]\['weight_axis'\]: only a per-channel scheme has an axis"),
    ({"weight_scal": 0.1}, ValueError, r"\['fc1'\]\['weight_scal'\]: unknown key \(did you mean 'weight_scale'\?\)"),
    ({"weight_scale": "0.1"}, TypeError, r"\['fc1'\]\['weight_scale'\]: expected a number or a \(nested\) list"),
    ({"output_scale": 0.1}, ValueError, r"\['fc1'\]\['output_scale'\]: given without 'output_bits'"),
    ({"weight_group_size": 8}, ValueError, r"\['fc1'\]\['weight_group_size'\]: group-wise scales are per channel"),
])
def test_a_contradictory_entry_is_named_by_layer_and_key_and_leaves_the_model_alone(change, error, message):
    model = nn.Sequential()
    model.add_module("fc1", nn.Linear(4, 4))
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(error, match=r"^calibration" + message):
        nnic.quantization_speedup(model, {"fc1": {**GOOD, **change}})
    assert isinstance(model.fc1, nn.Linear)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_a_missing_half_of_a_range_is_named():
    entry = {k: v for k, v in GOOD.items() if k != "tracked_max_input"}
    with pytest.raises(ValueError, match=r"\['tracked_min_input'\]: given without 'tracked_max_input'"):
        Calibration.from_dict({"fc1": entry})


def test_input_bits_the_modules_cannot_run_are_said_not_dropped(caplog):
    model = nn.Sequential(nn.Linear(4, 4))
    with caplog.at_level(logging.WARNING, logger="nnic.quantization"):
        nnic.quantization_speedup(model, {"0": {**GOOD, "input_bits": 4, "input_zero_point": 0, "input_scale": 0.2}})
    assert "calibration['0']['input_bits']: 4-bit inputs run as dynamically quantized 8-bit activations" in caplog.text
    assert isinstance(model[0], Int8Linear) and model[0].act == "per_token"


_VALUES = st.one_of(st.none(), st.booleans(), st.integers(-300, 300), st.floats(allow_nan=True),
                    st.text(max_size=4), st.lists(st.floats(-2, 2), max_size=3),
                    st.sampled_from(["int", "uint", "binary", "per_tensor_symmetric", "per_channel_affine"]))
_KEYS = st.sampled_from(sorted(GOOD) + ["weight_axis", "weight_group_size", "weight_perm", "output_bits",
                                        "tracked_min_output", "folded_bn", "bogus"])


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(_KEYS, _VALUES, max_size=6), st.booleans())
def test_fuzzed_entries_load_or_fail_with_a_named_key(changes, start_good):
    entry = {**(GOOD if start_good else {}), **changes}
    try:
        cal = Calibration.from_dict({"fc1": entry})
    except (TypeError, ValueError) as exc:
        assert str(exc).startswith("calibration['fc1']"), str(exc)
    else:
        assert Calibration.from_dict(cal.to_dict()).to_dict() == cal.to_dict()


# -- group-wise scales and permutations (what one-shot LLM quantizers write) ---------------------------------

def _group_entry(w: torch.Tensor, group_size: int, bits: int = 4, perm: torch.Tensor | None = None) -> dict:
    cols = w if perm is None else w[:, perm]
    groups = cols.reshape(w.shape[0], -1, group_size).abs().amax(2)
    scale = groups / ((1 << (bits - 1)) - 1)
    entry = {"weight_bits": bits, "weight_dtype": "int", "weight_scheme": "per_channel_symmetric", "weight_axis": 0,
             "weight_group_size": group_size, "weight_scale": scale.tolist(),
             "weight_zero_point": torch.zeros_like(scale, dtype=torch.int64).tolist()}
    if perm is not None:
        entry["weight_perm"] = perm.tolist()
    return entry


def test_group_wise_4_bit_linear_runs_on_int4_with_the_calibrations_scales():
    torch.manual_seed(0)
    fc = nn.Linear(64, 8)
    model = nn.Sequential(fc)
    entry = _group_entry(fc.weight.detach(), 16)
    scale = torch.tensor(entry["weight_scale"]).repeat_interleave(16, 1)
    codes = torch.round(fc.weight.detach() / scale)
    eight = nnic.quantization_speedup(copy.deepcopy(model), {"0": entry})  # default: 8-bit scale codes
    half = nnic.quantization_speedup(copy.deepcopy(model), {"0": entry}, int4_scale_dtype=torch.float16)
    nnic.quantization_speedup(model, {"0": entry}, int4_scale_dtype=torch.float32)
    assert isinstance(model[0], Int4Linear) and model[0].group_size == 16
    assert torch.allclose(model[0].dequantized_weight(), codes * scale, atol=1e-6)
    # the same codes; each scale rounded once to float16
    assert torch.equal(half[0].codes(), model[0].codes()) and half[0].weight_scales.dtype == torch.float16
    assert torch.allclose(half[0].dequantized_weight(), codes * scale.half().float(), atol=1e-6)
    # each scale rounded up to code x step, each weight re-rounded to it: within half a new step
    assert eight[0].weight_scales.dtype == torch.uint8 and eight[0].group_size == 16
    new_scale = eight[0].group_scales().repeat_interleave(16, 1)
    assert torch.all(new_scale >= scale * (1 - 1e-6))
    assert torch.all((eight[0].dequantized_weight() - codes * scale).abs() <= 0.5 * new_scale * (1 + 1e-5))
    assert Calibration.from_dict({"0": entry}).to_dict() == {"0": entry}


def test_permuted_groups_give_the_codes_of_the_permuted_columns():
    torch.manual_seed(0)
    w = torch.randn(4, 32)
    perm = torch.randperm(32)
    entry = _group_entry(w, 8, bits=8, perm=perm)
    tc = Calibration.from_dict({"fc": entry})["fc"].weight
    q, _, _ = weight_codes(w, tc, LoweringContext("fc"))
    direct = quantize_codes(w[:, perm], tc.scale, tc.zero_point, tc.spec, 8)
    assert torch.equal(q[:, perm], direct)
    assert float(((q[:, perm] * tc.scale.repeat_interleave(8, 1)) - w[:, perm]).abs().max()) <= float(tc.scale.max()) / 2 + 1e-6


def test_group_wise_layouts_without_a_fast_path_say_so():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 4))
    entry = _group_entry(model[0].weight.detach(), 8, bits=8)
    with pytest.raises(ValueError, match="group-wise 8-bit weights have no int8 layout yet"):
        nnic.quantization_speedup(model, {"0": entry})
    nnic.quantization_speedup(model, {"0": entry}, on_unsupported="warn")
    assert isinstance(model[0], nn.Linear)


def test_a_bad_permutation_is_named():
    entry = {**_group_entry(torch.randn(4, 16), 8), "weight_perm": [0] * 16}
    with pytest.raises(ValueError, match=r"\['weight_perm'\]: expected a permutation of 0..K-1"):
        LayerCalibration.from_dict("fc", entry)


def test_a_one_element_zero_point_list_beside_a_per_tensor_scale_is_that_zero_point():
    # Found by the fuzz test above: [0.0] next to a scalar scale raised torch's RuntimeError from expand.
    cal = Calibration.from_dict({"fc1": {**GOOD, "weight_zero_point": [0.0]}})
    assert cal.to_dict()["fc1"]["weight_zero_point"] == Calibration.from_dict({"fc1": GOOD}).to_dict()["fc1"][
        "weight_zero_point"]
