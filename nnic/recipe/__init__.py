"""Recipes: a YAML or JSON file that describes a whole compression run, checked in full before any work.

``load_recipe(path)`` reads and checks a file (see :mod:`nnic.recipe.schema` for the format and
:mod:`nnic.recipe.stages` for the stages); ``compress(recipe, out)`` runs it (``nnic compress RECIPE -o OUT``);
``load_model(OUT)`` reads the compressed model back. ``example(name)`` is the path of a recipe shipped with
nnic (``nnic compress --example digits``).
"""

from __future__ import annotations

from pathlib import Path

from nnic.recipe.errors import RecipeError
from nnic.recipe.schema import Recipe, load_recipe, validate

EXAMPLES = Path(__file__).parent / "examples"


def example(name: str) -> Path:
    """The recipe file nnic ships as ``name`` (``nnic compress --example NAME``)."""
    available = sorted(p.stem for p in EXAMPLES.glob("*.yaml"))
    if name not in available:
        raise RecipeError(f"no example recipe named {name!r}; available: {', '.join(available)}")
    return EXAMPLES / f"{name}.yaml"


def __getattr__(name: str):  # the parts that import torch load on first use
    if name in ("compress", "StageFailed", "CompressResult"):
        from nnic.recipe import runner

        return getattr(runner, name)
    if name == "load_model":
        from nnic.recipe.artifacts import load_model

        return load_model
    if name == "Data":
        from nnic.recipe.data import Data

        return Data
    raise AttributeError(f"module 'nnic.recipe' has no attribute {name!r}")


__all__ = ["EXAMPLES", "CompressResult", "Data", "Recipe", "RecipeError", "StageFailed", "compress", "example",
           "load_model", "load_recipe", "validate"]
