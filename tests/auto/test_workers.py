"""Several workers on one study stop at exactly n_trials finished trials, even when two of them start the
last trial at the same instant: a trial beyond the budget (counted by trial number, which the storage hands
out atomically) stops before any work and is recorded as a failed ``surplus`` trial, not a finished one."""

from __future__ import annotations

import multiprocessing
import subprocess

import optuna
import pytest
from optuna.trial import TrialState

from nnic.auto.runner import over_budget

from .conftest import PYTHON, subprocess_env


def _study() -> optuna.Study:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.create_study(storage=optuna.storages.InMemoryStorage())


def test_two_trials_asked_at_once_for_the_last_slot_only_the_first_counts():
    study = _study()
    for _ in range(3):
        study.tell(study.ask(), 1.0)  # three finished trials of a budget of five
    a, b = study.ask(), study.ask()  # two workers ask together: both saw one slot left
    c = study.ask()
    assert not over_budget(study, a.number, 4)
    assert over_budget(study, b.number, 4) and over_budget(study, c.number, 4)
    assert not over_budget(study, b.number, 5) and over_budget(study, c.number, 5)


def test_queued_and_running_trials_ahead_count_failed_ones_do_not():
    study = _study()
    study.tell(study.ask(), 1.0)
    study.tell(study.ask(), state=TrialState.PRUNED)
    study.tell(study.ask(), state=TrialState.FAIL)  # a dead worker's trial: its retry is queued anew
    study.enqueue_trial({})
    running = study.ask()  # pops the queued retry
    study.enqueue_trial({})
    later = study.ask()
    assert running.number == 3 and later.number == 4
    # Ahead of `later`: one complete, one pruned, one running (the failed one does not count).
    assert not over_budget(study, later.number, 4)
    assert over_budget(study, later.number, 3)


@pytest.mark.slow
def test_two_local_workers_finish_exactly_n_trials(tmp_path):
    n = 7
    url = f"sqlite:///{tmp_path / 'study.db'}"
    (tmp_path / "ready").mkdir()
    env = {**subprocess_env(), "NNIC_TEST_TRIALS": str(n), "NNIC_TEST_START_TOGETHER": f"{tmp_path / 'ready'}:2"}
    cmd = [PYTHON, "-m", "nnic.cli", "auto", "worker", "--storage", url, "--study", "digits", "--heartbeat-s", "2",
           "--no-progress", "digits:spec_with_options"]
    # Started together (each waits, its model trained, for the other): whichever makes the study first, the other
    # joins it; both run trials to the end.
    workers = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for _ in range(2)]
    for w in workers:
        _, err = w.communicate(timeout=900)
        assert w.returncode == 0, err[-3000:]
    trials = optuna.load_study(study_name="digits", storage=url).get_trials()
    finished = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(finished) == n
    assert {t.user_attrs["worker"].rsplit(":", 1)[1] for t in finished} == {str(w.pid) for w in workers}
    others = [t for t in trials if t not in finished]
    assert all(t.state == TrialState.FAIL and t.user_attrs.get("surplus") for t in others), others
    # Surplus trials stopped before any work: nothing was sampled or measured for them.
    assert all(not t.params and "measured" not in t.user_attrs for t in others)


def _open_at_once(url: str, barrier) -> int:
    import optuna

    from nnic.auto.storage import open_storage

    barrier.wait()  # every process opens the fresh file at the same moment
    return len(optuna.get_all_study_summaries(open_storage(url), include_best_trial=False))


def test_local_workers_opening_a_new_study_file_at_once_all_get_it(tmp_path):
    # Optuna creates the tables of a new SQLite file when it opens it; unserialised, processes starting together
    # collided on "table ... already exists" (most of 6 failed, every time it was tried)
    ctx = multiprocessing.get_context("spawn")
    with ctx.Manager() as manager, ctx.Pool(6) as pool:
        for attempt in range(3):
            url, barrier = f"sqlite:///{tmp_path / f'study{attempt}.db'}", manager.Barrier(6)
            assert pool.starmap(_open_at_once, [(url, barrier)] * 6) == [0] * 6
