"""Which of this process's threads ran, and which waited for a core, during each timed call of ``bench/gemm.py``'s
rows at one shape: ``/proc/self/task/*/schedstat`` (run time, run-queue wait) read around every call, by thread.

    python bench/thread_waits.py                       # 128x4096x4096, 20 rounds
    python bench/thread_waits.py 512x768x768 30

Why: ``bench/gemm.py`` counts a call as undisturbed when no thread of the process waited for a core during it, and
nnic's M = 128 calls were undisturbed far less often than onednn's in the same quiet minutes (0-3 of 15 against 15
of 15, 2026-12-01). This says which thread it was: the caller, torch's OpenMP worker (``python``), nnic's GEMM
helper (``nnic-gemm-0``), a kernel-pool or prefetch thread. Per row: the median call, its undisturbed calls (all
threads together waited under 100 us), and per thread that ran or waited: in how many calls it waited over 50 us,
its median and largest wait, its median run time and in how many calls it ran. Linux only.
"""

from __future__ import annotations

import collections
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from nnic import kernels  # noqa: E402
import gemm as bench  # noqa: E402


def schedstat() -> dict[str, tuple[str, int, int]]:
    """Per thread id: (name, nanoseconds run, nanoseconds waited on a run queue)."""
    out = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/schedstat") as f:
                run, wait, _ = f.read().split()
            with open(f"/proc/self/task/{tid}/comm") as f:
                out[tid] = (f.read().strip(), int(run), int(wait))
        except (OSError, ValueError):
            pass
    return out


def main() -> None:
    spec = sys.argv[1] if len(sys.argv) > 1 else "128x4096x4096"
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 20
    m, k, n = (int(v) for v in spec.lower().split("x"))
    torch.set_num_threads(2)
    kernels.set_num_threads(2)
    engines = [e for e in ("onednn", "x86") if e in torch.backends.quantized.supported_engines]
    fns = bench.shape_kernels(m, k, n, engines)
    fns = {name: f for name, f in fns.items() if "dynamic" in name or "int8_linear" in name or "fp32" in name}
    for f in fns.values():
        f()
    waits, runs = collections.defaultdict(list), collections.defaultdict(list)
    calm, times = collections.Counter(), collections.defaultdict(list)
    for _ in range(rounds):
        for name, f in fns.items():
            before = schedstat()
            t0 = time.perf_counter()
            f()
            times[name].append(time.perf_counter() - t0)
            after = schedstat()
            total = 0
            for tid, (comm, ran, waited) in after.items():
                ran0, waited0 = before.get(tid, (comm, 0, 0))[1:]
                waits[(name, f"{comm}/{tid}")].append((waited - waited0) / 1e3)
                runs[(name, f"{comm}/{tid}")].append((ran - ran0) / 1e3)
                total += waited - waited0
            calm[name] += total < 100_000
    print(f"shape {spec}, {rounds} rounds, load {os.getloadavg()[0]:.1f}")
    for name in fns:
        print(f"{name}: median {statistics.median(times[name]) * 1e3:.3f} ms, undisturbed {calm[name]} of {rounds}")
        for (row, thread), ws in sorted(waits.items()):
            rs = runs[(row, thread)]
            if row != name or (max(ws) < 20 and max(rs) < 20):
                continue
            print(f"   {thread:28s} waited >50 us in {sum(w > 50 for w in ws):2d} calls (median "
                  f"{statistics.median(ws):8.1f} us, max {max(ws):8.1f}); ran {statistics.median(rs):8.1f} us "
                  f"(median), in {sum(r > 5 for r in rs)} calls")


if __name__ == "__main__":
    main()
