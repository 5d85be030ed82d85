"""ISA switching, the NNIC_KERNEL_ISA / NNIC_NUM_THREADS / NNIC_GEMM_BACKEND env vars, the thread pool and
concurrent use."""

from __future__ import annotations

import os
import subprocess
import sys
import threading

import numpy as np
import pytest
from numpy.testing import assert_array_equal

from nnic import kernels
from nnic.kernels import runtime
from nnic.testing import reference as ref


def run_python(code: str, **env: str) -> subprocess.CompletedProcess:
    full = {**os.environ, **env}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=full, timeout=60)


def test_isa_queries():
    isas = kernels.supported_isas()
    assert isas[0] == "scalar" and set(isas) <= {"scalar", "avx2", "avx512"}
    assert kernels.active_isa() in isas
    feats = kernels.cpu_features()
    assert isinstance(feats, list) and all(isinstance(f, str) for f in feats)
    if "avx512" in isas:
        assert {"avx512f", "avx512bw"} <= set(feats)


def test_set_isa_roundtrip_and_errors():
    before = kernels.active_isa()
    try:
        for name in kernels.supported_isas():
            kernels.set_isa(name)
            assert kernels.active_isa() == name
        kernels.set_isa(None)
        assert kernels.active_isa() == kernels.supported_isas()[-1]
        with pytest.raises(ValueError, match="unknown ISA 'sse9': expected one of scalar, avx2, avx512"):
            kernels.set_isa("sse9")
        with pytest.raises(TypeError, match="name must be a str or None"):
            kernels.set_isa(2)
        missing = [i for i in ("avx2", "avx512") if i not in kernels.supported_isas()]
        for name in missing:
            with pytest.raises(ValueError, match="is not supported by this CPU"):
                kernels.set_isa(name)
    finally:
        kernels.set_isa(before)


def test_every_isa_gives_identical_results(isa):
    """Bit-for-bit the same outputs on every path (the scalar path is the Rust ground truth)."""
    rng = np.random.default_rng(42)
    x = rng.standard_normal((300, 400)).astype(np.float32)
    x[::7, ::3] = np.round(x[::7, ::3])
    k = 50_000
    assert kernels.kth_smallest_abs(x, k) == ref.kth_smallest_abs(x, k)
    assert_array_equal(kernels.smallest_abs_mask(x, k), ref.smallest_abs_mask(x, k))
    s = np.abs(x).max(axis=1) / 127
    assert_array_equal(kernels.quantize(x, s, axis=0), ref.quantize(x, s, axis=0))


def test_env_vars_at_import():
    """One real interpreter: both variables are read when nnic.kernels is imported."""
    r = run_python("import nnic.kernels as k; print(k.active_isa(), k.get_num_threads())",
                   NNIC_KERNEL_ISA="scalar", NNIC_NUM_THREADS="3")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["scalar", "3"]


def test_env_vars_parsing(monkeypatch):
    """The import-time hook itself, run in this process for every ISA and for bad values."""
    before = (kernels.active_isa(), kernels.get_num_threads())
    try:
        for name in kernels.supported_isas():
            monkeypatch.setenv("NNIC_KERNEL_ISA", name)
            runtime.apply_env()
            assert kernels.active_isa() == name
        monkeypatch.setenv("NNIC_KERNEL_ISA", "bogus")
        with pytest.raises(ValueError, match="NNIC_KERNEL_ISA='bogus': unknown ISA 'bogus'"):
            runtime.apply_env()
        monkeypatch.delenv("NNIC_KERNEL_ISA")
        monkeypatch.setenv("NNIC_NUM_THREADS", "zero")
        with pytest.raises(ValueError, match="NNIC_NUM_THREADS='zero': expected an integer"):
            runtime.apply_env()
        monkeypatch.setenv("NNIC_NUM_THREADS", "0")
        with pytest.raises(ValueError, match="NNIC_NUM_THREADS='0'"):
            runtime.apply_env()
        monkeypatch.delenv("NNIC_NUM_THREADS")
        monkeypatch.setenv("NNIC_GEMM_BACKEND", "tbb")
        with pytest.raises(ValueError, match="NNIC_GEMM_BACKEND='tbb': GEMM backend must be one of"):
            runtime.apply_env()
    finally:
        kernels.set_isa(before[0])
        kernels.set_num_threads(before[1])
        kernels.set_gemm_backend("openmp")


def test_env_vars_apply_to_a_process_that_only_runs_int8_linear():
    """The environment is applied when the native module is first loaded, whichever door a process takes:
    here only the quantized modules (no explicit ``import nnic.kernels``)."""
    code = ("import sys, torch; from nnic.quantization.modules import Int8Linear;"
            "m = Int8Linear.from_float(torch.nn.Linear(8, 4)); m(torch.randn(2, 8));"
            "k = sys.modules['nnic._kernels']; print(k.active_isa(), k.get_num_threads(), k.gemm_backend())")
    r = run_python(code, NNIC_KERNEL_ISA="scalar", NNIC_NUM_THREADS="3", NNIC_GEMM_BACKEND="rayon")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["scalar", "3", "rayon"]


def test_set_num_threads():
    before = kernels.get_num_threads()
    try:
        x = np.random.default_rng(0).standard_normal(300_000).astype(np.float32)
        want = ref.kth_smallest_abs(x, 1234)
        for n in (1, 3, 2):
            kernels.set_num_threads(n)
            assert kernels.get_num_threads() == n
            assert kernels.kth_smallest_abs(x, 1234) == want
        with pytest.raises(ValueError, match=r"n must be in \[1, 1024\], got 0"):
            kernels.set_num_threads(0)
        with pytest.raises(TypeError, match="n must be an integer"):
            kernels.set_num_threads(2.5)
    finally:
        kernels.set_num_threads(before)


def test_concurrent_calls_from_python_threads():
    """The GIL is released in the kernels: many Python threads may call them at once."""
    rng = np.random.default_rng(1)
    xs = [rng.standard_normal(200_000).astype(np.float32) for _ in range(4)]
    want = [ref.kth_smallest_abs(x, 777) for x in xs]
    got: dict[int, list[float]] = {}

    def work(i: int) -> None:
        got[i] = [kernels.kth_smallest_abs(xs[i], 777) for _ in range(5)]

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(got[i] == [want[i]] * 5 for i in range(4))
