"""What ``auto_compress`` returns: every trial as measured, the best (or the Pareto front), and the files.

The result is read back from the study, so it is the same whichever process asks: the searching call, a
worker on another machine, or :func:`load_result` on the database afterwards.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from nnic.auto.goals import METRICS, Goals
from nnic.auto.space import Configuration, SearchSpace

_COLUMNS = ("score", "flops", "params", "size_bytes", "latency_ms", "latency_ratio")


@dataclass(frozen=True)
class TrialRecord:
    """One finished trial: its configuration, measured figures, constraint values (``<= 0`` met) and seed."""

    number: int
    state: str
    configuration: Configuration
    measured: dict[str, float]
    constraints: tuple[float, ...]
    seed: int
    retried_from: int | None = None
    start_point: bool = False  # one of the study's ``start_points`` (run first, as given)

    @property
    def feasible(self) -> bool:
        return all(c <= 0 for c in self.constraints)

    def to_dict(self) -> dict[str, Any]:
        return {"number": self.number, "state": self.state, "feasible": self.feasible, "measured": self.measured,
                "constraints": list(self.constraints), "seed": self.seed, "retried_from": self.retried_from,
                "start_point": self.start_point,
                "configuration": self.configuration.to_dict(),
                "pruning_config_list": self.configuration.pruning_config_list(),
                "quantization_config_list": self.configuration.quantization_config_list()}


def _dominates(a: Sequence[float], b: Sequence[float]) -> bool:
    return all(x >= y for x, y in zip(a, b)) and any(x > y for x, y in zip(a, b))


def pareto_front(records: Sequence[TrialRecord], keys: Sequence[str]) -> list[TrialRecord]:
    """Records not dominated on ``keys`` (each turned into "higher is better" by its direction)."""
    sign = [1.0 if METRICS[k] == "maximize" else -1.0 for k in keys]
    points = [[s * r.measured[k] for s, k in zip(sign, keys)] for r in records]
    front = [r for r, p in zip(records, points) if not any(_dominates(q, p) for q in points)]
    return sorted(front, key=lambda r: r.measured[keys[-1]])


class AutoResult:
    """Trials of one study, the best feasible one (one objective) or the Pareto front (several), and helpers.

    :attr trials: every finished trial (complete or pruned), in order.
    :attr baseline: the dense model's measured figures.
    :attr best: the best feasible complete trial on the first objective (``None`` if none is feasible).
    :attr pareto: feasible complete trials not dominated on the objectives (with one objective: on score and
        measured latency, the trade-off users ask about).
    """

    def __init__(self, trials: list[TrialRecord], *, baseline: Mapping[str, float], goals: Goals,
                 space: SearchSpace, settings: Mapping[str, Any], model_inputs: tuple[Any, Any] | None = None,
                 study_name: str = "") -> None:
        self.trials, self.baseline, self.goals, self.space = trials, dict(baseline), goals, space
        self.settings, self.study_name = dict(settings), study_name
        self._dummy_input, self._evaluator = model_inputs or (None, None)
        done = [t for t in trials if t.state == "COMPLETE" and t.feasible]
        keys = goals.objectives if len(goals.objectives) > 1 else ("score", "latency_ms")
        self.pareto = pareto_front(done, keys)
        first, direction = goals.objectives[0], goals.directions[0]
        pick = max if direction == "maximize" else min
        self.best = pick(done, key=lambda t: (t.measured[first], -t.number)) if done else None

    @property
    def feasible(self) -> list[TrialRecord]:
        return [t for t in self.trials if t.state == "COMPLETE" and t.feasible]

    def apply(self, model: nn.Module, trial: TrialRecord | int | None = None, *, dummy_input: Any = None,
              evaluator: Any = None) -> nn.Module:
        """The compressed model of ``trial`` (default: :attr:`best`), built from a copy of ``model`` exactly as
        the search built it: same pruner and sparsities, same fine-tuning budget and seed, same bits."""
        from nnic.auto.trial import build

        if trial is None:
            if self.best is None:
                raise ValueError(f"no feasible trial in study {self.study_name!r}: nothing to apply "
                                 f"({len(self.trials)} finished trials; constraints {self.goals.constraints})")
            trial = self.best
        if isinstance(trial, int):
            found = [t for t in self.trials if t.number == trial]
            if not found:
                raise ValueError(f"trial: no finished trial number {trial} in study {self.study_name!r}")
            trial = found[0]
        dummy_input = self._dummy_input if dummy_input is None else dummy_input
        evaluator = self._evaluator if evaluator is None else evaluator
        if dummy_input is None:
            raise ValueError("apply needs dummy_input (the example input the search used)")
        return build(model, dummy_input, trial.configuration, evaluator,
                     fine_tune_steps=self.settings["fine_tune_steps"], evaluations=self.settings["fine_tune_evals"],
                     seed=trial.seed)

    def report(self) -> str:
        """A text table: the baseline, the best trial and the Pareto front, with the measurement method."""
        m = self.settings["measure"]
        head = (f"study {self.study_name!r}: {len(self.trials)} finished trials, {len(self.feasible)} feasible; "
                f"constraints {self.goals.constraints or 'none'}; objectives {list(self.goals.objectives)}\n"
                f"latency: median of {m['repeats']} runs in {m.get('rounds', 1)} round(s) interleaved with the dense "
                f"model, each after {m['warmup']} warm-up, {m['threads']} thread(s), {m.get('clock', 'wall')} clock"
                + (f", batch {m['batch']}" if m["batch"] else "") + "\n")
        rows = [("", "trial", *_COLUMNS), ("dense", "-", *_cells(self.baseline))]
        if self.best is not None:
            rows.append(("best", str(self.best.number), *_cells(self.best.measured)))
        rows += [("pareto", str(t.number), *_cells(t.measured)) for t in self.pareto]
        widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
        table = "\n".join("  ".join(cell.rjust(w) for cell, w in zip(r, widths)) for r in rows)
        return head + table

    def __repr__(self) -> str:
        best = f"best trial {self.best.number}" if self.best else "no feasible trial"
        return f"AutoResult({self.study_name!r}, {len(self.trials)} trials, {best}, {len(self.pareto)} on the front)"

    # ---- files
    def save(self, out_dir: str | os.PathLike) -> None:
        """Write ``trials.csv``, ``trials.json``, ``best.json`` (config lists of the best trial and of the front)
        and ``pareto.png`` into ``out_dir``, each atomically."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        buf = io.StringIO()
        writer = csv.writer(buf)
        writer.writerow(["number", "state", "feasible", *_COLUMNS, "latency_p90_ms", "pruner", "sparsity", "bits"])
        for t in self.trials:
            writer.writerow([t.number, t.state, t.feasible, *(t.measured.get(k, "") for k in _COLUMNS),
                             t.measured.get("latency_p90_ms", ""), t.configuration.pruner,
                             json.dumps(t.configuration.sparsity), json.dumps(t.configuration.bits)])
        _write_atomic(out / "trials.csv", buf.getvalue())
        _write_atomic(out / "trials.json", json.dumps(
            {"study": self.study_name, "settings": self.settings, "trials": [t.to_dict() for t in self.trials]},
            indent=1))
        _write_atomic(out / "best.json", json.dumps(
            {"best": self.best.to_dict() if self.best else None, "pareto": [t.to_dict() for t in self.pareto],
             "baseline": self.baseline}, indent=1))
        self.plot(out / "pareto.png")

    def plot(self, path: str | os.PathLike) -> None:
        """Score against measured latency of every finished trial; feasible ones filled, the front joined."""
        import matplotlib

        matplotlib.use("Agg", force=False)
        from matplotlib.figure import Figure

        x_key = next((k for k in self.goals.objectives if k != "score"), "latency_ms")
        fig = Figure(figsize=(6, 4.5))
        ax = fig.add_subplot()
        done = [t for t in self.trials if t.state == "COMPLETE"]
        for feasible, style in ((False, {"facecolors": "none", "edgecolors": "tab:gray"}), (True, {"c": "tab:blue"})):
            pts = [t for t in done if t.feasible == feasible]
            ax.scatter([t.measured[x_key] for t in pts], [t.measured["score"] for t in pts], s=18,
                       label="feasible" if feasible else "infeasible", **style)
        if self.pareto:
            ax.plot([t.measured[x_key] for t in self.pareto], [t.measured["score"] for t in self.pareto],
                    "-o", c="tab:red", ms=4, label="Pareto front")
        ax.scatter([self.baseline[x_key]], [self.baseline["score"]], marker="*", s=120, c="k", label="dense")
        if x_key in self.goals.constraints:
            ax.axvline(self.goals.constraints[x_key], ls="--", c="tab:orange", label=f"{x_key} bound")
        ax.set_xlabel(x_key + (" (measured)" if x_key == "latency_ms" else " (ratio to dense)"
                               if x_key in ("flops", "params", "latency_ratio") else ""))
        ax.set_ylabel("score")
        ax.set_title(f"auto_compress: {self.study_name}")
        ax.legend(fontsize=8)
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=100)
        _write_atomic(Path(path), buf.getvalue())


