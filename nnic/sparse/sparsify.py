"""``nnic.sparsify(model, dummy_input)``: run fine-grained (Level, N:M) sparsity for real, where it pays.

A step beside :func:`nnic.speedup_model`, run after it: speedup removes whole channels (structured masks), then
``sparsify`` turns every remaining ``nn.Linear`` (Hugging Face's ``Conv1D`` too; after :func:`nnic.quantization_speedup`, every
``Int8Linear``) whose weight is mostly zeros into a :class:`~nnic.sparse.modules.SparseLinear`, and every ``nn.Conv2d``
(``groups == 1``, zero padding) into a :class:`~nnic.sparse.conv.SparseConv2d` (the same kernels on its patches),
*only where a micro-benchmark at
this moment, at the batch the layer sees in ``dummy_input`` and with the current thread settings, shows the sparse
layer faster* than the dense one by ``min_speedup`` (with each layer's weights evicted from the caches before every
timed call when the model is larger than the last-level cache, as the model meets them). Layers where it does not
pay stay dense. Every decision, with
the measured times and an estimated break-even density, is in the returned :class:`SparsifyReport`.

Masks attached by a pruner (parametrizations) are folded into the weights first; ``masks`` passed explicitly are
applied (weights zeroed) before the zeros are read. The stored pattern is the weight's non-zeros, so a layer's
output is the masked layer's within float rounding (``verify`` checks the whole model and restores it on failure).
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from nnic.kernels.runtime import last_level_cache_bytes as _last_level_cache_bytes
from nnic.masking import is_parametrized
from nnic.selection import replace_module
from nnic.sparse import layout
from nnic.sparse.conv import SparseConv2d, unsupported_conv
from nnic.sparse.modules import SparseLinear
from nnic.speedup.api import outputs_close

__all__ = ["LayerDecision", "SparsifyReport", "sparsify"]


@dataclass
class LayerDecision:
    """What :func:`sparsify` measured and decided for one layer (times in milliseconds per call)."""

    name: str
    kind: str                       # "Linear", "Conv1D", "Int8Linear" or "Conv2d"
    shape: tuple[int, int]          # (out_features, in_features); a Conv2d's (out_channels, C*kh*kw)
    tokens: int                     # rows per call at the dummy input's batch
    density: float                  # stored fraction of the weight
    layout: str | None = None       # best sparse layout measured ("csr", "2:4", ...)
    dense_ms: float | None = None
    sparse_ms: float | None = None
    speedup: float | None = None    # median over interleaved rounds of dense / sparse time (paired by round)
    win_fraction: float | None = None  # fraction of rounds in which sparse won (by half of min_speedup - 1)
    break_even_density: float | None = None  # density at which sparse would tie dense (time ~ stored values)
    cold: bool = False              # timed with its weights evicted from the caches before every call
    chosen: str = "dense"           # "sparse" or "dense"
    reason: str = ""


@dataclass
class SparsifyReport:
    """Per-layer decisions of :func:`sparsify`; ``str()`` is a table, :meth:`to_dict` JSON-ready."""

    layers: dict[str, LayerDecision] = field(default_factory=dict)
    threads: int = 1

    @property
    def sparse_layers(self) -> list[str]:
        return [n for n, d in self.layers.items() if d.chosen == "sparse"]

    def to_dict(self) -> dict[str, Any]:
        return {"threads": self.threads, "layers": {n: asdict(d) for n, d in self.layers.items()}}

    def __str__(self) -> str:
        head = f"{len(self.sparse_layers)} of {len(self.layers)} layers sparse ({self.threads} threads)"
        rows = [head, f"{'layer':30} {'shape':>12} {'tokens':>6} {'density':>7} {'layout':>6} {'dense ms':>9} "
                      f"{'sparse ms':>9} {'speedup':>7} {'break-even':>10}  decision"]
        for d in self.layers.values():
            f = lambda v, p=3: "-" if v is None else f"{v:.{p}f}"  # noqa: E731
            rows.append(f"{d.name[:30]:30} {f'{d.shape[0]}x{d.shape[1]}':>12} {d.tokens:>6} {d.density:>7.3f} "
                        f"{d.layout or '-':>6} {f(d.dense_ms):>9} {f(d.sparse_ms):>9} {f(d.speedup, 2):>7} "
                        f"{f(d.break_even_density):>10}  {d.chosen}: {d.reason}")
        return "\n".join(rows)


def _int8_linear_type() -> type:
    from nnic.quantization.modules import Int8Linear

    return Int8Linear


def _candidate_kind(m: nn.Module) -> str | None:
    if isinstance(m, nn.Linear):
        return "Linear"
    if isinstance(m, _int8_linear_type()):
        return "Int8Linear"
    if isinstance(m, nn.Conv2d) and type(m).forward is nn.Conv2d.forward:  # a subclass's own forward is not a conv
        return "Conv2d"
    if type(m).__name__ == "Conv1D" and hasattr(m, "nf") and getattr(m, "weight", None) is not None:
        return "Conv1D"  # Hugging Face GPT-2's transposed linear: y = x @ weight + bias, weight [in, out]
    return None


def _linear_weight(m: nn.Module) -> torch.Tensor:
    """The ``[out, in]`` weight of a candidate layer (a convolution's ``[out, C*kh*kw]``, as its matmul sees it)."""
    kind = _candidate_kind(m)
    return m.weight.t() if kind == "Conv1D" else m.weight.flatten(1) if kind == "Conv2d" else m.weight


def _fold_and_apply(model: nn.Module, masks: Mapping | None) -> None:
    from nnic.masking import ParameterMask, check_masks, fold_masks

    if masks:
        check_masks(model, masks)
    for name, module in model.named_modules():
        if is_parametrized(module) and _candidate_kind(module):
            if all(isinstance(p, ParameterMask) for ps in module.parametrizations.values() for p in ps):
                fold_masks(module)
    with torch.no_grad():
        for name, per_param in (masks or {}).items():
            module = model.get_submodule(name)
            for pname, mask in per_param.items():
                if mask is not None:
                    p = getattr(module, pname)
                    p.mul_(mask.to(device=p.device, dtype=torch.bool).to(p.dtype))


def _split_input(dummy_input: Any) -> tuple[tuple, dict]:
    if isinstance(dummy_input, dict):
        return (), dict(dummy_input)
    if isinstance(dummy_input, (tuple, list)):
        return tuple(dummy_input), {}
    return (dummy_input,), {}


def _record_inputs(model: nn.Module, names: list[str], args: tuple, kwargs: dict
                   ) -> tuple[Any, dict[str, tuple[int, torch.Size]]]:
    """The model's output, and per layer run: the rows of its matmul per call (a convolution's output pixels) and
    the shape of its first input (what its timing feeds it)."""
    seen: dict[str, tuple[int, torch.Size]] = {}
    hooks = []
    for name in names:
        m = model.get_submodule(name)

        def hook(mod, inputs, output, name=name, dim=-3 if _candidate_kind(m) == "Conv2d" else -1):
            if name not in seen and inputs and isinstance(inputs[0], torch.Tensor) and isinstance(output, torch.Tensor):
                rows = math.prod(s for i, s in enumerate(output.shape) if i != dim % output.ndim)
                seen[name] = rows, inputs[0].shape
        hooks.append(m.register_forward_hook(hook))
    try:
        with torch.no_grad():
            out = model(*args, **kwargs)
    finally:
        for h in hooks:
            h.remove()
    return out, seen


#: The clock the micro-benchmark reads (seconds); None picks one per run (:func:`_pick_clock`); tests replace it
#: with a scripted one.
_clock = None


def _pick_clock():
    """Wall time when the layers run on several threads (that is what the user waits for); on one thread (torch's
    and the kernels' pools both at 1) the calling thread's CPU time: the same quantity when the process owns its
    core, and not inflated by other processes' load when it does not."""
    from nnic import kernels

    if torch.get_num_threads() == 1 and kernels.get_num_threads() == 1:
        return time.thread_time
    return time.perf_counter


#: Each timed sample repeats a call for about this long, so that timer resolution and call overhead vanish.
_SAMPLE_S = 3e-3
#: Sparse must win in at least this fraction of the paired rounds, whatever the median ratio says.
_MIN_WIN_FRACTION = 0.75


def _round_ms(fns: list, x: torch.Tensor, rounds: int, flush: list | None = None) -> list[list[float]]:
    """Per-call milliseconds of each function in each of ``rounds`` interleaved rounds (A, B, A, B...; the order
    rotates every round so that no function always runs first after another's cache traffic).

    With ``flush`` (one callable per function), every call is preceded by its flush (evicting that function's
    weights from the caches, see :func:`_flushes`) and only the call is timed."""
    clock = _clock or _pick_clock()

    def timed(i: int, reps: int) -> float:
        if flush is None:
            t = clock()
            for _ in range(reps):
                fns[i](x)
            return clock() - t
        total = 0.0
        for _ in range(reps):
            flush[i]()
            t = clock()
            fns[i](x)
            total += clock() - t
        return total

    with torch.no_grad():
        reps = []
        for i, f in enumerate(fns):  # warm up (packing, caches) and size each sample to about _SAMPLE_S
            f(x)
            reps.append(max(1, min(100, int(_SAMPLE_S / max(timed(i, 1), 1e-7)))))
        times: list[list[float]] = [[] for _ in fns]
        for r in range(rounds):
            for j in range(len(fns)):
                i = (j + r) % len(fns)
                times[i].append(timed(i, reps[i]) / reps[i] * 1e3)
    return times


def _model_bytes(model: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()) if t is not None)


