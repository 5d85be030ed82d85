"""Running a checked recipe into an output folder: ``compress(recipe, out)``.

The folder receives, as the run goes::

    recipe.json            the recipe as checked and normalised (defaults filled in), with nnic/torch versions
    status.json            each stage: done / failed (with the error) / not run, its summary and seconds
    stages/NN-<stage>/     each finished stage's model (model/, pickle-free) and its own files (masks, calibration)
    model/                 the final compressed model (nnic.recipe.load_model reads it back)
    masks.safetensors      the last prune stage's masks; calibration.json: the last quantize stage's calibration
    report.json, report.html   the before/after report

A stage that raises stops the run: the stages before it keep their outputs, ``status.json`` names the failed
stage and the cause, and :class:`StageFailed` says the same.
"""

from __future__ import annotations

import copy
import logging
import shutil
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nnic import io
from nnic.recipe.artifacts import build_model, save_model
from nnic.recipe.errors import RecipeError
from nnic.recipe.progress import Progress
from nnic.recipe.resolve import build_data, build_example_input
from nnic.recipe.run import Run
from nnic.recipe.run_stages import RUN
from nnic.recipe.schema import Recipe

log = logging.getLogger("nnic.recipe")

#: What a run writes into its folder (and removes there first, so a failed run cannot show an older one's).
OUTPUTS = ("stages", "model", "masks.safetensors", "calibration.json", "report.json", "report.html", "status.json",
           "recipe.json")


class StageFailed(RuntimeError):
    """Stage ``index`` (``stage``) raised; the earlier stages' outputs are in the output folder."""

    def __init__(self, index: int, stage: str, cause: BaseException, out: Path) -> None:
        self.index, self.stage, self.cause, self.out = index, stage, cause, out
        done = f"the outputs of stages 0-{index - 1} are in {out / 'stages'}" if index else "no stage finished"
        super().__init__(f"stage {index} ({stage}) failed: {type(cause).__name__}: {cause}; {done}")


@dataclass
class CompressResult:
    """What :func:`compress` returns: the dense and the compressed model, the run and its report."""

    dense: nn.Module
    model: nn.Module
    run: Run
    status: dict[str, Any]
    report: Any = None


def _versions() -> dict[str, str]:
    import nnic

    return {"nnic": nnic.__version__, "torch": torch.__version__}


def _write_status(out: Path, status: dict[str, Any]) -> None:
    io.save_json(status, out / "status.json")


def _built(section: str, build: Any, source: str) -> Any:
    """``build()``; an error in the user's factory names the recipe section it came from."""
    try:
        return build()
    except RecipeError:
        raise
    except Exception as exc:
        raise RecipeError(f"{source}: {section}: building it failed: {type(exc).__name__}: {exc}") from exc


def prepare(recipe: Recipe, out: Path, progress: Progress) -> Run:
    """Build the model, example input and data of ``recipe`` (seeded), for a run into ``out``."""
    torch.manual_seed(recipe.spec["seed"])
    spec, source = recipe.spec, recipe.source
    with progress.step("build the model"):
        model = _built("model", lambda: build_model(spec["model"], recipe.base_dir, source), source)
        example_input = _built("example_input", lambda: build_example_input(spec["example_input"], source,
                                                                            spec["seed"]), source)
        data = _built("data", lambda: build_data(spec["data"], source), source)
    return Run(recipe, out, progress, model, example_input, data)


def compress(recipe: Recipe, out: str | Path, *, quiet: bool = False, report: bool = True) -> CompressResult:
    """Run every stage of ``recipe`` in order, writing into ``out`` (see the module docstring)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for stale in OUTPUTS:  # a previous run's outputs would pass for this one's
        path = out / stale
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
    io.save_json({**recipe.spec, "versions": _versions()}, out / "recipe.json")
    status: dict[str, Any] = {"recipe": recipe.name, "stages": [
        {"index": i, "stage": s["stage"], "status": "not run"} for i, s in enumerate(recipe.stages)]}
    _write_status(out, status)
    with Progress(quiet) as progress:
        run = prepare(recipe, out, progress)
        dense = copy.deepcopy(run.model)
        for i, spec in enumerate(recipe.stages):
            entry = status["stages"][i]
            run.stage_dir = out / "stages" / f"{i:02d}-{spec['stage']}"
            run.stage_dir.mkdir(parents=True, exist_ok=True)
            start = time.perf_counter()
            try:
                entry["summary"] = RUN[spec["stage"]](run, spec)
                with progress.step(f"save stage {i} ({spec['stage']})"):
                    save_model(run.model, run.stage_dir / "model", recipe.spec["model"])
            except Exception as exc:
                entry.update(status="failed", error=f"{type(exc).__name__}: {exc}",
                             traceback=traceback.format_exc(), seconds=round(time.perf_counter() - start, 3))
                _write_status(out, status)
                raise StageFailed(i, spec["stage"], exc, out) from exc
            entry.update(status="done", seconds=round(time.perf_counter() - start, 3))
            log.info("stage %d (%s) done in %.1f s: %s", i, spec["stage"], entry["seconds"], entry["summary"])
            _write_status(out, status)
        with progress.step("save the compressed model"):
            save_model(run.model, out / "model", recipe.spec["model"])
            if any(s["stage"] == "prune" for s in recipe.stages):
                last = max(i for i, s in enumerate(recipe.stages) if s["stage"] == "prune")
                shutil.copyfile(out / "stages" / f"{last:02d}-prune" / "masks.safetensors", out / "masks.safetensors")
            if run.calibration is not None:
                io.save_json(run.calibration, out / "calibration.json")
        result = CompressResult(dense, run.model, run, status)
        if report:
            from nnic.report import build_report

            with progress.step("measure and write the report"):
                result.report = build_report(dense, run.model, run.example_input, data=run.data,
                                             measure=recipe.spec["measure"], status=status, recipe=recipe.spec,
                                             extras=run.extras)
                result.report.save(out)
    return result
