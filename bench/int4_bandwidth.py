"""GB/s of the int4 GEMV (``int4_linear`` at M = 1) against nnic int8, torch's dynamic int8 Linear and the memory's
own rates (``copy_``, a plain read), with the weights in L3 and streamed from DRAM.

    python bench/int4_bandwidth.py                      # 2 threads, wall time, 4096 x 4096, groups of 32
    python bench/int4_bandwidth.py --threads 1 --clock cpu --quick
    python bench/int4_bandwidth.py --gap-us 100 --quick   # + the cold calls with a gap, prefetched or not
    python bench/int4_bandwidth.py --decode-steps         # a 1B decoder's GEMV chain with its small-op gaps

"hot": one packed weight called again and again (L3-resident when it fits); "cold": ``--cold`` different packed
weights of the same shape called in turn (more bytes than the L3 holds, so each call streams from DRAM). ``int4``
stores its group scales in float16 (8-bit is now the default), ``int4-f32`` in float32 (same codes), ``int4-u8`` as
8-bit codes times a float32 step per output column (double-quantized: each scale rounded up, codes re-rounded).
``torch-<engine>`` is ``quantize_dynamic``'s Linear (the same int8 codes, per-channel scales) on each quantized engine
torch offers here: nnic int8 ÷ the best of them, cold, is the M = 1 ratio of ``bench/gemm.py`` with the weights
streamed from DRAM, as in a model larger than the L3, and the read rate bounds it: a GEMV cannot beat the memory,
so once nnic reads at the memory's rate the ratio is whatever share of it torch reaches.
GB/s is the packed bytes (codes, scales, column sums; torch's rows are counted with nnic int8's bytes) per call over
the call's time; ``copy_`` counts read + write bytes of a 256 MiB float32 copy, ``read`` the bytes of a ``sum`` over
it. Each round runs every case once (interleaved), the table gives medians over rounds.

``--gap-us G`` adds the decode pattern: the cold calls separated by G µs of other work on the calling thread (a
spin), as the small ops of a decode step separate its GEMVs; "gap" leaves the other core idle then, "gap+pf" hands
the next weight to ``kernels.prefetch_weights`` right after each call, so its first bytes are warmed during the
gap. GB/s counts the calls' own time only (the gaps excluded); "per step" adds the gap.

``--decode-steps`` times the GEMVs of one decode token of the LLaMA ~1B shape (22 layers of q/k/v fused 2560 x 2048,
o 2048 x 2048, gate/up fused 11264 x 2048, down 2048 x 5632, then lm_head 32000 x 2048; int4 g32, float16 scales:
584 MB, more than the L3) with the small ops between them replaced by spins of the measured length
(``--layer-gaps-us``, after each of the four GEMVs), with and without ``prefetch_weights`` of the next two GEMVs
after each one (what ``fast_decode(model, prefetch=True)`` does), in rounds of 3 tokens each whose order alternates;
it prints ms per token of each and what the walker did.
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
from _baselines import dynamic_linear  # noqa: E402


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
    ap.add_argument("--decode-steps", action="store_true", help="instead: a 1B decoder's GEMVs with gaps, prefetched "
                    "or not (see above)")
    ap.add_argument("--layer-gaps-us", type=float, nargs=4, default=[200.0, 50.0, 20.0, 60.0],
                    metavar=("QKV", "O", "GATE_UP", "DOWN"), help="spin after each GEMV of a layer (--decode-steps)")
    args = ap.parse_args()
    if args.clock == "cpu":
        args.threads = 1
    clock = time.thread_time if args.clock == "cpu" else time.perf_counter
    rounds = 3 if args.quick else args.rounds
    torch.set_num_threads(args.threads)
    kernels.set_num_threads(args.threads)
    torch.manual_seed(0)
    if args.decode_steps:
        decode_steps(args, clock, rounds)
        return
    n, k = args.shape
    w = torch.randn(n, k)
    q4, s4 = kernels.quantize_int4_weight(w, args.group_size, torch.float16)
    q4u, c4u, st4u = kernels.quantize_int4_weight_scale_codes(w, args.group_size)
    q8, s8 = kernels.quantize_int8_weight(w)
    make = {
        "int4": lambda: kernels.pack_int4_weight(q4, s4, args.group_size),
        "int4-f32": lambda: kernels.pack_int4_weight(q4, s4.float(), args.group_size),
        "int4-u8": lambda: kernels.pack_int4_weight(q4u, c4u, args.group_size, scale_step=st4u),
        "int8": lambda: kernels.pack_int8_weight(q8, s8),
    }
    # Allocated in turn, kind after kind: the first allocations get the free huge pages, and a kind allocated
    # wholly after another streamed ~10 % slower from DRAM for that alone (int4, 1 thread, measured).
    packs: dict[str, list] = {kind: [] for kind in make}
    for _ in range(args.cold):
        for kind, f in make.items():
            packs[kind].append(f())
    run = {"int4": kernels.int4_linear, "int4-f32": kernels.int4_linear, "int4-u8": kernels.int4_linear,
           "int8": kernels.int8_linear}
    engines = [e for e in ("x86", "fbgemm", "onednn") if e in torch.backends.quantized.supported_engines]
    for engine in engines:  # after nnic's packs: they keep the first huge pages, as before these rows
        packs[f"torch-{engine}"] = [dynamic_linear(w, engine) for _ in range(args.cold)]
        run[f"torch-{engine}"] = engine_call(engine)
    x = torch.randn(1, k)
    big = torch.ones(1 << 26)
    dst = torch.empty_like(big)

    def rate(nbytes: int, fn, reps: int) -> float:
        t0 = clock()
        for i in range(reps):
            fn(i)
        return nbytes * reps / (clock() - t0)

    def nbytes(kind: str) -> int:
        return packs["int8" if kind.startswith("torch-") else kind][0].nbytes

    def case(kind: str, cold: bool):
        ws, f, nb = packs[kind], run[kind], nbytes(kind)
        if cold:
            return lambda: rate(nb, lambda i: f(x, ws[i % args.cold]), 2 * args.cold)
        return lambda: rate(nb, lambda i: f(x, ws[0]), 50)

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
    cases["read"] = lambda: rate(big.numel() * 4, lambda i: big.sum(), 3)
    for fn in cases.values():  # warm-up
        fn()
    res: dict[str, list[float]] = {c: [] for c in cases}
    for _ in range(rounds):
        for c, fn in cases.items():
            res[c].append(fn())
    med = {c: statistics.median(v) for c, v in res.items()}
    mb = ", ".join(f"{kind} {ws[0].nbytes / 1e6:.2f} MB" for kind, ws in packs.items() if not kind.startswith("torch-"))
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
    call = {c: nbytes(c.split()[0]) / med[c] for c in med if c not in ("copy_", "read")}  # seconds per call
    for where in ("hot", "cold"):
        if engines:
            best = min((f"torch-{e} {where}" for e in engines), key=call.__getitem__)
            print(f"  {where}: nnic int8 is {call[best] / call[f'int8 {where}']:.2f}x the best torch dynamic int8 "
                  f"({best.split()[0]}) per call; nnic int8 at {100 * med[f'int8 {where}'] / med['read']:.0f} %, "
                  f"{best.split()[0]} at {100 * med[best] / med['read']:.0f} % of the read rate")
        for kind in ("int4", "int4-f32", "int4-u8"):
            print(f"  {where}: {kind} is {call[f'int8 {where}'] / call[f'{kind} {where}']:.2f}x nnic int8 per call, at "
                  f"{100 * med[f'{kind} {where}'] / med['copy_']:.0f} % of copy_ GB/s")
        print(f"  {where}: float16 scales {call[f'int4-f32 {where}'] / call[f'int4 {where}']:.3f}x float32 scales per call "
              f"(bytes ratio {packs['int4-f32'][0].nbytes / packs['int4'][0].nbytes:.3f})")
        print(f"  {where}: 8-bit scales {call[f'int4 {where}'] / call[f'int4-u8 {where}']:.3f}x float16 scales per "
              f"call "
              f"(bytes ratio {packs['int4'][0].nbytes / packs['int4-u8'][0].nbytes:.3f})")


def engine_call(engine: str):
    """A ``run`` entry for torch's rows: selects the quantized engine the Linear was packed for, then calls it."""
    def call(x: torch.Tensor, lin: torch.nn.Module) -> torch.Tensor:
        torch.backends.quantized.engine = engine
        return lin(x)
    return call


