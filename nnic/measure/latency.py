"""Latency measured the same way everywhere (``nnic bench``, ``nnic report``, the demo, auto-compression).

Method: the model runs in eval mode under ``torch.inference_mode``, with ``threads`` intra-op threads (torch's
current setting when ``None``; restored afterwards), on ``example_input`` (or on its first sample repeated to
``batch`` rows). ``warmup`` untimed runs come first (allocator, caches, one-time packing of low-bit weights),
then ``repeats`` runs each timed alone with ``time.perf_counter_ns`` (CUDA is synchronised before the clock is
read). The median is the figure to compare; p90 shows the noise; min is the best case the machine allowed.

``clock="cpu"`` times each run by the CPU time of this process (``time.process_time_ns``: every thread of it,
torch's and nnic's kernel pool alike) instead of the wall clock. On a quiet machine the two agree for one
thread; on a shared one the CPU time leaves out the time other processes held the core, which inflates
long runs more than short ones (a run longer than a scheduler slice is preempted more often), so compared
models keep their true ratio. It measures one-thread latency only: with more threads it would add them up.
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from nnic.measure._inputs import call, eval_mode, num_threads, with_batch


@dataclass(frozen=True)
class LatencyStats:
    """Times of ``repeats`` forward passes in milliseconds; ``p90_ms`` is the nearest-rank 90th percentile."""

    median_ms: float
    p90_ms: float
    min_ms: float
    repeats: int
    threads: int
    batch: int | None
    warmup: int
    samples_ms: tuple[float, ...]

    @classmethod
    def from_samples(cls, samples_ms: list[float], *, threads: int, batch: int | None, warmup: int) -> LatencyStats:
        ordered = sorted(samples_ms)
        return cls(median_ms=statistics.median(ordered), p90_ms=ordered[math.ceil(0.9 * len(ordered)) - 1],
                   min_ms=ordered[0], repeats=len(ordered), threads=threads, batch=batch, warmup=warmup,
                   samples_ms=tuple(samples_ms))

    def __str__(self) -> str:
        batch = f", batch {self.batch}" if self.batch is not None else ""
        return (f"median {self.median_ms:.3f} ms, p90 {self.p90_ms:.3f} ms, min {self.min_ms:.3f} ms "
                f"({self.repeats} runs after {self.warmup} warm-up, {self.threads} threads{batch})")

    def to_dict(self) -> dict[str, Any]:
        return {"median_ms": self.median_ms, "p90_ms": self.p90_ms, "min_ms": self.min_ms, "repeats": self.repeats,
                "threads": self.threads, "batch": self.batch, "warmup": self.warmup}


def _positive_int(name: str, value: Any, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"measure_latency: {name} must be an int >= {minimum}, got {value!r}")
    return value


def _uses_cuda(model: nn.Module, example_input: Any) -> bool:
    tensors = list(model.parameters()) + list(model.buffers())
    if isinstance(example_input, torch.Tensor):
        tensors.append(example_input)
    return any(t.is_cuda for t in tensors)


_CLOCKS = {"wall": time.perf_counter_ns, "cpu": time.process_time_ns}


def measure_latency(model: nn.Module, example_input: Any, *, threads: int | None = None, batch: int | None = None,
                    warmup: int = 3, repeats: int = 20, clock: str = "wall") -> LatencyStats:
    """Forward-pass latency of ``model`` on ``example_input`` (see the module docstring for the method)."""
    if threads is not None:
        _positive_int("threads", threads)
    _positive_int("warmup", warmup, minimum=0)
    _positive_int("repeats", repeats)
    if clock not in _CLOCKS:
        raise ValueError(f"measure_latency: clock must be 'wall' or 'cpu', got {clock!r}")
    x = with_batch(example_input, batch) if batch is not None else example_input
    cuda = _uses_cuda(model, x)
    if clock == "cpu" and (threads != 1 or cuda):
        raise ValueError("measure_latency: clock='cpu' times one CPU thread: it needs threads=1 and a CPU model")
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    now = _CLOCKS[clock]
    samples = []
    with num_threads(threads) as used, eval_mode(model), torch.inference_mode():
        for _ in range(warmup):
            call(model, x)
        sync()
        for _ in range(repeats):
            start = now()
            call(model, x)
            sync()
            samples.append((now() - start) / 1e6)
    return LatencyStats.from_samples(samples, threads=used, batch=batch, warmup=warmup)


def measure_latencies(models: dict[str, nn.Module], example_input: Any, *, rounds: int = 3,
                      threads: int | None = None, batch: int | None = None, warmup: int = 3,
                      repeats: int = 20, clock: str = "wall") -> dict[str, LatencyStats]:
    """Latency of several models compared fairly: ``rounds`` interleaved rounds (A, B, A, B, ...); in each,
    every model runs its warm-up and then its share of the ``repeats`` timed runs (spread as evenly as
    possible), so that a change in machine load affects every model alike. The statistics are over all of a
    model's ``repeats`` runs."""
    _positive_int("rounds", rounds)
    _positive_int("repeats", repeats)
    shares = [repeats // rounds + (1 if i < repeats % rounds else 0) for i in range(rounds)]
    samples: dict[str, list[float]] = {name: [] for name in models}
    used = {}
    for share in (s for s in shares if s):
        for name, model in models.items():
            stats = measure_latency(model, example_input, threads=threads, batch=batch, warmup=warmup,
                                    repeats=share, clock=clock)
            samples[name] += stats.samples_ms
            used[name] = stats.threads
    return {name: LatencyStats.from_samples(s, threads=used[name], batch=batch, warmup=warmup)
            for name, s in samples.items()}
