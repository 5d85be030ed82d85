"""load_pruned's trust boundary: a manifest may only shrink what speedup shrinks; anything else, malformed or
naming a class no speedup rule handles, is a ValueError naming the module and key, before any import."""

from __future__ import annotations

import json
import sys

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import nnic
from nnic.speedup import load_pruned, save_pruned

from .helpers import assert_close, channel_masks, run

X = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))


def cnn(seed=0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3),
                         nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))


@pytest.fixture
def saved(tmp_path):
    model = cnn()
    nnic.speedup_model(model, X, channel_masks(model, 0.5, types=(nn.Conv2d,)))
    save_pruned(model, tmp_path)
    return model, tmp_path


def edit(directory, change) -> None:
    path = directory / "manifest.json"
    manifest = json.loads(path.read_text())
    change(manifest)
    path.write_text(json.dumps(manifest))


def test_an_untouched_manifest_loads_the_pruned_model(saved):
    model, directory = saved
    fresh = load_pruned(cnn(seed=1), directory)
    assert fresh[0].out_channels == 4 and fresh[1].num_features == 4
    assert_close(run(fresh.eval(), X), run(model.eval(), X))


@pytest.mark.parametrize("module, key, value", [
    ("0", "stride", [2, 2]),           # changes what the conv computes
    ("1", "eps", 0.5),                 # BatchNorm eps
    ("1", "momentum", None),
    ("0", "forward", "print"),         # not an attribute the manifest may set at all
    ("0", "padding_mode", "circular"),
])
def test_a_manifest_cannot_change_what_a_module_computes(saved, module, key, value):
    _, directory = saved
    edit(directory, lambda m: m["modules"][module]["attrs"].__setitem__(key, value))
    fresh = cnn()
    with pytest.raises(ValueError, match=rf"module '{module}' .*{key}"):
        load_pruned(fresh, directory)
    assert not hasattr(fresh[0], "__dict__") or "forward" not in fresh[0].__dict__


@pytest.mark.parametrize("value", [16, 0, -1, 4.0, "4", True, None, [4]])
def test_declared_shape_attributes_must_be_ints_that_only_shrink(saved, value):
    _, directory = saved
    edit(directory, lambda m: m["modules"]["0"]["attrs"].__setitem__("out_channels", value))
    with pytest.raises(ValueError, match=r"module '0' \(Conv2d\): attrs\['out_channels'\]: expected an int in \[1, 8\]"):
        load_pruned(cnn(), directory)


@pytest.mark.parametrize("shape", [[16, 3, 3, 3], [4, 3, 3], [4, 3, 3, 2 ** 40], "big", [4, -1, 3, 3], [4, 3.0, 3, 3]])
def test_tensor_shapes_must_be_pruned_versions_of_the_fresh_ones(saved, shape):
    _, directory = saved
    edit(directory, lambda m: m["modules"]["0"]["tensors"].__setitem__("weight", shape))
    with pytest.raises(ValueError, match=r"'0'.*weight"):
        load_pruned(cnn(), directory)


@pytest.mark.parametrize("change, key", [
    (lambda m: m.pop("modules"), "modules"),
    (lambda m: m.__setitem__("modules", []), "modules"),
    (lambda m: m["modules"].__setitem__("0", "conv"), "'0'"),
    (lambda m: m["modules"]["0"].pop("class"), "class"),
    (lambda m: m["modules"]["0"].__setitem__("attrs", [1]), "attrs"),
    (lambda m: m["modules"]["0"].pop("tensors"), "tensors"),
    (lambda m: m["modules"].__setitem__("nope", {"class": "x", "attrs": {}, "tensors": {}}), "nope"),
    (lambda m: m.__setitem__("format", "other/1"), "manifest"),
])
def test_a_malformed_manifest_is_a_value_error_naming_the_key(saved, change, key):
    _, directory = saved
    edit(directory, change)
    with pytest.raises(ValueError, match=key):
        load_pruned(cnn(), directory)


