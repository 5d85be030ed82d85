"""size_on_disk, measure_latency and channel_groups."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import nnic
from nnic.measure import channel_groups, measure_latency, size_on_disk


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 256)).eval()


def test_size_on_disk_is_the_float32_bytes_plus_a_small_header():
    model = _mlp()
    data = 4 * (2 * 256 * 256 + 2 * 256)
    assert data < size_on_disk(model) < data + 1024


def test_masks_do_not_shrink_the_file_but_speedup_and_int8_do():
    model = _mlp()
    dense = size_on_disk(model)
    _, masks = nnic.pruner("l1norm", model, [{"sparsity": 0.5, "op_names": ["0"]}]).compress()
    assert size_on_disk(model) == dense  # masks folded in, no mask tensors saved
    nnic.speedup_model(model, torch.randn(1, 256), masks)
    pruned = size_on_disk(model)
    assert pruned == pytest.approx(dense * 0.5, rel=0.01)
    nnic.quantization_speedup(model, {"0": 8, "2": 8})
    # 1-byte codes, plus a float32 scale, an int32 zero point and a float32 bias per output channel
    codes, per_channel = 2 * 128 * 256, 3 * 4 * (128 + 256)
    assert codes + per_channel < size_on_disk(model) < codes + per_channel + 1024


def test_latency_statistics_are_ordered_and_threads_restored():
    model = _mlp()
    before = torch.get_num_threads()
    stats = measure_latency(model, torch.randn(1, 256), threads=1, batch=8, warmup=1, repeats=7)
    assert torch.get_num_threads() == before
    assert (stats.repeats, stats.threads, stats.batch, len(stats.samples_ms)) == (7, 1, 8, 7)
    assert 0 < stats.min_ms <= stats.median_ms <= stats.p90_ms <= max(stats.samples_ms)
    assert stats.p90_ms == sorted(stats.samples_ms)[6]  # nearest rank: ceil(0.9 * 7) = 7th of 7
    assert "median" in str(stats) and stats.to_dict()["threads"] == 1


def test_latency_runs_the_given_batch_in_eval_mode_under_inference_mode():
    seen = []

    class Probe(nn.Module):
        def forward(self, x):
            seen.append((x.shape[0], self.training, torch.is_inference_mode_enabled()))
            return x

    probe = Probe().train()
    measure_latency(probe, torch.randn(3, 2), batch=5, warmup=2, repeats=3)
    assert seen == [(5, False, True)] * 5 and probe.training


@pytest.mark.parametrize("kw, message", [
    ({"repeats": 0}, "repeats must be an int >= 1, got 0"),
    ({"threads": 1.5}, "threads must be an int >= 1, got 1.5"),
    ({"warmup": -1}, "warmup must be an int >= 0, got -1"),
    ({"batch": 0}, "batch: expected a positive int, got 0"),
    ({"clock": "tsc"}, "clock must be 'wall' or 'cpu', got 'tsc'"),
    ({"clock": "cpu", "threads": 2}, "clock='cpu' times one CPU thread: it needs threads=1"),
])
def test_latency_rejects_bad_settings_by_name(kw, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(".", r"\.")):
        measure_latency(_mlp(), torch.randn(1, 256), **kw)


class _Waits(nn.Module):
    """A forward pass that mostly waits (as a run preempted by other processes does): wall time, no CPU."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        import time

        time.sleep(0.02)
        return x + 1


def test_the_cpu_clock_leaves_out_time_the_process_was_not_running():
    x = torch.randn(1, 8)
    wall = measure_latency(_Waits(), x, threads=1, warmup=0, repeats=3, clock="wall")
    cpu = measure_latency(_Waits(), x, threads=1, warmup=0, repeats=3, clock="cpu")
    assert wall.min_ms >= 20.0  # slept 20 ms each run
    assert cpu.median_ms < wall.median_ms / 4  # sleeping costs no CPU time


def test_channel_groups_couple_the_branches_of_a_residual_add():
    class Residual(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Conv2d(3, 8, 3, padding=1)
            self.body = nn.Conv2d(8, 8, 3, padding=1)
            self.other = nn.Conv2d(8, 4, 1)

        def forward(self, x):
            y = self.stem(x)
            return self.other(y + self.body(y))

    groups = channel_groups(Residual(), torch.randn(1, 3, 8, 8))
    layers = {g.layers: g.channels for g in groups.groups}
    assert layers == {("stem", "body"): 8, ("other",): 4}
    text = str(groups)
    assert text.splitlines()[0].startswith("2 channel groups")
    assert "stem, body" in text


def test_interleaved_latencies_time_each_model_in_every_round():
    calls = []

    class Named(nn.Module):
        def __init__(self, name: str) -> None:
            super().__init__()
            self.name = name

        def forward(self, x):
            calls.append(self.name)
            return x

    from nnic.measure import measure_latencies

    stats = measure_latencies({"a": Named("a"), "b": Named("b")}, torch.zeros(1), rounds=2, warmup=1, repeats=4)
    assert calls == ["a"] * 3 + ["b"] * 3 + ["a"] * 3 + ["b"] * 3  # per round: 1 warm-up + 2 timed each
    assert stats["a"].repeats == stats["b"].repeats == 4
