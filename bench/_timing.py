"""Timing shared by the benchmarks: round-robin medians that spread other processes' load evenly."""

from __future__ import annotations

import time


def timeit_interleaved(fns: dict, repeats: int, budget: float, clock=time.perf_counter,
                       after=None) -> dict[str, list[float]]:
    """Seconds per call of each function, measured round-robin (one call of each per round), so that
    load from other processes hits all of them alike. ``clock=time.process_time`` counts CPU time only.
    ``after(name)``, when given, runs after each timed call, outside the timing (to read counters)."""
    once = {}
    for name, fn in fns.items():
        fn()
        t0 = clock()
        fn()
        once[name] = clock() - t0
    rounds = max(3, min(repeats, int(budget / max(sum(once.values()), 1e-9))))
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            t0 = clock()
            fn()
            times[name].append(clock() - t0)
            if after is not None:
                after(name)
    return times
