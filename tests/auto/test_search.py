"""auto_compress on digits: the found configuration meets a latency bound by measurement, the result and its
files agree with the study, apply() rebuilds what was measured, Pareto search, Optuna pruning."""

from __future__ import annotations

import csv
import json
import statistics

import optuna
import pytest
import torch

import nnic
from nnic.measure import count_flops, measure_latency

MEASURE = {"batch": 512, "repeats": 15, "warmup": 2}


def _latency(model, x) -> float:
    return measure_latency(model, x, threads=1, batch=MEASURE["batch"], warmup=2, repeats=15).median_ms


def test_found_configuration_meets_the_latency_bound_when_measured_again(model, evaluator, example, tmp_path):
    """The bound is a ratio to the dense model (``latency_ratio``), which the search times in rounds interleaved with
    it: an absolute bound in ms measured here before the search failed when the shared machine slowed down during it
    (the search's dense model took 2.98 ms against 1.38 here, so no trial could meet 0.83 ms)."""
    bound = 0.6
    result = nnic.auto_compress(model, evaluator, example, constraints={"latency_ratio": bound}, n_trials=10,
                                space={"bits": [8, "float"]}, measure=MEASURE, fine_tune_steps=20,
                                out_dir=tmp_path, progress=False, seed=1)
    best = result.best
    assert best is not None, result.report()
    assert best.measured["latency_ratio"] <= bound  # as the search measured it
    compressed = result.apply(model)
    # Measured again here, interleaved with the dense model: the ratio holds (25 % margin for a shared machine).
    ratios = []
    for _ in range(3):
        dense, small = _latency(model, example), _latency(compressed, example)
        ratios.append(small / dense)
    assert statistics.median(ratios) <= bound * 1.25, (ratios, result.report())
    # apply() rebuilt the configuration the search scored: same FLOPs, same score (same seed, same fine-tuning).
    assert int(count_flops(compressed, example)) == best.measured["flops_count"]
    assert evaluator.evaluate(compressed) == pytest.approx(best.measured["score"], abs=0.01)
    assert best.measured["score"] > 80  # fine-tuned digits MLP, not a broken one


