"""The registry's trust boundary: built-in names, the autoload switch, misbehaving plugins, clean output."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from torch import nn

import nnic
from nnic.registry import BuiltinOverrideWarning, PluginConflictError, PluginLoadWarning

from .test_loading import PRUNER_PLUGIN, install_fake_distribution

CONFIG = [{"sparsity": 0.5, "op_types": ["Linear"]}]


def model():
    return nn.Sequential(nn.Linear(8, 8))


def shadow_level(tmp_path, monkeypatch):
    install_fake_distribution(tmp_path, monkeypatch, "nnic-shadow", {"shadow": "nnic_shadow_plugin"},
                              {"nnic_shadow_plugin": PRUNER_PLUGIN.format(cls="ShadowPruner", name="level")})


def test_a_plugin_claiming_a_builtin_name_is_refused_loudly_and_the_builtin_keeps_it(fresh_registry, tmp_path,
                                                                                     monkeypatch):
    from nnic.builtins.level import LevelPruner

    shadow_level(tmp_path, monkeypatch)
    with pytest.warns(PluginLoadWarning, match=r"plugin 'shadow' \(distribution nnic-shadow 1.2.3\) registered pruner "
                                               r"'level', a name of nnic's built-in plugin 'level'.*"
                                               r"NNIC_OVERRIDE_BUILTINS=level"):
        assert type(nnic.pruner("level", model(), CONFIG)) is LevelPruner


def test_disabling_the_builtin_does_not_hand_its_name_to_the_shadowing_plugin(fresh_registry, tmp_path, monkeypatch):
    shadow_level(tmp_path, monkeypatch)
    monkeypatch.setenv("NNIC_DISABLE_PLUGINS", "level")
    with pytest.warns(PluginLoadWarning, match="a disabled built-in"):
        with pytest.raises(PluginConflictError, match=r"pruner 'level' is a name of nnic's built-ins.*"
                                                      r"plugin 'shadow'.*NNIC_OVERRIDE_BUILTINS=level"):
            nnic.pruner("level", model(), CONFIG)


def test_overriding_a_builtin_is_an_explicit_opt_in_that_warns(fresh_registry, tmp_path, monkeypatch):
    shadow_level(tmp_path, monkeypatch)
    monkeypatch.setenv("NNIC_OVERRIDE_BUILTINS", "level")
    with pytest.warns(BuiltinOverrideWarning, match=r"REPLACING nnic's built-in plugin 'level'"):
        assert type(nnic.pruner("level", model(), CONFIG)).__name__ == "ShadowPruner"
    assert type(nnic.pruner("magnitude", model(), CONFIG)).__name__ == "LevelPruner"  # only what was named


def test_the_conflict_hint_names_the_entry_point_that_drops_each_side(fresh_registry, tmp_path, monkeypatch):
    for sub, dist, plugin, cls in (("a", "nnic-one", "one", "A"), ("b", "nnic-two", "two", "B")):
        (tmp_path / sub).mkdir()
        install_fake_distribution(tmp_path / sub, monkeypatch, dist, {plugin: f"nnic_{plugin}"},
                                  {f"nnic_{plugin}": PRUNER_PLUGIN.format(cls=cls, name="twin")})
    with pytest.raises(PluginConflictError) as excinfo:
        nnic.pruner("twin", model(), CONFIG)
    assert ("NNIC_DISABLE_PLUGINS=one drops plugin 'one' (distribution nnic-one 1.2.3); "
            "NNIC_DISABLE_PLUGINS=two drops plugin 'two' (distribution nnic-two 1.2.3)") in str(excinfo.value)


def test_a_distribution_calling_itself_nnic_is_not_a_builtin(fresh_registry, tmp_path, monkeypatch):
    install_fake_distribution(tmp_path, monkeypatch, "nnic", {"impostor": "nnic_impostor_plugin"},
                              {"nnic_impostor_plugin": PRUNER_PLUGIN.format(cls="Impostor", name="impostor")})
    monkeypatch.setenv("NNIC_DISABLE_PLUGIN_AUTOLOAD", "1")
    names = {i.name for i in nnic.list_plugins("pruner")}
    assert "level" in names and "impostor" not in names


@pytest.mark.parametrize("value, autoload", [("1", False), ("true", False), ("ON", False), ("0", True),
                                             ("false", True), ("", True)])
def test_the_autoload_switch_is_a_boolean(fresh_registry, monkeypatch, value, autoload):
    monkeypatch.setenv("NNIC_DISABLE_PLUGIN_AUTOLOAD", value)
    assert ("example_random" in {i.name for i in nnic.list_plugins("pruner")}) is autoload


def test_a_garbled_autoload_switch_is_an_error_naming_the_variable(fresh_registry, monkeypatch):
    monkeypatch.setenv("NNIC_DISABLE_PLUGIN_AUTOLOAD", "maybe")
    with pytest.raises(ValueError, match=r"NNIC_DISABLE_PLUGIN_AUTOLOAD='maybe': expected a boolean"):
        nnic.list_plugins()


COUNTING_EXIT = """
    import pathlib
    counter = pathlib.Path({counter!r})
    counter.write_text(counter.read_text() + "x" if counter.exists() else "x")
    raise SystemExit(3)
