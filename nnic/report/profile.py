"""One model's numbers, per layer and in total: what a report compares before and after compression.

Per layer (every module that holds weights or does counted arithmetic): its type, weights and nonzero weights,
multiply-accumulates, the bits its weights are stored in and whether that quantization is real or simulated,
and its time per forward measured with ``torch.profiler`` (a ``record_function`` range around each layer's
forward, inclusive of the ops it calls, averaged over a few runs after a warm-up)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from nnic.masking import is_parametrized
from nnic.selection import op_type
from nnic.measure import count_flops, params_per_layer, size_on_disk
from nnic.measure._inputs import call, eval_mode, num_threads

_LABEL = "nnic.layer::"


@dataclass
class LayerRow:
    name: str
    type: str
    params: int
    nonzero: int
    macs: int
    bits: int | None
    simulated: bool
    time_ms: float | None
    masked: bool = False

    @property
    def zero_fraction(self) -> float:
        return 1 - self.nonzero / self.params if self.params else 0.0


@dataclass
class ModelProfile:
    """Per-layer rows (in module order) and totals of one model; JSON-ready through :meth:`to_dict`."""

    layers: list[LayerRow]
    params: int
    nonzero: int
    macs: int
    size_bytes: int
    latency: dict[str, Any] | None = None
    metric: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def layer(self, name: str) -> LayerRow | None:
        return next((r for r in self.layers if r.name == name), None)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelProfile:
        return cls(**{**d, "layers": [LayerRow(**r) for r in d["layers"]]})


def weight_bits(m: nn.Module) -> tuple[int | None, bool]:
    """``(bits, simulated)`` of the module's weight: nnic's low-bit modules store integer codes (real);
    a fake-quant parametrization makes float weights take quantized values (simulated); else the dtype's bits."""
    buffers = dict(m.named_buffers(recurse=False))
    if "weight_packed" in buffers:
        return 4, False
    w = buffers.get("weight")
    if isinstance(w, torch.Tensor) and not w.is_floating_point():
        return torch.iinfo(w.dtype).bits, False
    if is_parametrized(m, "weight"):
        for p in m.parametrizations["weight"]:
            spec = getattr(p, "spec", None)
            if spec is not None and hasattr(spec, "bits"):
                return int(spec.bits), True
    w = getattr(m, "weight", None)
    if isinstance(w, torch.Tensor):
        return (torch.finfo(w.dtype).bits if w.is_floating_point() else torch.iinfo(w.dtype).bits), False
    return None, False


_PROFILER_NOISE = ("USDT:", "gpuGetDeviceCount failed")


@contextlib.contextmanager
def _quiet_profiler_log() -> Iterator[None]:
    """The profiler's C++ side logs its start and stop (and, without a GPU, a device-count error) straight to
    file descriptor 2; keep those lines out of the user's terminal and pass every other line through."""
    import os
    import sys
    import tempfile

    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            for line in capture.read().decode(errors="replace").splitlines():
                if line and not any(noise in line for noise in _PROFILER_NOISE):
                    print(line, file=sys.stderr)


def is_masked(m: nn.Module) -> bool:
    """Whether a pruner's mask is attached to one of the module's parameters."""
    from nnic.masking import ParameterMask

    return is_parametrized(m) and any(
        isinstance(p, ParameterMask) for plist in m.parametrizations.values() for p in plist)


def layer_times(model: nn.Module, example_input: Any, layers: list[str], *, runs: int = 5, warmup: int = 2,
                threads: int | None = None) -> dict[str, float]:
    """Milliseconds per forward spent in each of ``layers`` (qualified names), by ``torch.profiler``."""
    from torch.profiler import ProfilerActivity, profile, record_function

    modules = dict(model.named_modules())
    open_ranges: dict[int, list[Any]] = {}
    handles = []

    def pre(name: str):
        def hook(m: nn.Module, args: Any) -> None:
            r = record_function(_LABEL + name)
            r.__enter__()
            open_ranges.setdefault(id(m), []).append(r)
        return hook

    def post(m: nn.Module, args: Any, out: Any) -> None:
        stack = open_ranges.get(id(m))
        if stack:
            stack.pop().__exit__(None, None, None)

    for name in layers:
        handles.append(modules[name].register_forward_pre_hook(pre(name)))
        handles.append(modules[name].register_forward_hook(post))
    try:
        with num_threads(threads), eval_mode(model), torch.inference_mode():
            for _ in range(warmup):
                call(model, example_input)
            with _quiet_profiler_log(), profile(activities=[ProfilerActivity.CPU]) as prof:
                for _ in range(runs):
                    call(model, example_input)
    finally:
        for h in handles:
            h.remove()
    out = {}
    for event in prof.key_averages():
        if event.key.startswith(_LABEL):
            out[event.key[len(_LABEL):]] = event.cpu_time_total / runs / 1000.0  # microseconds -> ms
    return out


def profile_model(model: nn.Module, example_input: Any, *, times: bool = True,
                  threads: int | None = None) -> ModelProfile:
    """Per-layer rows and totals of ``model`` on ``example_input`` (latency and metric are added by the caller,
    which measures several models fairly side by side)."""
    flops = count_flops(model, example_input)
    params = params_per_layer(model)
    counted = set(flops.per_layer)

    def absorbed_by(n: str) -> str | None:  # the counted layer above n (attention's projections), if any
        return next((c for c in counted if c != n and (c == "" or n.startswith(c + "."))), None)

    names = [n for n, _ in model.named_modules() if (n in params or n in counted) and absorbed_by(n) is None]
    totals = {n: list(params.get(n, (0, 0))) for n in names}
    for n, (total, nonzero) in params.items():
        owner = absorbed_by(n)
        if owner is not None and owner in totals:
            totals[owner][0] += total
            totals[owner][1] += nonzero
    timed = layer_times(model, example_input, names, threads=threads) if times else {}
    modules = dict(model.named_modules())
    rows = []
    for n in names:
        bits, simulated = weight_bits(modules[n])
        rows.append(LayerRow(n or "(model)", op_type(modules[n]), totals[n][0], totals[n][1],
                             flops.per_layer.get(n, 0), bits, simulated, timed.get(n), is_masked(modules[n])))
    return ModelProfile(rows, sum(v[0] for v in params.values()), sum(v[1] for v in params.values()),
                        flops.total, size_on_disk(model))
