"""The stages a recipe runs, in order: what keys each takes (checked before any work) and what it does.

=========================  ====================================================================================
``prune``                  ``pruner`` (registry name), ``config_list``, ``kwargs``. The example input is passed as
                           ``dummy_input`` and an evaluator built from ``data`` as ``evaluator`` to pruners that
                           take them. Writes ``masks.safetensors``.
``fine_tune``              ``epochs`` (1) or ``steps``, ``lr`` (1e-3), ``optimizer`` (adam/adamw/sgd),
                           ``weight_decay`` (0). Needs ``data``. Masks stay applied while training.
``speedup``                ``kwargs`` for ``nnic.speedup_model``. Needs an earlier ``prune`` (its masks).
``quantize``               ``quantizer``, ``config_list``, ``kwargs``, ``calibration_batches`` (16): inputs of
                           ``data``'s calibration batches are passed as ``calibration_data`` to quantizers that
                           take it. Writes ``calibration.json``.
``quantization_speedup``   ``kwargs`` for ``nnic.quantization_speedup``; ``bits`` (``{layer: bits}``) when no
                           ``quantize`` stage came first, else the last calibration is used.
``sparsify``               ``kwargs`` for ``nnic.sparsify`` (``min_speedup``, ``max_density``, ``layers``,
                           ``rounds``, ``verify``); ``batch``: the batch each layer is timed at (default: the
                           report's ``measure.batch``; its ``threads`` too). Mostly-zero Linear / Int8Linear
                           layers become ``SparseLinear`` where measured faster. Writes ``sparsify.json``.
``export``                 ``path`` (``model.onnx``), ``verify`` (true): ``nnic.export_onnx``.
``auto``                   ``kwargs`` for ``nnic.auto_compress``.
=========================  ====================================================================================
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from nnic.recipe.checks import (
    check_float,
    check_int,
    check_keys,
    check_kwargs,
    check_str,
)
from nnic.recipe.errors import RecipeError, Where, got

OPTIMIZERS = ("adam", "adamw", "sgd")


@dataclass(frozen=True)
class StageKind:
    keys: tuple[str, ...]
    required: tuple[str, ...]
    validate: Callable[[Where, dict[str, Any], list[str], bool], dict[str, Any]]


# ---- validation helpers --------------------------------------------------------------------------------------
def _registered(where: Where, kind: str, name: Any) -> type:
    from nnic.plugins import get_registry
    from nnic.registry import PluginConflictError, UnknownPluginError

    check_str(where, name)
    try:
        return get_registry().get(kind, name).obj
    except (UnknownPluginError, PluginConflictError) as exc:
        raise where.error(str(exc)) from None


def _check_arguments(where: Where, cls: type, kwargs: dict[str, Any], what: str) -> None:
    """Every keyword must be one the class's constructor takes (unless it takes ``**kwargs``)."""
    params = inspect.signature(cls.__init__).parameters
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return
    accepted = [n for n, p in params.items() if n not in ("self", "model", "config_list")
                and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)]
    _takes_only(where, kwargs, accepted, what)


def _takes_only(where: Where, kwargs: dict[str, Any], accepted: Sequence[str], what: str) -> dict[str, Any]:
    """``kwargs`` when ``what`` takes every key of it; else an error at the first key it does not take."""
    for key in kwargs:
        if key not in accepted:
            raise where.key(key).error(f"{what} does not take this argument (it takes: {', '.join(accepted)})")
    return kwargs


def _needs(cls: type, name: str) -> bool:
    p = inspect.signature(cls.__init__).parameters.get(name)
    return p is not None and p.default is inspect.Parameter.empty


