"""Where a two-thread batch-1 call's time goes inside the torch process: the Python wrapper, the hand-off to the
second thread, the end wait, and what torch's OpenMP workers (still spinning after an MKL call) do to it.

    python bench/handoff.py                 # 90 % fp32 and int8-values SparseLinear, int8 GEMV M=1, 4096x4096
    python bench/handoff.py --quick         # fewer rounds (about a minute)

Each case is timed in one process, every configuration once per round (interleaved, medians):
- ``backend``: ``openmp`` (the tasks on torch's OpenMP team, ``GOMP_parallel``) or ``own`` (nnic's own helper,
  spin-then-park, the caller starting its share before the helper is woken: ``set_gemm_backend("rayon")``);
- ``before``: what ran just before the call: ``mkl`` (a dense float32 ``F.linear`` of the same shape: torch's
  OpenMP workers are spinning, as inside a model) or ``idle`` (a 2 ms sleep: every helper has parked);
- ``call``: the module (``SparseLinear`` / ``Int8Linear``) or its native product alone on preallocated arrays,
  so ``module - native`` is the Python wrapper;
- one thread (``threads=1``, the caller alone) against two.

Per row: wall and caller-thread CPU time (``time.thread_time``) per call, and from the runs' counters
(``kernels.gemm_openmp_stats`` / ``kernels.gemm_pool_stats``, per run, of the runner that ran the call): when the
other thread arrived (``arrive``), the caller's wait after its own last task (``wait``: the end barrier), the join
after the last task (``tail``), the other thread's share of the tasks (``share``), the runs that thread did not
join (``alone``; OpenMP: runs it joined late) and the calls that ran on the OpenMP team (``on team``: with backend
``openmp`` the rest ran on nnic's own helpers, while the team was avoided after a late thread). ``uptime`` is printed beside the numbers: on a
loaded machine the wall times of two threads mostly measure the neighbours; the counters and CPU times do not.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import nnic  # noqa: E402
from nnic import kernels  # noqa: E402
from nnic.sparse import SparseLinear  # noqa: E402

N = 4096
BACKENDS = {"openmp": "openmp", "own": "rayon"}


def level_(w: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Zero the smallest |w| (exactly floor(sparsity * n)), as the Level pruner does."""
    t = w.abs().flatten().kthvalue(int(sparsity * w.numel())).values
    return w.masked_fill_(w.abs() <= t, 0)


def cases() -> dict[str, tuple[nn.Module, callable, torch.Tensor]]:
    """name -> (module, native product on preallocated arrays, dense float32 weight for the MKL call before)."""
    g = torch.Generator().manual_seed(0)
    w = level_(torch.randn(N, N, generator=g) / 64, 0.9)
    lin = nn.Linear(N, N)
    with torch.no_grad():
        lin.weight.copy_(w)
    x = torch.randn(1, N, generator=g)
    xn, out = x.numpy(), np.empty((1, N), np.float32)
    sp = SparseLinear.from_linear(lin)
    packed, bias = sp._compute_form()[:2]
    model = nn.Sequential(nn.Linear(N, N))
    model[0].load_state_dict(lin.state_dict())
    nnic.quantization_speedup(model, {"0": 8})
    int8 = model[0]
    sp8 = SparseLinear.from_int8(int8)
    packed8, bias8 = sp8._compute_form()[:2]
    # the dense int8 GEMV on an unpruned weight (issue 17's M=1 case)
    dense = nn.Sequential(nn.Linear(N, N))
    nnic.quantization_speedup(dense, {"0": 8})
    gemv = dense[0]
    return {
        "sparse 90% fp32": (sp, lambda: packed.linear(xn, out, bias, None, None, None), w, x),
        "sparse 90% int8": (sp8, lambda: packed8.linear(xn, out, bias8, sp8.act, None, None), w, x),
        "int8 GEMV M=1": (gemv, lambda: gemv(x), w, x),
    }


