"""The lowering table: built-ins are a plugin, a third-party distribution adds a module type nnic does not know,
and the most specific registered class wins."""

from __future__ import annotations

import importlib
import sys
import textwrap

import pytest
import torch
from torch import nn

import nnic
from nnic.quantization import Int8Linear
from nnic.quantization.lowering import LoweringTable
from nnic.registry import PluginInfo, Source

# A distribution that brings its own module type and the lowering for it.
PLUGIN = """
    import torch
    from torch import nn
    import nnic
    from nnic.quantization import Int8Linear
    from nnic.quantization.lowering import weight_codes


    class ScaledDense(nn.Module):
        '''y = gain * (x @ weight.T): a module type nnic has never heard of.'''
        def __init__(self, n_in, n_out, gain=2.0):
            super().__init__()
            self.weight = nn.Parameter(torch.randn(n_out, n_in) / n_in ** 0.5)
            self.gain = gain

        def forward(self, x):
            return self.gain * (x @ self.weight.t())


    class Int8ScaledDense(nn.Module):
        def __init__(self, inner, gain):
            super().__init__()
            self.inner, self.gain = inner, gain

        def forward(self, x):
            return self.gain * self.inner(x)


    class ScaledDenseLowering:
        name = "nnic_scaled_dense.scaleddense"
        targets = (ScaledDense,)

        def lower(self, module, layer, context):
            n_out, n_in = module.weight.shape
            shell = nn.Linear(n_in, n_out, bias=False)
            q, scale, zero = weight_codes(module.weight, layer.weight, context)
            inner = Int8Linear.from_float(shell, weight=module.weight, weight_q=q.to(torch.int8), weight_scale=scale,
                                          weight_zero_point=zero, act=context.act)
            return Int8ScaledDense(inner, module.gain)


    @nnic.hookimpl
    def register_lowerings(register):
        register(ScaledDenseLowering())
"""


def install(root, monkeypatch) -> None:
    """A real distribution on sys.path: a .dist-info with METADATA and entry_points.txt, plus its module."""
    info = root / "nnic_scaled_dense-1.0.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: nnic-scaled-dense\nVersion: 1.0.0\n")
    (info / "entry_points.txt").write_text("[nnic]\nscaled_dense = nnic_scaled_dense\n")
    (root / "nnic_scaled_dense.py").write_text(textwrap.dedent(PLUGIN))
    monkeypatch.syspath_prepend(str(root))


def test_the_builtin_lowerings_are_a_plugin_found_through_nnics_entry_points(fresh_registry):
    infos = {info.name: info for info in nnic.list_plugins("lowering")}
    assert {"torch.nn.linear", "torch.nn.conv2d"} <= set(infos)
    assert infos["torch.nn.linear"].distribution == "nnic"
    assert infos["torch.nn.linear"].plugin == "lowerings"


def test_nnic_plugins_lists_lowerings(fresh_registry, capsys):
    from nnic.cli import main

    main(["plugins", "--kind", "lowering"])
    rows = [line.split() for line in capsys.readouterr().out.splitlines()[2:]]
    assert ["torch.nn.linear", "lowering", "nnic"] in [row[:3] for row in rows]


def test_a_third_party_lowering_for_an_unknown_module_type_is_used(fresh_registry, tmp_path, monkeypatch):
    assert "nnic_scaled_dense.scaleddense" not in {i.name for i in nnic.list_plugins("lowering")}
    install(tmp_path, monkeypatch)
    monkeypatch.delitem(sys.modules, "nnic_scaled_dense", raising=False)  # forgotten again after the test
    plugin = importlib.import_module("nnic_scaled_dense")
    torch.manual_seed(0)
    model = nn.Sequential(plugin.ScaledDense(16, 8), nn.ReLU(), nn.Linear(8, 4))
    with pytest.raises(ValueError, match=r"layer '0' stays float: ScaledDense has no lowering \(registered: "
                                         r"(.*, )?Conv2d, Linear\b"):
        nnic.quantization_speedup(model, {"0": 8})
    assert isinstance(model[0], plugin.ScaledDense) and isinstance(model[2], nn.Linear)  # nothing swapped

    fresh_registry.reload()  # the distribution is on sys.path now: found through its entry point
    info = {i.name: i for i in nnic.list_plugins("lowering")}["nnic_scaled_dense.scaleddense"]
    assert info.distribution == "nnic-scaled-dense"
    x = torch.randn(32, 16)
    q = nnic.quantizer("naive", model, [{"quant_types": ["weight"], "quant_bits": 8,
                                         "op_types": ["ScaledDense", "Linear"]}])
    q.compress()
    weight = model[0].parametrizations["weight"].original.detach().clone()
    simulated = model(x).detach()
    calibration = q.calibration()
    nnic.quantization_speedup(model, calibration)
    assert isinstance(model[0], plugin.Int8ScaledDense) and isinstance(model[2], Int8Linear)
    scale = torch.tensor(calibration["0"]["weight_scale"])
    assert torch.equal(model[0].inner.weight, torch.round(weight / scale).to(torch.int8))  # the quantizer's codes
    error = float((model(x) - simulated).abs().max() / simulated.abs().max())
    assert error < 0.03  # only the dynamic int8 activations differ from the simulated model


def test_the_nearest_class_in_the_mro_wins_and_two_lowerings_for_one_type_are_refused():
    class Wide(nn.Linear):
        pass

    class L:
        def __init__(self, name, targets):
            self.name, self.targets = name, targets

    base, special = L("base", (nn.Linear,)), L("special", (Wide,))
    table = LoweringTable([base, special])
    assert table.find(Wide(2, 2)) is special
    assert table.find(nn.Linear(2, 2)) is base
    assert table.find(nn.ReLU()) is None
    with pytest.raises(ValueError, match=r"two lowerings handle Linear: 'base' \(passed by the caller\) and 'other' "
                                         r"\(passed by the caller\); pass only one of them"):
        LoweringTable([base, L("other", (nn.Linear,))])


def test_a_conflict_between_registered_lowerings_names_both_plugins_and_how_to_disable_one():
    class L:
        targets = (nn.Linear,)

        def __init__(self, name):
            self.name = name

    def info(name, plugin, dist):
        return PluginInfo(name, "lowering", L(name), Source(plugin, dist, "1.0"))

    with pytest.raises(ValueError, match=r"two lowerings handle Linear: 'a' \(from plugin 'pa' \(distribution "
                                         r"dist-a 1\.0\)\) and 'b' \(from plugin 'pb' \(distribution dist-b 1\.0\)\); "
                                         r"disable one plugin \(NNIC_DISABLE_PLUGINS=pa or NNIC_DISABLE_PLUGINS=pb\)"):
        LoweringTable([info("a", "pa", "dist-a"), info("b", "pb", "dist-b")])
    with pytest.raises(TypeError, match=r"lowering 'a' \(passed by the caller\) lists 'Linear' in targets"):
        LoweringTable([type("Bad", (), {"name": "a", "targets": ("Linear",)})()])


def test_the_lowering_example_in_the_hook_docs_runs(plugin_hooks_example):
    plugin_hooks_example("## register_lowerings(register)", "docs_lowering_example")  # it asserts its own result
