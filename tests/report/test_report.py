"""The report: per-layer rows before/after, totals, plain words, and its JSON / text / HTML forms."""

from __future__ import annotations

import base64
import re

import pytest
import torch
from torch import nn

import nnic
from nnic.measure import count_flops
from nnic.report import CompressionReport, profile_model, weight_bits


def test_rows_are_matched_by_layer_and_hold_exact_counts(report, compressed_pair):
    dense, model, x = compressed_pair
    rows = {c.name: c for c in report.layers()}
    assert list(rows) == ["0", "1", "3", "6", "8"]
    conv = rows["0"]
    assert (conv.before.type, conv.after.type) == ("Conv2d", "Int8Conv2d")
    assert (conv.before.params, conv.after.params) == (16 * 3 * 9 + 16, 8 * 3 * 9 + 8)
    assert (conv.before.bits, conv.after.bits, conv.after.simulated) == (32, 8, False)
    assert conv.before.macs == count_flops(dense, x).per_layer["0"] == 2 * 16 * 64 * 27
    assert conv.after.macs == conv.before.macs // 2
    assert rows["1"].after.params == 16  # BatchNorm of 8 channels: weight and bias
    assert report.before.macs == count_flops(dense, x).total and report.after.macs == count_flops(model, x).total
    for c in rows.values():  # every layer timed by the profiler, before and after
        assert c.before.time_ms > 0 and c.after.time_ms > 0


def test_totals_agreement_and_measurement_settings(report):
    assert report.after.params < report.before.params / 2
    assert report.after.size_bytes < report.before.size_bytes / 4
    assert report.agreement["output_cosine"] > 0.9  # int8 of the masked model's exact speedup
    lb, la = report.before.latency, report.after.latency
    assert (lb["threads"], lb["repeats"], la["repeats"]) == (1, 5, 5)
    assert lb["min_ms"] <= lb["median_ms"] <= lb["p90_ms"]
    assert report.environment["measure"]["threads"] == 1


def test_json_round_trip_keeps_everything(report, tmp_path):
    report.images = {"extra figure": b"\x89PNG fake"}
    try:
        report.save(tmp_path)
    finally:
        report.images = {}
    again = CompressionReport.load(tmp_path)
    assert again.before == report.before and again.after == report.after
    assert again.notes == report.notes and again.images == {"extra figure": b"\x89PNG fake"}
    with pytest.raises(ValueError, match="not an nnic report"):
        CompressionReport.from_dict({"format": "something else"})
    with pytest.raises(FileNotFoundError, match="no report here"):
        CompressionReport.load(tmp_path / "nowhere")


def test_text_table_has_totals_and_one_row_per_layer(report):
    text = report.text(width=200)
    assert "nnic report: small-cnn" in text
    assert re.search(r"params\s+│\s+[\d,]+\s+│\s+[\d,]+\s+│\s+0\.\d\d×", text)
    assert "Conv2d → Int8Conv2d" in text and "32 → 8" in text
    assert "latency: the example input's batch, 1 thread, 5 timed runs per model after 1 warm-up runs" in text


def test_html_is_one_self_contained_file_with_png_figures(report, tmp_path):
    report.save(tmp_path)
    html = (tmp_path / "report.html").read_text()
    assert not re.search(r"""(src|href)=['"](?!data:)""", html)  # nothing loaded from elsewhere
    images = re.findall(r"src='data:image/png;base64,([^']+)'", html)
    assert len(images) == 3  # sparsity/bits, latency, time per layer
    assert all(base64.b64decode(i).startswith(b"\x89PNG\r\n\x1a\n") for i in images)
    assert "<script" not in html


def test_plain_words_for_what_compression_did_not_buy():
    torch.manual_seed(0)
    dense = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 8)).eval()
    masked = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 8)).eval()
    masked.load_state_dict(dense.state_dict())
    nnic.pruner("level", masked, [{"sparsity": 0.5, "op_names": ["0"]}]).compress()
    from nnic.report import build_report

    report = build_report(dense, masked, torch.randn(4, 64), measure={"threads": 1, "warmup": 1, "repeats": 3})
    rows = {c.name: c.note for c in report.layers()}
    assert rows["0"] == "masked but not sped up (49% zeros still computed)"  # 2048 of 4096 weights + 64 biases
    assert rows["2"] == ""
    assert any(n.startswith("1 layer(s) masked but not sped up") for n in report.notes)
    assert any(n.startswith("size on disk unchanged") for n in report.notes)


@pytest.mark.parametrize("make, expected", [
    (lambda: nn.Linear(8, 4), (32, False)),
    (lambda: nn.Linear(8, 4).half(), (16, False)),
    (lambda: nnic.quantization_speedup(nn.Sequential(nn.Linear(64, 4)), {"0": 8})[0], (8, False)),
])
def test_weight_bits_of_float_and_int8_layers(make, expected):
    assert weight_bits(make()) == expected


def test_weight_bits_of_a_fake_quantized_layer_is_simulated():
    model = nn.Sequential(nn.Linear(8, 4))
    nnic.quantizer("naive", model, [{"quant_types": ["weight"], "quant_bits": 4, "op_types": ["Linear"]}]).compress()
    assert weight_bits(model[0]) == (4, True)


def test_attention_rows_absorb_their_projections():
    class Attn(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
            self.head = nn.Linear(8, 2)

        def forward(self, x):
            return self.head(self.attn(x, x, x)[0])

    model = Attn().eval()
    profile = profile_model(model, torch.randn(1, 5, 8), times=False)
    assert [r.name for r in profile.layers] == ["attn", "head"]
    assert profile.layers[0].params == sum(p.numel() for p in model.attn.parameters())
    assert profile.layers[0].time_ms is None


def test_results_with_a_plot_become_report_figures(compressed_pair):
    from nnic.report import build_report

    class Curves:
        def plot(self, path):
            import matplotlib

            matplotlib.use("Agg")
            from matplotlib.figure import Figure

            fig = Figure()
            fig.add_subplot().plot([0, 1], [1, 0])
            fig.savefig(path, format="png")

    class Broken:
        def plot(self, path):
            raise RuntimeError("no data")

    dense, model, x = compressed_pair
    report = build_report(dense, model, x, measure={"threads": 1, "warmup": 0, "repeats": 1},
                          extras={"sensitivity": Curves(), "search": Broken()})
    assert list(report.images) == ["sensitivity"] and report.images["sensitivity"].startswith(b"\x89PNG")
