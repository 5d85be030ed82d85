"""An Int4Linear save reloads exactly as saved, whatever the module it is loaded into was built with.

A save records its own format in its tensors: the scales' dtype (float16, float32, or 8-bit codes with a
``weight_scale_step`` per output), zero points (asymmetric weights) and an input permutation (GPTQ act order).
The module that receives it may have been built with another default (a float16 save made before 8-bit scales
became the default, loaded by today's code) or by a loader that cannot know the options (``nnic compress``'s
loader builds it from the manifest's sizes). Every combination must give the saved module's outputs bit for bit.
"""

from __future__ import annotations

import itertools

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from nnic import io
from nnic.quantization.modules import Int4Linear
from nnic.recipe.artifacts import load_model, save_model
from nnic.speedup import load_pruned, save_pruned

IN, OUT, GROUP = 96, 40, 32
SCALE_DTYPES = (torch.float16, torch.float32, torch.uint8)
#: (scale dtype, affine, permuted): every format a module can be saved in or built with.
FORMATS = list(itertools.product(SCALE_DTYPES, (False, True), (False, True)))


def fmt_id(f: tuple) -> str:
    dt, affine, permuted = f
    return str(dt).removeprefix("torch.") + ("-affine" if affine else "") + ("-perm" if permuted else "")


