"""What a search strategy is: a plugin-registered factory of Optuna samplers.

``nnic.auto_compress(..., strategy="tpe")`` looks the name up in the registry (kind ``strategy``), builds the
class with the user's ``strategy_options`` and asks it for a sampler for this study. Built-ins (``tpe``,
``random``, ``cmaes``, ``nsga2``, ``sa``) live in ``nnic/builtins/strategies*.py`` and register through the
``register_strategies`` hook, exactly as a third-party plugin does::

    import optuna
    import nnic
    from nnic.auto import Strategy

    class QMCStrategy(Strategy):
        name = "qmc"
        multi_objective = True

        def sampler(self, context):
            return optuna.samplers.QMCSampler(seed=context.seed, **self.options)

    @nnic.hookimpl
    def register_strategies(register):
        register(QMCStrategy)

Constraints reach the samplers the Optuna 5 way: every trial records its constraint values with
``trial.set_constraint`` (``<= 0`` is feasible), which constraint-aware samplers (TPE, NSGA-II, GP) read on
their own; :func:`constraint_values` gives them to a strategy of its own, and the result picks the best
*feasible* trial whichever sampler ran.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import optuna


def constraint_values(trial: optuna.trial.FrozenTrial) -> tuple[float, ...]:
    """A finished trial's constraint values (each ``<= 0`` when met), as recorded by ``trial.set_constraint``."""
    return tuple(trial.constraints.values())


@dataclass(frozen=True)
class StrategyContext:
    """What a strategy knows about the study it samples for.

    :param seed: the study's seed (``None``: not reproducible).
    :param directions: ``"maximize"``/``"minimize"`` per objective; more than one means a Pareto search.
    :param n_trials: the study's trial budget (a strategy may schedule over it, as annealing does).
    """

    seed: int | None
    directions: tuple[str, ...]
    n_trials: int

    @property
    def multi_objective(self) -> bool:
        return len(self.directions) > 1


class Strategy:
    """Base of search strategies. Subclasses set ``name`` and implement :meth:`sampler`.

    :param options: keyword options from ``auto_compress(strategy_options=...)``, kept in ``self.options``
        (they are stored in the study, so they must be JSON values).
    """

    name: str = ""
    aliases: tuple[str, ...] = ()
    multi_objective: bool = False  # can it search a Pareto front (several objectives)?

    def __init__(self, **options: Any) -> None:
        self.options = options

    def sampler(self, context: StrategyContext) -> optuna.samplers.BaseSampler:
        raise NotImplementedError(f"strategy {self.name!r} does not implement sampler(context)")


def make_sampler(strategy: Strategy, context: StrategyContext) -> optuna.samplers.BaseSampler:
    """``strategy.sampler(context)``, with Optuna's experimental-feature warnings silenced and a bad option
    reported as ``strategy_options`` of that strategy."""
    import warnings

    import optuna

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return strategy.sampler(context)
    except TypeError as exc:
        raise TypeError(f"strategy_options for strategy {strategy.name!r}: {exc}") from exc


def get_strategy(name: str, options: dict[str, Any] | None = None) -> Strategy:
    """The registered strategy ``name`` built with ``options``; the error lists the registered names."""
    from nnic.plugins import get_registry

    if not isinstance(name, str):
        raise TypeError(f"strategy: expected a registered strategy name (str), got {type(name).__name__}")
    info = get_registry().get("strategy", name)
    if options is not None and not isinstance(options, dict):
        raise TypeError(f"strategy_options: expected a dict, got {type(options).__name__}")
    try:
        return info.obj(**(options or {}))
    except TypeError as exc:
        raise TypeError(f"strategy_options for strategy {name!r}: {exc}") from exc


__all__ = ["Strategy", "StrategyContext", "constraint_values", "get_strategy", "make_sampler"]
