"""The int4 GEMV of two builds against each other in one process: a previous build's native module (a copy of its
``nnic/_kernels*.so``, loaded beside this tree's under another package name) and this tree's, on the same codes
and input, with this tree's int8 GEMV for the issue's ratio.

    cp nnic/_kernels.abi3.so /tmp/before.so        # before the change (or /work/main's build)
    ... rebuild ...
    python bench/int4_ab.py --before /tmp/before.so                        # one thread, thread CPU time
    python bench/int4_ab.py --before /tmp/before.so --threads 2 --rounds 31  # two threads, wall time
    python bench/int4_ab.py --before /tmp/before.so --scales uint8           # 8-bit scale codes

First it checks that both builds return the same bits. Then rounds of (hot, cold) × (before, now, int8), the order
reversed every other round: "hot" calls one packed weight again and again (L3-resident at 4096 x 4096), "cold"
cycles ``--cold`` copies (streamed from DRAM). Printed: medians and bests of the per-call times, now against before,
and int8 against each (the issue's ">= 1.8x nnic int8"), then the median and quartiles of each round's before ÷ now
and how many rounds now won. Run it once with a copy of this tree's own build as ``--before`` (an A/A) to see how
far the load alone moves these ratios. Why one process: on a machine others load, the noise of
two processes run apart is larger than a tile change; here both builds see the same load within a round.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _builds import load_before  # noqa: E402
from nnic import kernels  # noqa: E402
from nnic.kernels.runtime import native  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--before", required=True, help="a previous build's nnic/_kernels*.so (copied)")
    ap.add_argument("--shape", type=int, nargs=2, default=[4096, 4096], metavar=("N", "K"))
    ap.add_argument("--group-size", type=int, default=32)
    ap.add_argument("--scales", choices=("float16", "float32", "uint8"), default="float16",
                    help="uint8: the float16 scales double-quantized (int4_scale_codes)")
    ap.add_argument("--threads", type=int, default=1, help="1: thread CPU time; more: wall time")
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--cold", type=int, default=24, help="copies cycled for the DRAM case")
    args = ap.parse_args()
    before = load_before(args.before)
    clock = time.thread_time if args.threads == 1 else time.perf_counter
    for mod in (before, native):
        mod.set_num_threads(args.threads)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    n, k = args.shape
    g = args.group_size
    w = torch.randn(n, k)
    float_scales = torch.float16 if args.scales == "uint8" else getattr(torch, args.scales)
    q4, s4 = kernels.quantize_int4_weight(w, g, float_scales)
    qn, step = q4.numpy(), None
    sn = s4.numpy().view(np.uint16) if args.scales == "float16" else s4.numpy()
    if args.scales == "uint8":
        codes, step = kernels.int4_scale_codes(s4.float())
        sn, step = codes.numpy(), step.numpy()
    q8, s8 = kernels.quantize_int8_weight(w)
    packs = {
        "before": [before.PackedInt4Weight(qn, sn, g, None, step) for _ in range(args.cold)],
        "now": [native.PackedInt4Weight(qn, sn, g, None, step) for _ in range(args.cold)],
        "int8": [kernels.pack_int8_weight(q8, s8) for _ in range(args.cold)],
    }
    x = torch.randn(1, k).numpy()
    a, b = packs["before"][0].linear(x, None, None), packs["now"][0].linear(x, None, None)
    same = np.array_equal(a.view(np.uint32), b.view(np.uint32))
    print(f"outputs bit-identical: {same}" + ("" if same else f" (max |diff| {np.abs(a - b).max():.3g})"))

    def hot(ws: list) -> float:
        f, reps = ws[0].linear, 40
        t0 = clock()
        for _ in range(reps):
            f(x, None, None)
        return (clock() - t0) / reps

    def cold(ws: list) -> float:
        t0 = clock()
        for i in range(2 * args.cold):
            ws[i % args.cold].linear(x, None, None)
        return (clock() - t0) / (2 * args.cold)

    times: dict[tuple[str, str], list[float]] = {(c, v): [] for c in ("hot", "cold") for v in packs}
    for r in range(args.rounds + 1):  # round 0 warms up
        order = list(packs) if r % 2 == 0 else list(packs)[::-1]
        for case, fn in (("hot", hot), ("cold", cold)):
            for v in order:
                t = fn(packs[v])
                if r:
                    times[(case, v)].append(t)
    print(f"{n} x {k}, groups of {g}, {args.scales} scales, threads {args.threads} "
          f"({'thread CPU' if args.threads == 1 else 'wall'} time), {args.rounds} interleaved rounds")
    for case in ("hot", "cold"):
        for stat, agg in (("median", statistics.median), ("best", min)):
            t = {v: agg(times[(case, v)]) for v in packs}
            print(f"  {case} {stat:6s}: before {t['before'] * 1e6:8.1f} us, now {t['now'] * 1e6:8.1f} us "
                  f"({t['before'] / t['now']:.3f}x), int8 {t['int8'] * 1e6:8.1f} us: int4 is "
                  f"{t['int8'] / t['before']:.2f}x -> {t['int8'] / t['now']:.2f}x nnic int8 per call")
        # Each round's before ÷ now: both saw that round's load, so the ratios spread less than the times do.
        ratios = sorted(b / n for b, n in zip(times[(case, "before")], times[(case, "now")]))
        q = lambda f: ratios[int(f * (len(ratios) - 1))]  # noqa: E731
        print(f"  {case} per-round before / now: median {statistics.median(ratios):.3f}x, quartiles "
              f"{q(0.25):.3f}-{q(0.75):.3f}x, now faster in {sum(r > 1 for r in ratios)} of {len(ratios)} rounds")


if __name__ == "__main__":
    main()
