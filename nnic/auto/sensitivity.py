"""``nnic.sensitivity``: how much each layer (or coupled channel group) alone can be pruned before the score drops.

For every layer and sparsity, a copy of the model has that layer alone pruned by the chosen pruner
(dependency-aware: the layer's coupled layers lose the same channels, so a point is a channel group's), and the
evaluator scores it without fine-tuning. The curves show which layers are robust; :func:`narrow` turns them
into upper sparsity bounds for ``auto_compress``.
"""

from __future__ import annotations

import copy
import io
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

DEFAULT_SPARSITIES = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


@dataclass(frozen=True)
class SensitivityResult:
    """``scores[layer][i]`` is the score with ``layer`` pruned to ``sparsities[i]``; ``dense_score`` without."""

    pruner: str
    sparsities: tuple[float, ...]
    dense_score: float
    scores: dict[str, tuple[float, ...]]

    def max_sparsity(self, max_drop: float) -> dict[str, float]:
        """Per layer, the highest sparsity up to which every tested point loses at most ``max_drop`` points."""
        out = {}
        for layer, curve in self.scores.items():
            ok = 0.0
            for s, score in zip(self.sparsities, curve):
                if self.dense_score - score > max_drop:
                    break
                ok = s
            out[layer] = ok
        return out

    def table(self) -> str:
        head = ["layer", *(f"{s:.2f}" for s in self.sparsities)]
        rows = [head] + [[layer, *(f"{v:.4g}" for v in curve)] for layer, curve in self.scores.items()]
        widths = [max(len(r[c]) for r in rows) for c in range(len(head))]
        lines = [f"{self.pruner} sensitivity (dense score {self.dense_score:.4g}); columns: sparsity"]
        lines += ["  ".join(cell.rjust(w) for cell, w in zip(r, widths)) for r in rows]
        return "\n".join(lines)

    __str__ = table

    def to_dict(self) -> dict[str, Any]:
        return {"pruner": self.pruner, "sparsities": list(self.sparsities), "dense_score": self.dense_score,
                "scores": {k: list(v) for k, v in self.scores.items()}}

    def to_json(self, path: str | os.PathLike | None = None) -> str:
        """The result as JSON (written atomically to ``path`` when given)."""
        text = json.dumps(self.to_dict(), indent=1)
        if path is not None:
            from nnic.auto.result import _write_atomic

            _write_atomic(Path(path), text)
        return text

    def plot(self, path: str | os.PathLike) -> None:
        """One score-against-sparsity curve per layer, as a PNG."""
        import matplotlib

        matplotlib.use("Agg", force=False)
        from matplotlib.figure import Figure

        from nnic.auto.result import _write_atomic

        fig = Figure(figsize=(6, 4.5))
        ax = fig.add_subplot()
        for layer, curve in self.scores.items():
            ax.plot(self.sparsities, curve, "-o", ms=3, label=layer)
        ax.axhline(self.dense_score, ls="--", c="k", lw=0.8, label="dense")
        ax.set_xlabel(f"sparsity of the layer alone ({self.pruner})")
        ax.set_ylabel("score")
        ax.legend(fontsize=7, ncol=2)
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=100)
        _write_atomic(Path(path), buf.getvalue())


def sensitivity(model: nn.Module, evaluator: Any, dummy_input: Any, pruner: str = "l1norm",
                sparsities: Sequence[float] = DEFAULT_SPARSITIES, layers: Sequence[str] | None = None, *,
                progress: bool = True) -> SensitivityResult:
    """Score ``model`` with each layer alone pruned at each of ``sparsities`` (no fine-tuning).

    :param layers: layer names (default: every Linear/Conv layer but those producing the model's output).
    :param progress: a progress bar over layers on stderr.
    """
    import nnic
    from nnic.auto.space import build_space

    if not isinstance(sparsities, Sequence) or not sparsities or not all(
            isinstance(s, (int, float)) and not isinstance(s, bool) and 0 < s < 1 for s in sparsities):
        raise ValueError(f"sparsities: expected a non-empty list of floats in (0, 1), got {sparsities!r}")
    space = build_space(model, dummy_input, {"pruners": [pruner], "layers": layers, "bits": ()})
    names = list(space.groups)  # one curve per coupled group, named after its first layer
    dense = float(evaluator.evaluate(model))
    from tqdm.auto import tqdm

    scores: dict[str, tuple[float, ...]] = {}
    for layer in tqdm(names, desc="sensitivity", unit="layer", disable=not progress, file=sys.stderr):
        curve = []
        for s in sparsities:
            pruned = copy.deepcopy(model)
            p = nnic.pruner(space.pruners[0], pruned, [{"op_names": [layer], "sparsity": float(s)}],
                            dependency_aware=True, dummy_input=dummy_input, evaluator=evaluator)
            p.compress()
            curve.append(float(evaluator.evaluate(pruned)))
        scores[layer] = tuple(curve)
    return SensitivityResult(space.pruners[0], tuple(float(s) for s in sparsities), dense, scores)


def narrow(space: Any, model: nn.Module, evaluator: Any, dummy_input: Any, *, max_drop: float,
           progress: bool = True) -> Any:
    """``space`` with each group's upper sparsity bound lowered to where its layers alone lose at most
    ``max_drop`` points (a group keeps at least its lower bound)."""
    from nnic.auto.space import SearchSpace

    if isinstance(max_drop, bool) or not isinstance(max_drop, (int, float)) or max_drop < 0:
        raise ValueError(f"sensitivity: expected a non-negative score drop, got {max_drop!r}")
    grid = tuple(round(space.step * k, 6) for k in range(1, int(0.95 / space.step) + 1))
    layers = [g for g, (lo, hi) in space.sparsity.items() if hi > lo]
    if not layers:
        return space
    result = sensitivity(model, evaluator, dummy_input, space.pruners[0], grid, layers, progress=progress)
    limits = result.max_sparsity(max_drop)
    bounds: dict[str, tuple[float, float]] = dict(space.sparsity)
    for g in layers:
        lo, hi = space.sparsity[g]
        bounds[g] = (lo, max(lo, min(hi, limits[g])))
    return SearchSpace(space.pruners, space.groups, bounds, space.bits, space.step)


__all__ = ["DEFAULT_SPARSITIES", "SensitivityResult", "narrow", "sensitivity"]
