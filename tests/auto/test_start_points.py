"""Start points: hand-picked configurations (uniform sparsity, say) that the study runs first, once, so the
result always holds a point at least as good as each of them; and latency measured as a ratio to the dense
model timed in the same rounds."""

from __future__ import annotations

import pytest

import nnic

FAST = {"measure": {"repeats": 4, "warmup": 1, "rounds": 2}, "progress": False}


def test_start_points_run_first_as_uniform_float_configurations(model, evaluator, example, tmp_path):
    result = nnic.auto_compress(model, evaluator, example, n_trials=3, start_points=(0.3, 0.7), seed=2,
                                space={"sparsity": (0.0, 0.8), "bits": [8, "float"]}, out_dir=tmp_path, **FAST)
    first, second, _ = result.trials
    assert [t.start_point for t in result.trials] == [True, True, False]
    for t, s in ((first, 0.3), (second, 0.7)):
        assert set(t.configuration.sparsity.values()) == {s}  # every searched layer at the uniform sparsity
        assert t.configuration.quantization_bits() == {}  # float weights
    # The same call again (more trials) resumes the study without queueing the start points twice.
    again = nnic.auto_compress(model, evaluator, example, n_trials=4, start_points=(0.3, 0.7), seed=2,
                               space={"sparsity": (0.0, 0.8), "bits": [8, "float"]}, out_dir=tmp_path, **FAST)
    assert [t.start_point for t in again.trials] == [True, True, False, False]


def test_a_start_point_dict_sets_groups_and_bits_and_is_clipped_to_the_grid(model, evaluator, example, tmp_path):
    point = {"sparsity": {"0": 0.33, "2": 0.95}, "bits": {"4": 8}}
    result = nnic.auto_compress(model, evaluator, example, n_trials=1, start_points=[point],
                                space={"sparsity": (0.0, 0.8), "bits": [8, "float"], "sparsity_step": 0.1},
                                out_dir=tmp_path, **FAST)
    config = result.trials[0].configuration
    assert config.sparsity == {"0": 0.3, "2": 0.8}  # rounded to the 0.1 grid, clipped to the range
    assert config.quantization_bits() == {"4": 8}  # named layers as given, the others in float


@pytest.mark.parametrize(("points", "message"), [
    ([1.5], r"start_points\[0\]\['sparsity'\]: expected numbers in \[0, 1\), got 1.5"),
    ([0.2, {"sparsity": {"nope": 0.1}}], r"start_points\[1\]\['sparsity'\]: 'nope' is not a searched group"),
    ([{"bits": 4}], r"start_points\[0\]\['bits'\]: 4 is not among '0''s choices \[8, 'float'\]"),
    ([{"pruner": "fpgm"}], r"start_points\[0\]\['pruner'\]: 'fpgm' is not among the searched pruners \['l1norm'\]"),
    ([{"sparsty": 0.2}], r"start_points\[0\]: expected a sparsity in \[0, 1\) or a dict with keys among"),
    ([0.1, 0.2, 0.3], r"start_points: 3 points but n_trials is 2"),
])
def test_bad_start_points_are_refused_before_any_work(model, evaluator, example, tmp_path, points, message):
    with pytest.raises(ValueError, match=message):
        nnic.auto_compress(model, evaluator, example, n_trials=2, start_points=points,
                           space={"bits": [8, "float"]}, out_dir=tmp_path, **FAST)
    assert not (tmp_path / "study.db").exists() or not nnic.auto.search.study_exists(
        f"sqlite:///{tmp_path / 'study.db'}", "nnic-auto")


def test_latency_is_the_ratio_to_the_dense_model_times_the_dense_latency(model, evaluator, example, tmp_path):
    result = nnic.auto_compress(model, evaluator, example, n_trials=2, start_points=(0.0,),
                                space={"bits": [8, "float"]}, out_dir=tmp_path, **FAST)
    assert result.baseline["latency_ratio"] == 1.0
    for t in result.trials:
        m = t.measured
        assert m["latency_ms"] == pytest.approx(m["latency_ratio"] * result.baseline["latency_ms"])
        assert m["latency_raw_ms"] > 0 and m["latency_ratio"] > 0
    assert "interleaved with the dense model" in result.report()
