"""Bad input to auto_compress gets a clear error naming what was wrong, before any work, and leaves an existing
study exactly as it was."""

from __future__ import annotations

import time

import optuna
import pytest
import torch

import nnic

FAST = {"measure": {"repeats": 2, "warmup": 0}, "progress": False}


def _snapshot(db) -> list:
    study = optuna.load_study(study_name="nnic-auto", storage=f"sqlite:///{db}")
    return [(t.number, t.state, t.params, t.values, t.user_attrs) for t in study.get_trials()], study.user_attrs


@pytest.fixture
def existing(model, evaluator, example, tmp_path):
    """A study with two finished trials, and its contents."""
    nnic.auto_compress(model, evaluator, example, constraints={"flops": 0.7}, n_trials=2, out_dir=tmp_path, **FAST)
    return tmp_path, _snapshot(tmp_path / "study.db")


def test_unknown_strategy_lists_the_registered_ones(model, evaluator, example, existing):
    out_dir, before = existing
    with pytest.raises(ValueError, match=r"no strategy named 'tpee' \(did you mean 'tpe'\?\); available: cmaes, "):
        nnic.auto_compress(model, evaluator, example, constraints={"flops": 0.7}, n_trials=3, strategy="tpee",
                           out_dir=out_dir, **FAST)
    assert _snapshot(out_dir / "study.db") == before


def test_impossible_constraint_names_the_bound_and_what_the_space_can_reach(model, evaluator, example, tmp_path):
    with pytest.raises(ValueError, match=r"constraints\['flops'\] = 0\.001 cannot be met: the most compressed "
                                         r"configuration of the space .* measures 0\.0"):
        nnic.auto_compress(model, evaluator, example, constraints={"flops": 0.001}, n_trials=3, out_dir=tmp_path,
                           **FAST)
    # No study was created: the same out_dir can start a feasible search.
    assert not nnic.auto.search.study_exists(f"sqlite:///{tmp_path / 'study.db'}", "nnic-auto")


@pytest.mark.parametrize("constraints, message", [
    ({"latency_ms": -1}, r"constraints\['latency_ms'\]: expected a positive bound, got -1 \(impossible\)"),
    ({"flop": 0.5}, r"constraints: unknown key 'flop'; expected some of \['score', 'flops'"),
    ({"flops": "half"}, r"constraints\['flops'\]: expected a number, got 'half'"),
])
def test_bad_constraints_are_named(model, evaluator, example, tmp_path, constraints, message):
    with pytest.raises((ValueError, TypeError), match=message):
        nnic.auto_compress(model, evaluator, example, constraints=constraints, out_dir=tmp_path, **FAST)


def test_a_constraint_change_on_an_existing_study_is_refused_and_changes_nothing(model, evaluator, example,
                                                                                   existing):
    out_dir, before = existing
    with pytest.raises(ValueError, match=r"study 'nnic-auto' in storage .* was made with other settings "
                                         r"\(goals differ\).*Nothing in the study was changed"):
        nnic.auto_compress(model, evaluator, example, constraints={"flops": 0.3}, n_trials=4, out_dir=out_dir,
                           **FAST)
    assert _snapshot(out_dir / "study.db") == before


@pytest.mark.parametrize("space, message", [
    ({"sparsity": (0.0, 0.0), "bits": ["float"]}, r"space is empty: no layer has a sparsity range wider than a "
                                                   r"point, no layer has a choice of bits and there is one pruner"),
    ({"sparsity": (0.5, 0.2)}, r"space\['sparsity'\]: expected \(low, high\) with 0 <= low <= high < 1"),
    ({"bits": [3]}, r"space\['bits'\]: expected a list of bits among 4, 8 and 'float', got \[3\]"),
    ({"layers": ["nope"]}, r"space\['layers'\]: 'nope' is not a Linear or Conv layer of the model"),
    ({"pruners": ["level"]}, r"space\['pruners'\]: 'level' is not a channel pruner"),
    ({"sparsty": (0, 0.5)}, r"space: unknown key\(s\) \['sparsty'\]"),
])
def test_bad_or_empty_space_is_named(model, evaluator, example, tmp_path, space, message):
    with pytest.raises(ValueError, match=message):
        nnic.auto_compress(model, evaluator, example, space=space, out_dir=tmp_path, **FAST)


