"""The benchmarks' round-robin timer (``bench/_timing.py``): what runs around each timed call, and in which order."""

import importlib.util
from pathlib import Path

import pytest


def _load_timing():
    """``bench/_timing.py`` loaded from its file. Why not ``bench`` on ``sys.path``: that folder holds ``onnx.py``,
    which would then shadow the ``onnx`` package for every later test of the session."""
    path = Path(__file__).resolve().parent.parent / "bench" / "_timing.py"
    spec = importlib.util.spec_from_file_location("bench_timing", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_timing = _load_timing()
shuffled_order, timeit_interleaved = _timing.shuffled_order, _timing.timeit_interleaved


def test_before_runs_ahead_of_every_timed_call_and_after_follows_it_outside_the_timing():
    events = []
    ticks = iter(range(10_000))

    def clock():  # each reading one tick later: a call's time is the ticks taken inside the timing only
        return next(ticks)

    fns = {"a": lambda: events.append("a"), "b": lambda: events.append("b")}
    times = timeit_interleaved(fns, repeats=3, budget=1e9, clock=clock, before=lambda: events.append("sweep"),
                               after=lambda name: events.append(f"after {name}"))
    timed = events[4:]  # the untimed warm-up: two calls of each, neither swept nor followed
    assert events[:4] == ["a", "a", "b", "b"]
    assert timed == ["sweep", "a", "after a", "sweep", "b", "after b"] * 3
    assert times == {"a": [1, 1, 1], "b": [1, 1, 1]}


def test_shuffled_rounds_are_permutations_fixed_per_round_in_which_every_row_follows_every_other():
    names = [f"row {i}" for i in range(8)]
    rounds = [shuffled_order(names, r) for r in range(64)]
    assert all(sorted(order) == sorted(names) for order in rounds)
    assert rounds == [shuffled_order(names, r) for r in range(64)], "the same order for a round in every run"
    followed = {(order[i - 1], order[i]) for order in rounds for i in range(1, len(order))}
    assert followed == {(a, b) for a in names for b in names if a != b}


def test_shuffle_and_swap_together_are_refused():
    with pytest.raises(ValueError, match="swap or shuffle"):
        timeit_interleaved({"a": lambda: None}, 3, 1.0, swap=("a", "b"), shuffle=True)
