"""The README's quick start is what CI runs."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_ci_runs_the_readmes_test_command_verbatim():
    ci_command = [line for line in (ROOT / ".ci/run").read_text().splitlines() if line.startswith("pip install")]
    assert len(ci_command) == 1
    blocks = (ROOT / "README.md").read_text().split("## Quick start", 1)[1].split("## ", 1)[0]
    commands = [line for line in blocks.splitlines() if line.startswith("pip install")]
    assert len(commands) == 2, "the quick start has exactly two commands"
    assert commands[1] == ci_command[0]
    assert "nnic demo" in commands[0]
