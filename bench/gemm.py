"""int8 GEMM benchmark: nnic against torch's CPU int8 paths and float32 MKL, side by side, in one run.

    python bench/gemm.py                      # the issue's shapes, 2 threads
    python bench/gemm.py --shapes 16x4096x4096 --threads 1 --repeats 21
    python bench/gemm.py --contention --shapes 1x4096x4096 16x4096x4096 128x4096x4096   # beside a neighbour
    python bench/gemm.py --bert                                # BERT-base encoder, batch 8, seq 128
    python bench/gemm.py --threads 1 --clock cpu               # on a loaded machine: CPU time, one thread
    python bench/gemm.py --cold                                # every call after a 256 MiB sweep of the caches

Rows per (M, K, N): float32 ``torch.matmul`` (MKL), ``torch._int_mm`` (s8·s8→s32), dynamic-quantized
``nn.quantized.dynamic.Linear`` with every installed engine (fbgemm / onednn / x86), and nnic's
``int8_matmul`` (packs B on every call), prepacked ``matmul`` (s8→s32), ``int8_linear`` (f32→f32, dynamic
per-token activations, fused epilogue), the same with ``reduce_range`` (7-bit activations, as ``quantize_dynamic``
quantizes them on x86), at 13 ≤ M ≤ 28 on the VNNI path the same without its tall tile
(``kernels.set_gemm_tall_tile(False)``: two or three row panels, the tiling before it), at 29 ≤ M ≤ 192 (K ≤ 4096, N ≥ 897)
on the VNNI path the same on the planned column blocks instead of its column lanes
(``kernels.set_gemm_column_lanes(False)``, the scheduling before them), above 192 rows (or K beyond 4096) the same
with every planned block one task (``kernels.set_gemm_tail_pieces(False)``, before the tail pieces), with torch's
OpenMP team loaded the same
with the GEMM's routing by measured cost on (``kernels.set_gemm_routing(True)``; by default the runs follow the
avoidance window after a late OpenMP thread)
and ``int4_linear`` (int4
weights, M ≤ 16 only). All kernels of a
shape are timed round-robin (one call each per round) so that load from other processes hits them alike, each
round in its own order (seeded, the same in every run: ``_timing.shuffled_order``; ``--contention`` keeps a fixed
order, see ``time_alternating``), so that no row always follows the same one: what ran just before moves a call's
time (at 1 × 4096² an nnic call right after the prepacked s8 product took 0.45 ms, right after another nnic Linear
0.35);
times are medians (``--stat min`` for the least-disturbed round);
GOPS count 2·M·K·N; "%peak" is against the int8 VNNI peak measured at start on this machine
(``kernels.gemm_vnni_peak_gops``: one core's ``vpdpbusd`` on registers, × threads; ``--peak`` overrides; the
theoretical one from the clock, cores × GHz × 2 ports × 64 MAC × 2, where VNNI is missing). Why measured: PERF.md's
1342 / 665 GOPS came from a 2-port Intel core; a Zen 4 core runs one 512-bit ``vpdpbusd`` a cycle (about 465 GOPS
a core at 3.6 GHz), so against 1342 a GEMM at the 2-core ceiling read 70 %. The ratios include "the compute
ceiling": the best dynamic Linear's time against a kernel at that peak, what no int8 kernel can beat at the shape
(at 128 × 4096² on Zen 4 1.15-1.30 across runs, as torch ran at 77-87 % of the peak); and ``int8_matmul`` against
``torch._int_mm``, like for like (both take B as it is on every call).

``--contention`` measures every shape quiet and beside a neighbour (another torch process, started with the
``spawn`` method, doing float32 matmuls on ``--neighbour-threads`` threads), in alternating rounds: the neighbour
is paused for a quiet round (every kernel once), resumed for a contended round, paused again, and so on, so that
both settings see the same machine state (other processes' load, clock, what the other kernels left in the
caches) and a one-off disturbance does not decide either setting. It prints nnic's ratio to the best
dynamic-quantized torch Linear (``quantize_dynamic``'s module) in both settings and their quotient (the issue's
goal: contended ratio >= 0.9x the quiet one), and the same for the default call without the spreading (the row
"nnic int8_linear, no spreading", ``kernels.set_gemm_spread(False)``: the caller stays on a CPU its team mate shares
while the neighbour has the other to itself, as the scheduler left them).

After each shape the OpenMP team's counters are printed (``kernels.gemm_openmp_stats``: per GEMM, how long after
the start its last thread arrived, how long the region lasted after the last task, and the share of tasks the
caller's team mates took), and the GEMM helpers' counters (``kernels.gemm_team_stats``: GEMMs handed to the
kernels' own helper threads, the share a helper took while still polling rather than after a kernel wake-up,
and the polling time per GEMM, which is what the bound ``--spin`` (microseconds, default 50) costs the other
processes at most). ``NNIC_GEMM_BACKEND=rayon`` puts every GEMM on those helpers instead of torch's team. Each
table also says in how many of its timed calls the default ``int8_linear`` row ran on torch's team, on the helpers
(after a late team thread) and on the caller alone, with each part's median: the row's median is that of the mixture
(a late team thread beside other processes' load sends the calls of the next 0.1-0.5 s to the helpers, several
rounds at M = 1).

With the wall clock, each table also gives nnic's ratio over the undisturbed calls only: those in which no thread
of the process waited for a core (``/proc/self/task/*/schedstat``, read after every timed call), each row's median
over its own undisturbed calls. On a shared machine these are the quiet machine's times, and the line says how many
calls of the default row it had (see ``Undisturbed``).

``--cold`` reads a 256 MiB buffer (a sum, on the same threads) before every timed call, outside the timing: each
call then reads its weights from DRAM with nothing of its own in the caches, as a layer of a model larger than the
L3 does when other work runs between its calls. Why: the plain rounds leave each kernel's weights
partly in the L3 (the other rows' weights pass through it between two calls of one row, but consecutive nnic rows
share one packed weight), between the hot and the cold regime, and on a shared host the L3 forgets 16 MiB within
milliseconds of other guests' work (docs/performance/low-bit.md, "Small hours of 2026-12-03"). Not with
``--contention`` or ``--bert``.

``--bert`` times a BERT-base encoder (12 x 768, FFN 3072, random init, sequence ``--seq``, batch ``--bert-batch``)
instead: float32, ``torch.ao.quantization.quantize_dynamic`` (every installed engine; the best is the baseline),
nnic int8 (``quantization_speedup`` on every Linear: per-channel weights, per-token activations), nnic int8
with the MLP's GELU fused into the GEMM epilogue (``nnic_transformers.fuse_mlp_activations``), and that with
each self-attention's query/key/value as one GEMM (``nnic_transformers.fuse_projections``), and that with the
attention and residual + LayerNorm on the fused encoder kernels (``nnic_transformers.fuse_encoder``: by default
with the attention's products in bfloat16 where the CPU has AVX512_BF16, the goal rows), and, where it has, that
with float32 products (``attention_products="float32"``, the switch back), and the goal row (all fused) with the
GEMMs' routing by measured cost on (``kernels.set_gemm_routing(True)``, the two trading places every other round);
interleaved rounds, agreement as cosine with float32. The rows with ``reduce_range`` run the same model lowered with
``quantization_speedup(..., reduce_range=True)`` (7-bit activations, the precision of ``quantize_dynamic`` on x86).
``--clock cpu`` times process CPU time instead of wall time (with ``--threads 1`` it is immune to other processes'
load; with more threads it adds the threads' CPU up).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from nnic import kernels  # noqa: E402
from _baselines import dynamic_linear  # noqa: E402
from _timing import even_if_swapped, round_order, timeit_interleaved  # noqa: E402

OWN_HELPERS = "nnic int8_linear, nnic's own helpers"
DEFAULT_LINEAR = "nnic int8_linear f32->f32"
UNPACKED = "nnic int8_matmul (packs B each call)"
TWO_PANELS = "nnic int8_linear, no tall tile"
#: Rows that the VNNI path's tall tile takes as one row panel (``set_gemm_tall_tile``).
TALL_ROWS = range(13, 29)
BLOCKS = "nnic int8_linear, column blocks"
#: The default call with the GEMM's routing by measured cost on (``kernels.set_gemm_routing(True)``; off by default,
#: when the runs follow the avoidance window a late OpenMP thread opens).
ROUTED = "nnic int8_linear, routed by cost"
#: Rows that the VNNI path runs as one row block on column lanes (``set_gemm_column_lanes``), at K <= 4096 and (two
#: threads) N >= 897.
LANE_ROWS = range(29, 193)
WHOLE = "nnic int8_linear, whole tail blocks"
#: The default call with the caller's move off a CPU its team mate shares turned off (``set_gemm_spread(False)``),
#: timed in ``--contention`` runs only.
UNSPREAD = "nnic int8_linear, no spreading"
#: The default call with 7-bit activations (``reduce_range=True``: the precision of ``quantize_dynamic``, which uses
#: them on x86; without VNNI nnic then runs its 3-operation AVX2 tile). Timed with every other row.
REDUCED = "nnic int8_linear, reduce_range"


def tail_in_pieces(m: int, k: int) -> bool:
    """Whether the product runs as planned output blocks whose last ones are cut into 32-column pieces
    (``set_gemm_tail_pieces``): more rows than one row block (192 on the VNNI path), or K beyond one 4096 slice with
    more rows than two row panels (the tall tile's 28 rows each)."""
    return m > 192 or (m > 56 and k > 4096)


class BackendTally:
    """Where the default ``int8_linear`` row's calls ran: on torch's OpenMP team, on nnic's own helpers (after a
    late team thread, see ``gemm_openmp_stats``), or on the caller alone (a product too small to split). Called
    after every timed call, outside the timing: a call of the default row that raised the team's (the helpers')
    run count ran there. Why: the row's time depends on it (on the helpers it shares the cores with torch's
    still-spinning OpenMP thread), and which one a run got is what moved M = 1 and M = 16 between quiet runs: the
    row's median is the median of a mixture, so :meth:`line` also gives each part's median (quiet runs of
    2026-12-01 at M = 1: with 7 of 15 calls on the team the row read 0.713 ms, with 10 of 15 0.592 ms)."""

    WHERE = ("team", "helpers", "caller")

    def __init__(self) -> None:
        self.last: tuple[int, int] | None = None
        #: Where each timed call of the default row ran, in order (one of :attr:`WHERE`).
        self.where: list[str] = []

    def __call__(self, name: str) -> None:
        runs = (kernels.gemm_openmp_stats()["runs"], kernels.gemm_pool_stats()["runs"])
        if name == DEFAULT_LINEAR and self.last is not None:
            self.where.append("team" if runs[0] > self.last[0] else "helpers" if runs[1] > self.last[1] else "caller")
        self.last = runs

    def line(self, times: list[float] | None = None) -> str:
        """The tally in words; with the row's ``times`` (one per call), also the median of each part."""
        counts = {w: self.where.count(w) for w in self.WHERE}
        text = (f"default int8_linear row on torch's OpenMP team in {counts['team']} of {len(self.where)} timed "
                f"calls, on nnic's own helpers in {counts['helpers']}, on the caller alone in {counts['caller']}")
        if times is not None and len(times) == len(self.where):
            parts = {w: [t for t, at in zip(times, self.where) if at == w] for w in self.WHERE}
            text += "; medians: " + ", ".join(f"{w} {statistics.median(ts) * 1e3:.3f} ms"
                                              for w, ts in parts.items() if ts)
        return text


SHAPES = [(1, 4096, 4096), (16, 4096, 4096), (128, 768, 3072), (512, 768, 768), (2048, 4096, 4096)]


def run_queue_wait_ns() -> int | None:
    """Nanoseconds that this process's threads have waited on a run queue (runnable, not running), summed over
    ``/proc/self/task/*/schedstat``; ``None`` where that is not readable."""
    try:
        tids = os.listdir("/proc/self/task")
    except OSError:
        return None
    total = 0
    for tid in tids:
        with contextlib.suppress(OSError, ValueError, IndexError), open(f"/proc/self/task/{tid}/schedstat") as f:
            total += int(f.read().split()[1])
    return total


class Undisturbed:
    """Which timed calls ran undisturbed: no thread of this process waited for a core for more than
    :attr:`LIMIT_NS` during the call (read after every timed call, outside the timing; the difference to the
    reading before covers the call and the few microseconds between calls, so a wait there counts against the
    call). On this 2-CPU guest such a call had both cores to itself from start to end, i.e. it took what it takes
    on a quiet machine, whatever the load average. Why: at load 3-7 (2026-12-01) the M = 128 rows' medians read
    10-30 ms, their undisturbed calls 5.25-5.5 ms, the same as in the quiet minutes; and the "quiet" runs at load
    0.4-2.2 mixed some disturbed calls into their medians (the M = 128 ratio moved 1.08-1.18 between them, against
    1.19-1.25 in undisturbed calls). ``last`` is shared between the settings of a contention run (one reading,
    alternate rounds)."""

    LIMIT_NS = 100_000

    def __init__(self, last: list[int | None]) -> None:
        self.last = last
        #: Per row, for each timed call in order: whether it ran undisturbed.
        self.calm: dict[str, list[bool]] = {}

    def __call__(self, name: str) -> None:
        now, before = run_queue_wait_ns(), self.last[0]
        self.calm.setdefault(name, []).append(now is not None and before is not None and now - before < self.LIMIT_NS)
        self.last[0] = now

    def line(self, times: dict[str, list[float]]) -> str:
        """nnic ``int8_linear``'s median over its undisturbed calls against the best dynamic Linear's, each row's
        median over its own undisturbed calls (rows with at least 3)."""
        calm = {name: [t for t, ok in zip(ts, self.calm.get(name, [])) if ok] for name, ts in times.items()}
        med = {name: statistics.median(ts) for name, ts in calm.items() if len(ts) >= 3}
        dyn = {name: t for name, t in med.items() if "dynamic" in name}
        counts = f"{len(calm.get(DEFAULT_LINEAR, []))} of {len(times.get(DEFAULT_LINEAR, []))}"
        if DEFAULT_LINEAR not in med or not dyn:
            return f"undisturbed calls (no thread waited for a core): too few ({counts} of the default row)"
        best = min(dyn, key=dyn.get)
        nn = med[DEFAULT_LINEAR]
        text = (f"undisturbed calls (no thread waited for a core): nnic int8_linear {nn * 1e3:.3f} ms ({counts}), "
                f"{best} {dyn[best] * 1e3:.3f} ms ({len(calm[best])}): {dyn[best] / nn:.2f}x")
        if BLOCKS in med:
            text += f"; column blocks {med[BLOCKS] * 1e3:.3f} ms (lanes' speedup {med[BLOCKS] / nn:.2f}x)"
        return text


def clock_ghz() -> float:
    try:
        mhz = [float(line.split(":")[1]) for line in open("/proc/cpuinfo") if line.startswith("cpu MHz")]
        return max(mhz) / 1000
    except (OSError, ValueError):
        return float("nan")


def switched(set_switch, off, on, call):
    """``call`` with one of nnic's scheduling switches set to ``off`` for its duration (and ``on`` again after, also
    when it raises), returning what it returns: the older scheduling timed in the same rounds as the default one."""
    def run():
        set_switch(off)
        try:
            return call()
        finally:
            set_switch(on)
    return run


def shape_kernels(m: int, k: int, n: int, engines: list[str], unspread: bool = False) -> dict:
    """Every kernel of the comparison at one shape, as argument-free callables (inputs made and weights packed
    here, outside the timings); ``unspread``: also the default call without the spreading (``UNSPREAD``)."""
    g = torch.Generator().manual_seed(0)
    a = torch.randint(-128, 128, (m, k), dtype=torch.int8, generator=g)
    # Symmetric codes, as quantized weights are: without -128, so AVX2 takes its vpmaddubsw tile here too.
    w8 = torch.randint(-127, 128, (n, k), dtype=torch.int8, generator=g)
    b = w8.t().contiguous()  # [K, N] for _int_mm / int8_matmul
    x = torch.randn(m, k, generator=g)
    wf = torch.randn(n, k, generator=g) * 0.05
    fns = {"fp32 torch.matmul (MKL)": lambda: torch.matmul(x, wf.t())}
    ref = None
    try:
        t0 = time.perf_counter()
        ref = torch._int_mm(a, b)
        once = time.perf_counter() - t0
        t0 = time.perf_counter()
        torch.matmul(x, wf.t())
        fp32 = time.perf_counter() - t0
        if once > 0.5 and once > 20 * fp32:
            # Without AVX-512 VNNI (a Zen 3 machine, torch 2.15) it falls back to a plain loop: 0.8 s at 16 x 4096²,
            # minutes a round at the largest shapes.
            print(f"  torch._int_mm: {once * 1e3:.0f} ms a call, {once / fp32:.0f}x float32: left out of the rounds")
        else:
            fns["torch._int_mm"] = lambda: torch._int_mm(a, b)
    except RuntimeError as e:  # some builds refuse small M on CPU
        print(f"  torch._int_mm unavailable at this shape: {e}".splitlines()[0])
    for eng in engines:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            lin = dynamic_linear(wf, eng)

        def dyn(lin=lin, eng=eng):
            torch.backends.quantized.engine = eng
            with torch.no_grad():
                lin(x)

        fns[f"torch dynamic Linear [{eng}]"] = dyn
    an, bn = a.numpy(), b.numpy()
    fns[UNPACKED] = lambda: kernels.int8_matmul(an, bn)
    packed = kernels.pack_int8_weight(w8, 1.0)
    out = np.empty((m, n), np.int32)
    fns["nnic prepacked matmul s8->s32"] = lambda: packed.matmul(an, out)
    q, s = kernels.quantize_int8_weight(wf)
    pl = kernels.pack_int8_weight(q, s)
    fns[DEFAULT_LINEAR] = lambda: kernels.int8_linear(x, pl)
    pl_reduced = kernels.pack_int8_weight(q, s)  # its own copy, as below
    fns[REDUCED] = lambda: kernels.int8_linear(x, pl_reduced, reduce_range=True)
    if kernels.gemm_backend() == "openmp":  # routing by measured cost
        pl_routed = kernels.pack_int8_weight(q, s)  # its own copy, as below
        fns[ROUTED] = switched(kernels.set_gemm_routing, True, False, lambda: kernels.int8_linear(x, pl_routed))
    if m in LANE_ROWS and k <= 4096 and n >= 897 and kernels.gemm_path() == "avx512vnni":
        # The scheduling before the column lanes, on its own copy of the weights (see below).
        pl_blocks = kernels.pack_int8_weight(q, s)
        fns[BLOCKS] = switched(kernels.set_gemm_column_lanes, False, True, lambda: kernels.int8_linear(x, pl_blocks))
    if tail_in_pieces(m, k):  # every planned block one task (before the tail pieces)
        pl_whole = kernels.pack_int8_weight(q, s)  # its own copy, as below
        fns[WHOLE] = switched(kernels.set_gemm_tail_pieces, False, True, lambda: kernels.int8_linear(x, pl_whole))
    if kernels.gemm_backend() == "openmp":  # the same call on nnic's own helpers, in the same rounds
        # Its own copy of the weights: a row right after the default call would otherwise find the same 16 MB hot
        # in L3 while every other kernel reads weights that other calls have pushed out since.
        pl_own = kernels.pack_int8_weight(q, s)
        fns[OWN_HELPERS] = switched(kernels.set_gemm_backend, "rayon", "openmp", lambda: kernels.int8_linear(x, pl_own))
    if unspread:  # the caller stays where the scheduler put it
        pl_unspread = kernels.pack_int8_weight(q, s)  # its own copy, as above
        fns[UNSPREAD] = switched(kernels.set_gemm_spread, False, True, lambda: kernels.int8_linear(x, pl_unspread))
    if m in TALL_ROWS and kernels.gemm_path() == "avx512vnni":  # the tiling before the tall tile, same rounds
        pl_two = kernels.pack_int8_weight(q, s)  # its own copy, as above
        fns[TWO_PANELS] = switched(kernels.set_gemm_tall_tile, False, True, lambda: kernels.int8_linear(x, pl_two))
    if m <= 16:
        for gs in (32, 128):
            q4, s4 = kernels.quantize_int4_weight(wf, gs)
            p4 = kernels.pack_int4_weight(q4, s4, gs)
            fns[f"nnic int4_linear f32->f32 (g={gs})"] = lambda p4=p4: kernels.int4_linear(x, p4)
    # correctness spot check (outside the timings)
    ref = ref if ref is not None else (a.long() @ b.long()).int()
    assert torch.equal(kernels.int8_matmul(a, b), ref), "nnic int8_matmul differs from torch"
    return fns


def bench_bert(batch: int, seq: int, engines: list[str], repeats: int, budget: float, stat_name: str, clock) -> None:
    """The BERT-base encoder: float32, torch dynamic int8 per engine, nnic int8, nnic int8 with fused GELU, also
    with one QKV GEMM, and also with the attention and residual + LayerNorm on the fused encoder kernels."""
    from nnic_transformers import fuse_encoder, fuse_mlp_activations, fuse_projections
    from torch import nn
    from transformers import BertConfig, BertModel

    import nnic

    torch.manual_seed(0)
    model = BertModel(BertConfig(), add_pooling_layer=False).eval()
    ids = torch.randint(0, model.config.vocab_size, (batch, seq), generator=torch.Generator().manual_seed(1))
    linears = {n: 8 for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    q = nnic.quantization_speedup(copy.deepcopy(model), linears)
    reduced = nnic.quantization_speedup(copy.deepcopy(model), linears, reduce_range=True)
    fuse_mlp_activations(reduced)
    fuse_projections(reduced)
    fuse_encoder(reduced)
    fused = copy.deepcopy(q)
    fuse_mlp_activations(fused)
    shared = copy.deepcopy(fused)
    fuse_projections(shared)
    encoder = copy.deepcopy(shared)
    f32_attention = copy.deepcopy(shared)
    fuse_encoder(encoder)
    fuse_encoder(f32_attention, attention_products="float32")
    models = {"float32 torch": (model, None)}
    for eng in engines:
        torch.backends.quantized.engine = eng
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            models[f"torch quantize_dynamic [{eng}]"] = (
                torch.ao.quantization.quantize_dynamic(copy.deepcopy(model), {nn.Linear}, dtype=torch.qint8), eng)
    models["nnic int8"] = (q, None)
    models["nnic int8, GELU fused"] = (fused, None)
    models["nnic int8, GELU fused, one QKV GEMM"] = (shared, None)
    models["nnic int8, all fused (fuse_encoder)"] = (encoder, None)
    models["nnic int8, all fused, reduce_range"] = (reduced, None)
    if kernels.bf16_products_run():
        models["nnic int8, all fused, float32 attention"] = (f32_attention, None)

    def call(m, eng):
        def f():
            if eng:
                torch.backends.quantized.engine = eng
            return m(input_ids=ids).last_hidden_state
        return f

    fns = {name: call(*me) for name, me in models.items()}
    goal, routed = "nnic int8, all fused (fuse_encoder)", "nnic int8, all fused, routed by cost"
    if kernels.gemm_backend() == "openmp":  # the goal row with the GEMMs' routing by measured cost on
        fns = dict(fns)
        names = list(fns)
        fns[routed] = switched(kernels.set_gemm_routing, True, False, call(encoder, None))
        names.insert(names.index(goal) + 1, routed)
        fns = {name: fns[name] for name in names}
    with torch.inference_mode():
        times = timeit_interleaved(fns, repeats, budget, clock, swap=(goal, routed))
        outs = {name: f() for name, f in fns.items()}
    stat = min if stat_name == "min" else statistics.median
    res = {name: stat(ts) for name, ts in times.items()}
    ref = outs["float32 torch"].flatten().double()
    dyn = {name: t for name, t in res.items() if name.startswith("torch quantize_dynamic")}
    best = min(dyn, key=dyn.get)
    print(f"\nBERT-base encoder, batch {batch}, seq {seq}   [{stat_name} of {len(times['nnic int8'])} interleaved rounds]")
    for name, t in res.items():
        cos = torch.nn.functional.cosine_similarity(outs[name].flatten().double(), ref, dim=0).item()
        print(f"  {name:34s} {t * 1e3:9.1f} ms  {res['float32 torch'] / t:5.2f}x float32  "
              f"{dyn[best] / t:5.2f}x best quantize_dynamic   cos {cos:.5f}")
    if routed in res:
        print(f"  routing's speedup (default ÷ routed by cost, the two trading places every other round): "
              f"{res[goal] / res[routed]:.3f}x")


def neighbour(stop, run, threads: int) -> None:
    """A process that keeps the cores busy with float matmuls while ``run`` is set, idles (blocked, no CPU)
    while it is clear, and exits when ``stop`` is set (spawned by the bench)."""
    torch.set_num_threads(threads)
    a = torch.randn(512, 512)
    while not stop.is_set():
        if not run.wait(0.05):
            continue
        for _ in range(8):
            a = torch.tanh(a @ a * 0.05)


class Neighbour:
    """The contending process, started once and switched on and off between rounds (``busy``)."""

    SETTLE_S = 0.2  # after a switch: the neighbour's threads are running (or parked) before timing starts

    def __init__(self, threads: int) -> None:
        import multiprocessing as mp

        ctx = mp.get_context("spawn")
        self._stop, self._run = ctx.Event(), ctx.Event()
        self._run.set()
        self._proc = ctx.Process(target=neighbour, args=(self._stop, self._run, threads), daemon=True)
        self._proc.start()
        time.sleep(2.0)  # let it import torch and start multiplying

    def busy(self, on: bool) -> None:
        if on:
            self._run.set()
        else:
            self._run.clear()
        time.sleep(self.SETTLE_S)

    def close(self) -> None:
        self._stop.set()
        self._run.set()
        self._proc.join(10)
        if self._proc.is_alive():
            self._proc.terminate()
            self._proc.join()


def time_alternating(fns: dict, repeats: int, budget: float, nb: Neighbour, clock,
                     after: dict, swap: tuple[str, str] | None = None) -> dict[str, dict[str, list[float]]]:
    """Seconds per call of each function in alternating quiet / contended rounds (each round: every function
    once, round-robin, the rows of ``swap`` trading places every other round); ``budget`` bounds both settings'
    rounds together; ``after[setting](name)`` is called after each timed call of that setting.

    In the fixed order, not in shuffled ones (``shuffled_order``, as the plain runs): a quiet round starts right
    after a contended one, whose late team threads opened the avoidance window, and a row early in the quiet round
    still runs inside it (the probe closes it within 0.1 s): shuffled, the default row ran on the helpers in 6-13
    of 15 quiet calls (0.84-1.00x `quantize_dynamic` at 16 x 4096² and 128 x 768 x 3072), in the fixed order, where it
    comes eighth, in 0-3. This mode compares the two settings, each in the same order."""
    once = 0.0
    for fn in fns.values():
        fn()
        t0 = clock()
        fn()
        once += clock() - t0
    rounds = even_if_swapped(max(3, min(repeats, int(budget / 2 / max(once, 1e-9)))), swap)
    times: dict[str, dict[str, list[float]]] = {s: {name: [] for name in fns} for s in ("quiet", "contended")}
    for r in range(rounds):
        for setting in ("quiet", "contended"):
            nb.busy(setting == "contended")
            for name in round_order(list(fns), r, swap):
                fn = fns[name]
                t0 = clock()
                fn()
                times[setting][name].append(clock() - t0)
                after[setting](name)
    nb.busy(False)
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", nargs="*", default=[f"{m}x{k}x{n}" for m, k, n in SHAPES], help="MxKxN ...")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=15, help="max rounds per shape")
    ap.add_argument("--budget", type=float, default=6.0, help="seconds per shape (fewer rounds when slow)")
    ap.add_argument("--stat", choices=("median", "min"), default="median",
                    help="median (default) or min: the least-disturbed run, on a shared machine")
    ap.add_argument("--peak", type=float, default=None, help="measured int8 peak in GOPS for --threads")
    ap.add_argument("--json", type=Path, default=None, help="write the results here")
    ap.add_argument("--contention", action="store_true", help="also measure beside a neighbour torch process")
    ap.add_argument("--neighbour-threads", type=int, default=1, help="threads of the neighbour's matmuls")
    ap.add_argument("--bert", action="store_true", help="time the BERT-base encoder instead of GEMM shapes")
    ap.add_argument("--bert-batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--spin", type=float, default=None,
                    help="microseconds the GEMM helpers poll for the next GEMM before parking (default: 50)")
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                    help="wall (default) or cpu: process CPU time, for --threads 1 on a loaded machine")
    ap.add_argument("--cold", action="store_true", help="sweep 256 MiB before every timed call (see above)")
    args = ap.parse_args()
    if args.cold and (args.contention or args.bert):
        ap.error("--cold times GEMM shapes alone: run it without --contention and --bert")
    clock = time.process_time if args.clock == "cpu" else time.perf_counter

    torch.set_num_threads(args.threads)
    kernels.set_num_threads(args.threads)
    if args.spin is not None:
        kernels.set_gemm_spin_us(args.spin)
    engines = [e for e in ("fbgemm", "onednn", "x86") if e in torch.backends.quantized.supported_engines]
    ghz = clock_ghz()
    theo = args.threads * ghz * 2 * 64 * 2
    core = None if args.peak else kernels.gemm_vnni_peak_gops()
    peak = args.peak or (core * args.threads if core else theo)
    print(f"torch {torch.__version__}, threads {args.threads}, nnic path {kernels.gemm_path()}, GEMM backend "
          f"{kernels.gemm_backend()}, helper poll bound {kernels.gemm_spin_us():.0f} us, engines {engines}")
    print(f"int8 peak: {peak:.0f} GOPS (measured: {core or float('nan'):.0f} a core x {args.threads}), theoretical "
          f"{theo:.0f} GOPS ({ghz:.2f} GHz x 2 VNNI ports x 64 MAC); "
          f"clock {args.clock}")
    if args.bert:
        bench_bert(args.bert_batch, args.seq, engines, args.repeats, args.budget * 10, args.stat, clock)
        return
    all_res = {}
    summary = []
    nb = Neighbour(args.neighbour_threads) if args.contention else None
    sweep = torch.ones(64 << 20) if args.cold else None  # 256 MiB of float32: more than any L3 here
    before = sweep.sum if sweep is not None else None  # a read: the lines it leaves are clean, free to evict
    if sweep is not None:
        print("cold: every timed call after a 256 MiB sweep of the caches")
    try:
        for spec in args.shapes:
            m, k, n = (int(v) for v in spec.lower().split("x"))
            kernels.gemm_team_stats(reset=True)
            kernels.gemm_openmp_stats(reset=True)
            kernels.gemm_pool_stats(reset=True)
            fns = shape_kernels(m, k, n, engines, unspread=nb is not None)
            tallies = {"quiet": BackendTally(), "contended": BackendTally()}
            last = [run_queue_wait_ns()]
            calm = {"quiet": Undisturbed(last), "contended": Undisturbed(last)}
            after = {setting: (lambda name, setting=setting: (tallies[setting](name), calm[setting](name)))
                     for setting in tallies}
            if nb is None:
                per_setting = {"quiet": timeit_interleaved(fns, args.repeats, args.budget, clock, after["quiet"],
                                                           before=before, shuffle=True)}
            else:
                per_setting = time_alternating(fns, args.repeats, 2 * args.budget, nb, clock, after,
                                               swap=(DEFAULT_LINEAR, ROUTED))
            team, omp = kernels.gemm_team_stats(), kernels.gemm_openmp_stats()
            ratios = {}
            for setting, times in per_setting.items():
                all_res[f"{spec} {setting}"] = times
                ratios[setting] = report(m, k, n, times, args.stat, peak, "cold" if args.cold else setting)
                if kernels.gemm_backend() == "openmp" and args.threads > 1:
                    print(f"  {tallies[setting].line(times.get(DEFAULT_LINEAR))}")
                if args.clock == "wall":
                    print(f"  {calm[setting].line(times)}")
            print(f"  GEMM helpers (both settings): {team_line(team)}; the caller moved off a CPU a helper shared "
                  f"{kernels.gemm_pool_stats()['moves']} times")
            print(f"  torch's OpenMP team (both settings): {openmp_line(omp)}")
            summary.append((spec, ratios))
    finally:
        if nb is not None:
            nb.close()
    if args.contention:
        print("\nnnic int8_linear vs best dynamic-quantized torch Linear, quiet and beside the neighbour:")
        print(f"  {'(M, K, N)':18s} {'quiet':>7s} {'contended':>9s} {'contended/quiet':>15s}")
        for spec, r in summary:
            print(f"  {spec:18s} {r['quiet']:6.2f}x {r['contended']:8.2f}x {r['contended'] / r['quiet']:14.2f}x")
        stat = min if args.stat == "min" else statistics.median
        per = {key: {name: stat(ts) for name, ts in times.items()} for key, times in all_res.items()}
        # Each switch's row beside the default's: its row, the rows without and with the switch, what it is.
        switches = (
            (REDUCED, DEFAULT_LINEAR, REDUCED, "7-bit activations", "with reduce_range (7-bit activations)"),
            (UNSPREAD, UNSPREAD, DEFAULT_LINEAR, "spreading", "without spreading (kernels.set_gemm_spread(False))"),
            (ROUTED, DEFAULT_LINEAR, ROUTED, "routing", "routed by measured cost (kernels.set_gemm_routing(True))"),
        )
        for row, without, with_, name, title in switches:
            if not all(row in t for t in per.values()):
                continue
            print(f"the same {title}, and the {name}'s speedup:")
            for spec, _ in summary:
                q, c = per[f"{spec} quiet"], per[f"{spec} contended"]
                xq, xc = (min(v for n, v in t.items() if "dynamic" in n) / t[row] for t in (q, c))
                print(f"  {spec:18s} {xq:6.2f}x {xc:8.2f}x {xc / xq:14.2f}x   {name}'s speedup quiet "
                      f"{q[without] / q[with_]:.2f}x, contended {c[without] / c[with_]:.2f}x")
    if args.json:
        with contextlib.suppress(OSError):
            args.json.write_text(json.dumps(all_res, indent=1))


def team_line(s: dict[str, int]) -> str:
    """The helpers' counters in words (see ``kernels.gemm_team_stats``)."""
    if not s["jobs"]:
        return "no GEMM ran on nnic's own helpers (all on torch's OpenMP team, or on one thread)"
    taken = s["taken_spinning"] + s["taken_parked"]
    return (f"{s['jobs']} GEMMs on nnic's own helpers, {taken} taken by a helper ({s['taken_spinning']} while polling, "
            f"{s['taken_parked']} after a wake-up), polling {s['spin_ns'] / 1e3 / s['jobs']:.1f} us per GEMM")


def openmp_line(s: dict[str, int]) -> str:
    """The OpenMP team's counters in words (see ``kernels.gemm_openmp_stats``): per GEMM, the fork (start to the
    last thread's arrival), the join (no task left to the region's end), the region, and the team's share of
    the tasks."""
    if not s["runs"]:
        return "no GEMM ran on it"
    per = {key: s[key] / s["runs"] / 1e3 for key in ("arrival_ns", "tail_ns", "region_ns")}
    return (f"{s['runs']} GEMMs ({s['late']} with a thread over 0.5 ms late, {s['windows']} of them opening an "
            f"avoidance window); per GEMM: last thread in after "
            f"{per['arrival_ns']:.1f} us, region {per['region_ns']:.1f} us of which {per['tail_ns']:.1f} us after the "
            f"last task; tasks taken by the team's other threads {s['tasks_by_team']} of {s['tasks']}; the caller "
            f"moved off a CPU its team mate shared {s['moves']} times")


def report(m: int, k: int, n: int, times: dict[str, list[float]], stat_name: str, peak: float, setting: str) -> float:
    """Prints one shape's table and ratios; returns nnic int8_linear's ratio to the best dynamic Linear."""
    ops = 2 * m * k * n
    stat = min if stat_name == "min" else statistics.median
    res = {name: stat(ts) for name, ts in times.items()}
    print(f"\n(M, K, N) = ({m}, {k}, {n}), {setting}   [{stat_name} of {len(next(iter(times.values())))} interleaved "
          f"rounds]")
    print(f"  {'kernel':40s} {'ms':>9s} {'GOPS':>8s} {'%peak':>6s}")
    for name, t in res.items():
        print(f"  {name:40s} {t * 1e3:9.3f} {ops / t / 1e9:8.1f} {100 * ops / t / 1e9 / peak:5.0f}%")
    torch_int8 = {key: v for key, v in res.items() if key.startswith("torch")}
    best_name = min(torch_int8, key=torch_int8.get)
    nn_mm = res["nnic prepacked matmul s8->s32"]
    nn_lin = res[DEFAULT_LINEAR]
    dyn = [v for key, v in res.items() if "dynamic" in key]
    lines = [f"nnic matmul vs best torch int8 ({best_name}): {torch_int8[best_name] / nn_mm:.2f}x"]
    if "torch._int_mm" in res:
        lines.append(f"vs torch._int_mm: {res['torch._int_mm'] / nn_mm:.2f}x")
    if "torch._int_mm" in res and UNPACKED in res:
        # Like for like: both take B as it is ([K, N]) and pack it on every call.
        lines.append(f"nnic int8_matmul vs torch._int_mm: {res['torch._int_mm'] / res[UNPACKED]:.2f}x")
    if dyn:
        lines.append(f"nnic int8_linear vs best dynamic Linear: {min(dyn) / nn_lin:.2f}x")
        # What any int8 kernel could reach against that torch time: every operation at the int8 peak printed at the
        # start (a kernel's loads, tile edges and threads take some of it: on Zen 4 nnic's product alone runs at 95-96
        # % of the measured VNNI peak).
        lines.append(f"the compute ceiling (a kernel at the int8 peak) vs best dynamic Linear: "
                     f"{min(dyn) * peak * 1e9 / ops:.2f}x")
    if dyn and REDUCED in res:
        lines.append(f"with reduce_range (7-bit activations, as quantize_dynamic): {min(dyn) / res[REDUCED]:.2f}x")
    if dyn and OWN_HELPERS in res:
        lines.append(f"on nnic's own helpers (NNIC_GEMM_BACKEND=rayon): {min(dyn) / res[OWN_HELPERS]:.2f}x")
    if dyn and TWO_PANELS in res:
        lines.append(f"without the tall tile: {min(dyn) / res[TWO_PANELS]:.2f}x (the tall tile's speedup "
                     f"{res[TWO_PANELS] / nn_lin:.2f}x)")
    if dyn and ROUTED in res:
        lines.append(f"routed by cost: {min(dyn) / res[ROUTED]:.2f}x (the routing's speedup "
                     f"{nn_lin / res[ROUTED]:.2f}x)")
    if dyn and UNSPREAD in res:
        lines.append(f"without spreading: {min(dyn) / res[UNSPREAD]:.2f}x (the spreading's speedup "
                     f"{res[UNSPREAD] / nn_lin:.2f}x)")
    if dyn and WHOLE in res:
        lines.append(f"with whole tail blocks: {min(dyn) / res[WHOLE]:.2f}x (the tail pieces' speedup "
                     f"{res[WHOLE] / nn_lin:.2f}x)")
    if dyn and BLOCKS in res:
        lines.append(f"on column blocks: {min(dyn) / res[BLOCKS]:.2f}x (the column lanes' speedup "
                     f"{res[BLOCKS] / nn_lin:.2f}x)")
    lines.append(f"nnic int8_linear vs fp32 MKL: {res['fp32 torch.matmul (MKL)'] / nn_lin:.2f}x")
    for name in res:
        if name.startswith("nnic int4_linear"):
            lines.append(f"{name.split()[-1]} int4 vs nnic int8_linear: {nn_lin / res[name]:.2f}x")
    print("  ratios: " + "; ".join(lines))
    return min(dyn) / nn_lin if dyn else float("nan")


if __name__ == "__main__":
    main()