def _flushes(module: nn.Module, cands: list[nn.Module]) -> list:
    """One callable per timed function (the dense module, then each candidate) that evicts its weights from the
    caches: in a model larger than the last-level cache, every layer meets its weights cold (in a decode step a
    dense GPT-2 layer took 1.7-3x longer than when timed call after call with warm weights)."""
    from nnic import kernels

    return [lambda m=m: kernels.flush_caches(m) for m in (module, *cands)]


@dataclass
class _Verdict:
    speedup: float      # median over rounds of dense / sparse, paired by round
    win_fraction: float  # rounds in which sparse was faster by half the margin
    sparse: bool
    reason: str


def _judge(dense: list[float], sparse: list[float], tokens: int, min_speedup: float) -> _Verdict:
    """The switch's decision from paired per-round times (milliseconds).

    Rounds are paired because load from other processes hits both calls of a round alike, so the ratio of one
    round is steadier than the ratio of separate medians. Sparse is chosen only when the median paired ratio
    reaches ``min_speedup`` *and* sparse won at least :data:`_MIN_WIN_FRACTION` of the rounds (by half the margin,
    ``1 + (min_speedup - 1) / 2``, so that a tie does not pass on noise) *and* the ratio of the medians is not
    below 1: a layer is never made sparse on a measurement that says it is slower.
    ``min_speedup == 0`` forces sparse (still reported).
    """
    ratios = [d / max(s, 1e-12) for d, s in zip(dense, sparse)]
    speedup = statistics.median(ratios)
    win = 1.0 + max(0.0, min_speedup - 1.0) / 2  # a round counts as a win beyond half the margin
    wins = sum(r > win for r in ratios) / len(ratios)
    of_medians = statistics.median(dense) / max(statistics.median(sparse), 1e-12)
    if min_speedup == 0:
        return _Verdict(speedup, wins, True, f"forced (min_speedup 0); measured {speedup:.2f}x at {tokens} rows")
    if speedup < min_speedup:
        return _Verdict(speedup, wins, False, f"sparse only {speedup:.2f}x (< min_speedup {min_speedup}; "
                                              f"median of {len(ratios)} rounds)")
    if wins < _MIN_WIN_FRACTION or of_medians < 1.0:
        return _Verdict(speedup, wins, False, f"median {speedup:.2f}x but sparse won only {wins:.0%} of "
                                              f"{len(ratios)} rounds (noisy; needs {_MIN_WIN_FRACTION:.0%})")
    return _Verdict(speedup, wins, True, f"{speedup:.2f}x faster at {tokens} rows (won {wins:.0%} of "
                                         f"{len(ratios)} rounds)")


