"""The report as terminal tables (rich): totals before/after, notes, then one row per layer."""

from __future__ import annotations

import io as _io
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from nnic.report.content import ReportContent


def _n(v: float | int | None, unit: str = "") -> str:
    if v is None:
        return "—"
    if isinstance(v, int):
        return f"{v:,}{unit}"
    return f"{v:.3g}{unit}" if abs(v) < 1000 else f"{v:,.0f}{unit}"


def _ratio(before: float | None, after: float | None) -> str:
    if not before or after is None:
        return ""
    return f"{after / before:.2f}×"


def _mb(v: int) -> str:
    return f"{v / 1e6:.3f} MB" if v >= 1e5 else f"{v:,} B"


def totals_rows(report: ReportContent) -> list[tuple[str, str, str, str]]:
    """``(quantity, before, after, after/before)`` rows, shared by the terminal and HTML renderings."""
    b, a = report.before, report.after
    rows = [("params", _n(b.params), _n(a.params), _ratio(b.params, a.params)),
            ("nonzero params", _n(b.nonzero), _n(a.nonzero), _ratio(b.nonzero, a.nonzero)),
            ("MACs (FLOPs)", _n(b.macs), _n(a.macs), _ratio(b.macs, a.macs)),
            ("size on disk", _mb(b.size_bytes), _mb(a.size_bytes), _ratio(b.size_bytes, a.size_bytes))]
    if b.latency and a.latency:
        lb, la = b.latency, a.latency
        rows.append(("latency median", _n(lb["median_ms"], " ms"), _n(la["median_ms"], " ms"),
                     _ratio(lb["median_ms"], la["median_ms"])))
        rows.append(("latency p90", _n(lb["p90_ms"], " ms"), _n(la["p90_ms"], " ms"),
                     _ratio(lb["p90_ms"], la["p90_ms"])))
    if b.metric is not None or a.metric is not None:
        rows.append((report.metric_name or "metric", _n(b.metric), _n(a.metric), ""))
    for key, label in (("top1_agreement", "top-1 agreement with dense"), ("output_cosine", "output cosine vs dense")):
        if key in report.agreement:
            rows.append((label, "", f"{report.agreement[key]:.4f}", ""))
    return rows


def latency_caption(report: ReportContent) -> str:
    """How the latency was measured, in one line."""
    la = report.after.latency
    if not la:
        return ""
    batch = f"batch {la['batch']}" if la["batch"] else "the example input's batch"
    return (f"latency: {batch}, {la['threads']} thread{'s' if la['threads'] != 1 else ''}, "
            f"{la['repeats']} timed runs per model after {la['warmup']} warm-up runs, models interleaved")


def layer_rows(report: ReportContent) -> list[tuple[str, ...]]:
    """One row of strings per layer: name, types, params, zeros, MACs, bits, time, note."""
    out = []
    for c in report.layers():
        b, a = c.before, c.after

        def both(get: Any, fmt: Any = _n) -> str:
            vb, va = (get(b) if b else None), (get(a) if a else None)
            return fmt(vb) if vb == va else f"{fmt(vb)} → {fmt(va)}"

        bits = both(lambda r: r.bits, lambda v: "—" if v is None else str(v))
        if a is not None and a.simulated:
            bits += " (sim.)"
        out.append((c.name, both(lambda r: r.type, lambda v: v or "—"), both(lambda r: r.params),
                    f"{a.zero_fraction:.0%}" if a and a.params else "—", both(lambda r: r.macs), bits,
                    both(lambda r: r.time_ms, lambda v: "—" if v is None else f"{v:.3f}"), c.note))
    return out


LAYER_HEADER = ("layer", "type", "params", "zeros", "MACs", "bits", "time ms (profiler)", "note")


def render_text(report: ReportContent, width: int | None = None) -> str:
    from rich.console import Console
    from rich.table import Table

    buffer = _io.StringIO()
    console = Console(file=buffer, width=width or 160, force_terminal=False, color_system=None)
    title = (report.recipe or {}).get("name", "model")
    totals = Table(title=f"nnic report: {title}", title_justify="left")
    for h, justify in (("", "left"), ("before", "right"), ("after", "right"), ("after/before", "right")):
        totals.add_column(h, justify=justify)
    for row in totals_rows(report):
        totals.add_row(*row)
    console.print(totals)
    console.print(latency_caption(report))
    for note in report.notes:
        console.print(f"• {note}")
    layers = Table(title="per layer", title_justify="left")
    for h in LAYER_HEADER:
        layers.add_column(h, justify="left" if h in ("layer", "type", "note") else "right", overflow="fold")
    for row in layer_rows(report):
        layers.add_row(*row)
    console.print(layers)
    return buffer.getvalue()
