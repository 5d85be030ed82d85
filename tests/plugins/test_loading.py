"""How plugins are found and what happens when one is broken: a spec of the registry's loading rules."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import warnings

import pytest
from torch import nn

import nnic
from nnic.plugins import PluginLoadWarning
from nnic.registry import PluginConflictError, UnknownPluginError


def install_fake_distribution(root, monkeypatch, dist: str, entry_points: dict[str, str], modules: dict[str, str]):
    """A real distribution on sys.path: a .dist-info with METADATA and entry_points.txt, plus its modules."""
    info = root / f"{dist.replace('-', '_')}-1.2.3.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.2.3\n")
    (info / "entry_points.txt").write_text(
        "[nnic]\n" + "".join(f"{name} = {target}\n" for name, target in entry_points.items())
    )
    for module, source in modules.items():
        (root / f"{module}.py").write_text(textwrap.dedent(source))
    monkeypatch.syspath_prepend(str(root))


PRUNER_PLUGIN = """
    import nnic
    from nnic.builtins.level import LevelPruner

    class {cls}(LevelPruner):
        name = "{name}"

    @nnic.hookimpl
    def register_pruners(register):
        register({cls})
"""


def model():
    return nn.Sequential(nn.Linear(8, 8))


def test_builtins_are_found_through_nnics_own_entry_points(fresh_registry):
    infos = {(i.kind, i.name): i for i in nnic.list_plugins()}
    assert infos[("pruner", "level")].distribution == "nnic"
    assert infos[("pruner", "level")].plugin == "level"
    assert infos[("quantizer", "naive")].distribution == "nnic"
    assert infos[("pruner", "level")].version == nnic.__version__


def test_an_installed_third_party_distribution_is_discovered_and_usable(fresh_registry):
    info = {i.name: i for i in nnic.list_plugins("pruner")}["example_random"]
    assert (info.distribution, info.version) == ("nnic-example", "0.1.0")
    pruner = nnic.pruner("example_random", model(), [{"sparsity": 0.5, "op_types": ["Linear"]}])
    _, masks = pruner.compress()
    assert int((~masks["0"]["weight"]).sum()) == 32
    assert type(nnic.quantizer("example_shift", model(), [{"quant_types": ["weight"], "quant_bits": 8,
                                                           "op_types": ["Linear"]}])).__name__ == "PowerOfTwoQuantizer"


def test_a_fake_distribution_on_sys_path_is_discovered(fresh_registry, tmp_path, monkeypatch):
    install_fake_distribution(tmp_path, monkeypatch, "nnic-fake", {"fake": "nnic_fake_plugin"},
                              {"nnic_fake_plugin": PRUNER_PLUGIN.format(cls="FakePruner", name="fake")})
    info = {i.name: i for i in nnic.list_plugins("pruner")}["fake"]
    assert (info.plugin, info.distribution, info.version) == ("fake", "nnic-fake", "1.2.3")
    assert type(nnic.pruner("fake", model(), [{"sparsity": 0.5, "op_types": ["Linear"]}])).__name__ == "FakePruner"


def test_a_plugin_that_fails_to_import_warns_with_its_name_distribution_and_cause(fresh_registry, tmp_path, monkeypatch):
    install_fake_distribution(tmp_path, monkeypatch, "nnic-broken", {"broken": "nnic_broken_plugin"},
                              {"nnic_broken_plugin": "import this_module_does_not_exist\n"})
    with pytest.warns(PluginLoadWarning) as record:
        names = {i.name for i in nnic.list_plugins()}
    message = str(record[0].message)
    for part in ("'broken'", "nnic_broken_plugin", "nnic-broken 1.2.3", "ModuleNotFoundError",
                 "this_module_does_not_exist", "NNIC_DISABLE_PLUGINS=broken"):
        assert part in message
    assert {"level", "naive", "example_random"} <= names


def test_a_plugin_whose_hook_raises_warns_and_the_rest_still_load(fresh_registry, tmp_path, monkeypatch):
    install_fake_distribution(tmp_path, monkeypatch, "nnic-raising", {"raising": "nnic_raising_plugin"}, {
        "nnic_raising_plugin": """
            import nnic

            @nnic.hookimpl
            def register_pruners(register):
                raise RuntimeError("boom")
        """})
    with pytest.warns(PluginLoadWarning, match=r"plugin 'raising' \(distribution nnic-raising 1.2.3\) raised in "
                                               r"register_pruners: RuntimeError: boom"):
        assert nnic.pruner("level", model(), [{"sparsity": 0.5, "op_types": ["Linear"]}])


def test_two_plugins_registering_the_same_name_is_an_error_naming_both(fresh_registry, tmp_path, monkeypatch):
    for sub, dist, plugin, cls in (("a", "nnic-one", "one", "A"), ("b", "nnic-two", "two", "B")):
        (tmp_path / sub).mkdir()
        install_fake_distribution(tmp_path / sub, monkeypatch, dist, {plugin: f"nnic_{plugin}"},
                                  {f"nnic_{plugin}": PRUNER_PLUGIN.format(cls=cls, name="twin")})
    with pytest.raises(PluginConflictError) as excinfo:
        nnic.pruner("twin", model(), [{"sparsity": 0.5, "op_types": ["Linear"]}])
    message = str(excinfo.value)
    for part in ("pruner 'twin'", "plugin 'one' (distribution nnic-one 1.2.3)",
                 "plugin 'two' (distribution nnic-two 1.2.3)", "NNIC_DISABLE_PLUGINS="):
        assert part in message
    # Other names are unaffected by the clash.
    assert nnic.pruner("level", model(), [{"sparsity": 0.5, "op_types": ["Linear"]}])


def test_a_misspelled_hook_is_reported_with_the_likely_name(fresh_registry, tmp_path, monkeypatch):
    install_fake_distribution(tmp_path, monkeypatch, "nnic-typo", {"typo": "nnic_typo_plugin"}, {
        "nnic_typo_plugin": """
            import nnic

            @nnic.hookimpl
            def register_pruner(register):
                pass
        """})
    with pytest.warns(PluginLoadWarning, match=r"'typo'.*unknown hook\(s\) 'register_pruner' \(did you mean "
                                               r"'register_pruners'\?\)"):
        names = {i.name for i in nnic.list_plugins()}
    assert "level" in names


def test_nnic_disable_plugins_skips_the_named_entry_points(fresh_registry, monkeypatch):
    monkeypatch.setenv("NNIC_DISABLE_PLUGINS", "example, level")
    names = {i.name for i in nnic.list_plugins()}
    assert "naive" in names and "level" not in names and "example_random" not in names


def test_disabling_autoload_keeps_only_the_builtins(fresh_registry, monkeypatch):
    monkeypatch.setenv("NNIC_DISABLE_PLUGIN_AUTOLOAD", "1")
    assert {i.distribution for i in nnic.list_plugins()} == {"nnic"}


def test_an_unknown_name_lists_the_available_ones(fresh_registry):
    with pytest.raises(UnknownPluginError, match=r"no pruner named 'levle' \(did you mean 'level'\?\); "
                                                  r"available: .*example_random.*level"):
        nnic.pruner("levle", model(), [])
    with pytest.raises(KeyError):  # also a KeyError, for code that catches lookups generically
        nnic.quantizer("nope", model(), [])


def test_aliases_reach_the_same_class(fresh_registry):
    from nnic.pruning import LevelPruner

    config = [{"sparsity": 0.5, "op_types": ["Linear"]}]
    assert type(nnic.pruner("magnitude", model(), config)) is LevelPruner
    assert type(nnic.pruner("LEVEL", model(), config)) is LevelPruner


def test_a_plugin_registered_by_hand_is_found(fresh_registry):
    from nnic.builtins.level import LevelPruner

    class Handmade(LevelPruner):
        name = "handmade"

    class Plugin:
        @nnic.hookimpl
        def register_pruners(self, register):
            register(Handmade)

    fresh_registry.register(Plugin(), name="handmade-plugin")
    info = {i.name: i for i in nnic.list_plugins("pruner")}["handmade"]
    assert info.plugin == "handmade-plugin" and "registered at run time" in info.distribution


def test_names_must_be_lower_case(fresh_registry):
    from nnic.builtins.level import LevelPruner

    class Plugin:
        @nnic.hookimpl
        def register_pruners(self, register):
            register(LevelPruner, name="Upper")

    fresh_registry.register(Plugin(), name="upper")
    with pytest.warns(PluginLoadWarning, match="names must be lower-case"):
        nnic.list_plugins()


def test_import_nnic_loads_no_plugin_no_kernel_and_no_torch():
    code = ("import sys, nnic; bad = [m for m in ('nnic.plugins', 'nnic._kernels', 'nnic.builtins.level', 'torch')"
            " if m in sys.modules]; print(bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_the_builtin_registry_loads_without_warnings(fresh_registry):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert nnic.list_plugins()


def test_nnic_trace_plugins_traces_hook_calls(fresh_registry, monkeypatch, capfd):
    monkeypatch.setenv("NNIC_TRACE_PLUGINS", "1")
    nnic.list_plugins()
    err = capfd.readouterr().err
    assert "register_pruners plugin 'level' (distribution nnic" in err
    assert "register_quantizers plugin 'naive'" in err
