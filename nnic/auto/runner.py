"""The loop a worker runs: trials one at a time until the study holds ``n_trials`` finished ones.

Several processes (on one machine or many) run this loop on one study. Each looks at the study before every
trial: stale trials of dead workers are failed and re-queued (heartbeats, see :mod:`nnic.auto.storage`), and
a worker whose remaining trials are all running elsewhere waits for them instead of starting another.

Looking first is not enough when two workers start a trial at the same instant: both see one trial left.
So the budget is also kept by trial number, which the storage hands out atomically: a trial counts only if
fewer than ``n_trials`` trials with lower numbers are finished, running or queued (:func:`over_budget`).
A trial over the budget stops before any work and is recorded as failed with the user attribute
``surplus``; failed trials are not finished ones, so the study ends with exactly ``n_trials`` finished.
"""

from __future__ import annotations

import contextlib
import logging
import os
import platform
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from typing import Any

from nnic.auto.goals import Goals

MAX_CONSECUTIVE_FAILURES = 3
SURPLUS = "n_trials already reached by other workers"


def worker_id() -> str:
    """This process, as trials record it (``host:pid``)."""
    return f"{platform.node()}:{os.getpid()}"


def over_budget(study: Any, number: int, n_trials: int) -> bool:
    """Whether trial ``number`` is beyond ``n_trials``: that many trials numbered before it are finished,
    running or queued (a running one that dies is retried under a new, higher number, so the count holds)."""
    from optuna.trial import TrialState

    ahead = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.WAITING)
    return sum(t.number < number and t.state in ahead for t in study.get_trials(deepcopy=False)) >= n_trials


def _counts(study: Any) -> tuple[int, int, int]:
    """(finished, running, waiting) trials."""
    from optuna.trial import TrialState

    states = [t.state for t in study.get_trials(deepcopy=False)]
    finished = sum(s in (TrialState.COMPLETE, TrialState.PRUNED) for s in states)
    return finished, states.count(TrialState.RUNNING), states.count(TrialState.WAITING)


def _fail_stale(study: Any) -> None:
    import optuna

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


def _best_text(study: Any, goals: Goals) -> str:
    from optuna.trial import TrialState

    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if all(c <= 0 for c in t.constraints.values())]
    if not done:
        return "no feasible trial yet"
    key = goals.objectives[0]
    pick = max if goals.directions[0] == "maximize" else min
    best = pick(done, key=lambda t: t.user_attrs["measured"][key])
    m = best.user_attrs["measured"]
    return f"best #{best.number}: score {m['score']:.4g}, latency {m['latency_ms']:.3g} ms, flops {m['flops']:.2f}"


def run_trials(study: Any, objective: Callable[[Any], Any], n_trials: int, goals: Goals, *, progress: bool,
               poll_s: float) -> None:
    """Run trials until the study has ``n_trials`` finished ones; wait while other workers finish the last
    ones (or their heartbeats go stale, which re-queues their trials here)."""
    import optuna
    from tqdm.auto import tqdm

    finished = _counts(study)[0]
    bar = tqdm(total=n_trials, initial=min(finished, n_trials), desc="auto_compress", unit="trial",
               disable=not progress, file=sys.stderr, dynamic_ncols=True)
    failures = 0
    try:
        while True:
            _fail_stale(study)
            finished, running, _ = _counts(study)
            bar.update(min(finished, n_trials) - bar.n)
            bar.set_postfix_str(_best_text(study, goals), refresh=True)
            if finished >= n_trials:
                return
            if finished + running >= n_trials:
                time.sleep(poll_s)  # the last trials are running elsewhere (queued ones would be surplus)
                continue
            ran: list[Any] = []  # the trial this call ran (a new one, or one popped from the queue)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                # Samplers without constraint handling (CMA-ES, random) say so; the result filters feasibility.
                warnings.filterwarnings("ignore", "Constraints have been set, but", UserWarning)
                study.optimize(objective, n_trials=1, catch=(Exception,), gc_after_trial=False,
                               callbacks=[lambda _study, trial, out=ran: out.append(trial)])
            last = ran[-1] if ran else None
            if last is not None and last.state == optuna.trial.TrialState.FAIL and not last.user_attrs.get("surplus"):
                failures += 1
                if failures >= MAX_CONSECUTIVE_FAILURES:
                    raise RuntimeError(f"auto_compress: {failures} trials in a row failed; the last one "
                                       f"(#{last.number}) raised:\n{last.user_attrs.get('error', '?')}")
            else:
                failures = 0
    finally:
        bar.close()


def _not_surplus(record: logging.LogRecord) -> bool:
    return SURPLUS not in record.getMessage()


@contextlib.contextmanager
def quiet_optuna() -> Iterator[None]:
    """Optuna logs warnings only inside (not every finished trial, nor a surplus trial's stop), and its
    verbosity is restored after."""
    import optuna

    level = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    logger = logging.getLogger("optuna")
    logger.addFilter(_not_surplus)
    try:
        yield
    finally:
        logger.removeFilter(_not_surplus)
        optuna.logging.set_verbosity(level)


__all__ = ["MAX_CONSECUTIVE_FAILURES", "SURPLUS", "over_budget", "quiet_optuna", "run_trials", "worker_id"]