"""


def test_a_plugin_exiting_at_import_is_a_remembered_plugin_failure(fresh_registry, tmp_path, monkeypatch):
    counter = tmp_path / "imports"
    install_fake_distribution(tmp_path, monkeypatch, "nnic-exit", {"exiting": "nnic_exit_plugin"},
                              {"nnic_exit_plugin": COUNTING_EXIT.format(counter=str(counter))})
    with pytest.warns(PluginLoadWarning, match=r"'exiting'.*nnic-exit 1.2.3.*SystemExit: 3"):
        assert nnic.pruner("level", model(), CONFIG)
    assert nnic.pruner("level", model(), CONFIG) and nnic.list_plugins()  # no second attempt, no second warning
    assert counter.read_text() == "x"


def test_a_plugin_exiting_in_a_hook_is_a_plugin_failure(fresh_registry, tmp_path, monkeypatch):
    install_fake_distribution(tmp_path, monkeypatch, "nnic-exit", {"exiting": "nnic_exit_hook"}, {
        "nnic_exit_hook": """
            import sys
            import nnic

            @nnic.hookimpl
            def register_pruners(register):
                sys.exit("bye")
        """})
    with pytest.warns(PluginLoadWarning, match=r"plugin 'exiting' .* raised in register_pruners: SystemExit: bye"):
        assert "level" in {i.name for i in nnic.list_plugins()}


def test_keyboard_interrupt_in_a_plugin_propagates_and_is_not_remembered(fresh_registry, tmp_path, monkeypatch):
    install_fake_distribution(tmp_path, monkeypatch, "nnic-ctrlc", {"ctrlc": "nnic_ctrlc_plugin"},
                              {"nnic_ctrlc_plugin": "raise KeyboardInterrupt\n"})
    with pytest.raises(KeyboardInterrupt):
        nnic.list_plugins()
    with pytest.raises(KeyboardInterrupt):  # tried again: an interrupted load is not a verdict on the plugin
        nnic.list_plugins()


@pytest.mark.parametrize("registered, message", [
    ("42", r"registered 42 as a pruner: expected a subclass of nnic.pruning.base.Pruner"),
    ("nnic.quantization.Quantizer", r"registered <class 'nnic.quantization.base.Quantizer'> as a pruner: expected a subclass of nnic.pruning.base.Pruner"),
])
def test_registering_what_is_not_a_pruner_is_a_type_error_naming_the_plugin(fresh_registry, registered, message):
    from nnic.registry import Register, Registry, Source

    register = Register(Registry(), "pruner", Source("bad", "nnic-bad", "1.0"))
    with pytest.raises(TypeError, match=r"plugin 'bad' \(distribution nnic-bad 1.0\) " + message):
        register(eval(registered, {"nnic": nnic, "__builtins__": {}}) if registered != "42" else 42, name="x")


def test_aliases_given_as_one_string_is_a_type_error(fresh_registry):
    from nnic.builtins.level import LevelPruner
    from nnic.registry import Register, Registry, Source

    registry = Registry()
    with pytest.raises(TypeError, match=r"aliases='abc': expected a list or tuple of names"):
        Register(registry, "pruner", Source("p", "d", "1"))(LevelPruner, name="mine", aliases="abc")
    assert registry.list() == []


def test_a_printing_plugin_does_not_pollute_nnic_plugins_output(tmp_path):
    info = tmp_path / "nnic_chatty-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: nnic-chatty\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[nnic]\nchatty = nnic_chatty\n")
    (tmp_path / "nnic_chatty.py").write_text(
        "import nnic\nprint('hello from import')\n\n@nnic.hookimpl\ndef register_pruners(register):\n"
        "    print('hello from hook')\n")
    env = {"PYTHONPATH": str(tmp_path), "NNIC_TRACE_PLUGINS": "1", "PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, "-m", "nnic.cli", "plugins", "--json"], capture_output=True, text=True,
                          check=True, env=env)
    assert {"level", "naive"} <= {row["name"] for row in json.loads(done.stdout)}
    assert "hello from import" in done.stderr and "hello from hook" in done.stderr
    # The trace names each plugin with how long it took to load.
    assert "nnic: loading plugin 'chatty' (nnic_chatty, distribution nnic-chatty) took " in done.stderr
    assert "nnic: loading plugin 'level' (nnic.builtins.level, distribution nnic) took " in done.stderr
