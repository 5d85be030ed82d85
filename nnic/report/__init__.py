"""Reports of what a compression bought: per-layer and total numbers before/after, in plain words where it
bought nothing, as terminal tables, JSON, and one self-contained HTML file with plots.

``build_report(dense, compressed, example_input)`` measures both models side by side;
``CompressionReport.load(OUT)`` reads the report ``nnic compress`` wrote; ``profile_model`` profiles one model.
"""

from nnic.report.compare import CompressionReport, build_report
from nnic.report.content import LayerComparison, ReportContent, layer_note
from nnic.report.profile import LayerRow, ModelProfile, layer_times, profile_model, weight_bits

__all__ = ["CompressionReport", "LayerComparison", "LayerRow", "ModelProfile", "ReportContent", "build_report",
           "layer_note", "layer_times", "profile_model", "weight_bits"]
