"""One configuration made real and measured: prune, speed up, fine-tune, lower to low-bit modules, measure.

The same steps serve a search trial and :meth:`AutoResult.apply`, so a found configuration is rebuilt exactly
as it was scored (same pruner, same fine-tuning seed and budget, same lowering).

Order, and why: the pruned model is sped up first (speedup removes the channels for real, so fine-tuning runs
on the small model); its cost (FLOPs, parameters, size on disk, latency) is measured on a lowered copy before
any fine-tuning, so a configuration that breaks a cost constraint is not fine-tuned at all; then the model is
fine-tuned in float, lowered with ``nnic.quantization_speedup`` and scored.
"""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from nnic.auto.space import Configuration


@dataclass(frozen=True)
class MeasureSettings:
    """How latency is measured (``nnic.measure.measure_latencies``): intra-op ``threads``, ``batch`` rows (the
    example input's first sample repeated; ``None``: the example input as given), and ``repeats`` timed runs
    per model spread over ``rounds`` interleaved rounds (dense, trial, dense, trial, ...), each round after
    ``warmup`` untimed runs. A trial's latency is its ratio to the dense model measured in the same rounds, so
    that machine load during the search moves both alike and cancels out. ``clock``: ``"cpu"`` (the default
    for one thread: the process's CPU time per run, which other processes' load does not inflate) or
    ``"wall"`` (the default for more threads)."""

    threads: int = 1
    batch: int | None = None
    warmup: int = 3
    repeats: int = 20
    rounds: int = 5
    clock: str = "cpu"

    @classmethod
    def from_user(cls, measure: Mapping[str, Any] | None) -> MeasureSettings:
        measure = dict(measure or {})
        unknown = sorted(set(measure) - {"threads", "batch", "warmup", "repeats", "rounds", "clock"})
        if unknown:
            raise ValueError(f"measure: unknown key(s) {unknown}; expected threads, batch, warmup, repeats, rounds, "
                             f"clock")
        measure.setdefault("clock", "cpu" if measure.get("threads", 1) == 1 else "wall")
        if measure["clock"] not in ("cpu", "wall") or (measure["clock"] == "cpu" and measure.get("threads", 1) != 1):
            raise ValueError(f"measure['clock']: expected 'wall', or 'cpu' with one thread, got {measure['clock']!r} "
                             f"with threads={measure.get('threads', 1)!r}")
        out = cls(**measure)
        for key, minimum in (("threads", 1), ("warmup", 0), ("repeats", 1), ("batch", 1), ("rounds", 1)):
            value = getattr(out, key)
            if value is None and key == "batch":
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ValueError(f"measure[{key!r}]: expected an int >= {minimum}, got {value!r}")
        return out

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def shrink(model: nn.Module, dummy_input: Any, config: Configuration, evaluator: Any = None) -> nn.Module:
    """A pruned, sped-up copy of ``model`` (the model itself is untouched)."""
    import nnic

    pruned = copy.deepcopy(model)
    config_list = config.pruning_config_list()
    if not config_list:
        return pruned
    pruner = nnic.pruner(config.pruner, pruned, config_list, dependency_aware=True, dummy_input=dummy_input,
                         evaluator=evaluator)
    _, masks = pruner.compress()
    return nnic.speedup_model(pruned, dummy_input, masks)


def fine_tune(model: nn.Module, evaluator: Any, steps: int, *, evaluations: int = 4,
              on_score: Callable[[int, float], None] | None = None) -> None:
    """Train ``model`` for ``steps`` optimizer steps through ``evaluator``; every ``steps / evaluations`` steps
    ``on_score(step, score)`` is called (it may raise to stop a hopeless trial)."""
    if steps <= 0:
        return
    every = max(1, math.ceil(steps / max(1, evaluations)))

    def after_step(step: int) -> None:
        if on_score is not None and (step % every == 0 or step == steps):
            on_score(step, evaluator.evaluate(model))

    evaluator.train(model, max_steps=steps, step_hooks=[after_step])


def lower(model: nn.Module, config: Configuration) -> nn.Module:
    """Replace the layers ``config`` gives 4 or 8 bits by nnic's real low-bit modules (in place)."""
    import nnic

    bits = config.quantization_bits()
    return nnic.quantization_speedup(model, bits) if bits else model


def costs(float_model: nn.Module, lowered: nn.Module, dummy_input: Any, measure: MeasureSettings,
          dense: Mapping[str, float] | None = None, reference: nn.Module | None = None) -> dict[str, float]:
    """Measured cost of a compressed model: ``flops``/``params`` (ratios to ``dense``, absolute counts when it
    is ``None``), ``size_bytes``, and latency.

    With the dense ``reference`` model, the two are timed in interleaved rounds and ``latency_ratio`` is the
    ratio of their medians; ``latency_ms`` is that ratio times the dense latency in ``dense`` (measured once,
    when the study was made), so figures from different moments, loads or machines compare;
    ``latency_raw_ms`` is the median as measured now. Without ``reference`` (the dense model itself),
    ``latency_ms`` is the median of ``measure.repeats`` runs and the ratio is 1."""
    from nnic.measure import (
        count_flops,
        count_params,
        measure_latencies,
        measure_latency,
        size_on_disk,
    )

    flops, params = int(count_flops(float_model, dummy_input)), count_params(float_model)
    timing = {"threads": measure.threads, "batch": measure.batch, "warmup": measure.warmup,
              "repeats": measure.repeats, "clock": measure.clock}
    if reference is None:
        latency = measure_latency(lowered, dummy_input, **timing)
        ratio, absolute = 1.0, latency.median_ms
    else:
        if dense is None:
            raise ValueError("costs: a reference model needs the dense model's measurements (dense=...)")
        both = measure_latencies({"dense": reference, "trial": lowered}, dummy_input,
                                 rounds=min(measure.rounds, measure.repeats), **timing)
        latency = both["trial"]
        ratio = latency.median_ms / both["dense"].median_ms
        absolute = ratio * dense["latency_ms"]
    out = {"flops_count": flops, "params_count": params, "size_bytes": size_on_disk(lowered),
           "latency_ms": absolute, "latency_ratio": ratio, "latency_raw_ms": latency.median_ms,
           "latency_p90_ms": latency.p90_ms}
    out["flops"] = flops / dense["flops_count"] if dense else 1.0
    out["params"] = params / dense["params_count"] if dense else 1.0
    return out


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Torch's global RNG (data shuffling, dropout) starts from ``seed`` inside, and is restored afterwards, so a
    trial and its later ``apply`` fine-tune identically."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def build(model: nn.Module, dummy_input: Any, config: Configuration, evaluator: Any, *, fine_tune_steps: int,
          evaluations: int, seed: int) -> nn.Module:
    """The compressed model of ``config``, built exactly as a trial builds it (without the measurements)."""
    with seeded(seed):
        small = shrink(model, dummy_input, config, evaluator)
        if fine_tune_steps > 0:
            if evaluator is None:
                raise ValueError("fine-tuning needs the evaluator the search used: pass evaluator=...")
            fine_tune(small, evaluator, fine_tune_steps, evaluations=evaluations)
        return lower(small, config)


__all__ = ["MeasureSettings", "build", "costs", "fine_tune", "lower", "seeded", "shrink"]