def spin(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def decode_steps(args: argparse.Namespace, clock, rounds: int) -> None:
    """ms per token of a 1B decoder's GEMV chain with small-op gaps, prefetched or not (module docstring)."""
    shapes = [(2560, 2048), (2048, 2048), (11264, 2048), (2048, 5632)]
    packed: dict[tuple[int, int], list] = {}
    chain = []
    for layer in range(22):
        for j, (n, k) in enumerate(shapes):
            q = torch.randint(-7, 8, (n, k), dtype=torch.int8)
            s = (torch.rand(n, k // args.group_size) * 0.01 + 1e-3).half()
            chain.append((kernels.pack_int4_weight(q, s, args.group_size), args.layer_gaps_us[j] * 1e-6))
    q = torch.randint(-7, 8, (32000, 2048), dtype=torch.int8)
    chain.append((kernels.pack_int4_weight(q, (torch.rand(32000, 2048 // args.group_size) * 0.01 + 1e-3).half(),
                                           args.group_size), 300e-6))  # sampling, embedding, first norm
    del packed
    xs = {k: torch.randn(1, k) for k in (2048, 5632)}
    total = sum(w.nbytes for w, _ in chain)

    def token(prefetch: bool) -> float:
        spent = 0.0
        for i, (w, gap) in enumerate(chain):
            t0 = clock()
            kernels.int4_linear(xs[w.in_features], w)
            spent += clock() - t0
            if prefetch:
                kernels.prefetch_weights([chain[(i + 1) % len(chain)][0], chain[(i + 2) % len(chain)][0]])
            t0 = clock()
            spin(gap)
            spent += clock() - t0
        return spent

    for pf in (False, True):  # warm-up
        token(pf)
    res: dict[bool, list[float]] = {False: [], True: []}
    before = kernels.prefetch_stats()
    for r in range(rounds):
        for pf in (False, True) if r % 2 == 0 else (True, False):  # alternating order: no position bias
            for _ in range(3):
                res[pf].append(token(pf))
    after = kernels.prefetch_stats()
    gaps = sum(g for _, g in chain)
    a, b = statistics.median(res[False]), statistics.median(res[True])
    print(f"1B decode GEMV chain: {len(chain)} int4 GEMVs, {total / 1e6:.0f} MB, gaps {gaps * 1e3:.1f} ms per token; "
          f"threads {args.threads}, clock {args.clock}, medians of {3 * rounds} tokens (interleaved)")
    print(f"  without prefetch {a * 1e3:7.2f} ms per token ({total / (a - gaps) / 1e9:.1f} GB/s in the GEMVs)")
    print(f"  with prefetch    {b * 1e3:7.2f} ms per token ({total / (b - gaps) / 1e9:.1f} GB/s in the GEMVs): "
          f"{a / b:.3f}x")
    walked = (after["bytes"] - before["bytes"]) / (3 * rounds)
    print(f"  walker per token: {walked / 1e6:.0f} MB walked ({100 * walked / total:.0f} % of the weights), "
          f"{(after['cancelled'] - before['cancelled']) / (3 * rounds):.0f} walks stopped by a GEMV")


if __name__ == "__main__":
    main()
