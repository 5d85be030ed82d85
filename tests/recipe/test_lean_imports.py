"""The command line and the recipe package load their heavy dependencies only when a command needs them."""

from __future__ import annotations

import subprocess
import sys


def test_importing_the_cli_and_recipes_loads_no_torch_rich_yaml_or_matplotlib():
    code = ("import sys, nnic, nnic.cli, nnic.recipe; "
            "print(sorted(m for m in ('torch', 'rich', 'yaml', 'matplotlib') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
