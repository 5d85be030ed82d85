"""Timing shared by the benchmarks: round-robin medians that spread other processes' load evenly."""

from __future__ import annotations

import random
import time


def round_order(names: list[str], r: int, swap: tuple[str, str] | None = None) -> list[str]:
    """The order of round ``r``: ``names``, with the two rows of ``swap`` (when given, and both there) trading
    places in every odd round. Why: a row's time depends on what ran right before it (what the previous call left
    in the caches, which threads it left spinning), so two rows compared against each other take turns in both
    places."""
    order = list(names)
    if swap is not None and r % 2 == 1 and all(s in order for s in swap):
        i, j = order.index(swap[0]), order.index(swap[1])
        order[i], order[j] = order[j], order[i]
    return order


def shuffled_order(names: list[str], r: int) -> list[str]:
    """A permutation of ``names`` for round ``r``, the same in every run (seeded by the round). Why: with a fixed
    order each row always follows the same one, and what ran just before moves a call's time (at 1 × 4096² in
    ``bench/gemm.py`` an nnic call right after the prepacked s8 product took 0.45 ms, right after another nnic Linear
    0.35 ms); in a new order each round every row follows every other about equally often."""
    order = list(names)
    random.Random(r).shuffle(order)
    return order


def even_if_swapped(rounds: int, swap: tuple[str, str] | None) -> int:
    """``rounds``, made even (one more) when two rows trade places: each then sits in each place equally often. Why:
    with 15 rounds one of them had 8 calls right after the row before the pair and the other 7, and at 512 × 768 ×
    768 under load a call there took 9 ms against 1.7 ms after the other nnic row, so the row medians came from
    different groups (2026-12-02: the same routing read 0.2-1.0x the other between runs)."""
    return rounds + rounds % 2 if swap is not None else rounds


def timeit_interleaved(fns: dict, repeats: int, budget: float, clock=time.perf_counter,
                       after=None, swap: tuple[str, str] | None = None, before=None,
                       shuffle: bool = False) -> dict[str, list[float]]:
    """Seconds per call of each function, measured round-robin (one call of each per round), so that
    load from other processes hits all of them alike. ``clock=time.process_time`` counts CPU time only.
    ``before()`` and ``after(name)``, when given, run before and after each timed call, outside the timing (to evict
    the caches, to read counters); ``swap``: two rows that trade places every other round (:func:`round_order`);
    ``shuffle``: each round in its own order instead (:func:`shuffled_order`; not with ``swap``)."""
    if shuffle and swap is not None:
        raise ValueError("shuffle already moves every row: give swap or shuffle, not both")
    once = {}
    for name, fn in fns.items():
        fn()
        t0 = clock()
        fn()
        once[name] = clock() - t0
    rounds = even_if_swapped(max(3, min(repeats, int(budget / max(sum(once.values()), 1e-9)))), swap)
    times: dict[str, list[float]] = {name: [] for name in fns}
    for r in range(rounds):
        for name in shuffled_order(list(fns), r) if shuffle else round_order(list(fns), r, swap):
            fn = fns[name]
            if before is not None:
                before()
            t0 = clock()
            fn()
            times[name].append(clock() - t0)
            if after is not None:
                after(name)
    return times