def _measure(fns: list, x: torch.Tensor, rounds: int, min_speedup: float, tokens: int,
             flush: list | None = None) -> tuple[int, list, _Verdict]:
    """Times the dense layer ``fns[0]`` against its sparse candidates; returns the best candidate's position
    (1-based in ``fns``), every function's per-round times and the verdict. A close call (median within 15 % of
    ``min_speedup``, or a median that says sparse while the win count does not) is measured again with as many
    rounds more, and decided on all of them."""
    times = _round_ms(fns, x, rounds, flush)
    for attempt in range(2):
        best = 1 + min(range(len(fns) - 1), key=lambda i: statistics.median(times[i + 1]))
        verdict = _judge(times[0], times[best], tokens, min_speedup)
        close = min_speedup > 0 and (abs(verdict.speedup / min_speedup - 1) < 0.15
                                     or (verdict.speedup >= min_speedup and not verdict.sparse))
        if attempt or not close:
            break
        more = _round_ms(fns, x, rounds, flush)
        times = [a + b for a, b in zip(times, more)]
    return best, times, verdict


def _candidates(module: nn.Module, kind: str) -> tuple[torch.Tensor, list[nn.Module]]:
    """The layer's weight non-zeros and its sparse versions (CSR, and N:M when the zeros follow a pattern)."""
    w = _linear_weight(module).detach()
    nonzero = w != 0
    nm = layout.nm_pattern(nonzero) if w.shape[1] % 2 == 0 else None
    if kind == "Int8Linear":
        build = SparseLinear.from_int8
    elif kind == "Conv2d":
        def build(mod, nm=None):
            return SparseConv2d.from_conv(mod, nm=nm)
    else:
        def build(mod, nm=None):
            return SparseLinear.from_dense(w.float(), mod.bias, nm=nm)
    mods = [build(module)]
    if nm is not None:
        mods.append(build(module, nm=nm))
    return nonzero, mods


