"""The GEMM's helper threads on the kernels' pool (``rust/nnic-kernels/src/team.rs``): a bounded poll for the
next GEMM, then park; the bound is settable and its effect counted."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from nnic import kernels
from nnic.kernels import runtime


@pytest.fixture
def pool_of_two():
    before = (kernels.get_num_threads(), kernels.gemm_backend(), kernels.gemm_spin_us())
    kernels.set_num_threads(2)
    kernels.set_gemm_backend("rayon")
    try:
        yield
    finally:
        kernels.set_num_threads(before[0])
        kernels.set_gemm_backend("openmp")
        kernels.set_gemm_spin_us(before[2])


def _problem(seed: int = 0, m: int = 16):
    rng = np.random.default_rng(seed)
    a = rng.integers(-128, 128, (m, 2048), dtype=np.int8)
    w = rng.integers(-128, 128, (512, 2048), dtype=np.int8)
    return a, kernels.pack_int8_weight(w, 1.0), a.astype(np.int64) @ w.T.astype(np.int64)


@pytest.mark.parametrize("spin_us", [0, 50, 2000])
def test_gemms_stay_exact_whatever_the_spin(pool_of_two, spin_us):
    kernels.set_gemm_spin_us(spin_us)
    assert kernels.gemm_spin_us() == pytest.approx(spin_us)
    a, packed, want = _problem()
    out = np.empty(want.shape, np.int32)
    for _ in range(30):
        packed.matmul(a, out)
        assert np.array_equal(out, want)


def test_back_to_back_gemms_find_a_polling_helper(pool_of_two):
    """With a generous bound a helper is still polling when the next GEMM is published, and the counters
    say so (each GEMM here is ~1e7 multiply-adds, above the size that runs on the caller alone). Other
    processes can keep the helper off its core for many GEMMs, so the loop runs until it is seen, under a
    hang guard."""
    kernels.set_gemm_spin_us(5000)
    a, packed, want = _problem(1)
    out = np.empty(want.shape, np.int32)
    kernels.gemm_team_stats(reset=True)
    deadline = time.monotonic() + 120
    calls = 0
    while kernels.gemm_team_stats()["taken_spinning"] == 0:
        assert time.monotonic() < deadline, f"no GEMM helper took a job while polling in {calls} GEMMs"
        packed.matmul(a, out)
        calls += 1
    s = kernels.gemm_team_stats()
    assert np.array_equal(out, want)
    assert s["jobs"] >= calls > 0
    assert s["taken_spinning"] + s["taken_parked"] <= s["jobs"]
    assert s["spin_ns"] > 0


@pytest.mark.parametrize("bad, exc, match", [
    (-1, ValueError, r"us must be in \[0, 10000\] microseconds, got -1"),
    (10_001, ValueError, "got 10001"),
    (float("nan"), ValueError, "got nan"),
    ("50", TypeError, "us must be a number of microseconds, got str"),
    (True, TypeError, "got bool"),
])
def test_bad_spin_is_refused_and_changes_nothing(bad, exc, match):
    before = kernels.gemm_spin_us()
    with pytest.raises(exc, match=match):
        kernels.set_gemm_spin_us(bad)
    assert kernels.gemm_spin_us() == before


def test_env_spin_is_checked(monkeypatch):
    before = kernels.gemm_spin_us()
    try:
        monkeypatch.setenv("NNIC_GEMM_SPIN_US", "lots")
        with pytest.raises(ValueError, match="NNIC_GEMM_SPIN_US='lots': expected microseconds"):
            runtime.apply_env()
        monkeypatch.setenv("NNIC_GEMM_SPIN_US", "20")
        runtime.apply_env()
        assert kernels.gemm_spin_us() == pytest.approx(20)
    finally:
        kernels.set_gemm_spin_us(before)


@pytest.fixture
def openmp_team_of_two():
    before = (kernels.get_num_threads(), kernels.gemm_backend())
    kernels.set_num_threads(2)
    kernels.set_gemm_backend("openmp")
    try:
        if kernels.gemm_backend() != "openmp":
            pytest.skip("libgomp is not loaded in this process")
        yield
    finally:
        kernels.set_num_threads(before[0])
        kernels.set_gemm_backend(before[1])


def test_openmp_team_counters_account_for_every_task(openmp_team_of_two):
    """GEMMs on torch's OpenMP team are counted: every run's tasks, the team mates' share of them, and a fork
    and a join that both fit inside the region (two threads; libgomp is loaded with torch)."""
    a, packed, want = _problem(2, m=64)
    out = np.empty(want.shape, np.int32)
    kernels.gemm_openmp_stats(reset=True)
    # A run that found a thread late sends the GEMMs of the next 0.5-8 s to nnic's helpers, which these
    # counters do not see (other processes can make one late): GEMMs until the team ran one, under a guard.
    deadline, calls = time.monotonic() + 60, 0
    while calls < 5 or kernels.gemm_openmp_stats()["runs"] == 0:
        assert time.monotonic() < deadline, f"no GEMM ran on the OpenMP team in {calls} calls"
        packed.matmul(a, out)
        calls += 1
    s = kernels.gemm_openmp_stats()
    assert np.array_equal(out, want)
    assert 1 <= s["runs"] <= calls and s["windows"] <= s["late"] <= s["runs"]
    assert s["tasks"] >= 2 * s["runs"] and 0 <= s["tasks_by_team"] <= s["tasks"]
    assert 0 < s["region_ns"] and s["arrival_ns"] <= s["region_ns"] and s["tail_ns"] <= s["region_ns"]
    assert s["tail_ns"] <= s["wait_ns"] <= s["region_ns"]  # the caller waits at least for the join
    assert kernels.gemm_openmp_stats(reset=True) == s
    assert kernels.gemm_openmp_stats()["runs"] == 0


def test_own_helper_counters_account_for_every_task(pool_of_two):
    """Runs on nnic's own helpers are counted as the OpenMP team's are: every run's tasks, the helpers' share,
    runs the caller ran alone (a helper that has not arrived is not waited for), and the caller's end wait
    inside the run's time. GEMMs on the OpenMP team do not count here."""
    a, packed, want = _problem(3)
    out = np.empty(want.shape, np.int32)
    kernels.gemm_pool_stats(reset=True)
    for _ in range(5):
        packed.matmul(a, out)
    s = kernels.gemm_pool_stats()
    assert np.array_equal(out, want)
    assert s["runs"] == 5 and s["late"] <= 5 and s["windows"] == 0
    assert s["tasks"] >= 2 * s["runs"] and 0 <= s["tasks_by_team"] <= s["tasks"]
    assert (s["late"] == 5) == (s["tasks_by_team"] == 0)
    assert 0 < s["region_ns"] and s["tail_ns"] <= s["wait_ns"] <= s["region_ns"]
    assert kernels.gemm_pool_stats(reset=True) == s
    assert kernels.gemm_pool_stats()["runs"] == 0


