"""GB/s of the int4 GEMV (``int4_linear`` at M = 1) against nnic int8 and ``copy_``, with the weights in L3 and
streamed from DRAM.

    python bench/int4_bandwidth.py                      # 2 threads, wall time, 4096 x 4096, groups of 32
    python bench/int4_bandwidth.py --threads 1 --clock cpu --quick
    python bench/int4_bandwidth.py --gap-us 100 --quick   # + the cold calls with a gap, prefetched or not

"hot": one packed weight called again and again (L3-resident when it fits); "cold": ``--cold`` different packed
weights of the same shape called in turn (more bytes than the L3 holds, so each call streams from DRAM). ``int4``
stores its group scales in float16 (nnic's default), ``int4-f32`` in float32 (same codes). GB/s is the packed
bytes (codes, scales, column sums) per call over the call's time; ``copy_`` counts read + write bytes
of a 256 MiB float32 copy. Each round runs every case once (interleaved), the table gives medians over rounds.

``--gap-us G`` adds the decode pattern: the cold calls separated by G µs of other work on the calling thread (a
spin), as the small ops of a decode step separate its GEMVs; "gap" leaves the other core idle then, "gap+pf" hands
the next weight to ``kernels.prefetch_weights`` right after each call, so its first bytes are warmed during the
gap. GB/s counts the calls' own time only (the gaps excluded); "per step" adds the gap.
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
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall", help="cpu: one thread's CPU time")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--cold", type=int, default=36, help="weights cycled for the DRAM case (36 x 10.5 MB > 260 MB L3)")
    ap.add_argument("--quick", action="store_true", help="3 rounds")
    ap.add_argument("--gap-us", type=float, default=0.0, help="also time cold calls separated by this much other work")
    args = ap.parse_args()
    if args.clock == "cpu":
        args.threads = 1
    clock = time.thread_time if args.clock == "cpu" else time.perf_counter
    rounds = 3 if args.quick else args.rounds
    torch.set_num_threads(args.threads)
    kernels.set_num_threads(args.threads)
    torch.manual_seed(0)
    n, k = args.shape
    w = torch.randn(n, k)
    q4, s4 = kernels.quantize_int4_weight(w, args.group_size, torch.float16)
    q8, s8 = kernels.quantize_int8_weight(w)
    packs = {
        "int4": [kernels.pack_int4_weight(q4, s4, args.group_size) for _ in range(args.cold)],
        "int4-f32": [kernels.pack_int4_weight(q4, s4.float(), args.group_size) for _ in range(args.cold)],
        "int8": [kernels.pack_int8_weight(q8, s8) for _ in range(args.cold)],
    }
    run = {"int4": kernels.int4_linear, "int4-f32": kernels.int4_linear, "int8": kernels.int8_linear}
    x = torch.randn(1, k)
    big = torch.ones(1 << 26)
    dst = torch.empty_like(big)

    def rate(nbytes: int, fn, reps: int) -> float:
        t0 = clock()
        for i in range(reps):
            fn(i)
        return nbytes * reps / (clock() - t0)

    def case(kind: str, cold: bool):
        ws, f = packs[kind], run[kind]
        if cold:
            return lambda: rate(ws[0].nbytes, lambda i: f(x, ws[i % args.cold]), 2 * args.cold)
        return lambda: rate(ws[0].nbytes, lambda i: f(x, ws[0]), 50)

    def gapped(kind: str, prefetch: bool):
        """Cold calls with ``args.gap_us`` of spinning after each (the next weight prefetched meanwhile, or not);
        the rate of the calls alone."""
        ws, f, gap = packs[kind], run[kind], args.gap_us * 1e-6

        def go() -> float:
            spent = 0.0
            for i in range(2 * args.cold):
                t0 = clock()
                f(x, ws[i % args.cold])
                spent += clock() - t0
                if prefetch:
                    kernels.prefetch_weights([ws[(i + 1) % args.cold]])
                end = time.perf_counter() + gap
                while time.perf_counter() < end:
                    pass
            return ws[0].nbytes * 2 * args.cold / spent
        return go

    cases = {f"{kind} {where}": case(kind, where == "cold") for where in ("hot", "cold") for kind in packs}
    if args.gap_us > 0:
        for kind in ("int4", "int8"):
            cases[f"{kind} gap"] = gapped(kind, False)
            cases[f"{kind} gap+pf"] = gapped(kind, True)
    cases["copy_"] = lambda: rate(2 * big.numel() * 4, lambda i: dst.copy_(big), 3)
    for fn in cases.values():  # warm-up
        fn()
    res: dict[str, list[float]] = {c: [] for c in cases}
    for _ in range(rounds):
        for c, fn in cases.items():
            res[c].append(fn())
    med = {c: statistics.median(v) for c, v in res.items()}
    mb = ", ".join(f"{kind} {ws[0].nbytes / 1e6:.2f} MB" for kind, ws in packs.items())
    print(f"{n} x {k}, groups of {args.group_size}, threads {args.threads}, clock {args.clock}, medians of {rounds} "
          f"rounds; packed {mb}")
    for c, v in med.items():
        print(f"  {c:14s} {v / 1e9:6.1f} GB/s")
    if args.gap_us > 0:
        for kind in ("int4", "int8"):
            a, b = med[f"{kind} gap"], med[f"{kind} gap+pf"]
            nb, gap = packs[kind][0].nbytes, args.gap_us * 1e-6
            print(f"  {kind}, {args.gap_us:g} us gaps: prefetched calls {b / a:.3f}x the calls without, per step "
                  f"(call + gap) {(nb / a + gap) / (nb / b + gap):.3f}x; walker {kernels.prefetch_stats()}")
    call = {c: packs[c.split()[0]][0].nbytes / med[c] for c in med if c != "copy_"}  # seconds per call
    for where in ("hot", "cold"):
        for kind in ("int4", "int4-f32"):
            print(f"  {where}: {kind} is {call[f'int8 {where}'] / call[f'{kind} {where}']:.2f}x nnic int8 per call, at "
                  f"{100 * med[f'{kind} {where}'] / med['copy_']:.0f} % of copy_ GB/s")
        print(f"  {where}: float16 scales {call[f'int4-f32 {where}'] / call[f'int4 {where}']:.3f}x float32 scales per call "
              f"(bytes ratio {packs['int4-f32'][0].nbytes / packs['int4'][0].nbytes:.3f})")


if __name__ == "__main__":
    main()
