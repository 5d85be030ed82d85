"""``nnic.auto_compress``: search per-layer sparsity, weight bits and the pruner for a measured goal, on Optuna.

Every trial is scored on the real result (see :mod:`nnic.auto.trial`); the study lives in a database (an
SQLite file in ``out_dir`` by default, see :mod:`nnic.auto.storage`), so the same call made again resumes it,
and several processes or machines running the same search share it.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from torch import nn

from nnic.auto.goals import Goals, make_goals
from nnic.auto.objective import make_objective, trial_pruner
from nnic.auto.result import AutoResult, records
from nnic.auto.runner import quiet_optuna, run_trials
from nnic.auto.space import SearchSpace, build_space
from nnic.auto.storage import (
    open_storage,
    settings_conflict,
    storage_url,
    store_settings,
    study_settings,
)
from nnic.auto.strategy import StrategyContext, get_strategy, make_sampler
from nnic.auto.trial import MeasureSettings, costs, lower, shrink

# Settings that define a search: a call that asks for other values cannot join a study made with these.
SEARCH_KEYS = ("request", "goals", "strategy", "strategy_options", "fine_tune_steps", "fine_tune_evals", "measure",
               "seed", "prune_trials", "start_points")


def _positive(name: str, value: Any, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name}: expected an int >= {minimum}, got {value!r}")
    return value


def _baseline(model: nn.Module, evaluator: Any, dummy_input: Any, measure: MeasureSettings) -> dict[str, float]:
    dense = copy.deepcopy(model)
    out = costs(dense, dense, dummy_input, measure)
    out["score"] = float(evaluator.evaluate(dense))
    return out


def _resolve(model: nn.Module, evaluator: Any, dummy_input: Any, space: Any, goals: Goals,
             measure: MeasureSettings, sensitivity: float | None, start_points: Sequence[Any],
             progress: bool) -> dict[str, Any]:
    """The resolved space, the Optuna parameters of the start points and the dense model's measurements;
    checks the constraints against the cheapest point."""
    resolved = build_space(model, dummy_input, space)
    for i, point in enumerate(start_points):  # bad points fail before the sensitivity run and measurements
        resolved.start_params(point, f"start_points[{i}]")
    if sensitivity is not None:
        from nnic.auto.sensitivity import narrow

        resolved = narrow(resolved, model, evaluator, dummy_input, max_drop=sensitivity, progress=progress)
    baseline = _baseline(model, evaluator, dummy_input, measure)
    cheapest = resolved.most_compressed()
    small = shrink(model, dummy_input, cheapest)
    goals.check_reachable(costs(small, lower(small, cheapest), dummy_input, measure, baseline, reference=model))
    starts = [resolved.start_params(p, f"start_points[{i}]") for i, p in enumerate(start_points)]
    return {"space": resolved.to_dict(), "baseline": baseline, "start_params": starts}


def auto_compress(model: nn.Module, evaluator: Any, dummy_input: Any, *, constraints: Mapping[str, float] | None = None,
                  objectives: str | Sequence[str] = "score", space: Mapping[str, Any] | None = None,
                  n_trials: int = 50, strategy: str = "tpe", strategy_options: Mapping[str, Any] | None = None,
                  storage: str | None = None, study_name: str | None = None, out_dir: str | os.PathLike | None = None,
                  fine_tune_steps: int = 0, fine_tune_evals: int = 4, prune_trials: bool | Mapping[str, Any] = True,
                  measure: Mapping[str, Any] | None = None, seed: int = 0, sensitivity: float | None = None,
                  start_points: Sequence[Any] = (), progress: bool = True, heartbeat_s: int = 5,
                  join: bool = False) -> AutoResult:
    """Search per-layer sparsity, weight bits and the pruner for ``constraints``/``objectives``, measured.

    :param model: the trained dense model (never changed; trials work on copies).
    :param evaluator: an :class:`nnic.evaluator.Evaluator` with an ``evaluating_func`` (higher is better) and,
        for ``fine_tune_steps``, a training loop.
    :param dummy_input: an example input (its batch is the batch latency is measured at, unless ``measure``
        says otherwise).
    :param constraints: bounds on measured metrics, e.g. ``{"latency_ms": 2.0, "score_drop": 1.0}``; see
        :mod:`nnic.auto.goals`.
    :param objectives: one metric (best trial) or several (Pareto front), e.g. ``("score", "latency_ms")``.
    :param space: the search space (see :mod:`nnic.auto.space`).
    :param n_trials: finished trials the study should hold when this call returns (all workers together:
        exactly that many, see :mod:`nnic.auto.runner`).
    :param strategy: a registered strategy name (``nnic plugins --kind strategy``): tpe, random, cmaes, nsga2,
        sa, or a plugin's; ``strategy_options`` go to it.
    :param storage: a database URL (``postgresql://...``) to share the study between machines; ``None`` keeps
        it in ``out_dir/study.db``.
    :param study_name: the study's name in the storage (default ``"nnic-auto"``).
    :param out_dir: where the trials table, Pareto plot, best config lists (and, by default, the study) go.
    :param fine_tune_steps: optimizer steps of fine-tuning per trial (0: none), evaluated ``fine_tune_evals``
        times (and once before) so that Optuna can prune hopeless trials (one objective only).
    :param prune_trials: ``True`` (Optuna's median pruner), ``False``, or ``{"name": "threshold", "lower": 90}``
        (an Optuna pruner by name with its keywords).
    :param measure: latency measurement: ``threads`` (1), ``batch``, ``warmup`` (3), ``repeats`` (20).
    :param seed: seeds the sampler and every trial's fine-tuning.
    :param sensitivity: narrow each group's upper sparsity bound to where one layer alone loses at most this
        many points of score (a :func:`nnic.sensitivity` run on the first pruner); ``None``: do not narrow.
    :param start_points: configurations the study runs first (Optuna's ``enqueue_trial``, once, when the
        study is made), e.g. ``(0.3, 0.5, 0.7)``: uniform sparsity in float, so the result holds a point at
        least as good as each of these hand-picked baselines; see :meth:`SearchSpace.start_params` for the dict
        form. Every start point is one of the ``n_trials``.
    :param heartbeat_s: heartbeat interval of running trials; one silent for three intervals is failed and
        retried.
    :param join: only join an existing study (its stored settings win; the CLI worker uses this).
    :returns: an :class:`~nnic.auto.result.AutoResult` read back from the study.
    """
    import optuna

    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    if evaluator is None or not callable(getattr(evaluator, "evaluate", None)):
        raise TypeError("evaluator: expected an nnic.evaluator.Evaluator (or LoopEvaluator) with an evaluating_func")
    _positive("n_trials", n_trials)
    _positive("fine_tune_steps", fine_tune_steps, 0)
    _positive("fine_tune_evals", fine_tune_evals)
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise TypeError(f"seed: expected an int, got {seed!r}")
    goals = make_goals(constraints, objectives)
    trial_pruner(prune_trials)  # checked before any work
    strategy_obj = get_strategy(strategy, dict(strategy_options or {}))  # unknown names fail before any work
    if len(goals.objectives) > 1 and not strategy_obj.multi_objective:
        raise ValueError(f"strategy {strategy!r} searches one objective; objectives {list(goals.objectives)} need "
                         f"a Pareto search: use 'nsga2', 'tpe' or 'random'")
    make_sampler(strategy_obj, StrategyContext(seed, goals.directions, n_trials))  # bad options fail here
    measure_settings = MeasureSettings.from_user(measure)
    if isinstance(start_points, (str, Mapping)) or not isinstance(start_points, Sequence):
        raise TypeError(f"start_points: expected a list of sparsities or dicts, got {type(start_points).__name__}")
    if len(start_points) > n_trials:
        raise ValueError(f"start_points: {len(start_points)} points but n_trials is {n_trials}; every start point "
                         f"is one of the n_trials")
    study_name = study_name or "nnic-auto"
    out = Path(out_dir) if out_dir is not None else None
    url = storage_url(storage, out)
    rdb = open_storage(url, heartbeat_s=heartbeat_s)

    with quiet_optuna():
        existing = [s.study_name for s in optuna.get_all_study_summaries(rdb, include_best_trial=False)]
        asked = {"request": {"space": space, "sensitivity": sensitivity}, "goals": goals.to_dict(),
                 "strategy": strategy, "strategy_options": dict(strategy_options or {}),
                 "fine_tune_steps": fine_tune_steps, "fine_tune_evals": fine_tune_evals,
                 "measure": measure_settings.to_dict(), "seed": seed,
                 "prune_trials": prune_trials if isinstance(prune_trials, bool) else dict(prune_trials),
                 "start_points": list(start_points)}
        joined = join
        if study_name in existing:
            study = optuna.load_study(study_name=study_name, storage=rdb)
            settings = _stored_settings(study, url, None if join else asked)
        elif join:
            raise ValueError(f"study {study_name!r} does not exist in storage {_shown(url)}; start it with "
                             f"nnic.auto_compress(...) first (workers join an existing study)")
        else:
            settings = {**asked, **_resolve(model, evaluator, dummy_input, space, goals, measure_settings,
                                            sensitivity, start_points, progress)}
            try:
                study = optuna.create_study(study_name=study_name, storage=rdb, directions=list(goals.directions))
            except optuna.exceptions.DuplicatedStudyError:  # another worker created it meanwhile: join it
                study = optuna.load_study(study_name=study_name, storage=rdb)
                settings, joined = _stored_settings(study, url, asked), True
            else:  # queued before the settings are stored: workers joining wait for those, so start points go first
                for params in settings["start_params"]:
                    study.enqueue_trial(params, user_attrs={"start_point": True})
                store_settings(study, settings)

        space_obj = SearchSpace.from_dict(settings["space"])
        goals = make_goals(settings["goals"]["constraints"], settings["goals"]["objectives"])
        strategy_obj = get_strategy(settings["strategy"], settings["strategy_options"])
        started_with = len(study.get_trials(deepcopy=False))
        context = StrategyContext(
            seed=settings["seed"] + 7919 * started_with + (os.getpid() if joined else 0),
            directions=goals.directions, n_trials=n_trials)
        sampler = make_sampler(strategy_obj, context)
        pruner = trial_pruner(settings["prune_trials"] if len(goals.objectives) == 1 else False)
        study = optuna.load_study(study_name=study_name, storage=rdb, sampler=sampler, pruner=pruner)
        objective = make_objective(model, evaluator, dummy_input, space_obj, goals, settings, n_trials)
        run_trials(study, objective, n_trials, goals, progress=progress, poll_s=min(2.0, heartbeat_s / 2))
        result = AutoResult(records(study, space_obj), baseline=settings["baseline"], goals=goals, space=space_obj,
                            settings=settings, model_inputs=(dummy_input, evaluator), study_name=study_name)
    if out is not None:
        result.save(out)
    return result


def _stored_settings(study: Any, url: str, asked: Mapping[str, Any] | None) -> dict[str, Any]:
    """The study's settings (waiting a little while its creator stores them); with ``asked``, refuse a study
    made for another search."""
    settings = study_settings(study)
    if settings is None:
        raise ValueError(f"study {study.study_name!r} in storage {_shown(url)} was not made by nnic.auto_compress "
                         f"(it has no 'nnic' settings); choose another study_name")
    differ = [] if asked is None else settings_conflict(settings, asked, SEARCH_KEYS)
    if differ:
        raise ValueError(f"study {study.study_name!r} in storage {_shown(url)} was made with other settings "
                         f"({', '.join(differ)} differ); use another study_name or out_dir, or the same settings "
                         f"to resume it. Nothing in the study was changed.")
    return settings


def _shown(url: str) -> str:
    from nnic.auto.storage import redact

    return repr(redact(url))


def study_exists(storage: str, study_name: str) -> bool:
    """Whether ``storage`` holds a study named ``study_name`` (``ValueError`` when it cannot be reached)."""
    import optuna

    rdb = open_storage(storage_url(storage, None))
    return study_name in [s.study_name for s in optuna.get_all_study_summaries(rdb, include_best_trial=False)]


def load_result(storage: str, study_name: str = "nnic-auto", *, model_inputs: tuple[Any, Any] | None = None
                ) -> AutoResult:
    """The result of a study as stored (no model needed): what any worker's ``auto_compress`` returns."""
    import optuna

    rdb = open_storage(storage_url(storage, None))
    with quiet_optuna():
        try:
            study = optuna.load_study(study_name=study_name, storage=rdb)
        except KeyError as exc:
            raise ValueError(f"study {study_name!r} does not exist in storage {_shown(storage)}") from exc
        settings = study_settings(study, wait_s=0)
        if settings is None:
            raise ValueError(f"study {study_name!r} was not made by nnic.auto_compress")
        space = SearchSpace.from_dict(settings["space"])
        goals = make_goals(settings["goals"]["constraints"], settings["goals"]["objectives"])
        return AutoResult(records(study, space), baseline=settings["baseline"], goals=goals, space=space,
                          settings=settings, model_inputs=model_inputs, study_name=study_name)


__all__ = ["auto_compress", "load_result", "study_exists"]
