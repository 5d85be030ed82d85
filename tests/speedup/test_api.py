"""The public API: in place, modes/dtype kept, verify, bad masks, strict/no-rule handling, capture errors,
leaf modules, structured inputs and outputs, save/load without pickling, and a plugin rule for a custom module."""

from __future__ import annotations

import copy
import json
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import nnic
from nnic.builtins.speedup_rules.modules import ConvRule
from nnic.speedup import (
    CaptureError,
    ModelSpeedup,
    SpeedupError,
    SpeedupWarning,
    load_pruned,
    save_pruned,
)

from .helpers import assert_close, channel_masks, run, speedup_and_check


def cnn(seed=0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3),
                         nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))


X = torch.randn(2, 3, 8, 8)


def masks_for(model):
    return channel_masks(model, 0.5, types=(nn.Conv2d,))


def test_both_spellings_shrink_in_place_and_return_the_model():
    a, b = cnn(), cnn()
    assert nnic.speedup_model(a, X, masks_for(a)) is a
    assert ModelSpeedup(b, X, masks_for(b)).speedup_model() is b
    assert a[0].out_channels == b[0].out_channels == 4


@pytest.mark.parametrize("train", [True, False])
def test_training_mode_dtype_and_device_are_kept(train):
    model = cnn().double().train(train)
    x = X.double()
    nnic.speedup_model(model, x, masks_for(model))
    assert all(m.training == train for m in model.modules())
    assert all(p.dtype == torch.float64 and p.device.type == "cpu" for p in model.parameters())
    assert model(x).dtype == torch.float64


def test_masks_attached_by_a_pruner_are_folded_first():
    model = cnn().eval()
    pruner = nnic.pruner("l1norm", model, [{"sparsity": 0.5, "op_types": ["Conv2d"]}])
    _, masks = pruner.compress()
    expected = run(model, X)
    nnic.speedup_model(model, X, masks)
    assert model[0].out_channels == 4 and model[3].out_channels == 4
    assert_close(run(model, X), expected)


@pytest.mark.parametrize("masks, error, match", [
    ({"nope": {"weight": torch.ones(1)}}, ValueError, "no such layer"),
    ({"0": {"weight": torch.ones(8, 3, 3)}}, ValueError, "expected shape"),
    ({"0": {"weight": torch.full((8, 3, 3, 3), 0.5)}}, ValueError, "only 0/1"),
    ({"0": {"kernel": torch.ones(1)}}, ValueError, "no parameter"),
    ({"0": {"weight": [1, 0]}}, TypeError, "expected a tensor"),
])
def test_bad_masks_give_clear_errors(masks, error, match):
    with pytest.raises(error, match=match):
        nnic.speedup_model(cnn(), X, masks)


def test_float_masks_are_accepted():
    model = cnn()
    masks = {k: {p: m.float() for p, m in v.items()} for k, v in masks_for(model).items()}
    speedup_and_check(model, X, masks)
    assert model[0].out_channels == 4


class Mean(nn.Module):
    def forward(self, x):
        return x.mean(1, keepdim=True)


def test_verify_takes_the_masked_output_from_the_analysis():
    """The analysis already ran the masked model on the dummy input: verification reuses that output, and runs
    the model itself once, the sped-up one; the masked model's output is what it checks against."""
    model = cnn()
    calls = []
    model.register_forward_hook(lambda m, i, o: calls.append(o.shape))
    nnic.speedup_model(model, X, masks_for(model))
    assert calls == [(2, 4)] and model[0].out_channels == 4