def test_out_dir_holds_the_trials_the_plot_the_config_lists_and_the_study(model, evaluator, example, tmp_path):
    result = nnic.auto_compress(model, evaluator, example, constraints={"flops": 0.5}, n_trials=5,
                                measure={"repeats": 3, "warmup": 1}, out_dir=tmp_path, progress=False)
    with (tmp_path / "trials.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [int(r["number"]) for r in rows] == [t.number for t in result.trials]
    assert len(rows) == 5
    trials = json.loads((tmp_path / "trials.json").read_text())
    assert trials["settings"]["goals"] == {"constraints": {"flops": 0.5}, "objectives": ["score"]}
    best = json.loads((tmp_path / "best.json").read_text())
    assert best["best"]["number"] == result.best.number
    for entry in best["best"]["pruning_config_list"]:  # a config list the pruner takes as it is
        assert set(entry) == {"op_names", "sparsity"} and 0 < entry["sparsity"] < 1
    assert (tmp_path / "pareto.png").read_bytes()[:4] == b"\x89PNG"
    # The study itself is in out_dir, and reading it back gives the same result.
    again = nnic.auto.load_result(f"sqlite:///{tmp_path / 'study.db'}")
    assert [(t.number, t.measured) for t in again.trials] == [(t.number, t.measured) for t in result.trials]
    assert again.best.number == result.best.number
    # Every feasible trial really meets the FLOPs bound, by count; infeasible ones do not.
    for t in result.trials:
        assert (t.measured["flops"] <= 0.5) == t.feasible
    report = result.report()
    assert "dense" in report and "best" in report and "median of 3 runs" in report


def test_the_best_trial_is_the_best_feasible_one(model, evaluator, example, tmp_path):
    result = nnic.auto_compress(model, evaluator, example, constraints={"params": 0.5}, n_trials=6,
                                measure={"repeats": 2, "warmup": 0}, out_dir=tmp_path, progress=False,
                                strategy="random", seed=3)
    feasible = [t for t in result.trials if t.state == "COMPLETE" and t.measured["params"] <= 0.5]
    assert feasible, result.report()
    assert result.best.measured["score"] == max(t.measured["score"] for t in feasible)


def test_two_objectives_give_a_pareto_front_of_non_dominated_trials(model, evaluator, example, tmp_path):
    result = nnic.auto_compress(model, evaluator, example, objectives=("score", "flops"), n_trials=8,
                                strategy="nsga2", measure={"repeats": 2, "warmup": 0}, out_dir=tmp_path,
                                progress=False)
    front = result.pareto
    assert front
    done = [t for t in result.trials if t.state == "COMPLETE"]
    for t in front:
        assert not any(o.measured["score"] >= t.measured["score"] and o.measured["flops"] <= t.measured["flops"]
                       and (o.measured["score"], o.measured["flops"]) != (t.measured["score"], t.measured["flops"])
                       for o in done)
    for t in done:  # everything off the front is dominated by something on it (or equal to it)
        assert t in front or any(f.measured["score"] >= t.measured["score"] and f.measured["flops"] <= t.measured["flops"]
                                 for f in front)


def test_hopeless_trials_are_pruned_during_fine_tuning(model, evaluator, example, tmp_path):
    # A threshold pruner stops any trial scoring under 99 % before fine-tuning ends; the pruned trials keep
    # what was measured (their cost, and the score when they were stopped).
    result = nnic.auto_compress(model, evaluator, example, n_trials=4, fine_tune_steps=40, fine_tune_evals=2,
                                space={"sparsity": (0.5, 0.9)}, prune_trials={"name": "threshold", "lower": 99.0},
                                measure={"repeats": 2, "warmup": 0}, out_dir=tmp_path, progress=False)
    study = optuna.load_study(study_name="nnic-auto", storage=f"sqlite:///{tmp_path / 'study.db'}")
    pruned = study.get_trials(states=(optuna.trial.TrialState.PRUNED,))
    assert len(pruned) == 4
    for t in pruned:
        assert max(t.intermediate_values) == 0  # stopped at the first evaluation, before any fine-tuning
        assert t.user_attrs["measured"]["score"] < 99
    assert [t.state for t in result.trials] == ["PRUNED"] * 4 and result.best is None


def test_fine_tuning_restores_accuracy_lost_to_pruning(model, evaluator, example, tmp_path):
    common = dict(n_trials=2, strategy="random", seed=5, space={"sparsity": (0.7, 0.8), "bits": ["float"]},
                  measure={"repeats": 2, "warmup": 0}, progress=False, prune_trials=False)
    plain = nnic.auto_compress(model, evaluator, example, out_dir=tmp_path / "a", **common)
    tuned = nnic.auto_compress(model, evaluator, example, out_dir=tmp_path / "b", fine_tune_steps=60, **common)
    for a, b in zip(plain.trials, tuned.trials):
        assert a.configuration == b.configuration  # same seed, same sampler: same points
        assert b.measured["score"] >= a.measured["score"]
    assert sum(b.measured["score"] - a.measured["score"] for a, b in zip(plain.trials, tuned.trials)) > 0


def test_sensitivity_narrows_the_space(model, evaluator, example, tmp_path):
    result = nnic.auto_compress(model, evaluator, example, n_trials=1, sensitivity=0.5,
                                space={"sparsity": (0.0, 0.9), "sparsity_step": 0.1},
                                measure={"repeats": 2, "warmup": 0}, out_dir=tmp_path, progress=False)
    bounds = result.space.sparsity
    assert all(hi <= 0.9 for _, hi in bounds.values())
    assert any(hi < 0.9 for _, hi in bounds.values())  # losing at most half a point alone: no layer goes to 90 %


def test_import_nnic_stays_lean():
    import subprocess
    import sys

    code = ("import sys, nnic; heavy = [m for m in ('optuna', 'sqlalchemy', 'matplotlib', 'nnic.auto') "
            "if m in sys.modules]; print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
    assert callable(nnic.auto_compress) and callable(nnic.sensitivity)


def test_the_searched_model_is_left_unchanged(model, evaluator, example, tmp_path):
    before = {k: v.clone() for k, v in model.state_dict().items()}
    nnic.auto_compress(model, evaluator, example, n_trials=2, measure={"repeats": 2, "warmup": 0},
                       out_dir=tmp_path, progress=False)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # trials work on copies
