"""Recipe files: read (YAML or JSON), checked in full before any work starts, normalised with defaults filled in.

A recipe is a mapping::

    name: digits                      # optional, for reports
    seed: 0                           # torch.manual_seed before the model is built (default 0)
    model:                            # exactly one of factory / torchvision / huggingface / saved
      factory: my_package.models:build    # "package.module:callable"
      kwargs: {width: 32}
      weights: path/to/state.safetensors  # optional: a state dict loaded into the built model
    example_input:                    # a shape (random values), or a factory giving the input
      shape: [1, 3, 32, 32]
      dtype: float32                  # integer dtypes draw from [0, high)
    data:                             # optional; needed by fine_tune and training-aware algorithms
      factory: my_package.data:load   # returns nnic.recipe.Data (train / eval batches, metric, criterion)
      kwargs: {}
    measure: {batch: 1, threads: null, warmup: 3, repeats: 20}   # how the report measures latency
    stages:                           # run in order; see nnic.recipe.stages for each stage's keys
      - {stage: prune, pruner: l1norm, config_list: [{sparsity: 0.5, op_types: [Conv2d]}]}
      - {stage: fine_tune, epochs: 2}
      - {stage: speedup}
      - {stage: quantize, quantizer: naive, config_list: [{quant_types: [weight], quant_bits: 8, op_types: [Linear]}]}
      - {stage: quantization_speedup}

Every mistake raises :class:`~nnic.recipe.errors.RecipeError` naming the file and the key.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nnic.recipe.checks import (
    check_callable_path,
    check_int,
    check_keys,
    check_kwargs,
    check_str,
)
from nnic.recipe.errors import RecipeError, Where

TOP_KEYS = ("name", "seed", "model", "example_input", "data", "measure", "stages")
MODEL_SOURCES = ("factory", "torchvision", "huggingface", "saved")
DTYPES = ("float32", "float16", "bfloat16", "float64", "int64", "int32", "bool")


@dataclass
class Recipe:
    """A checked recipe: ``spec`` is the normalised mapping (defaults filled in; what ``OUT/recipe.json``
    records), ``source`` the file it came from, for messages."""

    spec: dict[str, Any]
    source: str = "<recipe>"
    base_dir: Path = field(default_factory=Path.cwd)

    @property
    def stages(self) -> list[dict[str, Any]]:
        return self.spec["stages"]

    @property
    def name(self) -> str:
        return self.spec["name"]


def _model(where: Where, spec: Any) -> dict[str, Any]:
    check_keys(where, spec, MODEL_SOURCES + ("kwargs", "weights", "class"))
    sources = [k for k in MODEL_SOURCES if k in spec]
    if len(sources) != 1:
        raise where.error(f"expected exactly one of {', '.join(MODEL_SOURCES)}, got "
                          f"{', '.join(sources) if sources else 'none'}")
    out: dict[str, Any] = {"kwargs": check_kwargs(where.key("kwargs"), spec.get("kwargs"))}
    source = sources[0]
    if source == "factory":
        out["factory"] = check_callable_path(where.key("factory"), spec["factory"])
    elif source == "huggingface":
        hf = check_keys(where.key("huggingface"), spec["huggingface"], ("model_type", "config", "class"),
                        ("model_type",))
        out["huggingface"] = {"model_type": check_str(where.key("huggingface").key("model_type"), hf["model_type"]),
                              "config": check_kwargs(where.key("huggingface").key("config"), hf.get("config")),
                              "class": check_str(where.key("huggingface").key("class"), hf.get("class", "AutoModel"))}
    else:
        out[source] = check_str(where.key(source), spec[source])
    if "class" in spec:
        raise where.key("class").error("only valid inside huggingface: {model_type: ..., class: ...}")
    if "weights" in spec:
        out["weights"] = check_str(where.key("weights"), spec["weights"])
    return out


def _example_input(where: Where, spec: Any) -> dict[str, Any]:
    check_keys(where, spec, ("shape", "dtype", "high", "factory", "kwargs"))
    if ("shape" in spec) == ("factory" in spec):
        raise where.error("expected exactly one of shape, factory")
    if "factory" in spec:
        return {"factory": check_callable_path(where.key("factory"), spec["factory"]),
                "kwargs": check_kwargs(where.key("kwargs"), spec.get("kwargs"))}
    shape = spec["shape"]
    if not isinstance(shape, list) or not shape or not all(
            isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in shape):
        raise where.key("shape").expected("a list of positive ints", shape)
    dtype = check_str(where.key("dtype"), spec.get("dtype", "float32"), DTYPES)
    out = {"shape": list(shape), "dtype": dtype}
    if dtype.startswith("int"):
        out["high"] = check_int(where.key("high"), spec.get("high", 2), lo=1)
    elif "high" in spec:
        raise where.key("high").error(f"only for integer dtypes, not {dtype}")
    return out


def _data(where: Where, spec: Any) -> dict[str, Any] | None:
    if spec is None:
        return None
    check_keys(where, spec, ("factory", "kwargs"), ("factory",))
    return {"factory": check_callable_path(where.key("factory"), spec["factory"]),
            "kwargs": check_kwargs(where.key("kwargs"), spec.get("kwargs"))}


def _measure(where: Where, spec: Any) -> dict[str, Any]:
    spec = {} if spec is None else check_keys(where, spec, ("batch", "threads", "warmup", "repeats"))
    return {"batch": check_int(where.key("batch"), spec.get("batch"), 1, optional=True),
            "threads": check_int(where.key("threads"), spec.get("threads"), 1, optional=True),
            "warmup": check_int(where.key("warmup"), spec.get("warmup", 3), 0),
            "repeats": check_int(where.key("repeats"), spec.get("repeats", 20), 1)}


def validate(raw: Any, source: str = "<recipe>", base_dir: Path | None = None) -> Recipe:
    """Check a recipe mapping in full (stages included) and return it normalised; raises :class:`RecipeError`."""
    from nnic.recipe.stages import validate_stages

    where = Where(source)
    check_keys(where, raw, TOP_KEYS, ("model", "example_input", "stages"))
    spec: dict[str, Any] = {
        "name": check_str(where.key("name"), raw.get("name", Path(source).stem or "recipe")),
        "seed": check_int(where.key("seed"), raw.get("seed", 0), 0),
        "model": _model(where.key("model"), raw["model"]),
        "example_input": _example_input(where.key("example_input"), raw["example_input"]),
        "data": _data(where.key("data"), raw.get("data")),
        "measure": _measure(where.key("measure"), raw.get("measure")),
    }
    spec["stages"] = validate_stages(where.key("stages"), copy.deepcopy(raw["stages"]), has_data=spec["data"] is not None)
    return Recipe(spec, source, base_dir or Path.cwd())


def parse(text: str, source: str) -> Any:
    """JSON for ``.json`` files, YAML (PyYAML's safe loader) otherwise; a parse error names the file."""
    if source.endswith(".json"):
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise RecipeError(f"{source}: not valid JSON: {exc}") from None
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise RecipeError(f"{source}: not valid YAML: {exc}") from None


def load_recipe(path: str | Path) -> Recipe:
    """Read and check the recipe file at ``path`` (``.yaml``/``.yml`` or ``.json``)."""
    p = Path(path)
    if not p.is_file():
        raise RecipeError(f"{path}: no such recipe file")
    return validate(parse(p.read_text(encoding="utf-8"), str(path)), str(path), p.resolve().parent)
