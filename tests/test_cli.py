"""The nnic command line."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from nnic.cli import main


def test_plugins_prints_a_table_of_name_kind_distribution_version(capsys):
    assert main(["plugins"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["name", "kind", "distribution", "version"]
    rows = [line.split() for line in lines[2:]]
    assert ["level", "(magnitude)", "pruner", "nnic"] == rows[[r[0] for r in rows].index("level")][:4]
    assert any(r[0] == "example_random" and r[2] == "nnic-example" and r[3] == "0.1.0" for r in rows)


def test_plugins_json_and_kind_filter(capsys):
    main(["plugins", "--kind", "quantizer", "--json"])
    listed = json.loads(capsys.readouterr().out)
    assert {p["kind"] for p in listed} == {"quantizer"}
    naive = next(p for p in listed if p["name"] == "naive")
    assert (naive["plugin"], naive["distribution"], naive["aliases"]) == ("naive", "nnic", [])


def test_demo_prunes_quantizes_and_reports(capsys, tmp_path):
    assert main(["demo", "--sparsity", "0.5", "--bits", "4", "--steps", "5", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "Level pruning at sparsity 0.5, fine-tuning, then Naive 4-bit" in out
    stages = [line for line in out.splitlines() if line.startswith(("dense", "Level", "fine-tuned", "Naive"))]
    assert len(stages) == 4 and stages[1].split()[-2] == stages[2].split()[-2]  # fine-tuning revives nothing
    total = next(line for line in out.splitlines() if line.startswith("total")).split()
    assert float(total[4]) == pytest.approx(0.5, abs=1e-3)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "calibration.json", "masks.safetensors", "pruned.safetensors", "quantized.safetensors"]


@pytest.mark.parametrize("argv, message", [
    (["demo", "--sparsity", "1.5"], "expected a sparsity in [0, 1), got 1.5"),
    (["demo", "--bits", "12"], "expected 2 to 8 bits, got 12"),
    (["plugins", "--kind", "nope"], "invalid choice"),
])
def test_bad_arguments_are_explained(capsys, argv, message):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2 and message in capsys.readouterr().err


def test_the_installed_console_script_runs():
    exe = shutil.which("nnic")
    assert exe, "the nnic console script is not installed"
    out = subprocess.run([exe, "plugins"], capture_output=True, text=True, check=True).stdout
    assert "level" in out
