"""nnic.recipe.compress end to end on a small CNN and scikit-learn's digits: what lands in the output folder,
that the saved model loads back to the same function, and that a failed stage keeps what came before."""

from __future__ import annotations

import copy

import pytest
import torch

from nnic import io
from nnic.recipe import StageFailed, compress, load_model, validate

MEASURE = {"threads": 1, "warmup": 1, "repeats": 3}


def tiny(stages: list[dict]) -> dict:
    return {"name": "tiny", "model": {"factory": "nnic.demo:DigitsCNN", "kwargs": {"width": 4, "hidden": 16}},
            "example_input": {"shape": [2, 1, 8, 8]}, "data": {"factory": "nnic.demo:digits_data"},
            "measure": MEASURE, "stages": stages}


PRUNE = {"stage": "prune", "pruner": "l1norm", "config_list": [{"sparsity": 0.5, "op_types": ["Conv2d"]}],
         "kwargs": {"dependency_aware": True}}
QUANTIZE = {"stage": "quantize", "quantizer": "naive",
            "config_list": [{"quant_types": ["weight"], "quant_bits": 8, "op_types": ["Conv2d", "Linear"]}]}


def test_a_full_recipe_writes_every_output_and_the_model_loads_back(tmp_path):
    recipe = validate(tiny([PRUNE, {"stage": "fine_tune", "steps": 3}, {"stage": "speedup"}, QUANTIZE,
                            {"stage": "quantization_speedup"}]), "tiny.yaml")
    result = compress(recipe, tmp_path, quiet=True)

    names = {p.name for p in tmp_path.iterdir()}
    assert {"recipe.json", "status.json", "model", "masks.safetensors", "calibration.json", "report.json",
            "report.html", "stages"} <= names
    assert sorted(p.name for p in (tmp_path / "stages").iterdir()) == [
        "00-prune", "01-fine_tune", "02-speedup", "03-quantize", "04-quantization_speedup"]
    status = io.load_json(tmp_path / "status.json")
    assert [s["status"] for s in status["stages"]] == ["done"] * 5
    assert status["stages"][0]["summary"]["layers"] == 4  # two convs and their BatchNorms
    assert io.load_json(tmp_path / "recipe.json")["stages"][1]["lr"] == 1e-3  # the resolved recipe

    assert type(result.model.features[0]).__name__ == "Int8Conv2d"
    assert result.model.features[0].out_channels == 2  # half of 4 channels removed for real
    loaded = load_model(tmp_path)
    x = torch.rand(5, 1, 8, 8)
    with torch.inference_mode():
        assert torch.equal(loaded(x), result.model(x))

    report = result.report
    assert report.after.params < report.before.params and report.after.macs < report.before.macs
    assert report.after.size_bytes < report.before.size_bytes / 2
    assert report.before.metric is not None and 0 <= report.after.metric <= 100
    assert report.after.latency["repeats"] == 3 and report.after.latency["threads"] == 1


def test_reduce_range_reaches_the_int8_layers_and_survives_the_saved_model(tmp_path):
    recipe = validate(tiny([QUANTIZE, {"stage": "quantization_speedup", "kwargs": {"reduce_range": True}}]), "t.yaml")
    result = compress(recipe, tmp_path, quiet=True)
    layers = [m for m in result.model.modules() if type(m).__name__ in ("Int8Linear", "Int8Conv2d")]
    assert layers and all(m.reduce_range for m in layers)
    loaded = load_model(tmp_path)
    assert all(m.reduce_range for m in loaded.modules() if type(m).__name__ in ("Int8Linear", "Int8Conv2d"))
    x = torch.rand(5, 1, 8, 8)
    with torch.inference_mode():
        assert torch.equal(loaded(x), result.model(x))


def test_masked_and_simulated_models_are_called_what_they_are(tmp_path):
    level = {"stage": "prune", "pruner": "level", "config_list": [{"sparsity": 0.8, "op_types": ["Linear"]}]}
    result = compress(validate(tiny([level, QUANTIZE]), "t.yaml"), tmp_path, quiet=True)
    notes = " | ".join(result.report.notes)
    assert "2 layer(s) masked but not sped up: their zeros are still stored and computed (classifier.0, classifier.2)" in notes
    assert "simulated quantization only" in notes
    assert "size on disk unchanged" in notes
    rows = {c.name: c for c in result.report.layers()}
    # 80 % of the weights, and the bias, which is not pruned
    assert rows["classifier.0"].note == "simulated quantization only; masked but not sped up (79% zeros still computed)"
    assert rows["features.0"].note == "simulated quantization only"
    assert rows["features.1"].note == ""  # a BatchNorm's zero-initialised shift is not a mask
    assert rows["classifier.0"].after.zero_fraction == pytest.approx(0.8, abs=0.01)
    # saved with the masks and the fake quantization folded in: it loads back into the plain architecture
    loaded = load_model(tmp_path)
    x = torch.rand(3, 1, 8, 8)
    with torch.inference_mode():
        torch.testing.assert_close(loaded(x), result.model(x), rtol=1e-5, atol=1e-6)
    assert type(loaded.classifier[0]) is torch.nn.Linear


