"""The before/after report of a compression: per-layer rows side by side, totals, and plain words on what the
compression bought and what it did not."""

from __future__ import annotations

import datetime
import logging
import os
import platform
from pathlib import Path
from typing import Any, Self

import torch
from torch import nn

from nnic import io
from nnic.report.content import ReportContent
from nnic.report.html import render_html
from nnic.report.profile import profile_model
from nnic.report.text import render_text

log = logging.getLogger("nnic.report")

#: A compressed model whose median latency is not at least this much below the dense one's bought no speed.
BREAK_EVEN = 0.95


class CompressionReport(ReportContent):
    """A report that saves itself (``report.json`` + a self-contained ``report.html``) and prints as a table."""

    @classmethod
    def load(cls, path: str | Path) -> Self:
        path = Path(path)
        if path.is_dir():
            path = path / "report.json"
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no report here (nnic compress writes OUT/report.json)")
        return cls.from_dict(io.load_json(path))

    def save(self, directory: str | Path) -> None:
        """Write ``report.json`` and the self-contained ``report.html`` into ``directory``."""
        directory = Path(directory)
        io.save_json(self.to_dict(), directory / "report.json")
        html = render_html(self)
        io.atomic_write(directory / "report.html", lambda tmp: Path(tmp).write_text(html, encoding="utf-8"))

    def text(self, width: int | None = None) -> str:
        return render_text(self, width)

    def __str__(self) -> str:
        return self.text()


def _agreement(dense: nn.Module, compressed: nn.Module, example_input: Any, data: Any) -> dict[str, float]:
    from nnic.measure._inputs import call, eval_mode

    def outputs(model: nn.Module, x: Any) -> torch.Tensor:
        with eval_mode(model), torch.inference_mode():
            y = call(model, x)
        y = y[0] if isinstance(y, (tuple, list)) else getattr(y, "logits", y)
        return y.float()

    a, b = outputs(dense, example_input), outputs(compressed, example_input)
    out = {"output_cosine": float(nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0)),
           "output_max_abs_diff": float((a - b).abs().max())}
    if data is not None and data.eval is not None:
        same = total = 0
        for x, _ in data.eval:
            pa, pb = outputs(dense, x).argmax(-1), outputs(compressed, x).argmax(-1)
            same += int((pa == pb).sum())
            total += pa.numel()
        out["top1_agreement"] = same / max(total, 1)
    elif a.dim() == 2:
        out["top1_agreement"] = float((a.argmax(-1) == b.argmax(-1)).float().mean())
    return out


def _first_names(names: list[str], n: int = 5) -> str:
    """The first ``n`` names, comma-separated, with ``...`` when there are more."""
    return ", ".join(names[:n]) + (", ..." if len(names) > n else "")


def model_notes(report: CompressionReport) -> list[str]:
    """Plain words on the whole model: where compression bought nothing."""
    before, after, notes = report.before, report.after, []
    comparisons = report.layers()
    masked = [c.name for c in comparisons if "masked but not sped up" in c.note]
    simulated = [c.name for c in comparisons if "simulated quantization only" in c.note]
    if masked:
        notes.append(f"{len(masked)} layer(s) masked but not sped up: their zeros are still stored and computed "
                     f"({_first_names(masked)}); a speedup stage removes pruned channels for real")
    dense_zeros = [c.name for c in comparisons if "zeros computed densely" in c.note]
    if dense_zeros:
        notes.append(f"{len(dense_zeros)} layer(s) run dense with their fine-grained zeros "
                     f"({_first_names(dense_zeros)}): sparse kernels pay only below a density they measure "
                     f"(nnic.sparsify decides per layer and records why)")
    if simulated:
        notes.append(f"{len(simulated)} layer(s) with simulated quantization only: float weights that take "
                     f"quantized values, no smaller or faster until quantization_speedup")
    if after.size_bytes >= before.size_bytes * 0.99:
        notes.append(f"size on disk unchanged ({after.size_bytes:,} bytes)")
    lb, la = before.latency, after.latency
    if lb and la and la["median_ms"] > lb["median_ms"] * BREAK_EVEN:
        notes.append(f"below the measured break-even: {la['median_ms']:.3f} ms vs {lb['median_ms']:.3f} ms dense "
                     f"(median, batch {la['batch'] or 'as given'}, {la['threads']} threads), not at least "
                     f"{1 - BREAK_EVEN:.0%} faster")
    return notes


def _environment(measure: dict[str, Any]) -> dict[str, Any]:
    import nnic

    return {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "nnic": nnic.__version__, "torch": torch.__version__, "python": platform.python_version(),
            "machine": f"{platform.machine()}, {os.cpu_count()} logical CPUs, {platform.system()}",
            "measure": dict(measure)}


def build_report(dense: nn.Module, compressed: nn.Module, example_input: Any, *, data: Any = None,
                 measure: dict[str, Any] | None = None, status: dict[str, Any] | None = None,
                 recipe: dict[str, Any] | None = None, extras: dict[str, Any] | None = None) -> CompressionReport:
    """Measure ``dense`` and ``compressed`` side by side on ``example_input`` and explain the difference.

    ``measure``: ``{batch, threads, warmup, repeats}`` for the latency (see :mod:`nnic.measure.latency`), the
    two models timed in interleaved rounds. ``data`` (an :class:`nnic.recipe.Data`) adds the metric and the
    top-1 agreement over its eval batches."""
    from nnic.measure import measure_latencies
    from nnic.measure._inputs import with_batch

    measure = {"batch": None, "threads": None, "warmup": 3, "repeats": 20, **(measure or {})}
    x = with_batch(example_input, measure["batch"]) if measure["batch"] else example_input
    before = profile_model(dense, x, threads=measure["threads"])
    after = profile_model(compressed, x, threads=measure["threads"])
    latency = measure_latencies({"before": dense, "after": compressed}, example_input, **measure)
    before.latency, after.latency = latency["before"].to_dict(), latency["after"].to_dict()
    if data is not None:
        before.metric, after.metric = data.score(dense), data.score(compressed)
    report = CompressionReport(before, after, _agreement(dense, compressed, example_input, data),
                               getattr(data, "metric_name", None), [], (status or {}).get("stages", []), recipe,
                               _environment(measure), _images(extras or {}))
    report.notes = model_notes(report)
    return report


def _images(extras: dict[str, Any]) -> dict[str, bytes]:
    """Figures of the steps that produced results with a ``plot(path)`` (a sensitivity analysis, a search)."""
    import tempfile

    out = {}
    for name, value in extras.items():
        if not callable(getattr(value, "plot", None)):
            continue
        with tempfile.TemporaryDirectory(prefix="nnic-figure-") as tmp:
            path = Path(tmp) / "figure.png"
            try:
                value.plot(path)
                out[name] = path.read_bytes()
            except Exception as exc:  # a figure is a bonus: the report stands without it, and says so
                log.warning("report: the %s figure could not be drawn (%s: %s)", name, type(exc).__name__, exc)
    return out
