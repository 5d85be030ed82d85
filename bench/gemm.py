"""int8 GEMM benchmark: nnic against torch's CPU int8 paths and float32 MKL, side by side, in one run.

    python bench/gemm.py                      # the issue's shapes, 2 threads
    python bench/gemm.py --shapes 16x4096x4096 --threads 1 --repeats 21

Rows per (M, K, N): float32 ``torch.matmul`` (MKL), ``torch._int_mm`` (s8·s8→s32), dynamic-quantized
``nn.quantized.dynamic.Linear`` with every installed engine (fbgemm / onednn / x86), and nnic's
``int8_matmul`` (packs B on every call), prepacked ``matmul`` (s8→s32), ``int8_linear`` (f32→f32, dynamic
per-token activations, fused epilogue) and ``int4_linear`` (int4 weights, M ≤ 16 only). All kernels of a
shape are timed round-robin (one call each per round) so that load from other processes hits them alike;
times are medians (``--stat min`` for the least-disturbed round);
GOPS count 2·M·K·N; "%peak" is against the measured int8 VNNI peak (PERF.md: 1342 GOPS at 2 threads, 665
at 1; ``--peak`` overrides) and the theoretical one from the clock (cores × GHz × 2 ports × 64 MAC × 2).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from nnic import kernels  # noqa: E402
from _timing import timeit_interleaved  # noqa: E402

SHAPES = [(1, 4096, 4096), (16, 4096, 4096), (128, 768, 3072), (512, 768, 768), (2048, 4096, 4096)]
MEASURED_PEAK = {1: 665.0, 2: 1342.0}


def clock_ghz() -> float:
    try:
        mhz = [float(line.split(":")[1]) for line in open("/proc/cpuinfo") if line.startswith("cpu MHz")]
        return max(mhz) / 1000
    except (OSError, ValueError):
        return float("nan")


def dynamic_linear(w: torch.Tensor, engine: str):
    import torch.ao.nn.quantized.dynamic as nnqd

    torch.backends.quantized.engine = engine
    scale = (w.abs().amax(dim=1) / 127).double()
    q = torch.quantize_per_channel(w, scale, torch.zeros(w.shape[0], dtype=torch.int64), 0, torch.qint8)
    lin = nnqd.Linear(w.shape[1], w.shape[0])
    lin.set_weight_bias(q, None)
    return lin


def bench_shape(m: int, k: int, n: int, repeats: int, engines: list[str], budget: float) -> dict[str, list[float]]:
    g = torch.Generator().manual_seed(0)
    a = torch.randint(-128, 128, (m, k), dtype=torch.int8, generator=g)
    w8 = torch.randint(-128, 128, (n, k), dtype=torch.int8, generator=g)
    b = w8.t().contiguous()  # [K, N] for _int_mm / int8_matmul
    x = torch.randn(m, k, generator=g)
    wf = torch.randn(n, k, generator=g) * 0.05
    fns = {"fp32 torch.matmul (MKL)": lambda: torch.matmul(x, wf.t())}
    try:
        torch._int_mm(a, b)
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
    fns["nnic int8_matmul (packs B each call)"] = lambda: kernels.int8_matmul(an, bn)
    packed = kernels.pack_int8_weight(w8, 1.0)
    out = np.empty((m, n), np.int32)
    fns["nnic prepacked matmul s8->s32"] = lambda: packed.matmul(an, out)
    q, s = kernels.quantize_int8_weight(wf)
    pl = kernels.pack_int8_weight(q, s)
    fns["nnic int8_linear f32->f32"] = lambda: kernels.int8_linear(x, pl)
    if m <= 16:
        q4, s4 = kernels.quantize_int4_weight(wf, 64)
        p4 = kernels.pack_int4_weight(q4, s4, 64)
        fns["nnic int4_linear f32->f32 (g=64)"] = lambda: kernels.int4_linear(x, p4)
    # correctness spot check (outside the timings)
    ref = torch._int_mm(a, b) if "torch._int_mm" in fns else (a.long() @ b.long()).int()
    assert torch.equal(kernels.int8_matmul(a, b), ref), "nnic int8_matmul differs from torch"
    return timeit_interleaved(fns, repeats, budget)


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
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    kernels.set_num_threads(args.threads)
    engines = [e for e in ("fbgemm", "onednn", "x86") if e in torch.backends.quantized.supported_engines]
    ghz = clock_ghz()
    theo = args.threads * ghz * 2 * 64 * 2
    peak = args.peak or MEASURED_PEAK.get(args.threads, theo)
    print(f"torch {torch.__version__}, threads {args.threads}, nnic path {kernels.gemm_path()}, engines {engines}")
    print(f"int8 peak: measured {peak:.0f} GOPS, theoretical {theo:.0f} GOPS ({ghz:.2f} GHz x 2 VNNI ports x 64 MAC)")
    all_res = {}
    for spec in args.shapes:
        m, k, n = (int(v) for v in spec.lower().split("x"))
        ops = 2 * m * k * n
        times = bench_shape(m, k, n, args.repeats, engines, args.budget)
        stat = min if args.stat == "min" else statistics.median
        res = {name: stat(ts) for name, ts in times.items()}
        all_res[spec] = times
        print(f"\n(M, K, N) = ({m}, {k}, {n})   [{args.stat} of {len(next(iter(times.values())))} interleaved rounds]")
        print(f"  {'kernel':40s} {'ms':>9s} {'GOPS':>8s} {'%peak':>6s}")
        for name, t in res.items():
            print(f"  {name:40s} {t * 1e3:9.3f} {ops / t / 1e9:8.1f} {100 * ops / t / 1e9 / peak:5.0f}%")
        torch_int8 = {key: v for key, v in res.items() if key.startswith("torch")}
        best_name = min(torch_int8, key=torch_int8.get)
        nn_mm = res["nnic prepacked matmul s8->s32"]
        nn_lin = res["nnic int8_linear f32->f32"]
        dyn = [v for key, v in res.items() if "dynamic" in key]
        lines = [f"nnic matmul vs best torch int8 ({best_name}): {torch_int8[best_name] / nn_mm:.2f}x"]
        if "torch._int_mm" in res:
            lines.append(f"vs torch._int_mm: {res['torch._int_mm'] / nn_mm:.2f}x")
        if dyn:
            lines.append(f"nnic int8_linear vs best dynamic Linear: {min(dyn) / nn_lin:.2f}x")
        lines.append(f"nnic int8_linear vs fp32 MKL: {res['fp32 torch.matmul (MKL)'] / nn_lin:.2f}x")
        if "nnic int4_linear f32->f32 (g=64)" in res:
            lines.append(f"int4 vs best torch int8: {torch_int8[best_name] / res['nnic int4_linear f32->f32 (g=64)']:.2f}x")
        print("  ratios: " + "; ".join(lines))
    if args.json:
        with contextlib.suppress(OSError):
            args.json.write_text(json.dumps(all_res, indent=1))


if __name__ == "__main__":
    main()
