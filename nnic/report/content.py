"""What a before/after report holds: the two profiles, the layers matched by name with a note each, and the
run's context. The renderers (text, HTML, figures) read this; :class:`nnic.report.CompressionReport` adds the
files and the rendering on top."""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from typing import Any, Self

from nnic.report.profile import LayerRow, ModelProfile

#: A dense layer at least this much zeros carries fine-grained sparsity that buys no time where it runs dense.
DENSE_ZEROS = 0.5


@dataclass
class LayerComparison:
    name: str
    before: LayerRow | None
    after: LayerRow | None
    note: str = ""


@dataclass
class ReportContent:
    """``before`` and ``after`` profiles, the agreement of their outputs, the run's stages, notes in plain
    words, and any figures a step added (``images``: ``{title: PNG bytes}``, e.g. a search's Pareto front)."""

    before: ModelProfile
    after: ModelProfile
    agreement: dict[str, float] = field(default_factory=dict)
    metric_name: str | None = None
    notes: list[str] = field(default_factory=list)
    stages: list[dict[str, Any]] = field(default_factory=list)
    recipe: dict[str, Any] | None = None
    environment: dict[str, Any] = field(default_factory=dict)
    images: dict[str, bytes] = field(default_factory=dict)

    def layers(self) -> list[LayerComparison]:
        """The layers of both models matched by name, in the dense model's order (new layers last)."""
        after = {r.name: r for r in self.after.layers}
        out = [LayerComparison(r.name, r, after.pop(r.name, None)) for r in self.before.layers]
        out += [LayerComparison(name, None, r) for name, r in after.items()]
        for row in out:
            row.note = layer_note(row.before, row.after)
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"format": "nnic.report/1", "before": self.before.to_dict(), "after": self.after.to_dict(),
                "agreement": self.agreement, "metric_name": self.metric_name, "notes": self.notes,
                "stages": self.stages, "recipe": self.recipe, "environment": self.environment,
                "images": {k: base64.b64encode(v).decode("ascii") for k, v in self.images.items()}}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Self:
        if not isinstance(d, dict) or d.get("format") != "nnic.report/1":
            raise ValueError("not an nnic report (expected a JSON object with format 'nnic.report/1')")
        return cls(ModelProfile.from_dict(d["before"]), ModelProfile.from_dict(d["after"]), d["agreement"],
                   d["metric_name"], d["notes"], d["stages"], d["recipe"], d["environment"],
                   {k: base64.b64decode(v) for k, v in d.get("images", {}).items()})


def layer_note(before: LayerRow | None, after: LayerRow | None) -> str:
    """What compression bought one layer, in words, where it bought nothing or less than it seems."""
    if after is None:
        return "removed"
    if before is None:
        return "added"
    notes = []
    if after.simulated:
        notes.append("simulated quantization only")
    if after.masked:
        notes.append(f"masked but not sped up ({after.zero_fraction:.0%} zeros still computed)")
    elif after.zero_fraction >= DENSE_ZEROS and after.type.endswith(("Linear", "Conv1d", "Conv2d", "Conv3d")) \
            and not after.type.startswith("Sparse"):  # a BatchNorm's zero shift is no sparsity
        notes.append(f"{after.zero_fraction:.0%} zeros computed densely")
    shrunk = after.params < before.params or after.type != before.type or (
        not after.simulated and (after.bits or 32) < (before.bits or 32))
    if shrunk and before.time_ms and after.time_ms and after.time_ms >= before.time_ms:
        notes.append("no faster here")
    return "; ".join(notes)