def sparsify(model: nn.Module, dummy_input: Any, masks: Mapping | None = None, *, layers: list[str] | None = None,
             min_speedup: float = 1.1, max_density: float = 0.7, rounds: int = 9, cold: bool | None = None,
             verify: bool = True, rtol: float = 1e-4, atol: float = 1e-5) -> SparsifyReport:
    """Replace mostly-zero Linear / Int8Linear layers of ``model`` (in place) by :class:`SparseLinear` where that is
    measured to be faster; returns the :class:`SparsifyReport`.

    :param dummy_input: a tensor, tuple (positional arguments) or dict (keyword arguments) at the batch the model
        will run: each layer is timed at the rows it sees for it.
    :param masks: ``{layer: {"weight": mask}}`` to apply first (masks attached by a pruner are folded anyway).
    :param layers: names of the layers to consider (default: every Linear and Int8Linear).
    :param min_speedup: a layer goes sparse when the median of dense time / sparse time over the paired rounds is
        at least this and sparse won at least 3 in 4 rounds (0: every layer at or below ``max_density`` goes
        sparse, still timed and reported).
    :param max_density: layers that store more than this fraction stay dense without being timed.
    :param rounds: interleaved timing rounds (paired ratios, median; a close call gets as many rounds more).
    :param cold: time every call with the layer's weights evicted from the CPU caches first, as the model meets
        them when its weights do not fit in the last-level cache (each layer's weights are pushed out by the rest
        of the model before it runs again; a decode step's dense layers take 1.7-3x longer than with warm
        weights). None (default): cold when the model's parameters and buffers exceed the last-level cache.
        ``Int8Linear`` layers are timed warm either way (the dense int8 GEMM's packed weight cannot be evicted
        from Python, and timing only the sparse side cold would be unfair to it).
    :param verify: check the model's output against the dense (masked) model's and restore it on a mismatch.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    if isinstance(min_speedup, bool) or not (isinstance(min_speedup, (int, float)) and min_speedup >= 0):
        raise ValueError(f"min_speedup must be a number >= 0, got {min_speedup!r}")
    if not (isinstance(max_density, (int, float)) and 0 < max_density <= 1):
        raise ValueError(f"max_density must be in (0, 1], got {max_density!r}")
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
        raise ValueError(f"rounds must be an int >= 1, got {rounds!r}")
    if cold is not None and not isinstance(cold, bool):
        raise TypeError(f"cold must be True, False or None, got {type(cold).__name__}")
    _fold_and_apply(model, masks)
    modules = dict(model.named_modules())
    if layers is None:
        names = [n for n, m in modules.items() if n and _candidate_kind(m)]
    else:
        for n in layers:
            if n not in modules or not _candidate_kind(modules[n]):
                raise ValueError(f"layers: {n!r} is not a Linear, Conv1D, Int8Linear or Conv2d of the model")
        names = list(layers)
    args, kwargs = _split_input(dummy_input)
    was_training = model.training
    model.eval()
    reference, seen = _record_inputs(model, names, args, kwargs)
    if cold is None:
        llc = _last_level_cache_bytes()
        cold = llc is not None and _model_bytes(model) > llc
    report = SparsifyReport(threads=torch.get_num_threads())
    replaced: dict[str, nn.Module] = {}
    try:
        for name in names:
            module, kind = modules[name], _candidate_kind(modules[name])
            weight = _linear_weight(module)
            out_f, in_f = weight.shape
            density = float((weight != 0).sum()) / max(1, weight.numel())
            tokens, in_shape = seen.get(name, (0, None))
            d = report.layers[name] = LayerDecision(name, kind, (out_f, in_f), tokens, density)
            if in_shape is None:
                d.reason = "not run by the dummy input"
                continue
            if density > max_density:
                d.reason = f"density {density:.2f} above max_density {max_density}"
                continue
            if weight.device.type != "cpu":
                d.reason = "not on CPU (the decision is measured on CPU; build SparseLinear directly for CUDA)"
                continue
            if in_f > layout.MAX_IN_FEATURES:
                d.reason = f"in_features above {layout.MAX_IN_FEATURES}"
                continue
            if kind == "Conv2d" and (why := unsupported_conv(module)):
                d.reason = why
                continue
            _, cands = _candidates(module, kind)
            x = torch.randn(in_shape) if kind == "Conv2d" else torch.randn(max(1, d.tokens), in_f)
            d.cold = cold and kind != "Int8Linear"
            flush = _flushes(module, cands) if d.cold else None
            best, times, verdict = _measure([module, *cands], x, rounds, min_speedup, d.tokens, flush)
            d.layout = cands[best - 1].layout
            d.dense_ms, d.sparse_ms = statistics.median(times[0]), statistics.median(times[best])
            d.speedup, d.win_fraction = verdict.speedup, verdict.win_fraction
            d.break_even_density = min(1.0, density * d.speedup)
            d.reason = verdict.reason + (" (cold weights)" if d.cold else "")
            if verdict.sparse:
                d.chosen = "sparse"
                replaced[name] = module
                replace_module(model, name, cands[best - 1])
        if verify and replaced:
            with torch.no_grad():
                got = model(*args, **kwargs)
            if not outputs_close(got, reference, rtol, atol):
                raise ValueError("sparsify: verify: the sparse model's output differs from the dense model's; "
                                 f"layers made sparse: {sorted(replaced)}")
    except BaseException:
        for name, module in replaced.items():
            replace_module(model, name, module)
        raise
    finally:
        model.train(was_training)
    return report