def saved_module(scale_dtype: torch.dtype, affine: bool, permuted: bool, in_features: int = IN) -> Int4Linear:
    """A calibrated layer of the format: codes, float scales, zero points and permutation as GPTQ/AWQ give them."""
    g = torch.Generator().manual_seed(0)
    lin = nn.Linear(in_features, OUT)
    with torch.no_grad():
        lin.bias.copy_(torch.randn(OUT, generator=g))
    groups = -(-in_features // GROUP)
    kwargs = {"weight_q": torch.randint(-8, 8, (OUT, in_features), generator=g, dtype=torch.int8),
              "weight_scales": torch.rand(OUT, groups, generator=g) * 0.05 + 1e-3}
    if affine:
        kwargs["weight_zero_points"] = torch.randint(-8, 8, (OUT, groups), generator=g, dtype=torch.int8)
    if permuted:
        kwargs["input_perm"] = torch.randperm(in_features, generator=g)
    return Int4Linear.from_float(lin, group_size=GROUP, scale_dtype=scale_dtype, **kwargs)


def built_module(scale_dtype: torch.dtype, affine: bool, permuted: bool) -> Int4Linear:
    return Int4Linear(IN, OUT, group_size=GROUP, affine=affine, permuted=permuted, scale_dtype=scale_dtype)


def assert_same_module(got: Int4Linear, want: Int4Linear) -> None:
    assert got.scale_dtype == want.scale_dtype
    assert set(got.state_dict()) == set(want.state_dict())
    assert dict(got.named_parameters()) == {}  # every tensor of the format is a buffer, as in a built module
    for k, v in want.state_dict().items():
        assert got.state_dict()[k].dtype == v.dtype and torch.equal(got.state_dict()[k], v), k
    x = torch.randn(3, IN, generator=torch.Generator().manual_seed(1))
    assert torch.equal(got(x), want(x))


@pytest.mark.parametrize("saved", FORMATS, ids=fmt_id)
def test_a_manifest_save_loads_as_saved_into_a_module_built_in_any_format(saved, tmp_path):
    src = saved_module(*saved)
    save_pruned(nn.Sequential(src, nn.ReLU()), tmp_path / "saved")
    for built in FORMATS:
        fresh = load_pruned(nn.Sequential(built_module(*built), nn.ReLU()), tmp_path / "saved")
        assert_same_module(fresh[0], src)


@pytest.mark.parametrize("saved", FORMATS, ids=fmt_id)
def test_a_state_dict_file_loads_as_saved_into_a_module_built_in_any_format(saved, tmp_path):
    src = saved_module(*saved)
    save_file(src.state_dict(), tmp_path / "q.safetensors")
    for built in FORMATS:
        fresh = built_module(*built)
        fresh.load_state_dict(io.load_tensors(tmp_path / "q.safetensors"))
        assert_same_module(fresh, src)


def test_a_float16_save_from_when_it_was_the_default_loads_into_a_default_module(tmp_path):
    """What an older nnic wrote (float16 scales, no step in the file or the manifest) loads into a module built
    with today's default, and stays float16."""
    src = saved_module(torch.float16, False, False)
    save_pruned(nn.Sequential(src), tmp_path / "old")
    assert "weight_scale_step" not in io.load_json(tmp_path / "old" / "manifest.json")["modules"]["0"]["tensors"]
    fresh = load_pruned(nn.Sequential(Int4Linear(IN, OUT, group_size=GROUP)), tmp_path / "old")
    assert_same_module(fresh[0], src)


@pytest.mark.parametrize("saved", FORMATS, ids=fmt_id)
def test_nnic_compress_output_with_an_int4_layer_loads_back_as_saved(saved, tmp_path):
    """``load_model`` builds the int4 layer from the manifest's sizes alone (its constructor's defaults), and the
    saved format still wins."""
    from nnic.demo import DigitsCNN

    spec = {"factory": "nnic.demo:DigitsCNN", "kwargs": {"width": 2, "hidden": OUT}}
    model = DigitsCNN(width=2, hidden=OUT).eval()
    assert model.classifier[0].in_features == 2 * 2 * 16
    model.classifier[0] = saved_module(*saved, in_features=model.classifier[0].in_features)
    save_model(model, tmp_path / "out", spec)
    loaded = load_model(tmp_path / "out")
    layer = loaded.classifier[0]
    assert isinstance(layer, Int4Linear) and layer.scale_dtype == saved[0]
    assert (layer.weight_zero_points is not None, layer.input_perm is not None) == saved[1:]
    x = torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    assert {k: v.dtype for k, v in loaded.state_dict().items()} == {k: v.dtype for k, v in model.state_dict().items()}


def test_scales_saved_in_a_dtype_no_kernel_reads_are_refused_not_rounded(tmp_path):
    src = saved_module(torch.float32, False, False)
    state = dict(src.state_dict(), weight_scales=src.weight_scales.to(torch.bfloat16))
    with pytest.raises(ValueError, match=r"weight_scales: saved as torch.bfloat16, which no int4 kernel reads"):
        built_module(torch.float16, False, False).load_state_dict(state)
    save_file(state, tmp_path / "bf16.safetensors")
    with pytest.raises(ValueError, match=r"weight_scales: saved as torch.bfloat16"):
        built_module(torch.uint8, False, False).load_state_dict(io.load_tensors(tmp_path / "bf16.safetensors"))


def test_eight_bit_codes_saved_without_their_steps_are_a_named_missing_tensor(tmp_path):
    src = saved_module(torch.uint8, False, False)
    save_pruned(nn.Sequential(src), tmp_path / "saved")
    state = io.load_tensors(tmp_path / "saved" / "model.safetensors")
    del state["0.weight_scale_step"]
    io.save_tensors(state, tmp_path / "saved" / "model.safetensors")
    with pytest.raises(ValueError, match=r"'0.weight_scale_step' is missing from .*model.safetensors"):
        load_pruned(nn.Sequential(built_module(torch.uint8, False, False)), tmp_path / "saved")
    with pytest.raises(RuntimeError, match="Missing key.*weight_scale_step"):
        built_module(torch.float16, False, False).load_state_dict({k[2:]: v for k, v in state.items()})


def test_a_partial_state_dict_without_the_scales_changes_no_format():
    """``strict=False`` loads of other tensors (the bias alone) leave the module's format as built."""
    m = built_module(torch.uint8, True, True)
    m.load_state_dict({"bias": torch.ones(OUT)}, strict=False)
    assert m.scale_dtype == torch.uint8 and m.weight_scale_step is not None
    assert m.weight_zero_points is not None and m.input_perm is not None
    assert torch.equal(m.bias, torch.ones(OUT))
