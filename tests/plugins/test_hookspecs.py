"""Every hook is documented: a docstring with its parameter, and a section in docs/plugin-hooks.md."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest

from nnic import hookspecs
from nnic.registry import HOOK_KINDS

DOCS = Path(__file__).resolve().parents[2] / "docs" / "plugin-hooks.md"
HOOKS = [name for name, fn in vars(hookspecs).items() if inspect.isfunction(fn) and hasattr(fn, "nnic_spec")]


def test_the_hooks_are_the_registration_hooks():
    assert sorted(HOOKS) == sorted(HOOK_KINDS)


@pytest.mark.parametrize("name", HOOKS)
def test_hook_has_a_docstring_naming_its_parameters(name):
    fn = getattr(hookspecs, name)
    doc = inspect.getdoc(fn) or ""
    assert doc, f"hook {name} has no docstring"
    for param in inspect.signature(fn).parameters:
        assert f":param {param}:" in doc, f"hook {name} does not document {param}"
    assert ".. versionadded::" in doc


@pytest.mark.parametrize("name", HOOKS)
def test_hook_has_a_section_in_the_docs(name):
    signature = f"{name}({', '.join(inspect.signature(getattr(hookspecs, name)).parameters)})"
    assert f"## {signature}\n" in DOCS.read_text(), f"docs/plugin-hooks.md lacks a '## {signature}' section"
