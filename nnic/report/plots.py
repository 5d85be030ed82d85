"""The report's figures, drawn with matplotlib (Agg, no display) and returned as PNG bytes."""

from __future__ import annotations

import io as _io
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from nnic.report.content import ReportContent

BEFORE, AFTER = "#8c8c8c", "#1f77b4"


def _png(fig: Any) -> bytes:
    import matplotlib.pyplot as plt

    buffer = _io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    return buffer.getvalue()


def _figure(n_rows: int, ncols: int = 1, width: float = 9.0) -> tuple[Any, Any]:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt.subplots(1, ncols, figsize=(width, max(2.5, 0.28 * n_rows + 1.2)), squeeze=False)


def sparsity_and_bits(report: ReportContent) -> bytes:
    """Per layer: the fraction of weights removed or zero after compression, and the weight bits."""
    rows = [c for c in report.layers() if c.before is not None and c.before.params]
    names = [c.name for c in rows]
    removed = [1 - (c.after.nonzero if c.after else 0) / c.before.params for c in rows]
    bits = [(c.after.bits or 0) if c.after else 0 for c in rows]
    colors = ["#ff7f0e" if c.after is not None and c.after.simulated else AFTER for c in rows]
    fig, axes = _figure(len(rows), 2)
    ax1, ax2 = axes[0]
    y = range(len(rows))
    ax1.barh(y, removed, color=AFTER)
    ax1.set_yticks(list(y), names, fontsize=8)
    ax1.invert_yaxis()
    ax1.set_xlim(0, 1)
    ax1.set_xlabel("weights removed or zero (fraction of dense)")
    ax2.barh(y, bits, color=colors)
    ax2.set_yticks(list(y), [""] * len(rows))
    ax2.invert_yaxis()
    ax2.set_xlabel("weight bits (orange: simulated)")
    return _png(fig)


def latency(report: ReportContent) -> bytes | None:
    """Median latency before/after, with the p90 as a whisker."""
    lb, la = report.before.latency, report.after.latency
    if not lb or not la:
        return None
    fig, axes = _figure(2, 1, width=6.0)
    ax = axes[0][0]
    medians = [lb["median_ms"], la["median_ms"]]
    whiskers = [[0, 0], [lb["p90_ms"] - lb["median_ms"], la["p90_ms"] - la["median_ms"]]]
    ax.barh([0, 1], medians, xerr=whiskers, color=[BEFORE, AFTER], capsize=4)
    ax.set_yticks([0, 1], ["dense", "compressed"])
    ax.invert_yaxis()
    ax.set_xlabel(f"latency, ms (median, whisker to p90; batch {la['batch'] or 'as given'}, {la['threads']} threads)")
    return _png(fig)


def layer_times(report: ReportContent) -> bytes | None:
    """Per-layer time before/after (torch.profiler)."""
    rows = [c for c in report.layers() if (c.before and c.before.time_ms is not None)
            or (c.after and c.after.time_ms is not None)]
    if not rows:
        return None
    fig, axes = _figure(len(rows) * 2)
    ax = axes[0][0]
    y = list(range(len(rows)))
    ax.barh([i - 0.2 for i in y], [(c.before.time_ms or 0) if c.before else 0 for c in rows], 0.4,
            color=BEFORE, label="dense")
    ax.barh([i + 0.2 for i in y], [(c.after.time_ms or 0) if c.after else 0 for c in rows], 0.4,
            color=AFTER, label="compressed")
    ax.set_yticks(y, [c.name for c in rows], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("time per forward, ms (torch.profiler)")
    ax.legend()
    return _png(fig)


def figures(report: ReportContent) -> dict[str, bytes]:
    """Every figure of the report, by title, the report's extra images (sensitivity, search) last."""
    out = {"Sparsity and bits per layer": sparsity_and_bits(report)}
    for title, draw in (("Latency before and after", latency), ("Time per layer", layer_times)):
        png = draw(report)
        if png is not None:
            out[title] = png
    out.update(report.images)
    return out
