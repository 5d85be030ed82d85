"""Constraints and objectives of ``auto_compress``, all scored on measured results.

Metrics of a trial (and of the dense model, the baseline):

================= ===================================================================== =========
key               meaning                                                               direction
================= ===================================================================== =========
``score``         the evaluator's score after pruning, fine-tuning and quantization     maximize
``flops``         multiply-accumulates of the compressed model / the dense model's      minimize
``params``        parameters of the compressed model / the dense model's                minimize
``size_bytes``    bytes of the compressed model saved as safetensors (integer codes)    minimize
``latency_ratio`` median forward time / the dense model's, timed in interleaved rounds  minimize
``latency_ms``    ``latency_ratio`` times the dense model's median forward time         minimize
================= ===================================================================== =========

Latency is measured as a ratio to the dense model, both timed in the same interleaved rounds during the trial
(see :func:`nnic.auto.trial.costs`), so load on the machine cancels out; ``latency_ms`` is that ratio times the
dense latency measured when the study was made.

A constraint bounds a metric: ``{"flops": 0.5}`` means at most half the dense FLOPs, ``{"latency_ratio": 0.5}``
at most half the dense latency, ``{"latency_ms": 2.0}`` at most 2 ms, ``{"score": 95.0}`` a score of at
least 95, and ``{"score_drop": 1.0}`` at most one point below the dense model's score. Constraint values are
normalised so that ``<= 0`` is met (Optuna's convention).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

METRICS = {"score": "maximize", "flops": "minimize", "params": "minimize", "size_bytes": "minimize",
           "latency_ms": "minimize", "latency_ratio": "minimize"}
CONSTRAINTS = (*METRICS, "score_drop")
# A measured bound is impossible only when the cheapest point misses it by this factor.
_NOISY = {"latency_ms": 1.25, "latency_ratio": 1.25}


@dataclass(frozen=True)
class Goals:
    """Validated constraints (``{key: bound}``) and objectives (metric keys, in order)."""

    constraints: dict[str, float]
    objectives: tuple[str, ...]

    @property
    def directions(self) -> tuple[str, ...]:
        return tuple(METRICS[k] for k in self.objectives)

    def objective_values(self, measured: Mapping[str, float]) -> list[float]:
        return [float(measured[k]) for k in self.objectives]

    def constraint_values(self, measured: Mapping[str, float], baseline: Mapping[str, float]) -> list[float]:
        """One value per constraint, ``<= 0`` when met: relative excess for costs, points for the score."""
        out = []
        for key, bound in self.constraints.items():
            if key == "score":
                out.append(bound - measured["score"])
            elif key == "score_drop":
                out.append(baseline["score"] - measured["score"] - bound)
            else:
                out.append((measured[key] - bound) / bound)
        return out

    def feasible(self, measured: Mapping[str, float], baseline: Mapping[str, float]) -> bool:
        return all(v <= 0 for v in self.constraint_values(measured, baseline))

    def check_reachable(self, cheapest: Mapping[str, float]) -> None:
        """Raise ``ValueError`` when even the most compressed point of the space misses a cost constraint."""
        for key, bound in self.constraints.items():
            if key in ("score", "score_drop"):
                continue
            if cheapest[key] > bound * _NOISY.get(key, 1.0):
                raise ValueError(
                    f"constraints[{key!r}] = {bound:g} cannot be met: the most compressed configuration of the "
                    f"space (every layer at its highest sparsity and fewest bits) measures {cheapest[key]:.4g}; "
                    f"loosen the constraint or widen the space")

    def to_dict(self) -> dict[str, Any]:
        return {"constraints": dict(self.constraints), "objectives": list(self.objectives)}


def make_goals(constraints: Mapping[str, float] | None, objectives: str | Sequence[str] | None) -> Goals:
    """Validate ``constraints`` and ``objectives``; errors name the key and what was expected."""
    constraints = {} if constraints is None else constraints
    if not isinstance(constraints, Mapping):
        raise TypeError(f"constraints: expected a dict like {{'flops': 0.5}}, got {type(constraints).__name__}")
    checked: dict[str, float] = {}
    for key, bound in constraints.items():
        if key not in CONSTRAINTS:
            raise ValueError(f"constraints: unknown key {key!r}; expected some of {list(CONSTRAINTS)}")
        if isinstance(bound, bool) or not isinstance(bound, (int, float)) or bound != bound:
            raise TypeError(f"constraints[{key!r}]: expected a number, got {bound!r}")
        if key in ("flops", "params", "size_bytes", "latency_ms", "latency_ratio") and bound <= 0:
            raise ValueError(f"constraints[{key!r}]: expected a positive bound, got {bound!r} (impossible)")
        if key == "score_drop" and bound < 0:
            raise ValueError(f"constraints['score_drop']: expected a non-negative number of points, got {bound!r}")
        checked[key] = float(bound)
    objectives = ("score",) if objectives is None else objectives
    objectives = (objectives,) if isinstance(objectives, str) else tuple(objectives)
    if not objectives:
        raise ValueError(f"objectives: expected at least one of {list(METRICS)}, got none")
    for key in objectives:
        if key not in METRICS:
            raise ValueError(f"objectives: unknown metric {key!r}; expected some of {list(METRICS)}")
    if len(set(objectives)) != len(objectives):
        raise ValueError(f"objectives: {list(objectives)} names a metric twice")
    return Goals(checked, objectives)


__all__ = ["CONSTRAINTS", "METRICS", "Goals", "make_goals"]
