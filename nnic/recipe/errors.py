"""The one error a recipe raises before any work starts, with where in the file the mistake is."""

from __future__ import annotations

from typing import Any


class RecipeError(ValueError):
    """A recipe mistake: ``"<file>: <path in the recipe>: <what was expected>, got <value>"``, e.g.
    ``recipe.yaml: stages[2].config_list[0]['sparsity']: expected a float in [0, 1), got 1.5``."""


def got(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


class Where:
    """A position in a recipe, that makes :class:`RecipeError` messages: ``Where("r.yaml").key("stages")[2]``."""

    def __init__(self, source: str, path: str = "") -> None:
        self.source, self.path = source, path

    def key(self, name: str) -> Where:
        return Where(self.source, f"{self.path}.{name}" if self.path else name)

    def __getitem__(self, index: int) -> Where:
        return Where(self.source, f"{self.path}[{index}]")

    def __str__(self) -> str:
        return f"{self.source}: {self.path}" if self.path else self.source

    def error(self, message: str) -> RecipeError:
        return RecipeError(f"{self}: {message}")

    def expected(self, what: str, value: Any) -> RecipeError:
        return self.error(f"expected {what}, got {got(value)}")