def test_routed_gemms_are_counted_and_probe_the_other_way(openmp_team_of_two):
    """With routing by measured cost on and torch's OpenMP team there, each GEMM's parallel run goes the way its
    shape class found cheaper lately and tries the other one now and then, the first time 2 runs after the class
    starts: 70 runs of a shape no other test uses count 70 routed runs, at least one of them a probe, and every
    result is exact whichever way it went (the costs depend on the machine's load, the counts' invariants do
    not)."""
    rng = np.random.default_rng(4)
    a = rng.integers(-128, 128, (96, 1996), dtype=np.int8)
    w = rng.integers(-128, 128, (480, 1996), dtype=np.int8)
    packed, want = kernels.pack_int8_weight(w, 1.0), a.astype(np.int64) @ w.T.astype(np.int64)
    out = np.empty(want.shape, np.int32)
    kernels.set_gemm_routing(True)
    try:
        kernels.gemm_route_stats(reset=True)
        for _ in range(70):
            packed.matmul(a, out)
            assert np.array_equal(out, want)
        s = kernels.gemm_route_stats()
    finally:
        kernels.set_gemm_routing(False)
    assert s["team"] + s["helpers"] == 70
    assert 1 <= s["probes"] <= 70
    assert kernels.gemm_route_stats(reset=True) == s
    assert kernels.gemm_route_stats() == {"team": 0, "helpers": 0, "probes": 0, "switches": 0}


def test_routing_gives_the_same_bits_and_is_off_by_default(openmp_team_of_two):
    """Routing changes where runs go, never the result: an int8 Linear's outputs are identical with it on and off;
    off (the default), no run counts as routed."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((128, 1024), dtype=np.float32)
    q, s = kernels.quantize_int8_weight(torch.from_numpy(rng.standard_normal((768, 1024), dtype=np.float32)))
    packed = kernels.pack_int8_weight(q, s)
    kernels.gemm_route_stats(reset=True)
    window = kernels.int8_linear(x, packed)
    assert kernels.gemm_route_stats() == {"team": 0, "helpers": 0, "probes": 0, "switches": 0}
    kernels.set_gemm_routing(True)
    try:
        routed = [kernels.int8_linear(x, packed) for _ in range(5)]
        assert kernels.gemm_route_stats()["team"] + kernels.gemm_route_stats()["helpers"] == 5
    finally:
        kernels.set_gemm_routing(False)
    for out in routed:
        assert np.array_equal(np.asarray(out), np.asarray(window))
    with pytest.raises(TypeError, match="on must be a bool, got int"):
        kernels.set_gemm_routing(1)
