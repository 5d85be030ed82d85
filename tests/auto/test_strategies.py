"""Search strategies come from the registry: the five built-ins, simulated annealing's chain, and a third-party
strategy installed as a distribution."""

from __future__ import annotations

import textwrap

import optuna
import pytest

import nnic
from nnic.auto import StrategyContext
from nnic.auto.strategy import get_strategy, make_sampler

FAST = {"measure": {"repeats": 2, "warmup": 0}, "progress": False}


def test_the_builtin_strategies_are_registered_by_nnic():
    infos = {i.name: i for i in nnic.list_plugins("strategy")}
    assert {"tpe", "random", "cmaes", "nsga2", "sa"} <= set(infos)
    assert all(infos[n].distribution == "nnic" for n in ("tpe", "random", "cmaes", "nsga2", "sa"))


@pytest.mark.parametrize("strategy", ["tpe", "random", "cmaes", "nsga2", "sa"])
def test_every_builtin_strategy_runs_a_constrained_search(model, evaluator, example, tmp_path, strategy):
    result = nnic.auto_compress(model, evaluator, example, constraints={"flops": 0.7}, n_trials=4,
                                strategy=strategy, out_dir=tmp_path, seed=0, **FAST)
    assert len(result.trials) == 4
    assert len({tuple(sorted(t.configuration.sparsity.items())) for t in result.trials}) > 1  # it moves
    for t in result.trials:
        assert t.feasible == (t.measured["flops"] <= 0.7)


def _toy_study(strategy: str, n: int, seed: int = 0, **options):
    """Maximise -(x - 0.3)^2 - (y - 0.6)^2 over [0, 1]^2, with x + y <= 1 as a constraint."""
    context = StrategyContext(seed=seed, directions=("maximize",), n_trials=n)
    sampler = make_sampler(get_strategy(strategy, options), context)
    study = optuna.create_study(direction="maximize", sampler=sampler)

    def objective(trial):
        x, y = trial.suggest_float("x", 0, 1), trial.suggest_float("y", 0, 1)
        trial.set_constraint("sum", x + y - 1)
        return -(x - 0.3) ** 2 - (y - 0.6) ** 2

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study.optimize(objective, n_trials=n)
    return study, sampler


def test_annealing_walks_towards_the_optimum_and_respects_the_constraint():
    study, sampler = _toy_study("sa", 60, cooling=0.93)
    current, _ = sampler.current(study)
    assert current.values[0] > -0.02  # within about 0.14 of the optimum (a random start is ~0.35 away)
    assert current.params["x"] + current.params["y"] <= 1
    assert current.values[0] > study.trials[0].values[0]
    # The steps shrink as it cools: late proposals stay nearer their current point than early ones.
    xs = [t.params["x"] for t in study.trials]
    early, late = xs[1:11], xs[-10:]
    assert max(late) - min(late) < max(early) - min(early)


def test_annealing_replays_its_chain_from_the_study_alone():
    # A second sampler (another worker, or a resumed run) on the same trials proposes the same next point.
    study, sampler = _toy_study("sa", 12, seed=4)
    twin = get_strategy("sa").sampler(StrategyContext(seed=4, directions=("maximize",), n_trials=12))
    trial = study.ask()
    space = sampler.infer_relative_search_space(study, trial)
    assert sampler.sample_relative(study, trial, space) == twin.sample_relative(study, trial, space)
    assert sampler.current(study)[0].number == twin.current(study)[0].number


def test_annealing_options_are_checked():
    with pytest.raises(ValueError, match=r"strategy_options\['cooling'\] for 'sa': expected a number in \(0, 1\]"):
        make_sampler(get_strategy("sa", {"cooling": 1.5}), StrategyContext(0, ("maximize",), 5))
    with pytest.raises(TypeError, match=r"strategy_options for strategy 'random': .*'bogus'"):
        make_sampler(get_strategy("random", {"bogus": 1}), StrategyContext(0, ("maximize",), 5))


PLUGIN = """
    import optuna
    import nnic
    from nnic.auto import Strategy

    CONTEXTS = []

    class HighestSampler(optuna.samplers.RandomSampler):
        # Every float at its upper bound: easy to recognise in the trials.
        def sample_independent(self, study, trial, name, dist):
            if isinstance(dist, optuna.distributions.FloatDistribution):
                return dist.high
            return super().sample_independent(study, trial, name, dist)

    class Highest(Strategy):
        name = "highest"

        def sampler(self, context):
            CONTEXTS.append((context, self.options))
            return HighestSampler(seed=context.seed)

    @nnic.hookimpl
    def register_strategies(register):
        register(Highest)
"""


def test_a_third_party_strategy_plugin_is_found_and_drives_the_search(fresh_registry, monkeypatch, tmp_path,
                                                                        model, evaluator, example):
    site = tmp_path / "site"
    info = site / "nnic_highest-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: nnic-highest\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[nnic]\nhighest = nnic_highest\n")
    (site / "nnic_highest.py").write_text(textwrap.dedent(PLUGIN))
    monkeypatch.syspath_prepend(str(site))
    fresh_registry.reload()

    listed = {i.name: i for i in nnic.list_plugins("strategy")}
    assert (listed["highest"].distribution, listed["highest"].version) == ("nnic-highest", "1.0")
    result = nnic.auto_compress(model, evaluator, example, n_trials=2, strategy="highest",
                                strategy_options={"note": "x"}, space={"sparsity": (0.1, 0.4), "bits": ["float"]},
                                out_dir=tmp_path / "out", seed=7, **FAST)
    import nnic_highest

    context, options = nnic_highest.CONTEXTS[-1]
    assert (context.seed, context.directions, context.n_trials, options) == (7, ("maximize",), 2, {"note": "x"})
    for t in result.trials:
        assert set(t.configuration.sparsity.values()) == {0.4}