def test_a_manifest_that_is_not_an_object_is_a_value_error(tmp_path):
    (tmp_path / "manifest.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="manifest"):
        load_pruned(cnn(), tmp_path)


def test_classes_are_checked_before_anything_is_imported(saved, tmp_path_factory, monkeypatch):
    _, directory = saved
    plugin_dir = tmp_path_factory.mktemp("site")
    (plugin_dir / "nnic_canary.py").write_text(
        "import builtins\nbuiltins.NNIC_CANARY_IMPORTED = True\n"
        "class Evil:\n    @classmethod\n    def from_manifest(cls, attrs):\n        raise SystemExit\n")
    monkeypatch.syspath_prepend(str(plugin_dir))
    for path in ("nnic_canary:Evil", "nnic.io:json", "os:system"):
        edit(directory, lambda m: m["modules"]["0"].__setitem__("class", path))
        with pytest.raises(ValueError, match="refusing to construct"):
            load_pruned(cnn(), directory)
    assert "nnic_canary" not in sys.modules
    assert not hasattr(__import__("builtins"), "NNIC_CANARY_IMPORTED")


def test_a_rebuilt_module_is_sized_before_it_is_allocated(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.MultiheadAttention(16, 4, batch_first=True))
    q = torch.randn(2, 5, 16)

    class Wrap(nn.Module):
        def __init__(self):
            super().__init__()
            self.attn = model[0]

        def forward(self, x):
            return self.attn(x, x, x, need_weights=False)[0]

    wrapped = Wrap()
    mask = torch.ones_like(wrapped.attn.in_proj_weight, dtype=torch.bool)
    mask[2 * 16:2 * 16 + 4] = False  # the value projection of head 0
    nnic.speedup_model(wrapped, q, {"attn": {"in_proj_weight": mask}})
    save_pruned(wrapped, tmp_path)
    edit(tmp_path, lambda m: m["modules"]["attn"]["attrs"].__setitem__("head_dim", 2 ** 30))
    with pytest.raises(ValueError, match=r"module 'attn'.*more than"):
        load_pruned(Wrap(), tmp_path)
    edit(tmp_path, lambda m: m["modules"]["attn"]["attrs"].__setitem__("bogus", 1))
    with pytest.raises(ValueError, match=r"module 'attn'.*cannot be built"):
        load_pruned(Wrap(), tmp_path)


def test_manifests_naming_the_old_home_of_pruned_attention_still_load(tmp_path):
    torch.manual_seed(0)

    class Wrap(nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.attn = nn.MultiheadAttention(16, 4, batch_first=True)

        def forward(self, x):
            return self.attn(x, x, x, need_weights=False)[0]

    model, q = Wrap(), torch.randn(2, 5, 16)
    mask = torch.ones_like(model.attn.in_proj_weight, dtype=torch.bool)
    mask[2 * 16:2 * 16 + 4] = False
    nnic.speedup_model(model, q, {"attn": {"in_proj_weight": mask}})
    save_pruned(model, tmp_path)
    edit(tmp_path, lambda m: m["modules"]["attn"].__setitem__("class", "nnic.speedup.mha:PrunedMultiheadAttention"))
    fresh = load_pruned(Wrap(), tmp_path).eval()
    assert fresh.attn.num_heads == 3
    assert_close(run(fresh, q), run(model.eval(), q))


JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-2 ** 62, 2 ** 62) | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=8,
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(where=st.sampled_from(["attr", "attrs", "tensor", "tensors", "entry", "class", "module"]),
       key=st.sampled_from(["out_channels", "in_channels", "groups", "stride", "weight", "bias", "0", "x"]),
       value=JSON)
def test_fuzzed_manifests_load_or_raise_value_error(saved, where, key, value):
    model, directory = saved
    path = directory / "manifest.json"
    original = path.read_text()
    manifest = json.loads(original)
    entry = manifest["modules"]["0"]
    if where == "attr":
        entry["attrs"][key] = value
    elif where == "attrs":
        entry["attrs"] = value
    elif where == "tensor":
        entry["tensors"][key] = value
    elif where == "tensors":
        entry["tensors"] = value
    elif where == "entry":
        manifest["modules"]["0"] = value
    elif where == "class":
        entry["class"] = value
    else:
        manifest["modules"][key] = value
    try:
        path.write_text(json.dumps(manifest))
        try:
            fresh = load_pruned(cnn(seed=1), directory)
        except ValueError:
            return
        assert_close(run(fresh.eval(), X), run(model.eval(), X))  # what loads is the saved model
    finally:
        path.write_text(original)


@pytest.mark.parametrize("change", [
    lambda m: m["modules"]["0"]["tensors"].__setitem__("weight", [8, 3, 3, 3]),  # shape the weights file lacks
    lambda m: m["modules"]["0"]["tensors"].__setitem__("bias", [1]),
    lambda m: m["modules"]["0"].__setitem__("tensors", {}),                       # no shapes: the fresh model's size
])
def test_a_manifest_that_disagrees_with_the_weights_file_is_a_value_error(saved, change):
    _, directory = saved
    edit(directory, change)
    with pytest.raises(ValueError, match="weight|bias"):
        load_pruned(cnn(seed=1), directory)
