"""The embedded study resumes after a SIGKILL: no finished trial lost or repeated, the trial that was running is
marked failed and retried with the same parameters, and the study ends with exactly n_trials finished."""

from __future__ import annotations

import signal
import subprocess
import time

import optuna
import pytest
from optuna.trial import TrialState

from nnic.auto.storage import open_storage

from .conftest import PYTHON, subprocess_env

N_TRIALS = 8
SEARCH = """
import sys, torch, nnic, digits
torch.set_num_threads(1)
model, evaluator, x = digits.spec()
options = digits.search_options({n}, fine_tune_steps=120)
nnic.auto_compress(model, evaluator, x, out_dir=sys.argv[1], heartbeat_s=1, progress=False, **options)
"""


def _study(db):
    """The study, opened the way workers open it: under the creation lock, so that polling while the search
    creates the file's tables cannot make either side meet a half-made schema ("table ... already exists")."""
    return optuna.load_study(study_name="nnic-auto", storage=open_storage(f"sqlite:///{db}"))


def _wait_for_a_running_trial_after(db, finished: int, proc: subprocess.Popen, timeout: float = 300):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        if db.exists():
            try:
                trials = _study(db).get_trials(deepcopy=False)
            except Exception:  # the study (or its tables) is still being created
                trials = []
            done = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
            running = [t for t in trials if t.state == TrialState.RUNNING and "configuration" in t.user_attrs]
            if len(done) >= finished and running:
                return running[0]
        time.sleep(0.1)
    pytest.fail("the search never reached a running trial")


@pytest.mark.slow
def test_a_killed_search_resumes_without_losing_or_repeating_trials(tmp_path):
    out = tmp_path / "out"
    script = SEARCH.format(n=N_TRIALS)
    first = subprocess.Popen([PYTHON, "-c", script, str(out)], env=subprocess_env(), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        running = _wait_for_a_running_trial_after(out / "study.db", 2, first)
        first.send_signal(signal.SIGKILL)
    finally:
        first.kill()
        first.communicate()
    before = {t.number: t for t in _study(out / "study.db").get_trials()
              if t.state in (TrialState.COMPLETE, TrialState.PRUNED)}
    assert len(before) >= 2 and running.number not in before

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
    import json

    listed = json.loads((out / "trials.json").read_text())["trials"]
    assert sorted(t["number"] for t in listed) == sorted(t.number for t in finished)
