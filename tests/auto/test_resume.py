"""The embedded study resumes after a SIGKILL: no finished trial lost or repeated, the trial that was running is
marked failed and retried with the same parameters, and the study ends with exactly n_trials finished."""

from __future__ import annotations

import json
import signal
import subprocess

import optuna
import pytest
from optuna.trial import TrialState

from nnic.auto.storage import open_storage

from .conftest import PYTHON, subprocess_env

N_TRIALS = 8
FINISHED_BEFORE_KILL = 2
# The first run kills itself with SIGKILL inside a trial's evaluation once FINISHED_BEFORE_KILL trials are
# finished: a kill from outside, timed by polling the study, races trials that end in milliseconds (those over a
# cost bound are not fine-tuned) and could land after the trial it meant to interrupt, or between two trials.
SEARCH = """
import os, signal, sqlite3, sys, torch, nnic, digits
torch.set_num_threads(1)
model, evaluator, x = digits.spec()
kill_after = int(os.environ.get("KILL_AFTER_FINISHED", "-1"))
if kill_after >= 0:
    evaluate = evaluator.evaluate
    def evaluate_or_die(module):
        try:
            db = sqlite3.connect("file:" + os.path.join(sys.argv[1], "study.db") + "?mode=ro", uri=True)
            try:
                (done,) = db.execute("SELECT COUNT(*) FROM trials WHERE state IN ('COMPLETE', 'PRUNED')").fetchone()
            finally:
                db.close()
        except sqlite3.OperationalError:  # no study yet: the baseline is being measured
            done = -1
        if done >= kill_after:
            os.kill(os.getpid(), signal.SIGKILL)
        return evaluate(module)
    evaluator.evaluate = evaluate_or_die
options = digits.search_options({n}, fine_tune_steps=120)
nnic.auto_compress(model, evaluator, x, out_dir=sys.argv[1], heartbeat_s=1, progress=False, **options)
"""


def _study(db):
    """The study, opened the way workers open it: under the creation lock."""
    return optuna.load_study(study_name="nnic-auto", storage=open_storage(f"sqlite:///{db}"))


@pytest.mark.slow
def test_a_killed_search_resumes_without_losing_or_repeating_trials(tmp_path):
    out = tmp_path / "out"
    script = SEARCH.format(n=N_TRIALS)
    first = subprocess.run([PYTHON, "-c", script, str(out)], env={**subprocess_env(),
                           "KILL_AFTER_FINISHED": str(FINISHED_BEFORE_KILL)}, capture_output=True, text=True, timeout=900)
    assert first.returncode == -signal.SIGKILL, first.stderr[-3000:]
    at_kill = _study(out / "study.db").get_trials()
    before = {t.number: t for t in at_kill if t.state in (TrialState.COMPLETE, TrialState.PRUNED)}
    running = [t for t in at_kill if t.state == TrialState.RUNNING]
    assert len(before) == FINISHED_BEFORE_KILL and len(running) == 1 and "configuration" in running[0].user_attrs
    running = running[0]

    again = subprocess.run([PYTHON, "-c", script, str(out)], env=subprocess_env(), capture_output=True, text=True,
                           timeout=900)
    assert again.returncode == 0, again.stderr[-3000:]

    trials = _study(out / "study.db").get_trials()
    finished = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(finished) == N_TRIALS
    for number, old in before.items():  # nothing finished before the kill was lost, changed or run again
        now = trials[number]
        assert (now.state, now.params, now.values, now.user_attrs) == (old.state, old.params, old.values,
                                                                       old.user_attrs)
    killed = trials[running.number]
    assert killed.state == TrialState.FAIL
    retries = [t for t in trials if t.system_attrs.get("failed_trial") == running.number]
    assert len(retries) == 1 and retries[0].params == killed.params
    assert retries[0].state in (TrialState.COMPLETE, TrialState.PRUNED)
    assert [t for t in trials if t.state == TrialState.FAIL] == [killed]
    # The result files describe the whole study.
    listed = json.loads((out / "trials.json").read_text())["trials"]
    assert sorted(t["number"] for t in listed) == sorted(t.number for t in finished)
