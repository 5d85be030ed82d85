"""Shared fixtures: a fresh plugin registry per test that asks for one, the hook docs' examples run as written,
hypothesis profiles."""

from __future__ import annotations

import os
import re
import sys
import types
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

settings.register_profile("dev", max_examples=50, deadline=None)
settings.register_profile("ci", max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("deep", max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("NNIC_HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))


@pytest.fixture
def fresh_registry(monkeypatch):
    """Forget loaded plugins before and after the test, so env vars and fake distributions take effect."""
    from nnic import plugins

    plugins.reload()
    yield plugins
    monkeypatch.undo()
    plugins.reload()


PLUGIN_HOOKS_DOCS = Path(__file__).resolve().parents[1] / "docs" / "plugin-hooks.md"


@pytest.fixture
def plugin_hooks_example(fresh_registry, monkeypatch):
    """Runs the first python block after a heading of docs/plugin-hooks.md as a module and returns the module.

    Why a module in `sys.modules`: the examples define classes that pluggy and dataclasses look up by module name.
    """

    def run(heading: str, module_name: str) -> types.ModuleType:
        section = PLUGIN_HOOKS_DOCS.read_text().split(heading, 1)[1]
        code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
        module = types.ModuleType(module_name)
        monkeypatch.setitem(sys.modules, module_name, module)
        exec(compile(code, str(PLUGIN_HOOKS_DOCS), "exec"), module.__dict__)
        return module

    return run