def test_unreachable_storage_url_is_named_quickly_without_its_password(model, evaluator, example, tmp_path):
    start = time.monotonic()
    with pytest.raises(ValueError, match=r"storage 'postgresql://nnic:\*\*\*@127\.0\.0\.1:1/nnic' cannot be "
                                         r"reached: .*"):
        nnic.auto_compress(model, evaluator, example, storage="postgresql://nnic:secret@127.0.0.1:1/nnic",
                           study_name="s", **FAST)
    assert time.monotonic() - start < 30
    with pytest.raises(ValueError, match=r"storage: expected a database URL"):
        nnic.auto_compress(model, evaluator, example, storage="somewhere", **FAST)


def test_other_bad_arguments(model, evaluator, example, tmp_path):
    with pytest.raises(ValueError, match=r"out_dir: needed when storage is None"):
        nnic.auto_compress(model, evaluator, example, **FAST)
    with pytest.raises(ValueError, match=r"n_trials: expected an int >= 1, got 0"):
        nnic.auto_compress(model, evaluator, example, n_trials=0, out_dir=tmp_path, **FAST)
    with pytest.raises(ValueError, match=r"measure\['repeats'\]: expected an int >= 1, got 0"):
        nnic.auto_compress(model, evaluator, example, out_dir=tmp_path, measure={"repeats": 0}, progress=False)
    with pytest.raises(ValueError, match=r"measure\['clock'\]: expected 'wall', or 'cpu' with one thread, got 'cpu' "
                                         r"with threads=2"):
        nnic.auto_compress(model, evaluator, example, out_dir=tmp_path, measure={"clock": "cpu", "threads": 2},
                           progress=False)
    with pytest.raises(ValueError, match=r"strategy 'sa' searches one objective"):
        nnic.auto_compress(model, evaluator, example, objectives=("score", "latency_ms"), strategy="sa",
                           out_dir=tmp_path, **FAST)
    with pytest.raises(ValueError, match=r"prune_trials: expected True, False or"):
        nnic.auto_compress(model, evaluator, example, prune_trials={"name": "never"}, out_dir=tmp_path, **FAST)
    with pytest.raises(TypeError, match=r"evaluator: expected an nnic.evaluator.Evaluator"):
        nnic.auto_compress(model, None, example, out_dir=tmp_path, **FAST)


def test_layers_without_a_low_bit_module_keep_float_and_naming_one_is_refused():
    from torch import nn

    from nnic.auto.space import build_space

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3, groups=8), nn.ReLU(), nn.Flatten(),
                        nn.Linear(8 * 4 * 4, 10)).eval()
    x = torch.randn(1, 3, 8, 8)
    space = build_space(net, x, {"bits": [8, "float"]})
    assert "2" not in space.bits  # the depthwise convolution has no int8 module: not searched
    assert space.bits["0"] == (8, "float") and space.bits["5"] == (8, "float")
    with pytest.raises(ValueError, match=r"space\['bits'\]\['2'\]: 8 bits cannot be lowered: grouped convolution"):
        build_space(net, x, {"bits": {"2": [8, "float"]}})


def test_a_search_whose_trials_keep_failing_stops_with_the_error(model, evaluator, example, tmp_path):
    class Breaks:
        """Scores the dense model, then raises on every trial (the first ones queued as start points)."""

        calls = 0

        def evaluate(self, m):
            Breaks.calls += 1
            if Breaks.calls > 1:
                raise RuntimeError("the evaluator broke")
            return evaluator.evaluate(m)

    with pytest.raises(RuntimeError, match=r"3 trials in a row failed; the last one \(#2\) raised:\n(.|\n)*"
                                           r"the evaluator broke"):
        nnic.auto_compress(model, Breaks(), example, n_trials=5, start_points=(0.3, 0.5), out_dir=tmp_path, **FAST)
