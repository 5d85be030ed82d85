"""The built-in search strategies ``tpe``, ``random``, ``cmaes`` and ``nsga2``: Optuna's samplers, as a plugin.

``sa`` (simulated annealing) lives in :mod:`nnic.builtins.strategies_sa`. Each strategy passes the user's
``strategy_options`` to its sampler, so ``strategy_options={"n_startup_trials": 5}`` reaches ``TPESampler``.
TPE and NSGA-II use the constraint values each trial records (``trial.set_constraint``); the others search
freely, and the result still keeps only feasible trials.
"""

from __future__ import annotations

from typing import Any

import nnic
from nnic.auto.strategy import Strategy, StrategyContext


class TPEStrategy(Strategy):
    """Tree-structured Parzen estimator (Optuna's default), with Optuna's constraint handling."""

    name = "tpe"
    multi_objective = True

    def sampler(self, context: StrategyContext) -> Any:
        import optuna

        return optuna.samplers.TPESampler(seed=context.seed, **self.options)


class RandomStrategy(Strategy):
    """Independent uniform sampling: the baseline every other strategy must beat."""

    name = "random"
    multi_objective = True

    def sampler(self, context: StrategyContext) -> Any:
        import optuna

        return optuna.samplers.RandomSampler(seed=context.seed, **self.options)


class CmaEsStrategy(Strategy):
    """CMA-ES over the per-layer sparsities; categorical choices (bits, pruner) are sampled by TPE beside it."""

    name = "cmaes"
    aliases = ("cma",)

    def sampler(self, context: StrategyContext) -> Any:
        import optuna

        options = {"warn_independent_sampling": False, **self.options}
        options.setdefault("independent_sampler", optuna.samplers.TPESampler(seed=context.seed))
        return optuna.samplers.CmaEsSampler(seed=context.seed, **options)


class NSGA2Strategy(Strategy):
    """NSGA-II, the genetic algorithm for Pareto fronts (several objectives), with constraint domination."""

    name = "nsga2"
    aliases = ("nsgaii",)
    multi_objective = True

    def sampler(self, context: StrategyContext) -> Any:
        import optuna

        options = {"population_size": max(4, min(50, context.n_trials // 4)), **self.options}
        return optuna.samplers.NSGAIISampler(seed=context.seed, **options)


@nnic.hookimpl
def register_strategies(register) -> None:
    register(TPEStrategy)
    register(RandomStrategy)
    register(CmaEsStrategy)
    register(NSGA2Strategy)