class Scale(nn.Module):
    """Multiplies by a stored per-channel weight: it reads its input at its original width."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.rand(8))

    def forward(self, x):
        return x * self.weight.view(1, -1, 1, 1)


def test_a_sped_up_model_that_does_not_run_is_a_speedup_error_and_restored():
    class Careless(nnic.speedup.Rule):
        """A wrong rule: passes channels through Scale and never shrinks its weight."""
        name, targets = "test.careless", (Scale,)

        def propagate(self, call):
            call.set_output(call.spec(0))

    model = nn.Sequential(nn.Conv2d(3, 8, 1), Scale(), nn.Conv2d(8, 2, 1))
    masks = {"0": {"weight": (torch.arange(8) % 2 == 0).view(8, 1, 1, 1).expand(8, 3, 1, 1),
                   "bias": torch.arange(8) % 2 == 0}}
    with pytest.raises(SpeedupError, match="sped-up model fails on the dummy input"):
        nnic.speedup_model(model, X, masks, rules=[Careless()], leaf_modules=[Scale])
    assert model[0].out_channels == 8 and model[2].in_channels == 8


def test_verify_names_the_first_differing_layer():
    class Lying(nnic.speedup.Rule):
        """A wrong rule: says the channel mean does not need any of its input channels."""
        name, targets = "test.lying", (Mean,)

        def propagate(self, call):
            spec = call.spec(0)
            call.sink(spec.ids, torch.ones(len(spec), dtype=torch.bool))

    model = nn.Sequential(nn.Conv2d(3, 8, 1), Mean(), nn.Conv2d(1, 2, 1))
    with torch.no_grad():
        before = model(X)
    with pytest.raises(SpeedupError, match=r"first differing layer: '1' \(Mean\)"):
        nnic.speedup_model(model, X, masks_for(model), rules=[Lying()], leaf_modules=[Mean])
    # The failed speedup left the model as it was: same shapes, masks not folded in, same output.
    assert model[0].out_channels == 8 and model[0].weight.shape == (8, 3, 1, 1)
    with torch.no_grad():
        assert torch.equal(model(X), before)


class WritingConvRule(ConvRule):
    """A plugin's Conv2d rule whose shrink writes into the (masked) weight before slicing it."""
    name = "tests.writing_conv"
    shrink_in_place = True

    def shrink(self, module, keep):
        with torch.no_grad():
            module.weight.mul_(2.0)
        return super().shrink(module, keep)


class EveryChannelUnused(nnic.speedup.Rule):
    """A wrong rule: says Mean needs none of its input channels, so verification fails after the shrinks."""
    name, targets = "test.every_channel_unused", (Mean,)

    def propagate(self, call):
        spec = call.spec(0)
        call.sink(spec.ids, torch.ones(len(spec), dtype=torch.bool))


