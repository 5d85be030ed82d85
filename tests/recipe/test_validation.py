"""A recipe is checked in full before any work starts, and every mistake names the file and the key."""

from __future__ import annotations

import copy
import json

import pytest

from nnic.recipe import RecipeError, load_recipe, validate

GOOD = {
    "name": "tiny",
    "model": {"factory": "nnic.demo:DigitsCNN", "kwargs": {"width": 4}},
    "example_input": {"shape": [1, 1, 8, 8]},
    "data": {"factory": "nnic.demo:digits_data"},
    "stages": [
        {"stage": "prune", "pruner": "l1norm", "config_list": [{"sparsity": 0.5, "op_types": ["Conv2d"]}]},
        {"stage": "fine_tune", "steps": 3},
        {"stage": "speedup"},
        {"stage": "quantize", "quantizer": "naive",
         "config_list": [{"quant_types": ["weight"], "quant_bits": 8, "op_types": ["Linear"]}]},
        {"stage": "quantization_speedup"},
    ],
}


def _with(path: str, value):
    """GOOD with the value at ``path`` ("stages.2.config_list") replaced (or deleted when value is ...)."""
    recipe = copy.deepcopy(GOOD)
    *parents, last = path.split(".")
    node = recipe
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node[part]
    key = int(last) if isinstance(node, list) else last
    if value is ...:
        del node[key]
    else:
        node[key] = value
    return recipe


def test_the_good_recipe_is_normalised_with_defaults():
    recipe = validate(GOOD, "recipe.yaml")
    assert recipe.spec["seed"] == 0 and recipe.spec["measure"] == {"batch": None, "threads": None, "warmup": 3,
                                                                   "repeats": 20}
    assert recipe.stages[1] == {"stage": "fine_tune", "steps": 3, "lr": 1e-3, "optimizer": "adam",
                                "weight_decay": 0.0}
    assert recipe.stages[3]["calibration_batches"] == 16
    assert validate(recipe.spec, "again.json").spec == recipe.spec  # normalising is idempotent


@pytest.mark.parametrize("path, value, message", [
    ("stages.0.config_list", [{"sparsity": 1.5, "op_types": ["Conv2d"]}],
     "recipe.yaml: stages[0].config_list[0]['sparsity']: expected a float in [0, 1), got 1.5"),
    ("stages.3.config_list", [{"quant_types": ["weight"], "quant_bits": 3.5, "op_types": ["Linear"]}],
     "recipe.yaml: stages[3].config_list[0]['quant_bits']"),
    ("stages.0.pruner", "l1nrom", "recipe.yaml: stages[0].pruner: no pruner named 'l1nrom' (did you mean 'l1norm'?)"),
    ("stages.0.kwargs", {"dependency_awre": True},
     "recipe.yaml: stages[0].kwargs.dependency_awre: pruner 'l1norm' does not take this argument"),
    ("stages.1.stage", "finetune", "recipe.yaml: stages[1].stage: expected one of prune, fine_tune,"),
    ("stages.1.steps", 0, "recipe.yaml: stages[1].steps: expected an int >= 1, got 0"),
    ("stages.1.lr", "fast", "recipe.yaml: stages[1].lr: expected a number > 0, got 'fast'"),
    ("stages.2.kwargs", {"strictly": True}, "recipe.yaml: stages[2].kwargs.strictly: speedup_model does not take"),
    ("stages.3.calibration_batches", -1, "recipe.yaml: stages[3].calibration_batches: expected an int >= 1, got -1"),
    ("stages.4.bits", {"fc": "eight"}, "recipe.yaml: stages[4].bits: expected a mapping {layer name: bits"),
    ("stages.0.colour", "red", "recipe.yaml: stages[0].colour: unknown key (allowed: stage, pruner, config_list, kwargs)"),
    ("stages", [], "recipe.yaml: stages: expected a non-empty list of stages, got []"),
    ("model.factory", "nnic.demo.DigitsCNN", "recipe.yaml: model.factory: expected 'package.module:callable'"),
    ("model.torchvision", "resnet18", "recipe.yaml: model: expected exactly one of factory, torchvision, "
                                      "huggingface, saved, got factory, torchvision"),
    ("example_input.shape", [1, 0, 8], "recipe.yaml: example_input.shape: expected a list of positive ints"),
    ("example_input.dtype", "float8", "recipe.yaml: example_input.dtype: expected one of float32"),
    ("measure", {"repeats": 0}, "recipe.yaml: measure.repeats: expected an int >= 1, got 0"),
    ("example_input", ..., "recipe.yaml: example_input: missing (required)"),
    ("colour", "red", "recipe.yaml: colour: unknown key"),
])
def test_mistakes_name_the_file_the_stage_and_the_key(path, value, message):
    with pytest.raises(RecipeError) as exc:
        validate(_with(path, value), "recipe.yaml")
    assert str(exc.value).startswith(message)


