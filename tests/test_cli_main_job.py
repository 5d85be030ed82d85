"""nnic compress / report / bench / sensitivity end to end on a small recipe file."""

from __future__ import annotations

import json

import pytest
import yaml

from nnic.cli import main

RECIPE = {
    "name": "tiny",
    "model": {"factory": "nnic.demo:DigitsCNN", "kwargs": {"width": 4, "hidden": 16}},
    "example_input": {"shape": [4, 1, 8, 8]},
    "data": {"factory": "nnic.demo:digits_data"},
    "measure": {"threads": 1, "warmup": 1, "repeats": 3},
    "stages": [
        {"stage": "prune", "pruner": "l1norm", "config_list": [{"sparsity": 0.5, "op_types": ["Conv2d"]}],
         "kwargs": {"dependency_aware": True}},
        {"stage": "fine_tune", "steps": 3},
        {"stage": "speedup"},
        {"stage": "quantize", "quantizer": "naive",
         "config_list": [{"quant_types": ["weight"], "quant_bits": 8, "op_types": ["Linear"]}]},
        {"stage": "quantization_speedup"},
    ],
}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """One `nnic compress` run that the report and bench tests read."""
    tmp = tmp_path_factory.mktemp("run")
    (tmp / "tiny.yaml").write_text(yaml.safe_dump(RECIPE))
    assert main(["compress", str(tmp / "tiny.yaml"), "-o", str(tmp / "out"), "--quiet"]) == 0
    return tmp / "out"


def test_compress_writes_the_run_folder(run_dir):
    assert {p.name for p in run_dir.iterdir()} >= {"model", "masks.safetensors", "calibration.json", "recipe.json",
                                                   "status.json", "report.json", "report.html", "stages"}


def test_report_prints_the_table_json_and_writes_html(run_dir, capsys, tmp_path):
    assert main(["report", str(run_dir), "--html", str(tmp_path / "r.html")]) == 0
    out = capsys.readouterr().out
    assert "nnic report: tiny" in out and "Linear → Int8Linear" in out
    assert (tmp_path / "r.html").read_text().startswith("<!DOCTYPE html>")
    assert main(["report", str(run_dir), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["format"] == "nnic.report/1" and data["after"]["params"] < data["before"]["params"]


def test_report_remeasures_the_saved_models(run_dir, capsys):
    assert main(["report", str(run_dir), "--remeasure", "--json", "--threads", "1", "--repeats", "2"]) == 0
    data = json.loads(capsys.readouterr().out)
    saved = json.loads((run_dir / "report.json").read_text())
    assert data["after"]["params"] == saved["after"]["params"] and data["after"]["macs"] == saved["after"]["macs"]
    assert data["after"]["latency"]["repeats"] == 2


def test_report_of_a_model_and_input(capsys, run_dir):
    assert main(["report", "--model", "nnic.demo:DigitsCNN", "--input-shape", "2,1,8,8", "--compressed",
                 str(run_dir), "--threads", "1", "--repeats", "2"]) == 0
    out = capsys.readouterr().out
    assert "Linear → Int8Linear" in out and "nnic report: model" in out


def test_bench_compares_dense_and_compressed_with_the_method_stated(run_dir, capsys):
    assert main(["bench", str(run_dir), "--threads", "1", "--repeats", "4", "--rounds", "2", "--warmup", "1"]) == 0
    out = capsys.readouterr().out
    assert "4 timed runs per model after 1 warm-up runs, in 2 interleaved rounds" in out
    assert "1 threads" in out and "as fast as dense (ratio of medians)" in out
    assert main(["bench", str(run_dir), "--json", "--threads", "1", "--repeats", "2"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["dense"]["repeats"] == data["compressed"]["repeats"] == 2 and data["speedup"] > 0


def test_a_bad_recipe_is_reported_before_any_work(tmp_path, capsys):
    bad = dict(RECIPE, stages=[dict(RECIPE["stages"][0], config_list=[{"sparsity": 1.5, "op_types": ["Conv2d"]}])])
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(bad))
    assert main(["compress", str(tmp_path / "recipe.yaml"), "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert f"nnic: error: {tmp_path / 'recipe.yaml'}: stages[0].config_list[0]['sparsity']: expected a float in " \
           f"[0, 1), got 1.5" in err
    assert not (tmp_path / "out").exists()


def test_a_failed_stage_exits_1_naming_the_stage(tmp_path, capsys):
    failing = dict(RECIPE, stages=RECIPE["stages"][:2] + [{"stage": "quantization_speedup", "bits": {"nope": 8}}])
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(failing))
    assert main(["compress", str(tmp_path / "r.yaml"), "-o", str(tmp_path / "out"), "-q"]) == 1
    err = capsys.readouterr().err
    assert "nnic: error: stage 2 (quantization_speedup) failed:" in err and "nope" in err
    assert f"the outputs of stages 0-1 are in {tmp_path / 'out' / 'stages'}" in err


def test_sensitivity_plots_each_layer(tmp_path, capsys):
    pytest.importorskip("optuna")
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(RECIPE))
    assert main(["sensitivity", str(tmp_path / "r.yaml"), "-o", str(tmp_path / "s.png"), "--sparsities", "0.25,0.5",
                 "-q"]) == 0
    assert (tmp_path / "s.png").read_bytes().startswith(b"\x89PNG")
    out = capsys.readouterr().out
    assert "l1norm sensitivity" in out and "features.0" in out