@pytest.mark.parametrize("in_place", [True, False])
def test_a_failed_speedup_undoes_in_place_shrinks_unless_the_rule_says_it_only_replaces_tensors(in_place):
    """A pruner's masked weights are kept by storage for the restore, not copied; before a shrink that may write
    into its module's tensors (``shrink_in_place``, the default) speedup copies them, so a failure leaves the model
    as ``compress()`` leaves it. A rule that declares ``shrink_in_place = False`` is trusted to only replace
    tensors, and is not copied."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 1), Mean(), nn.Conv2d(1, 2, 1))
    cfg = [{"sparsity": 0.5, "op_names": ["0"]}]
    compressed = copy.deepcopy(model)
    nnic.pruner("l1norm", compressed, cfg).compress()
    rule = WritingConvRule(nn.Conv2d)
    rule.shrink_in_place = in_place
    with pytest.raises(SpeedupError, match="verify"):
        nnic.prune_and_speedup(nnic.pruner("l1norm", model, cfg), X, rules=[rule, EveryChannelUnused()],
                               leaf_modules=[Mean])
    assert torch.equal(run(model, X), run(compressed, X)) == in_place


class Odd(nn.Module):
    def forward(self, x):
        return x.cumprod(1)


def test_an_op_without_a_rule_keeps_its_channels_and_warns_once():
    model = nn.Sequential(nn.Conv2d(3, 4, 1), Odd(), Odd(), nn.Conv2d(4, 2, 1))
    with pytest.warns(SpeedupWarning, match=r"cumprod.*no speedup rule") as record:
        speedup_and_check(model, X, masks_for(model))
    assert len(record) == 1 and model[0].out_channels == 4


def test_strict_mode_names_the_node_and_how_to_write_a_rule():
    model = nn.Sequential(nn.Conv2d(3, 4, 1), Odd(), nn.Conv2d(4, 2, 1))
    with pytest.raises(SpeedupError, match=r"node 'cumprod'.*Tensor.cumprod.*register_speedup_rules"):
        nnic.speedup_model(model, X, masks_for(model), strict=True)


class Untraceable(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)

    def forward(self, x):
        if x.sum() > 0:  # control flow on a tensor value
            return self.conv(x)
        return self.conv(-x)


def test_an_untraceable_model_gets_an_error_naming_the_module_and_line_with_fx_capture():
    model = nn.Sequential(nn.Conv2d(3, 3, 1), Untraceable())
    with pytest.raises(CaptureError, match=r"module '1' \(Untraceable\) at .*test_api.py:\d+.*leaf_modules=\['1'\]"):
        nnic.speedup_model(model, X, {}, capture="fx")


class Opaque(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)

    def forward(self, x):
        return self.conv(x) * int(x.sum() > 0)  # a tensor value turned into a Python int


def _half_masks():
    keep = torch.arange(8) % 2 == 0
    return {"0.0": {"weight": keep[:, None, None, None].expand(8, 3, 1, 1).clone(), "bias": keep}}


def test_a_model_fx_cannot_trace_is_traced_along_the_dummy_input():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Sequential(nn.Conv2d(3, 8, 1), nn.ReLU(), nn.Conv2d(8, 3, 1)), Untraceable())
    expected = speedup_and_check_masked_output(model, _half_masks())
    ms = nnic.ModelSpeedup(model, X, _half_masks())
    ms.speedup_model()
    assert ms.report.capture == "concrete" and ms.report.not_analysed == {}
    assert model[0][0].out_channels == 4 and model[0][2].in_channels == 4
    assert torch.allclose(model(X), expected, atol=1e-5)


def test_an_untraceable_model_falls_back_to_regions_and_names_what_it_could_not_analyse():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Sequential(nn.Conv2d(3, 8, 1), nn.ReLU(), nn.Conv2d(8, 3, 1)), Opaque())
    expected = speedup_and_check_masked_output(model, _half_masks())
    ms = nnic.ModelSpeedup(model, X, _half_masks())
    ms.speedup_model()
    assert ms.report.capture == "regions"
    assert set(ms.report.not_analysed) == {"", "1"} and "Opaque" in ms.report.not_analysed["1"]
    assert model[0][0].out_channels == 4 and model[0][2].in_channels == 4  # inside a traced region
    assert model[1].conv.in_channels == 3  # read by code that could not be traced: kept
    assert "not analysed: 1" in str(ms.report)
    assert torch.allclose(model(X), expected, atol=1e-5)


def speedup_and_check_masked_output(model, masks):
    ref = copy.deepcopy(model)
    with torch.no_grad():
        for layer, per in masks.items():
            for p, m in per.items():
                getattr(ref.get_submodule(layer), p).mul_(m.to(getattr(ref.get_submodule(layer), p).dtype))
        return ref(X)


def test_a_leaf_module_is_kept_whole():
    model = nn.Sequential(nn.Conv2d(3, 3, 1), Untraceable())
    with pytest.warns(SpeedupWarning, match="Untraceable"):
        nnic.speedup_model(model, X, masks_for(model), leaf_modules=["1"])
    assert model[0].out_channels == 3


class MultiIO(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 8, 1), nn.Conv2d(3, 8, 1)
        self.head = nn.Conv2d(8, 2, 1)

    def forward(self, pair, extra=None, *, scale=1.0):
        x, y = pair
        z = F.relu(self.a(x)) + F.relu(self.b(y)) * extra["w"]
        return {"out": self.head(z) * scale, "aux": [z.mean((2, 3))]}


def test_tuple_list_and_dict_inputs_and_outputs():
    torch.manual_seed(0)
    model = MultiIO()
    masks = masks_for(model)
    masks["b"] = masks["a"]
    x = {"pair": (X, X * 2), "extra": {"w": torch.tensor(0.5)}, "scale": 2.0}
    speedup_and_check(model, x, masks)
    assert model.a.out_channels == 8  # "aux" returns z itself: its channels are kept
    model2 = MultiIOLean()
    m2 = masks_for(model2)
    m2["b"] = m2["a"]
    speedup_and_check(model2, ((X, X * 2), {"w": torch.tensor(0.5)}), m2)  # a tuple: positional arguments
    assert model2.a.out_channels == 4 and model2.head.in_channels == 4


class MultiIOLean(MultiIO):
    def forward(self, pair, extra=None, *, scale=1.0):
        x, y = pair
        return [(self.head(F.relu(self.a(x)) + F.relu(self.b(y)) * extra["w"]) * scale,)]


def test_save_and_load_the_pruned_architecture_without_pickle(tmp_path):
    model = cnn()
    nnic.speedup_model(model, X, masks_for(model))
    save_pruned(model, tmp_path)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["modules"]["0"]["attrs"]["out_channels"] == 4
    fresh = load_pruned(cnn(seed=1), tmp_path)
    assert fresh[0].out_channels == 4 and fresh[3].in_channels == 4
    assert_close(run(fresh.eval(), X), run(model.eval(), X))


def test_load_refuses_classes_outside_nnic(tmp_path):
    model = cnn()
    save_pruned(model, tmp_path)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    manifest["modules"]["0"]["class"] = "os:system"
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="refusing"):
        load_pruned(cnn(), tmp_path)


class Gate(nn.Module):
    """A custom module: out = x * sigmoid(w) per channel (channels on dim 1)."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(n))

    def forward(self, x):
        if x.shape[1] != self.w.numel():  # untraceable on its own: needs a rule
            raise ValueError("bad width")
        return x * torch.sigmoid(self.w)[:, None, None]