def _config_list(where: Where, cls: type, config_list: Any, kwargs: dict[str, Any]) -> list[dict[str, Any]]:
    """The algorithm's own check of its config_list, its messages prefixed with the stage's place."""
    from nnic.config import validate_config_list

    keys = tuple(getattr(cls, "config_keys", ()) or ())
    if "pruning_algorithm" in kwargs:  # scheduled pruners take the keys of the pruner they schedule
        base = _registered(where.key("kwargs").key("pruning_algorithm"), "pruner", kwargs["pruning_algorithm"])
        keys += tuple(base.config_keys)
    # N:M pruners take their sparsity from n and m, not from a sparsity key
    require_sparsity = cls.kind == "pruner" and not any(k.name in ("n", "m") for k in keys)
    try:
        validate_config_list(config_list, cls.kind, extra_keys=keys, require_sparsity=require_sparsity)
    except (TypeError, ValueError) as exc:
        raise RecipeError(f"{where}.{exc}") from None
    return config_list


# ---- per stage ------------------------------------------------------------------------------------------------
def _validate_prune(where: Where, spec: dict, seen: list[str], has_data: bool) -> dict:
    cls = _registered(where.key("pruner"), "pruner", spec["pruner"])
    kwargs = check_kwargs(where.key("kwargs"), spec.get("kwargs"))
    _check_arguments(where.key("kwargs"), cls, kwargs, f"pruner {spec['pruner']!r}")
    if _needs(cls, "evaluator") and "evaluator" not in kwargs and not has_data:
        raise where.key("pruner").error(f"pruner {spec['pruner']!r} trains the model: the recipe needs a data "
                                        f"section (train batches) to build its evaluator")
    return {"stage": "prune", "pruner": spec["pruner"], "config_list": _config_list(
        where, cls, spec["config_list"], kwargs), "kwargs": kwargs}


def _validate_fine_tune(where: Where, spec: dict, seen: list[str], has_data: bool) -> dict:
    if not has_data:
        raise where.error("fine_tune needs training batches: add a data section to the recipe")
    if "epochs" in spec and "steps" in spec:
        raise where.error("give epochs or steps, not both")
    out: dict[str, Any] = {"stage": "fine_tune"}
    if "steps" in spec:
        out["steps"] = check_int(where.key("steps"), spec["steps"], 1)
    else:
        out["epochs"] = check_int(where.key("epochs"), spec.get("epochs", 1), 1)
    out.update(lr=check_float(where.key("lr"), spec.get("lr", 1e-3), 0.0),
               optimizer=check_str(where.key("optimizer"), spec.get("optimizer", "adam"), OPTIMIZERS),
               weight_decay=_non_negative(where.key("weight_decay"), spec.get("weight_decay", 0.0)))
    return out


def _non_negative(where: Where, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise where.expected("a number >= 0", value)
    return float(value)


def _validate_speedup(where: Where, spec: dict, seen: list[str], has_data: bool) -> dict:
    if "prune" not in seen:
        raise where.error("speedup removes what a prune stage masked: put a prune stage before it")
    kwargs = _takes_only(where.key("kwargs"), check_kwargs(where.key("kwargs"), spec.get("kwargs")),
                         ("strict", "verify", "rtol", "atol", "leaf_modules"), "speedup_model")
    return {"stage": "speedup", "kwargs": kwargs}


def _validate_quantize(where: Where, spec: dict, seen: list[str], has_data: bool) -> dict:
    cls = _registered(where.key("quantizer"), "quantizer", spec["quantizer"])
    kwargs = check_kwargs(where.key("kwargs"), spec.get("kwargs"))
    _check_arguments(where.key("kwargs"), cls, kwargs, f"quantizer {spec['quantizer']!r}")
    return {"stage": "quantize", "quantizer": spec["quantizer"], "config_list": _config_list(
        where, cls, spec["config_list"], kwargs), "kwargs": kwargs,
        "calibration_batches": check_int(where.key("calibration_batches"), spec.get("calibration_batches", 16), 1)}


def _validate_quantization_speedup(where: Where, spec: dict, seen: list[str], has_data: bool) -> dict:
    kwargs = _takes_only(where.key("kwargs"), check_kwargs(where.key("kwargs"), spec.get("kwargs")),
                         ("on_unsupported", "act", "symmetric", "reduce_range"), "quantization_speedup")
    out: dict[str, Any] = {"stage": "quantization_speedup", "kwargs": kwargs}
    if "bits" in spec:
        bits = spec["bits"]
        if not isinstance(bits, dict) or not bits or not all(
                isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool) and 2 <= v <= 32
                for k, v in bits.items()):
            raise where.key("bits").expected("a mapping {layer name: bits (2..8, or 16/32 to stay float)}", bits)
        out["bits"] = dict(bits)
    elif "quantize" not in seen:
        raise where.error("quantization_speedup needs a calibration: put a quantize stage before it, or give "
                          "bits: {layer: 8, ...}")
    return out


