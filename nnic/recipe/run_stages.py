"""What each recipe stage does to the run (its keys are checked in :mod:`nnic.recipe.stages` before any work).

Each function takes the :class:`~nnic.recipe.runner.Run` and the stage's normalised spec, changes the run's
model (and masks / calibration), writes the stage's own files into ``run.stage_dir``, and returns a short
JSON-ready summary for the report."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from nnic import io
from nnic.recipe.progress import Tracked
from nnic.recipe.stages import accepts

if TYPE_CHECKING:
    from nnic.recipe.runner import Run

_OPTIMIZERS = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "sgd": torch.optim.SGD}


def _evaluator(run: Run, description: str, optimizer: str = "adam", lr: float = 1e-3, weight_decay: float = 0.0,
               ) -> Any:
    from nnic.evaluator import LoopEvaluator

    data = run.data
    assert data is not None  # checked before the run
    make = _OPTIMIZERS[optimizer]
    kwargs = {"momentum": 0.9} if optimizer == "sgd" else {}
    return LoopEvaluator(Tracked(data.train, run.progress, description),
                         lambda params: make(params, lr=lr, weight_decay=weight_decay, **kwargs), data.criterion,
                         eval_data=data.eval, metric=data.metric, dummy_input=run.example_input)


def _sparsity(masks: dict[str, dict[str, torch.Tensor | None]]) -> float:
    total = pruned = 0
    for ms in masks.values():
        for m in ms.values():
            if m is not None:
                total += m.numel()
                pruned += int(m.numel() - m.bool().sum())
    return pruned / total if total else 0.0


def prune(run: Run, spec: dict[str, Any]) -> dict[str, Any]:
    import nnic
    from nnic.plugins import get_registry

    cls = get_registry().get("pruner", spec["pruner"]).obj
    kwargs = dict(spec["kwargs"])
    if accepts(cls, "dummy_input") and "dummy_input" not in kwargs:
        kwargs["dummy_input"] = run.example_input
    if accepts(cls, "evaluator") and "evaluator" not in kwargs and run.data is not None:
        kwargs["evaluator"] = _evaluator(run, f"{spec['pruner']}: training")
    pruner = nnic.pruner(spec["pruner"], run.model, spec["config_list"], **kwargs)
    with run.progress.step(f"prune ({spec['pruner']})"):
        model, masks = pruner.compress()
    run.model, run.masks = model, masks
    io.save_masks(masks, run.stage_dir / "masks.safetensors")
    return {"layers": len(masks), "weight_sparsity": round(_sparsity(masks), 6)}


def fine_tune(run: Run, spec: dict[str, Any]) -> dict[str, Any]:
    evaluator = _evaluator(run, "fine-tune", spec["optimizer"], spec["lr"], spec["weight_decay"])
    steps = evaluator.train(run.model, max_steps=spec.get("steps"), max_epochs=spec.get("epochs"))
    run.model.eval()
    return {"optimizer_steps": steps}


def speedup(run: Run, spec: dict[str, Any]) -> dict[str, Any]:
    from nnic.speedup import ModelSpeedup

    engine = ModelSpeedup(run.model, run.example_input, run.masks or {}, **spec["kwargs"])
    with run.progress.step("speedup"):
        engine.speedup_model()
    run.masks = None  # folded into the smaller shapes
    return {"modules_shrunk": len(engine.report.shrunk), "channel_groups_removed": engine.report.removed_groups}


def quantize(run: Run, spec: dict[str, Any]) -> dict[str, Any]:
    import nnic
    from nnic.plugins import get_registry

    cls = get_registry().get("quantizer", spec["quantizer"]).obj
    kwargs = dict(spec["kwargs"])
    if accepts(cls, "calibration_data") and "calibration_data" not in kwargs and run.data is not None:
        batches = run.data.calibration_inputs(spec["calibration_batches"])
        kwargs["calibration_data"] = Tracked(batches, run.progress, f"{spec['quantizer']}: calibration")
    quantizer = nnic.quantizer(spec["quantizer"], run.model, spec["config_list"], **kwargs)
    with run.progress.step(f"quantize ({spec['quantizer']})"):
        quantizer.compress()
    run.calibration = quantizer.calibration()
    io.save_json(run.calibration, run.stage_dir / "calibration.json")
    bits = sorted({v.get("weight_bits") for v in run.calibration.values() if "weight_bits" in v})
    return {"layers": len(run.calibration), "weight_bits": bits}


def quantization_speedup(run: Run, spec: dict[str, Any]) -> dict[str, Any]:
    import nnic

    calibration = spec.get("bits") or run.calibration
    with run.progress.step("quantization speedup"):
        nnic.quantization_speedup(run.model, calibration, **spec["kwargs"])
    lowered = {name: type(m).__name__ for name, m in run.model.named_modules()
               if name in calibration and type(m).__module__.startswith("nnic.")}
    if run.masks:  # a lowered layer's masked weights are its (zero) codes now
        run.masks = {name: ms for name, ms in run.masks.items() if name not in lowered} or None
    return {"layers_lowered": len(lowered), "modules": sorted(set(lowered.values()))}


def sparsify(run: Run, spec: dict[str, Any]) -> dict[str, Any]:
    import nnic
    from nnic.measure._inputs import num_threads, with_batch

    measure = run.recipe.spec["measure"]  # decide at the batch and threads the report measures
    batch = spec.get("batch") or measure["batch"]
    example = with_batch(run.example_input, batch) if batch else run.example_input
    with run.progress.step("sparsify (timing each layer dense and sparse)"), num_threads(measure["threads"]):
        report = nnic.sparsify(run.model, example, run.masks, **spec["kwargs"])
    run.masks = None  # folded into the sparse (or dense) weights
    io.save_json(report.to_dict(), run.stage_dir / "sparsify.json")
    return {"sparse_layers": report.sparse_layers,
            "kept_dense": {n: d.reason for n, d in report.layers.items() if d.chosen != "sparse"}}


def export(run: Run, spec: dict[str, Any]) -> dict[str, Any]:
    import nnic

    path = run.stage_dir / spec["path"]
    with run.progress.step(f"export {spec['path']}"):
        nnic.export_onnx(run.model, run.example_input, path, verify=spec["verify"])
    return {"path": str(path)}


def auto(run: Run, spec: dict[str, Any]) -> dict[str, Any]:
    import nnic

    evaluator = _evaluator(run, "auto: training")
    options = {"progress": not run.progress.quiet, **spec["kwargs"]}
    result = nnic.auto_compress(run.model, evaluator, run.example_input, out_dir=run.stage_dir, **options)
    run.model = result.apply(run.model, dummy_input=run.example_input, evaluator=evaluator)
    run.extras["search results"] = result  # its plot() goes into the report
    return {"out_dir": str(run.stage_dir)}
