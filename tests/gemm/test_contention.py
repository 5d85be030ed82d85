"""The int8 GEMM on torch's OpenMP team when a team thread cannot get a core: it must stay exact whether it
runs on the team or, after seeing a late thread, on nnic's own pool (see ``rust/nnic-kernels/src/gemm/par.rs``)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent("""
    import os, numpy as np, torch
    from nnic import kernels
    torch.set_num_threads(2); kernels.set_num_threads(2)
    cpu = sorted(os.sched_getaffinity(0))[0]
    os.sched_setaffinity(0, {cpu})  # two threads, one core: the second team thread always arrives late
    rng = np.random.default_rng(0)
    a = rng.integers(-128, 128, (64, 512), dtype=np.int8)
    b = rng.integers(-128, 128, (512, 256), dtype=np.int8)
    want = a.astype(np.int64) @ b.astype(np.int64)
    packed = kernels.pack_int8_weight(np.ascontiguousarray(b.T), 1.0)
    for _ in range(20):  # team first, then the pool while the team is avoided
        torch.matmul(torch.randn(64, 64), torch.randn(64, 64))  # keeps torch's team warm between GEMMs
        assert np.array_equal(kernels.int8_matmul(a, b), want)
        out = np.empty((64, 256), np.int32)
        packed.matmul(a, out)
        assert np.array_equal(out, want)
    print("backend", kernels.gemm_backend())
""")


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="needs sched_setaffinity (Linux)")
def test_gemm_stays_exact_when_a_team_thread_has_no_core():
    env = {k: v for k, v in os.environ.items() if k != "NNIC_GEMM_BACKEND"}
    res = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=300, env=env)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "backend" in res.stdout