def test_a_sparsify_stage_moves_fine_grained_zeros_to_sparse_kernels_and_records_why(tmp_path):
    level = {"stage": "prune", "pruner": "level", "config_list": [{"sparsity": 0.9, "op_names": ["classifier.0"]}]}
    # min_speedup 0: every layer at or below max_density goes sparse (still timed), so the outcome is not a race
    sparsify = {"stage": "sparsify", "kwargs": {"min_speedup": 0.0, "rounds": 1}, "batch": 4}
    result = compress(validate(tiny([level, QUANTIZE, {"stage": "quantization_speedup"}, sparsify]), "t.yaml"),
                      tmp_path, quiet=True)

    assert type(result.model.classifier[0]).__name__ == "SparseLinear"  # int8 codes, 90 % of them zero
    assert type(result.model.classifier[2]).__name__ == "Int8Linear"  # dense: above max_density
    summary = io.load_json(tmp_path / "status.json")["stages"][3]["summary"]
    assert summary["sparse_layers"] == ["classifier.0"]
    assert "above max_density" in summary["kept_dense"]["classifier.2"]
    decisions = io.load_json(tmp_path / "stages" / "03-sparsify" / "sparsify.json")["layers"]
    assert decisions["classifier.0"]["tokens"] == 4 and decisions["classifier.0"]["dense_ms"] > 0
    loaded = load_model(tmp_path)  # pickle-free, sparse layer included
    x = torch.rand(3, 1, 8, 8)
    with torch.inference_mode():
        torch.testing.assert_close(loaded(x), result.model(x))
    assert result.report.after.size_bytes < result.report.before.size_bytes / 2


def test_fine_grained_zeros_that_run_dense_are_called_what_they_are(tmp_path):
    level = {"stage": "prune", "pruner": "level", "config_list": [{"sparsity": 0.9, "op_names": ["classifier.0"]}]}
    keep_dense = {"stage": "sparsify", "kwargs": {"max_density": 0.01}}  # nothing is sparse enough to try
    result = compress(validate(tiny([level, QUANTIZE, {"stage": "quantization_speedup"}, keep_dense]), "t.yaml"),
                      tmp_path, quiet=True)
    rows = {c.name: c for c in result.report.layers()}
    assert type(result.model.classifier[0]).__name__ == "Int8Linear"
    assert rows["classifier.0"].note.startswith("89% zeros computed densely")  # 90 % of the weights, no bias
    assert rows["features.1"].note == ""  # a BatchNorm's zero shift is not sparsity
    assert any(n.startswith("1 layer(s) run dense with their fine-grained zeros (classifier.0)")
               for n in result.report.notes)


def test_a_failed_stage_keeps_earlier_outputs_and_names_itself(tmp_path):
    recipe = validate(tiny([PRUNE, {"stage": "fine_tune", "steps": 2},
                            {"stage": "quantization_speedup", "bits": {"no_such_layer": 8}}, {"stage": "speedup"}]),
                      "t.yaml")
    (tmp_path / "model").mkdir()  # an earlier run's outputs must not pass for this one's
    (tmp_path / "report.json").write_text("{}")
    with pytest.raises(StageFailed) as exc:
        compress(recipe, tmp_path, quiet=True)
    assert exc.value.index == 2 and exc.value.stage == "quantization_speedup"
    assert str(exc.value).startswith("stage 2 (quantization_speedup) failed: ")
    assert "no_such_layer" in str(exc.value)
    status = io.load_json(tmp_path / "status.json")
    assert [s["status"] for s in status["stages"]] == ["done", "done", "failed", "not run"]
    assert "no_such_layer" in status["stages"][2]["error"]
    assert (tmp_path / "stages" / "00-prune" / "masks.safetensors").is_file()
    assert (tmp_path / "stages" / "01-fine_tune" / "model" / "model.safetensors").is_file()
    assert not (tmp_path / "model").exists() and not (tmp_path / "report.json").exists()
    masks = io.load_masks(tmp_path / "stages" / "00-prune" / "masks.safetensors")
    assert masks["features.0"]["weight"].shape == (4, 1, 3, 3)


def test_the_same_recipe_gives_the_same_model(tmp_path):
    recipe = validate(tiny([PRUNE, {"stage": "fine_tune", "steps": 2}, {"stage": "speedup"}]), "t.yaml")
    a = compress(recipe, tmp_path / "a", quiet=True, report=False)
    b = compress(copy.deepcopy(recipe), tmp_path / "b", quiet=True, report=False)
    for (n1, p1), (n2, p2) in zip(a.model.state_dict().items(), b.model.state_dict().items()):
        assert n1 == n2 and torch.equal(p1, p2), n1


@pytest.mark.slow
def test_an_auto_stage_searches_applies_the_best_trial_and_plots_it(tmp_path):
    pytest.importorskip("optuna")
    auto = {"stage": "auto", "kwargs": {"n_trials": 2, "constraints": {"flops": 0.9},
                                        "measure": {"repeats": 2, "warmup": 1}}}
    result = compress(validate(tiny([auto]), "t.yaml"), tmp_path, quiet=True)
    assert (tmp_path / "stages" / "00-auto" / "trials.json").is_file()
    assert result.report.after.macs <= 0.9 * result.report.before.macs  # the constraint the search met
    assert list(result.report.images) == ["search results"]  # its Pareto plot, in the HTML report


def test_a_factory_that_raises_is_named_by_its_recipe_section(tmp_path):
    from nnic.recipe import RecipeError

    spec = tiny([PRUNE])
    spec["model"]["kwargs"] = {"widht": 4}
    with pytest.raises(RecipeError, match=r"t.yaml: model: building it failed: TypeError: .*widht"):
        compress(validate(spec, "t.yaml"), tmp_path, quiet=True)
