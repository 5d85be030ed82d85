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


@pytest.mark.slow
def test_demo_runs_the_digits_recipe_and_prints_one_before_after_table(capsys, tmp_path):
    assert main(["demo", "--out", str(tmp_path), "--quiet"]) == 0
    out = capsys.readouterr().out
    rows = {line.split("│")[1].strip(): [c.strip() for c in line.split("│")[2:5]]
            for line in out.splitlines() if line.startswith("│")}
    assert {"accuracy (%)", "params", "MACs (FLOPs)", "size on disk"} <= set(rows)
    assert float(rows["params"][2].rstrip("×")) < 0.5 and float(rows["size on disk"][2].rstrip("×")) < 0.15
    assert float(rows["accuracy (%)"][1]) > 90  # the compressed model still reads digits
    assert str(tmp_path / "report.html") in out.replace("\n", "")
    assert (tmp_path / "report.html").is_file() and (tmp_path / "model" / "model.safetensors").is_file()


@pytest.mark.parametrize("argv, message", [
    (["plugins", "--kind", "nope"], "invalid choice"),
    (["compress", "-o", "x"], "give a RECIPE file or --example NAME"),
    (["compress", "--example", "mnist", "-o", "x"], "no example recipe named 'mnist'; available: digits"),
    (["bench", "nowhere"], "nowhere: not a folder written by nnic compress"),
    (["report"], "give OUT (a folder written by nnic compress) or --model SPEC --input-shape SHAPE"),
    (["report", "--model", "nnic.demo:DigitsCNN"], "--model needs --input-shape"),
    (["report", "--model", "x:y", "--input-shape", "1,0"], "expected comma-separated positive ints"),
    (["sensitivity", "--example", "digits", "-o", "s.png", "--sparsities", "0.5,1.5"],
     "expected sparsities in (0, 1)"),
])
def test_bad_arguments_are_explained(capsys, argv, message):
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's own checks
        code = exc.code
    assert code == 2 and message in capsys.readouterr().err


def test_the_installed_console_script_runs():
    exe = shutil.which("nnic")
    assert exe, "the nnic console script is not installed"
    out = subprocess.run([exe, "plugins"], capture_output=True, text=True, check=True).stdout
    assert "level" in out


def test_a_reader_that_leaves_early_gets_no_traceback():
    """``nnic plugins | head -1``: the pipe closes before the table is written."""
    exe = shutil.which("nnic")
    with subprocess.Popen([exe, "plugins"], stdout=subprocess.PIPE, stderr=subprocess.PIPE) as proc:
        proc.stdout.close()  # before the CLI has imported anything, so every write meets a closed pipe
        err = proc.stderr.read().decode()
        assert proc.wait(timeout=120) == 1
    assert "Traceback" not in err, err
