"""The sparsify switch on a scripted clock: it keeps a layer dense whenever the measurement says sparse is slower,
however noisy the samples, and makes it sparse when sparse wins clearly."""

from __future__ import annotations

import random
import sys
import time

import pytest
import torch
from torch import nn

import nnic.sparse.sparsify  # noqa: F401  (the module; nnic.sparse.sparsify is the function)
from nnic.sparse import SparseLinear, sparsify

sparsify_mod = sys.modules["nnic.sparse.sparsify"]


class FakeClock:
    """Seconds that advance only when a timed layer runs: each call costs its layer's scripted time times a noise
    factor (independent per call, plus a per-round load factor shared by the calls that run close together)."""

    def __init__(self, dense_s: float, sparse_s: float, seed: int, noise: float, load: float = 0.0) -> None:
        self.now, self.rng = 0.0, random.Random(seed)
        self.cost = {"dense": dense_s, "sparse": sparse_s}
        self.noise, self.load, self.calls, self.load_factor = noise, load, 0, 1.0

    def __call__(self) -> float:
        return self.now

    def run(self, kind: str) -> None:
        self.calls += 1
        if self.calls % 40 == 0:  # the machine's load changes slowly: both layers of a round see the same
            self.load_factor = 1.0 + self.rng.expovariate(1.0) * self.load
        self.now += self.cost[kind] * self.load_factor * self.rng.lognormvariate(0.0, self.noise)


class ClockedLinear(nn.Linear):
    clock: FakeClock | None = None

    def forward(self, x):
        if self.clock:
            self.clock.run("dense")
        return super().forward(x)


@pytest.fixture
def scripted(monkeypatch):
    """Installs a FakeClock as sparsify's timer and as the cost of dense / sparse layer calls."""
    def install(**kw) -> FakeClock:
        clock = FakeClock(**kw)
        monkeypatch.setattr(sparsify_mod, "_clock", clock)
        ClockedLinear.clock = clock
        original = SparseLinear.forward

        def forward(self, x):
            clock.run("sparse")
            return original(self, x)
        monkeypatch.setattr(SparseLinear, "forward", forward)
        return clock
    yield install
    ClockedLinear.clock = None


def _model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    m = nn.Sequential(ClockedLinear(64, 48)).eval()
    with torch.no_grad():
        m[0].weight.mul_(torch.rand_like(m[0].weight) < 0.1)
    return m


@pytest.mark.parametrize("ratio", [0.7, 0.9, 0.95])
def test_slower_sparse_is_never_kept_however_noisy(scripted, ratio):
    """Over 30 noisy measurements (30 % per-call noise, load bursts up to several x), a sparse layer that is
    really slower than dense never replaces it."""
    for seed in range(30):
        scripted(dense_s=1e-3 * ratio, sparse_s=1e-3, seed=seed, noise=0.3, load=1.5)
        model = _model()
        d = sparsify(model, torch.randn(1, 64), verify=False).layers["0"]
        assert d.chosen == "dense" and isinstance(model[0], ClockedLinear), (seed, d)


def test_a_tie_rarely_passes_the_margin(scripted):
    """As fast as dense: at most 1 of 30 such noisy measurements (whose medians spread over 0.7-1.3x) may pass
    min_speedup = 1.1; the margin and the win count keep the rest dense."""
    chosen = 0
    for seed in range(30):
        scripted(dense_s=1e-3, sparse_s=1e-3, seed=seed, noise=0.3, load=1.5)
        chosen += sparsify(_model(), torch.randn(1, 64), verify=False).layers["0"].chosen == "sparse"
    assert chosen <= 1


def test_clearly_faster_sparse_is_chosen_despite_noise(scripted):
    for seed in range(10):
        scripted(dense_s=2e-3, sparse_s=1e-3, seed=seed, noise=0.3, load=1.5)
        model = _model()
        d = sparsify(model, torch.randn(1, 64)).layers["0"]
        assert d.chosen == "sparse" and isinstance(model[0], SparseLinear), (seed, d)
        assert 1.3 < d.speedup < 3.0 and d.win_fraction >= 0.75


def test_load_that_hits_whole_rounds_does_not_flip_the_decision(scripted):
    """Per-round load bursts (up to ~10x) inflate both calls of a round alike: paired ratios still see 1.4x."""
    for seed in range(10):
        scripted(dense_s=1.4e-3, sparse_s=1e-3, seed=seed, noise=0.02, load=3.0)
        d = sparsify(_model(), torch.randn(1, 64), verify=False).layers["0"]
        assert d.chosen == "sparse" and abs(d.speedup - 1.4) < 0.1, (seed, d)


def test_a_close_call_is_measured_again(scripted):
    """Sparse exactly at min_speedup is ambiguous: the switch takes twice the rounds before deciding; a clear
    win is decided on the first rounds."""
    scripted(dense_s=1.1e-3, sparse_s=1e-3, seed=0, noise=0.0)
    close = sparsify(_model(), torch.randn(1, 64), rounds=5, verify=False).layers["0"]
    scripted(dense_s=3e-3, sparse_s=1e-3, seed=0, noise=0.0)
    clear = sparsify(_model(), torch.randn(1, 64), rounds=5, verify=False).layers["0"]
    assert "of 10 rounds" in close.reason and "of 5 rounds" in clear.reason


