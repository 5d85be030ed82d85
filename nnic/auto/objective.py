"""One search trial as Optuna sees it: suggest a configuration, make it real, measure it, record it.

Trials that break a cost bound are not fine-tuned (scored as pruned); a trial whose intermediate score during
fine-tuning is hopeless is stopped by the study's pruner (:func:`trial_pruner`). What was measured is stored
on the trial (``measured``), with the constraint values where Optuna's constraint-aware samplers read them.
"""

from __future__ import annotations

import copy
import traceback
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from torch import nn

from nnic.auto.goals import Goals
from nnic.auto.runner import SURPLUS, over_budget, worker_id
from nnic.auto.space import SearchSpace
from nnic.auto.trial import MeasureSettings, costs, fine_tune, lower, seeded, shrink


class _Hopeless(Exception):
    """Raised inside fine-tuning when Optuna's pruner gives up on the trial."""


class _Surplus(Exception):
    """Raised before any work when other workers already hold the study's last trials."""


def make_objective(model: nn.Module, evaluator: Any, dummy_input: Any, space: SearchSpace, goals: Goals,
                   settings: Mapping[str, Any], n_trials: int) -> Callable[[Any], Sequence[float]]:
    """The Optuna objective of a search with the stored ``settings`` (baseline, measure, fine-tuning budget),
    for a study that should end with ``n_trials`` finished trials."""
    import optuna

    baseline, measure = settings["baseline"], MeasureSettings.from_user(settings["measure"])
    steps, evals = settings["fine_tune_steps"], settings["fine_tune_evals"]
    can_prune = settings["prune_trials"] is not False and len(goals.objectives) == 1 and steps > 0

    def objective(trial: optuna.Trial) -> Sequence[float]:
        if over_budget(trial.study, trial.number, n_trials):
            trial.set_user_attr("surplus", True)
            trial.set_user_attr("worker", worker_id())
            raise _Surplus(SURPLUS)
        config = space.suggest(trial)
        seed = settings["seed"] * 100_003 + trial.number
        trial.set_user_attr("configuration", config.to_dict())
        trial.set_user_attr("seed", seed)
        trial.set_user_attr("worker", worker_id())
        try:
            with seeded(seed):
                small = shrink(model, dummy_input, config, evaluator)
                probe = lower(copy.deepcopy(small), config)
                measured: dict[str, float] = costs(small, probe, dummy_input, measure, baseline, reference=model)
                cost_ok = all(v <= 0 for k, v in zip(goals.constraints, goals.constraint_values(
                    {**measured, "score": baseline["score"]}, baseline)) if k not in ("score", "score_drop"))
                if steps > 0 and cost_ok:
                    def on_score(step: int, score: float) -> None:
                        measured["score"] = score
                        if can_prune:
                            trial.report(score, step)
                            if trial.should_prune():
                                raise _Hopeless(f"score {score:.4g} after {step} fine-tuning steps")

                    on_score(0, evaluator.evaluate(small))
                    fine_tune(small, evaluator, steps, evaluations=evals, on_score=on_score)
                    final = lower(small, config)
                else:
                    final = probe  # over a cost bound: not worth fine-tuning, scored as pruned
                measured["score"] = float(evaluator.evaluate(final))
        except _Hopeless as exc:
            _record(trial, goals, measured, baseline)
            raise optuna.TrialPruned(str(exc)) from None
        except Exception:
            trial.set_user_attr("error", traceback.format_exc(limit=8)[-4000:])
            raise
        _record(trial, goals, measured, baseline)
        return goals.objective_values(measured)

    return objective


def _record(trial: Any, goals: Goals, measured: Mapping[str, float], baseline: Mapping[str, float]) -> None:
    """Store what was measured, and the constraint values where Optuna's samplers read them."""
    trial.set_user_attr("measured", dict(measured))
    for key, value in zip(goals.constraints, goals.constraint_values(measured, baseline)):
        trial.set_constraint(key, value)


_PRUNERS = {"median": "MedianPruner", "percentile": "PercentilePruner", "threshold": "ThresholdPruner",
            "hyperband": "HyperbandPruner", "successive_halving": "SuccessiveHalvingPruner", "patient": "PatientPruner"}


def trial_pruner(spec: bool | Mapping[str, Any]) -> Any:
    """Optuna's pruner for ``prune_trials``: ``True`` (median of earlier trials at the same fine-tuning step,
    after 5 trials), ``False``, or ``{"name": "threshold", "lower": 90.0}`` (any Optuna pruner by name, with
    its keywords; JSON, so that workers elsewhere build the same)."""
    import optuna

    if spec is True:
        return optuna.pruners.MedianPruner(n_startup_trials=5)
    if spec is False:
        return optuna.pruners.NopPruner()
    if not isinstance(spec, Mapping) or spec.get("name") not in _PRUNERS:
        raise ValueError(f"prune_trials: expected True, False or {{'name': one of {sorted(_PRUNERS)}, ...}}, "
                         f"got {spec!r}")
    kwargs = {k: v for k, v in spec.items() if k != "name"}
    try:
        return getattr(optuna.pruners, _PRUNERS[spec["name"]])(**kwargs)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"prune_trials: {exc}") from exc


__all__ = ["make_objective", "trial_pruner"]
