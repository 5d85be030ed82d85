"""The int4 GEMV with float16 group scales against 8-bit scale codes times a float32 step per output (the
``torch.uint8`` format), on the same codes, in one process, interleaved.

    python bench/int4_scales_ab.py                        # one thread, thread CPU time
    python bench/int4_scales_ab.py --threads 2 --rounds 31  # two threads, wall time

The 8-bit scales are the float16 ones double-quantized (``int4_scale_codes``); the codes are kept as they are,
which leaves the timing unchanged (a layer built for the format re-rounds them). Rounds of (hot, cold) × (float16,
uint8, int8), the order reversed every other round: "hot" calls one packed weight again and again (L3-resident at
4096 x 4096), "cold" cycles ``--cold`` copies (streamed from DRAM), allocated in turn so that neither format gets
the machine's free huge pages first. Printed: medians and bests of the per-call times, uint8 against float16, and
nnic int8 against each (the issue's ">= 1.8x nnic int8").
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from nnic import kernels  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", type=int, nargs=2, default=[4096, 4096], metavar=("N", "K"))
    ap.add_argument("--group-size", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1, help="1: thread CPU time; more: wall time")
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--cold", type=int, default=36, help="copies cycled for the DRAM case")
    args = ap.parse_args()
    kernels.set_num_threads(args.threads)
    torch.set_num_threads(args.threads)
    clock = time.thread_time if args.threads == 1 else time.perf_counter
    torch.manual_seed(0)
    (n, k), g = args.shape, args.group_size
    w = torch.randn(n, k)
    q4, s4 = kernels.quantize_int4_weight(w, g, torch.float16)
    codes, step = kernels.int4_scale_codes(s4.float())
    q8, s8 = kernels.quantize_int8_weight(w)
    packs: dict[str, list] = {"float16": [], "uint8": [], "int8": []}
    for _ in range(args.cold):
        packs["float16"].append(kernels.pack_int4_weight(q4, s4, g))
        packs["uint8"].append(kernels.pack_int4_weight(q4, codes, g, scale_step=step))
        packs["int8"].append(kernels.pack_int8_weight(q8, s8))
    run = {"float16": kernels.int4_linear, "uint8": kernels.int4_linear, "int8": kernels.int8_linear}
    x = torch.randn(1, k)

    def per_call(kind: str, cold: bool) -> float:
        ws, f = packs[kind], run[kind]
        reps = 2 * args.cold if cold else 50
        t0 = clock()
        for i in range(reps):
            f(x, ws[i % args.cold] if cold else ws[0])
        return (clock() - t0) / reps

    order = [(kind, cold) for cold in (False, True) for kind in packs]
    for kind, cold in order:  # warm-up
        per_call(kind, cold)
    res: dict[tuple[str, bool], list[float]] = {c: [] for c in order}
    for r in range(args.rounds):
        for c in order if r % 2 == 0 else order[::-1]:
            res[c].append(per_call(*c))
    print(f"{n} x {k}, groups of {g}, threads {args.threads}, clock {'cpu' if args.threads == 1 else 'wall'}, "
          f"{args.rounds} interleaved rounds; packed " + ", ".join(f"{kd} {ws[0].nbytes / 1e6:.2f} MB"
                                                                 for kd, ws in packs.items()))
    for cold in (False, True):
        med = {kd: statistics.median(res[(kd, cold)]) for kd in packs}
        best = {kd: min(res[(kd, cold)]) for kd in packs}
        where = "cold" if cold else "hot"
        print(f"  {where}: per call µs, median / best: " + ", ".join(
            f"{kd} {med[kd] * 1e6:.1f} / {best[kd] * 1e6:.1f}" for kd in packs))
        print(f"  {where}: uint8 scales {med['float16'] / med['uint8']:.3f}x float16 (best "
              f"{best['float16'] / best['uint8']:.3f}x; bytes "
              f"{packs['float16'][0].nbytes / packs['uint8'][0].nbytes:.3f}x); "
              f"÷ int8: float16 {med['int8'] / med['float16']:.2f}x, uint8 {med['int8'] / med['uint8']:.2f}x (best "
              f"{best['int8'] / best['float16']:.2f}x, {best['int8'] / best['uint8']:.2f}x)")


if __name__ == "__main__":
    main()