def _cells(measured: Mapping[str, float]) -> list[str]:
    """One table row (a study made before a metric existed shows it as nan)."""
    return [_fmt(k, measured.get(k, math.nan)) for k in _COLUMNS]


def _fmt(key: str, value: float) -> str:
    if key == "size_bytes" and math.isfinite(value):
        return f"{int(value)}"
    if key == "latency_ms":
        return f"{value:.3f}"
    return f"{value:.4g}" if isinstance(value, float) and math.isfinite(value) else str(value)


def _write_atomic(path: Path, data: str | bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def records(study: Any, space: SearchSpace) -> list[TrialRecord]:
    """The finished (complete or pruned) trials of ``study`` as records, in trial order."""
    from optuna.trial import TrialState

    out = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)):
        if "measured" not in t.user_attrs:
            continue
        out.append(TrialRecord(t.number, t.state.name, Configuration.from_dict(t.user_attrs["configuration"]),
                               dict(t.user_attrs["measured"]), tuple(t.constraints.values()),
                               int(t.user_attrs["seed"]), t.system_attrs.get("failed_trial"),
                               bool(t.user_attrs.get("start_point"))))
    return sorted(out, key=lambda r: r.number)


__all__ = ["AutoResult", "TrialRecord", "pareto_front", "records"]