class GateRule(nnic.speedup.PerChannelRule):
    name, targets, params = "tests.gate", (Gate,), ("w",)

    def dead_out(self, module, dead):
        return dead


class GatePlugin:
    @staticmethod
    @nnic.hookimpl
    def register_speedup_rules(register):
        register(GateRule())


def test_a_plugin_adds_a_rule_for_a_custom_module(fresh_registry):
    model = nn.Sequential(nn.Conv2d(3, 6, 1), Gate(6), nn.Conv2d(6, 2, 1))
    masks = masks_for(model)
    with pytest.raises(CaptureError, match=r"module '1' \(Gate\)"):
        nnic.speedup_model(model, X, masks, capture="fx")
    fresh_registry.register(GatePlugin(), name="gate-plugin")
    assert "tests.gate" in {i.name for i in nnic.list_plugins("speedup_rule")}
    model = nn.Sequential(nn.Conv2d(3, 6, 1), Gate(6), nn.Conv2d(6, 2, 1))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        speedup_and_check(model, X, masks)
    assert model[1].w.numel() == 3 and model[0].out_channels == 3


def test_the_report_says_why_channels_were_kept():
    model = cnn()
    ms = ModelSpeedup(model, X, masks_for(model))
    ms.speedup_model()
    assert "a model output" in str(ms.report) and ms.report.removed_groups > 0


class TakesKwargs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 8, 1), nn.Conv2d(8, 2, 1)

    def forward(self, x, *args, **kwargs):  # fx cannot make placeholders for these: traced with the given args
        return self.b(F.relu(self.a(x)) * kwargs.get("scale", 1.0))


def test_a_forward_with_var_args_and_kwargs_is_traced_with_the_given_arguments():
    model = TakesKwargs()
    speedup_and_check(model, {"x": X, "scale": 2.0}, masks_for(model))
    assert model.a.out_channels == 4
