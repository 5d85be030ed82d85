"""The ``sa`` strategy: simulated annealing over the per-layer sparsities (NNI's auto-compress/SA pruner search).

The current point starts at the first finished trial. Each new trial is a neighbour of the current point:
every float or int parameter moves by a Gaussian step whose width shrinks with the temperature, and each
categorical one (bits, pruner) changes with probability ``mutation``. When a trial finishes it replaces the
current point if it is better, or if it is worse by ``delta`` with probability ``exp(-delta / T)`` (Metropolis);
a feasible point always beats an infeasible one, and of two infeasible points the less violating wins.
``T = start_temperature * cooling ** k`` after ``k`` finished trials, with energies scaled by their spread.

The sampler keeps no state of its own: the current point is replayed from the study's finished trials, with
acceptance draws seeded by (seed, trial number). So workers on several machines, and a resumed run, walk the
same chain.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

import nnic
from nnic.auto.strategy import Strategy, StrategyContext, constraint_values


def _violation(trial: Any) -> float:
    return sum(max(0.0, float(c)) for c in constraint_values(trial))


def _make_sampler(context: StrategyContext, *, start_temperature: float = 1.0, cooling: float = 0.9,
                  step: float = 0.25, mutation: float = 0.2) -> Any:
    import optuna
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
    from optuna.search_space import IntersectionSearchSpace
    from optuna.trial import TrialState

    for key, value, lo, hi in (("start_temperature", start_temperature, 0, math.inf), ("cooling", cooling, 0, 1),
                               ("step", step, 0, 1), ("mutation", mutation, 0, 1)):
        if not isinstance(value, (int, float)) or not lo < value <= hi:
            raise ValueError(f"strategy_options['{key}'] for 'sa': expected a number in ({lo}, {hi}], got {value!r}")
    sign = -1.0 if context.directions[0] == "maximize" else 1.0
    seed = 0 if context.seed is None else context.seed

    class AnnealingSampler(optuna.samplers.BaseSampler):
        def __init__(self) -> None:
            self._space = IntersectionSearchSpace(include_pruned=False)
            self._fallback = optuna.samplers.RandomSampler(seed=context.seed)

        def reseed_rng(self) -> None:
            self._fallback.reseed_rng()

        def infer_relative_search_space(self, study: Any, trial: Any) -> dict[str, Any]:
            return self._space.calculate(study)

        def current(self, study: Any) -> tuple[Any, int]:
            """The chain's current trial, replayed from the finished trials, and how many were seen."""
            done = sorted(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)), key=lambda t: t.number)
            current, energies = None, []
            for k, t in enumerate(done):
                energy = sign * float(t.values[0])
                energies.append(energy)
                if current is None:
                    current = t
                    continue
                worse_violation = _violation(t) - _violation(current)
                if worse_violation != 0:
                    accept = worse_violation < 0
                else:
                    delta = energy - sign * float(current.values[0])
                    spread = (max(energies) - min(energies)) or 1.0
                    temperature = start_temperature * cooling ** k
                    draw = np.random.default_rng([seed, t.number]).random()
                    accept = delta <= 0 or draw < math.exp(-delta / (spread * temperature))
                if accept:
                    current = t
            return current, len(done)

        def sample_relative(self, study: Any, trial: Any, search_space: dict[str, Any]) -> dict[str, Any]:
            if not search_space:
                return {}
            current, k = self.current(study)
            if current is None:
                return {}
            width = step * max(cooling ** k, 0.05)
            rng = np.random.default_rng([seed, trial.number, 1])
            out: dict[str, Any] = {}
            for name, dist in search_space.items():
                value = current.params[name]
                if isinstance(dist, CategoricalDistribution):
                    out[name] = dist.choices[rng.integers(len(dist.choices))] if rng.random() < mutation else value
                elif isinstance(dist, (FloatDistribution, IntDistribution)):
                    moved = min(max(value + rng.normal(0.0, width * (dist.high - dist.low)), dist.low), dist.high)
                    if dist.step is not None:
                        moved = dist.low + round((moved - dist.low) / dist.step) * dist.step
                        moved = min(moved, dist.high)
                    out[name] = int(round(moved)) if isinstance(dist, IntDistribution) else float(moved)
            return out

        def sample_independent(self, study: Any, trial: Any, param_name: str, param_distribution: Any) -> Any:
            return self._fallback.sample_independent(study, trial, param_name, param_distribution)

    return AnnealingSampler()


class AnnealingStrategy(Strategy):
    """Simulated annealing over per-layer sparsity (one objective). Options: ``start_temperature`` (1.0),
    ``cooling`` (0.9 per finished trial), ``step`` (0.25 of a parameter's range at the start), ``mutation``
    (0.2, the chance that a categorical choice changes)."""

    name = "sa"
    aliases = ("simulated_annealing", "anneal")

    def sampler(self, context: StrategyContext) -> Any:
        return _make_sampler(context, **self.options)


@nnic.hookimpl
def register_strategies(register) -> None:
    register(AnnealingStrategy)