def counters(reset: bool = False) -> dict[str, dict[str, int]]:
    """Both runners' counters: a call with backend ``openmp`` runs on nnic's own helpers while the team is avoided
    (after a late team thread), so each call is attributed to the runner that ran it."""
    return {"openmp": kernels.gemm_openmp_stats(reset=reset), "own": kernels.gemm_pool_stats(reset=reset)}


def measure(rounds: int, threads: tuple[int, ...], only: list[str] | None) -> None:
    torch.set_num_threads(max(threads))
    for name, (module, native, w, x) in cases().items():
        if only and not any(o in name for o in only):
            continue
        configs = [(t, b, before, call) for t in threads for b in (BACKENDS if t > 1 else ("openmp",))
                   for before in ("mkl", "idle") for call in ("module", "native")]
        if name == "int8 GEMV M=1":  # its module is the native call's only wrapper: time the module alone
            configs = [c for c in configs if c[3] == "module"]
        wall = {c: [] for c in configs}
        cpu = {c: [] for c in configs}
        runs = {c: [] for c in configs}
        fn = {"module": lambda module=module, x=x: module(x), "native": native}
        with torch.no_grad():
            for _ in range(rounds):
                for t in threads:
                    kernels.set_num_threads(t)
                    for c in (c for c in configs if c[0] == t):
                        _, b, before, call = c
                        kernels.set_gemm_backend(BACKENDS[b])
                        if before == "mkl":
                            F.linear(x, w)
                        else:
                            time.sleep(0.002)
                        counters(reset=True)
                        t0, c0 = time.perf_counter(), time.thread_time()
                        fn[call]()
                        c1, t1 = time.thread_time(), time.perf_counter()
                        wall[c].append((t1 - t0) * 1e6)
                        cpu[c].append((c1 - c0) * 1e6)
                        runs[c].append(counters())
        kernels.set_gemm_backend("openmp")
        print(f"\n{name}   (load: {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f}; {rounds} rounds; medians, us)")
        print(f"{'threads':>7} {'backend':>7} {'before':>6} {'call':>6} {'wall':>7} {'cpu':>7} "
              f"{'arrive':>7} {'wait':>7} {'tail':>6} {'share':>6} {'alone':>6} {'on team':>7}")
        for c in configs:
            on_team = [r["openmp"]["runs"] > 0 for r in runs[c] if r["openmp"]["runs"] or r["own"]["runs"]]
            rs = [r["openmp"] if r["openmp"]["runs"] else r["own"] for r in runs[c]]
            rs = [r for r in rs if r["runs"]]

            def per_run(key: str, rs: list = rs) -> str:
                vals = [r[key] / r["runs"] / 1e3 for r in rs]
                return f"{statistics.median(vals):7.0f}" if vals else f"{'-':>7}"
            share = statistics.median(r["tasks_by_team"] / r["tasks"] for r in rs) if rs else float("nan")
            alone = sum(r["late"] for r in rs) / max(1, sum(r["runs"] for r in rs)) if rs else float("nan")
            print(f"{c[0]:>7} {c[1]:>7} {c[2]:>6} {c[3]:>6} {statistics.median(wall[c]):7.0f} "
                  f"{statistics.median(cpu[c]):7.0f} {per_run('arrival_ns')} {per_run('wait_ns')} "
                  f"{per_run('tail_ns')[1:]} {share:6.2f} {alone:6.2f} "
                  f"{sum(on_team) / max(1, len(on_team)):7.2f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=200)
    ap.add_argument("--quick", action="store_true", help="60 rounds")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--only", nargs="*", default=None,
                    help="cases whose name contains one of these ('fp32', 'int8', 'GEMV')")
    a = ap.parse_args()
    print(os.popen("uptime").read().strip())
    measure(60 if a.quick else a.rounds, tuple(sorted(a.threads)), a.only)


if __name__ == "__main__":
    main()
