"""The report as one self-contained HTML file: tables and the figures inlined as base64 PNGs, no script, no
external resource, so it opens anywhere and can be mailed or attached to a pull request."""

from __future__ import annotations

import base64
import html
from typing import TYPE_CHECKING

from nnic.report.plots import figures
from nnic.report.text import LAYER_HEADER, latency_caption, layer_rows, totals_rows

if TYPE_CHECKING:
    from nnic.report.content import ReportContent

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }
th, td { border-bottom: 1px solid #ddd; padding: 0.25em 0.7em; text-align: right; }
th:first-child, td:first-child, .text { text-align: left; }
ul.notes li { margin: 0.3em 0; }
img { max-width: 100%; display: block; margin: 0.5em 0 1.5em; }
.small { color: #666; font-size: 0.85em; }
"""


def _table(header: tuple[str, ...], rows: list[tuple[str, ...]], text_columns: tuple[int, ...] = (0,)) -> str:
    text = ' class="text"'
    head = "".join(f"<th{text if i in text_columns else ''}>{html.escape(h)}</th>" for i, h in enumerate(header))
    body = "".join(
        "<tr>" + "".join(f"<td{text if i in text_columns else ''}>{html.escape(str(v))}</td>"
                         for i, v in enumerate(row)) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def render_html(report: ReportContent) -> str:
    title = html.escape(f"nnic report: {(report.recipe or {}).get('name', 'model')}")
    env = report.environment
    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{title}</title>",
             f"<style>{_STYLE}</style></head><body><h1>{title}</h1>",
             f"<p class='small'>{html.escape(', '.join(f'{k} {v}' for k, v in env.items() if k != 'measure'))}</p>",
             "<h2>Before and after</h2>", _table(("", "before", "after", "after/before"), totals_rows(report)),
             f"<p class='small'>{html.escape(latency_caption(report))}</p>"]
    if report.notes:
        parts.append("<h2>What compression bought, and what it did not</h2><ul class='notes'>"
                     + "".join(f"<li>{html.escape(n)}</li>" for n in report.notes) + "</ul>")
    try:
        drawn = figures(report)
    except ImportError:  # matplotlib is an extra: the tables stand on their own
        drawn = dict(report.images)
        parts.append("<p class='small'>The figures need matplotlib: pip install 'nnic[cli]'.</p>")
    for caption, png in drawn.items():
        data = base64.b64encode(png).decode("ascii")
        parts.append(f"<h2>{html.escape(caption)}</h2><img alt='{html.escape(caption)}' "
                     f"src='data:image/png;base64,{data}'>")
    parts += ["<h2>Per layer</h2>", _table(LAYER_HEADER, layer_rows(report), (0, 1, 7))]
    if report.stages:
        rows = [(str(s["index"]), s["stage"], s["status"], f"{s.get('seconds', '')}",
                 s.get("error") or ", ".join(f"{k}: {v}" for k, v in (s.get("summary") or {}).items()))
                for s in report.stages]
        parts += ["<h2>Stages</h2>", _table(("#", "stage", "status", "seconds", "result"), rows, (1, 2, 4))]
    measure = env.get("measure")
    if measure:
        parts.append("<p class='small'>Latency: " + html.escape(
            f"{measure.get('repeats')} timed runs after {measure.get('warmup')} warm-up runs per model, in "
            f"interleaved rounds, torch.inference_mode, eval mode; per-layer times from torch.profiler "
            f"(record_function ranges around each layer, averaged over 5 runs).") + "</p>")
    parts.append("</body></html>")
    return "\n".join(parts)