@pytest.mark.parametrize("spec, message", [
    ({"stage": "sparsify", "kwargs": {"min_speed": 2}},
     "recipe.yaml: stages[0].kwargs.min_speed: sparsify does not take this argument (it takes: min_speedup,"),
    ({"stage": "sparsify", "batch": 0}, "recipe.yaml: stages[0].batch: expected an int >= 1, got 0"),
    ({"stage": "sparsify", "threads": 2}, "recipe.yaml: stages[0].threads: unknown key (allowed: stage, kwargs, batch)"),
])
def test_a_sparsify_stage_is_checked_like_the_others(spec, message):
    with pytest.raises(RecipeError) as exc:
        validate({**GOOD, "stages": [spec]}, "recipe.yaml")
    assert str(exc.value).startswith(message)


def test_a_scheduled_pruner_is_checked_with_the_pruner_it_schedules():
    agp = {"stage": "prune", "pruner": "agp", "config_list": [{"sparsity": 0.5, "op_types": ["Conv2d"]}],
           "kwargs": {"pruning_algorithm": "l1nrom", "total_iteration": 2}}
    with pytest.raises(RecipeError, match=r"r.yaml: stages\[0\].kwargs.pruning_algorithm: no pruner named 'l1nrom'"):
        validate(_with("stages", [agp]), "r.yaml")
    agp["kwargs"]["pruning_algorithm"] = "l1norm"
    assert validate(_with("stages", [agp]), "r.yaml").stages[0]["kwargs"]["pruning_algorithm"] == "l1norm"


def test_stages_that_need_an_earlier_stage_or_data_say_so():
    no_prune = _with("stages", [{"stage": "speedup"}])
    with pytest.raises(RecipeError, match=r"stages\[0\]: speedup removes what a prune stage masked"):
        validate(no_prune, "r.yaml")
    no_quantize = _with("stages", [{"stage": "quantization_speedup"}])
    with pytest.raises(RecipeError, match=r"stages\[0\]: quantization_speedup needs a calibration"):
        validate(no_quantize, "r.yaml")
    no_data = _with("data", ...)
    with pytest.raises(RecipeError, match=r"stages\[1\]: fine_tune needs training batches: add a data section"):
        validate(no_data, "r.yaml")
    trains = _with("stages", [{"stage": "prune", "pruner": "movement", "config_list": [{"sparsity": 0.5}]}])
    del trains["data"]
    with pytest.raises(RecipeError, match=r"stages\[0\].pruner: pruner 'movement' trains the model"):
        validate(trains, "r.yaml")


def test_files_yaml_and_json_and_their_syntax_errors(tmp_path):
    (tmp_path / "r.json").write_text(json.dumps(GOOD))
    assert load_recipe(tmp_path / "r.json").name == "tiny"
    import yaml

    (tmp_path / "r.yaml").write_text(yaml.safe_dump(GOOD))
    assert load_recipe(tmp_path / "r.yaml").spec == load_recipe(tmp_path / "r.json").spec
    (tmp_path / "bad.yaml").write_text("stages: [\n")
    with pytest.raises(RecipeError, match="bad.yaml: not valid YAML"):
        load_recipe(tmp_path / "bad.yaml")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(RecipeError, match="bad.json: not valid JSON"):
        load_recipe(tmp_path / "bad.json")
    with pytest.raises(RecipeError, match="missing.yaml: no such recipe file"):
        load_recipe(tmp_path / "missing.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n")
    with pytest.raises(RecipeError, match="list.yaml: expected a mapping, got"):
        load_recipe(tmp_path / "list.yaml")


def test_the_shipped_example_is_a_valid_recipe():
    from nnic.recipe import example

    recipe = load_recipe(example("digits"))
    assert [s["stage"] for s in recipe.stages] == ["prune", "fine_tune", "speedup", "prune", "fine_tune",
                                                    "quantize", "quantization_speedup", "sparsify"]
    with pytest.raises(RecipeError, match="no example recipe named 'mnist'; available: digits"):
        example("mnist")
