"""The state the stages of one recipe run share: the model as it is now, its masks and calibration, where the
current stage writes, and what the report should show beside the totals."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from nnic.recipe.data import Data
from nnic.recipe.progress import Progress
from nnic.recipe.schema import Recipe


@dataclass
class Run:
    """The state a recipe's stages share."""

    recipe: Recipe
    out: Path
    progress: Progress
    model: nn.Module
    example_input: Any
    data: Data | None
    masks: dict | None = None
    calibration: dict | None = None
    stage_dir: Path = Path()
    extras: dict[str, Any] = field(default_factory=dict)
