#!/usr/bin/env python3
"""Benchmark of nnic.kernels against the best torch/numpy baseline measured in the same run.

For each size (float32 elements) and thread count it prints a markdown table: every nnic kernel and its
baselines, median time over repeats, throughput in algorithmic bytes per element, the speedup of nnic over the
best baseline, and the share of in-place copy bandwidth (``dst.copy_(src)`` / ``np.copyto``, the physical
limit) that the kernel reaches: ``(bytes_kernel / t_kernel) / (8 B / t_copy)``.

    python bench/kernels.py                       # 1e6, 1e7, 1e8 at 1 and 2 threads
    python bench/kernels.py --quick               # 1e6, 1e7, fewer repeats
    python bench/kernels.py --sizes 1e7 --threads 2 --sections select,quant

The machine is shared and noisy: compare within one run, on medians.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
import warnings

import numpy as np
import torch

from nnic import kernels

warnings.filterwarnings("ignore", message=".*quantize_per_(tensor|channel).*")
warnings.filterwarnings("ignore", category=UserWarning, module="torch")
warnings.filterwarnings("ignore", category=DeprecationWarning)

SECTIONS = ("select", "global", "mask", "prune", "quant", "dequant", "reduce")


def timeit(fn, repeats: int, setup=None) -> float:
    """Median seconds of ``fn()`` after one warm-up; ``setup()`` runs untimed before each call."""
    if setup:
        setup()
    fn()
    times = []
    for _ in range(repeats):
        if setup:
            setup()
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


class Table:
    def __init__(self, n: int, threads: int, copy_s: float):
        self.n, self.threads, self.copy_s = n, threads, copy_s
        self.rows: list[tuple] = []
        self.summary: list[tuple] = []

    def case(self, name: str, bytes_per_el: int, nnic: tuple[str, float], baselines: dict[str, float]) -> None:
        best_name, best = min(baselines.items(), key=lambda kv: kv[1]) if baselines else ("-", float("nan"))
        gbs = lambda t: bytes_per_el * self.n / t / 1e9  # noqa: E731
        pct_copy = (bytes_per_el / nnic[1]) / (8 / self.copy_s) * 100
        speedup = best / nnic[1]
        self.rows.append((name, f"**nnic {nnic[0]}**", nnic[1], gbs(nnic[1]), f"**{speedup:.1f}x**", f"{pct_copy:.0f}%"))
        for bname, t in sorted(baselines.items(), key=lambda kv: kv[1]):
            self.rows.append((name, bname, t, gbs(t), "", f"{(bytes_per_el / t) / (8 / self.copy_s) * 100:.0f}%"))
        self.summary.append((name, speedup, best_name, pct_copy))

    def print(self) -> None:
        print(f"\n### n = {self.n:.0e} float32, {self.threads} thread(s); in-place copy {self.copy_s * 1e3:.2f} ms "
              f"({8 * self.n / self.copy_s / 1e9:.1f} GB/s at 8 B/el)\n")
        print("| case | implementation | median ms | GB/s | nnic speedup vs best baseline | % of copy BW |")
        print("|---|---|---:|---:|---:|---:|")
        for name, impl, t, gbs, sp, pct in self.rows:
            print(f"| {name} | {impl} | {t * 1e3:.2f} | {gbs:.1f} | {sp} | {pct} |")
        sys.stdout.flush()


def bench_size(n: int, threads: int, sections: set[str], repeats: int, slow_repeats: int, rng) -> Table:
    torch.set_num_threads(threads)
    kernels.set_num_threads(threads)
    big = n >= 50_000_000
    rep = slow_repeats if big else repeats
    w = torch.from_numpy(rng.standard_normal(n).astype(np.float32))
    wn = w.numpy()
    dst = torch.empty_like(w)
    copy_s = min(timeit(lambda: dst.copy_(w), rep), timeit(lambda: np.copyto(dst.numpy(), wn), rep))
    table = Table(n, threads, copy_s)
    k = n // 2

    if "select" in sections:
        want = float(np.partition(np.abs(wn), k - 1)[k - 1])
        got = kernels.kth_smallest_abs(w, k)
        assert got == want, (got, want)
        base = {
            "numpy abs+partition": timeit(lambda: np.partition(np.abs(wn), k - 1)[k - 1], rep),
            "torch.kthvalue(w.abs())": timeit(lambda: torch.kthvalue(w.abs(), k), slow_repeats),
            "torch.topk(w.abs(), k, largest=False)": timeit(lambda: torch.topk(w.abs(), k, largest=False), slow_repeats),
        }
        table.case("k-th smallest |w| (k=n/2)", 4, ("kth_smallest_abs", timeit(lambda: kernels.kth_smallest_abs(w, k), rep)), base)
        table.case("exact-k mask (k=n/2)", 5, ("smallest_abs_mask", timeit(lambda: kernels.smallest_abs_mask(w, k), rep)),
                   {"numpy partition + compare": timeit(lambda: np.abs(wn) > np.partition(np.abs(wn), k - 1)[k - 1], rep),
                    "torch kthvalue + compare": timeit(lambda: w.abs() > torch.kthvalue(w.abs(), k).values, slow_repeats)})

    if "global" in sections:
        cuts = np.sort(rng.choice(np.arange(1, n), 49, replace=False))
        parts = [torch.from_numpy(p) for p in np.split(wn, cuts)]
        assert kernels.global_kth_smallest_abs(parts, k) == float(np.partition(np.abs(wn), k - 1)[k - 1])
        base = {
            "numpy concat+abs+partition": timeit(
                lambda: np.partition(np.abs(np.concatenate([p.numpy() for p in parts])), k - 1)[k - 1], rep),
            "torch cat+abs+kthvalue": timeit(lambda: torch.kthvalue(torch.cat(parts).abs_(), k), slow_repeats),
        }
        table.case("global k-th |w| over 50 tensors", 4,
                   ("global_kth_smallest_abs", timeit(lambda: kernels.global_kth_smallest_abs(parts, k), rep)), base)
        del parts

    if "mask" in sections:
        keep = torch.from_numpy(rng.random(n) < 0.5)
        drop = ~keep
        keepf = keep.float()
        work = w.clone()
        wk = work.numpy()
        kn = keep.numpy()
        zero = torch.zeros((), dtype=torch.float32)
        base = {
            "torch w.mul_(mask_bool)": timeit(lambda: work.mul_(keep), rep),
            "torch w.masked_fill_(~mask, 0)": timeit(lambda: work.masked_fill_(drop, 0.0), rep),
            "torch.where(mask, w, 0, out=w)": timeit(lambda: torch.where(keep, work, zero, out=work), rep),
            "numpy np.multiply(w, mask, out=w)": timeit(lambda: np.multiply(wk, kn, out=wk), rep),
            "torch w.mul_(mask_f32) [float mask, 12 B/el]": timeit(lambda: work.mul_(keepf), rep),
        }
        table.case("apply bool mask in place", 9, ("apply_mask_", timeit(lambda: kernels.apply_mask_(work, keep), rep)), base)
        del keep, drop, keepf, work

    if "prune" in sections:
        work = w.clone()
        wk = work.numpy()
        reset = lambda: work.copy_(w)  # noqa: E731
        t = 0.6745
        base = {
            "numpy w *= (abs(w) > t)": timeit(lambda: np.multiply(wk, np.abs(wk) > t, out=wk), rep, reset),
            "torch w.mul_(w.abs() > t)": timeit(lambda: work.mul_(work.abs() > t), rep, reset),
            "torch w.masked_fill_(w.abs() <= t, 0)": timeit(lambda: work.masked_fill_(work.abs() <= t, 0.0), rep, reset),
        }
        table.case("fused |w|<=t -> 0 in place", 8,
                   ("prune_by_threshold_", timeit(lambda: kernels.prune_by_threshold_(work, t), rep, reset)), base)
        del work

    if "quant" in sections or "dequant" in sections:
        scale = float(np.abs(wn).max() / 127)
        rows = 1000
        w2 = w.reshape(rows, -1)
        scales = w2.abs().amax(dim=1) / 127
        zeros = torch.zeros(rows, dtype=torch.int64)
        out = torch.empty(n, dtype=torch.int8)
        out2 = out.reshape(rows, -1)
        s32 = np.float32(scale)
        if "quant" in sections:
            base = {
                "torch.quantize_per_tensor": timeit(lambda: torch.quantize_per_tensor(w, scale, 0, torch.qint8), rep),
                "torch eager round/clamp": timeit(lambda: torch.clamp(torch.round(w / scale), -128, 127).to(torch.int8), rep),
                "numpy rint/clip/astype": timeit(lambda: np.clip(np.rint(wn / s32), -128, 127).astype(np.int8), slow_repeats),
            }
            table.case("int8 quantize per tensor", 5,
                       ("quantize(out=)", timeit(lambda: kernels.quantize(w, scale, out=out), rep)), base)
            table.case("int8 quantize per tensor (alloc)", 5,
                       ("quantize", timeit(lambda: kernels.quantize(w, scale), rep)),
                       {"torch.quantize_per_tensor": base["torch.quantize_per_tensor"]})
            sn = scales.numpy()[:, None]
            base = {
                "torch.quantize_per_channel": timeit(lambda: torch.quantize_per_channel(w2, scales, zeros, 0, torch.qint8), rep),
                "torch eager round/clamp": timeit(
                    lambda: torch.clamp(torch.round(w2 / scales[:, None]), -128, 127).to(torch.int8), rep),
                "numpy rint/clip/astype": timeit(lambda: np.clip(np.rint(w2.numpy() / sn), -128, 127).astype(np.int8), slow_repeats),
            }
            table.case(f"int8 quantize per channel (axis 0, {rows} rows)", 5,
                       ("quantize(axis=0, out=)", timeit(lambda: kernels.quantize(w2, scales, axis=0, out=out2), rep)), base)
            wl = w.reshape(-1, 250)
            sl = wl.abs().amax(dim=0) / 127
            out_l = out.reshape(-1, 250)
            base = {
                "torch.quantize_per_channel": timeit(
                    lambda: torch.quantize_per_channel(wl, sl, torch.zeros(250, dtype=torch.int64), 1, torch.qint8), rep),
                "torch eager round/clamp": timeit(lambda: torch.clamp(torch.round(wl / sl), -128, 127).to(torch.int8), rep),
            }
            table.case("int8 quantize per channel (last axis, 250)", 5,
                       ("quantize(axis=-1, out=)", timeit(lambda: kernels.quantize(wl, sl, axis=-1, out=out_l), rep)), base)
        if "dequant" in sections:
            kernels.quantize(w, scale, out=out)
            qt = torch.quantize_per_tensor(w, scale, 0, torch.qint8)
            qc = torch.quantize_per_channel(w2, scales, zeros, 0, torch.qint8)
            f = torch.empty(n)
            f2 = f.reshape(rows, -1)
            on = out.numpy()
            base = {
                "qtensor.dequantize()": timeit(lambda: qt.dequantize(), rep),
                "numpy q.astype(f32) * s": timeit(lambda: np.multiply(on, s32, out=f.numpy(), dtype=np.float32), rep),
                "torch q.float().mul_(s)": timeit(lambda: out.float().mul_(scale), rep),
            }
            table.case("dequantize per tensor", 5, ("dequantize(out=)", timeit(lambda: kernels.dequantize(out, scale, out=f), rep)), base)
            sn2 = scales.numpy()[:, None]
            base = {
                "qtensor.dequantize()": timeit(lambda: qc.dequantize(), rep),
                "numpy q.astype(f32) * s[:, None]": timeit(
                    lambda: np.multiply(out2.numpy(), sn2, out=f2.numpy(), dtype=np.float32), rep),
            }
            table.case(f"dequantize per channel (axis 0, {rows} rows)", 5,
                       ("dequantize(axis=0, out=)", timeit(lambda: kernels.dequantize(out2, scales, axis=0, out=f2), rep)), base)
        del out, out2

    if "reduce" in sections:
        rows = 1000
        w2 = w.reshape(rows, -1)
        table.case("abs max per tensor", 4, ("abs_max", timeit(lambda: kernels.abs_max(w), rep)),
                   {"torch.aminmax(w)": timeit(lambda: torch.aminmax(w), rep),
                    "torch w.abs().amax()": timeit(lambda: w.abs().amax(), rep),
                    "numpy np.abs(w).max()": timeit(lambda: np.abs(wn).max(), rep)})
        table.case(f"abs max per channel (axis 0, {rows} rows)", 4,
                   ("abs_max(axis=0)", timeit(lambda: kernels.abs_max(w2, axis=0), rep)),
                   {"torch w.abs().amax(dim=1)": timeit(lambda: w2.abs().amax(dim=1), rep),
                    "torch.aminmax(w, dim=1)": timeit(lambda: torch.aminmax(w2, dim=1), rep)})
        table.case("min/max per tensor", 4, ("min_max", timeit(lambda: kernels.min_max(w), rep)),
                   {"torch.aminmax(w)": timeit(lambda: torch.aminmax(w), rep),
                    "numpy min()+max()": timeit(lambda: (wn.min(), wn.max()), rep)})
    del w, dst
    gc.collect()
    return table


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default=None, help="comma-separated element counts (default 1e6,1e7,1e8)")
    p.add_argument("--threads", default="1,2", help="comma-separated thread counts (default 1,2)")
    p.add_argument("--sections", default=",".join(SECTIONS), help=f"subset of {','.join(SECTIONS)}")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--slow-repeats", type=int, default=3, help="repeats for 1e8 sizes and slow baselines")
    p.add_argument("--quick", action="store_true", help="sizes 1e6,1e7 and fewer repeats")
    args = p.parse_args(argv)
    sizes = [int(float(s)) for s in (args.sizes or ("1e6,1e7" if args.quick else "1e6,1e7,1e8")).split(",")]
    threads = [int(t) for t in args.threads.split(",")]
    sections = set(args.sections.split(","))
    unknown = sections - set(SECTIONS)
    if unknown:
        p.error(f"unknown sections {sorted(unknown)}")
    repeats = 3 if args.quick else args.repeats
    slow = 1 if args.quick else args.slow_repeats
    print(f"# nnic.kernels benchmark\n\ntorch {torch.__version__}, numpy {np.__version__}, "
          f"ISA {kernels.active_isa()} (supported {', '.join(kernels.supported_isas())}), "
          f"CPU features {', '.join(kernels.cpu_features())}")
    rng = np.random.default_rng(0)
    summary = []
    for n in sizes:
        for t in threads:
            table = bench_size(n, t, sections, repeats, slow, rng)
            table.print()
            summary += [(n, t, *row) for row in table.summary]
    print("\n### Summary: nnic vs best baseline and % of in-place copy bandwidth\n")
    print("| n | threads | case | speedup vs best baseline | best baseline | % of copy BW |")
    print("|---:|---:|---|---:|---|---:|")
    for n, t, name, sp, best, pct in summary:
        print(f"| {n:.0e} | {t} | {name} | {sp:.1f}x | {best} | {pct:.0f}% |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
