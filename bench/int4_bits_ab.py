"""The int4 GEMV of two builds compared byte for byte: a previous build's native module (a copy of its
``nnic/_kernels*.so``, loaded beside this tree's, as in ``bench/int4_ab.py``) and this tree's, on the same packed
codes and inputs, over every path this CPU has (portable, AVX2, VNNI), every scale format (float32, float16, 8-bit
codes with per-column steps), symmetric and affine weights, each activation mode (per token symmetric and affine,
per tensor, static), bias or none, M = 1-9, 65 and 66 (a last block of one or two rows; 1-3 at 4096 x 4096), one
and two threads, and seven shapes (groups 8-128, padded columns and k).

    cp /work/main/nnic/_kernels.abi3.so /tmp/before.so
    python bench/int4_bits_ab.py --before /tmp/before.so

Why: a kernel change that should move no bit (a tile run over a whole block instead of per panel, a new
allocation) is checked against the build before it on the cases the tests' tolerances would let through. Prints
each differing case and the count; exits 1 if any differs.
"""

from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _builds import load_before  # noqa: E402
from nnic.kernels.runtime import native  # noqa: E402

SHAPES = [(33, 40, 8), (64, 256, 32), (300, 520, 32), (290, 1000, 64), (1030, 777, 32), (96, 384, 128),
          (4096, 4096, 32)]
ACTS = [("per_token", True), ("per_token", False), ("per_tensor", False), ("static", False)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--before", required=True, help="a previous build's nnic/_kernels*.so (copied)")
    args = ap.parse_args()
    before = load_before(args.before)
    paths = native.gemm_paths()
    rng = np.random.default_rng(0)
    cases = differ = 0
    for n, k, g in SHAPES:
        ng = -(-k // g)
        q = rng.integers(-8, 8, (n, k)).astype(np.int8)
        s = (rng.random((n, ng)) * 0.1 + 0.01).astype(np.float32)
        zs = rng.integers(-8, 8, (n, ng)).astype(np.int8)
        codes = rng.integers(1, 256, (n, ng)).astype(np.uint8)
        step = (rng.random(n) * 1e-3 + 1e-4).astype(np.float32)
        bias = rng.standard_normal(n).astype(np.float32)
        for fmt, affine in itertools.product(("float32", "float16", "uint8"), (False, True)):
            z = zs if affine else None
            scales = {"float32": s, "float16": s.astype(np.float16).view(np.uint16), "uint8": codes}[fmt]
            packed = [mod.PackedInt4Weight(q, scales, g, z, step if fmt == "uint8" else None) for mod in (before, native)]
            for m in [*range(1, 10), 65, 66] if n * k < 5_000_000 else (1, 2, 3):
                x = rng.standard_normal((m, k)).astype(np.float32)
                for threads in (1, 2):
                    before.set_num_threads(threads)
                    native.set_num_threads(threads)
                    for path, (act, sym), b in itertools.product(paths, ACTS, (None, bias)):
                        kw = {"act": act, "symmetric": sym, "path": path}
                        if act == "static":
                            kw.update(act_scale=0.02, act_zero_point=131)
                        ya, yb = (w.linear(x, None, b, **kw) for w in packed)
                        cases += 1
                        if not np.array_equal(ya.view(np.uint32), yb.view(np.uint32)):
                            differ += 1
                            print(f"differs: {n} x {k} g{g} {fmt} affine={affine} M={m} threads={threads} {path} {act} "
                                  f"symmetric={sym} bias={b is not None}: max |diff| {np.abs(ya - yb).max():.3g}")
    print(f"paths {paths}: {cases - differ} of {cases} cases bit-identical")
    sys.exit(1 if differ else 0)


if __name__ == "__main__":
    main()