def test_judge_needs_the_median_and_most_rounds():
    judge = sparsify_mod._judge
    # median ratio 1.5 but sparse lost 3 of 9 rounds: too noisy to trust
    dense = [1.5] * 6 + [0.5] * 3
    v = judge(dense, [1.0] * 9, tokens=1, min_speedup=1.1)
    assert not v.sparse and "won only 67%" in v.reason
    assert judge([1.5] * 8 + [0.5], [1.0] * 9, 1, 1.1).sparse
    assert not judge([1.05] * 9, [1.0] * 9, 1, 1.1).sparse            # faster, but below the margin
    assert judge([0.5] * 9, [1.0] * 9, 1, 0.0).sparse                # min_speedup 0 forces sparse


@pytest.mark.parametrize("rounds", [0, -1, 2.5, True, "9"])
def test_rounds_must_be_a_positive_int(rounds):
    with pytest.raises(ValueError, match="rounds"):
        sparsify(_model(), torch.randn(1, 64), rounds=rounds)


def test_one_thread_is_timed_on_cpu_time_several_on_wall_time():
    from nnic import kernels

    before = torch.get_num_threads(), kernels.get_num_threads()
    try:
        torch.set_num_threads(1)
        kernels.set_num_threads(1)
        assert sparsify_mod._pick_clock() is time.thread_time
        kernels.set_num_threads(2)
        assert sparsify_mod._pick_clock() is time.perf_counter
    finally:
        torch.set_num_threads(before[0])
        kernels.set_num_threads(before[1])


class CacheClock(FakeClock):
    """A FakeClock whose layers cost more on the first call after their weights were evicted (``flush``)."""

    def __init__(self, warm: dict[str, float], cold: dict[str, float]) -> None:
        super().__init__(dense_s=0.0, sparse_s=0.0, seed=0, noise=0.0)
        self.warm, self.cold_cost, self.is_cold = warm, cold, {"dense": False, "sparse": False}
        self.flushes = 0

    def run(self, kind: str) -> None:
        self.calls += 1
        self.now += (self.cold_cost if self.is_cold[kind] else self.warm)[kind]
        self.is_cold[kind] = False

    def flush(self, kind: str) -> None:
        self.flushes += 1
        self.is_cold[kind] = True


def test_cold_timing_evicts_before_every_call_and_sees_what_decode_sees(scripted, monkeypatch):
    """Dense and sparse tie with warm weights, but with the weights evicted before every call (as in a decode step
    of a model larger than the caches) dense costs 2.5x and sparse 1.2x: warm timing keeps the layer dense, cold
    timing makes it sparse, and says so; every timed call was preceded by an eviction."""
    clock = scripted(dense_s=0.0, sparse_s=0.0, seed=0, noise=0.0)  # patches the layers to call clock.run
    cache = CacheClock(warm={"dense": 1e-3, "sparse": 1e-3}, cold={"dense": 2.5e-3, "sparse": 1.2e-3})
    clock.run = cache.run
    monkeypatch.setattr(sparsify_mod, "_clock", cache)
    monkeypatch.setattr(sparsify_mod, "_flushes",
                        lambda module, cands: [lambda: cache.flush("dense")] + [lambda: cache.flush("sparse")] * len(cands))
    warm = sparsify(_model(), torch.randn(1, 64), cold=False, verify=False).layers["0"]
    assert warm.chosen == "dense" and not warm.cold and cache.flushes == 0
    cache.calls = 0
    model = _model()
    d = sparsify(model, torch.randn(1, 64), cold=True, verify=False).layers["0"]
    assert d.chosen == "sparse" and d.cold and "(cold weights)" in d.reason and isinstance(model[0], SparseLinear)
    assert abs(d.speedup - 2.5 / 1.2) < 0.01
    # untimed: the forward that records each layer's rows, and one warm-up call per timed function (dense, CSR);
    # every other call is timed, and each follows its own eviction
    assert cache.flushes == cache.calls - 3 > 0, (cache.flushes, cache.calls)


def test_cold_is_automatic_for_models_larger_than_the_last_level_cache(monkeypatch):
    seen = []
    monkeypatch.setattr(sparsify_mod, "_measure",
                        lambda fns, x, rounds, min_speedup, tokens, flush=None: seen.append(flush) or
                        (1, [[1.0] * rounds, [2.0] * rounds], sparsify_mod._Verdict(0.5, 0.0, False, "slower")))
    model = _model()
    model_bytes = sparsify_mod._model_bytes(model)
    assert model_bytes == (64 * 48 + 48) * 4
    for llc, want in [(model_bytes - 1, True), (model_bytes * 100, False), (None, False)]:
        monkeypatch.setattr(sparsify_mod, "_last_level_cache_bytes", lambda llc=llc: llc)
        d = sparsify(model, torch.randn(1, 64), verify=False).layers["0"]
        assert d.cold is want and (seen[-1] is not None) is want, (llc, d)
    with pytest.raises(TypeError, match="cold must be True, False or None"):
        sparsify(model, torch.randn(1, 64), cold="yes")


def test_the_flushes_evict_the_dense_layer_and_each_candidate(monkeypatch):
    from nnic import kernels

    flushed = []
    monkeypatch.setattr(kernels, "flush_caches", lambda *objs: flushed.extend(objs))
    dense, cand = nn.Linear(8, 4), SparseLinear.from_dense(torch.eye(4, 8))
    for f in sparsify_mod._flushes(dense, [cand]):
        f()
    assert flushed == [dense, cand]


def test_the_last_level_cache_size_is_the_kernels_reading_or_none():
    from nnic import _kernels as native

    l1d, l2, l3 = native.cache_sizes()  # what the GEMM blocking uses; 0 where unknown
    assert all(size >= 0 for size in (l1d, l2, l3))
    assert not (l1d and l2) or l1d <= l2
    llc = sparsify_mod._last_level_cache_bytes()
    assert llc == ((l3 or l2) or None)
    assert llc is None or llc >= 1 << 20
