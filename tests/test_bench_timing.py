"""The benchmarks' round-robin timer (``bench/_timing.py``): what runs around each timed call, and in which order."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

from _timing import timeit_interleaved  # noqa: E402


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