_SPARSIFY_KWARGS = ("min_speedup", "max_density", "layers", "rounds", "verify", "rtol", "atol")


def _validate_sparsify(where: Where, spec: dict, seen: list[str], has_data: bool) -> dict:
    kwargs = _takes_only(where.key("kwargs"), check_kwargs(where.key("kwargs"), spec.get("kwargs")),
                         _SPARSIFY_KWARGS, "sparsify")
    out: dict[str, Any] = {"stage": "sparsify", "kwargs": kwargs}
    if "batch" in spec:
        out["batch"] = check_int(where.key("batch"), spec["batch"], 1)
    return out


def _validate_export(where: Where, spec: dict, seen: list[str], has_data: bool) -> dict:
    path = check_str(where.key("path"), spec.get("path", "model.onnx"))
    if not isinstance(spec.get("verify", True), bool):
        raise where.key("verify").expected("true or false", spec["verify"])
    return {"stage": "export", "path": path, "verify": spec.get("verify", True)}


def _validate_auto(where: Where, spec: dict, seen: list[str], has_data: bool) -> dict:
    if not has_data:
        raise where.error("auto compression scores candidates: add a data section (eval batches and a metric)")
    return {"stage": "auto", "kwargs": check_kwargs(where.key("kwargs"), spec.get("kwargs"))}


def _table() -> dict[str, StageKind]:
    """Every stage's keys and check; what each does is :data:`nnic.recipe.run_stages.RUN`, under the same names."""
    return {
        "prune": StageKind(("stage", "pruner", "config_list", "kwargs"), ("pruner", "config_list"), _validate_prune),
        "fine_tune": StageKind(("stage", "epochs", "steps", "lr", "optimizer", "weight_decay"), (),
                               _validate_fine_tune),
        "speedup": StageKind(("stage", "kwargs"), (), _validate_speedup),
        "quantize": StageKind(("stage", "quantizer", "config_list", "kwargs", "calibration_batches"),
                              ("quantizer", "config_list"), _validate_quantize),
        "quantization_speedup": StageKind(("stage", "kwargs", "bits"), (), _validate_quantization_speedup),
        "sparsify": StageKind(("stage", "kwargs", "batch"), (), _validate_sparsify),
        "export": StageKind(("stage", "path", "verify"), (), _validate_export),
        "auto": StageKind(("stage", "kwargs"), (), _validate_auto),
    }


#: The stage names, in the order the docs list them.
STAGES = tuple(_table())


def validate_stages(where: Where, stages: Any, *, has_data: bool) -> list[dict[str, Any]]:
    """Check every stage in order (a stage may depend on earlier ones: speedup on prune...)."""
    if not isinstance(stages, list) or not stages:
        raise where.expected("a non-empty list of stages", stages)
    table = _table()
    seen: list[str] = []
    out = []
    for i, spec in enumerate(stages):
        w = where[i]
        if not isinstance(spec, dict):
            raise w.expected("a mapping with a 'stage' key", spec)
        name = spec.get("stage")
        if name not in table:
            raise w.key("stage").error(f"expected one of {', '.join(table)}, got {got(name)}")
        kind = table[name]
        check_keys(w, spec, kind.keys, kind.required)
        out.append(kind.validate(w, spec, seen, has_data))
        seen.append(name)
    return out
