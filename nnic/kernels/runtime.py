"""The native module, loaded once, with the environment applied once: code paths, threads, GEMM backend.

Every kernel reaches Rust through :data:`native` of this module, so the first use of any kernel (a pruner,
``Int8Linear``, a benchmark) has already applied the environment — not only an explicit
``import nnic.kernels``. Read when the native module is first loaded:

- ``NNIC_KERNEL_ISA=scalar|avx2|avx512`` forces a code path (:func:`set_isa`);
- ``NNIC_NUM_THREADS=n`` sets the kernel thread count (default: the CPU count);
- ``NNIC_GEMM_BACKEND=openmp|rayon`` where the GEMM's threads come from (default ``openmp``: PyTorch's
  OpenMP team when it is loaded, else the kernels' pool; ``rayon`` always the kernels' pool);
- ``NNIC_GEMM_SPIN_US=us`` how long the kernels' GEMM helpers poll for the next GEMM before parking
  (:func:`set_gemm_spin_us`, default 50).

A bad value is a ``ValueError`` naming the variable, raised by the import that loads the native module.
"""

from __future__ import annotations

import os
import time

from nnic import _kernels as native
from nnic.kernels.adapters import as_int

__all__ = [
    "active_isa", "apply_env", "cpu_features", "gemm_backend", "gemm_openmp_stats", "gemm_path", "gemm_paths",
    "gemm_pool_stats", "gemm_route_stats", "gemm_spin_us", "gemm_team_stats", "gemm_vnni_peak_gops",
    "get_num_threads", "last_level_cache_bytes", "native",
    "set_gemm_backend", "set_gemm_column_lanes", "set_gemm_routing", "set_gemm_spin_us", "set_gemm_spread",
    "set_gemm_tail_pieces", "set_gemm_tall_tile", "set_isa", "set_num_threads",
    "supported_isas",
]

GEMM_BACKENDS = ("openmp", "rayon")


def cpu_features() -> list[str]:
    """Instruction-set extensions found on this CPU, e.g. ``["avx2", "fma", "avx512f", ...]``."""
    return list(native.cpu_features())


def last_level_cache_bytes() -> int | None:
    """Size of the CPU's last-level cache (the L3, else the L2), or None where it cannot be read. The kernels read
    it once (sysfs, else CPUID: ``native.cache_sizes()``, the sizes their GEMM blocking uses). What fits in it
    decides how far ahead weights can usefully be warmed and when a model meets its weights cold; it differs by an
    order of magnitude between machines (32 MiB per Zen 4 CCX, 260 MB on a large Xeon)."""
    _, l2, l3 = native.cache_sizes()
    return (l3 or l2) or None


def supported_isas() -> list[str]:
    """Kernel code paths this CPU can run, slowest first: a subset of ``["scalar", "avx2", "avx512"]``."""
    return list(native.supported_isas())


def active_isa() -> str:
    """The code path the kernels use now: ``"avx512"``, ``"avx2"`` or ``"scalar"``."""
    return native.active_isa()


def set_isa(name: str | None = None) -> None:
    """Forces a code path (``"scalar"``, ``"avx2"``, ``"avx512"``); ``None`` selects the best available.

    The GEMM follows it (``avx512`` uses AVX512-VNNI when the CPU has it).

    :raises ValueError: unknown name, or a path this CPU lacks (nothing changes then).
    """
    if name is not None and not isinstance(name, str):
        raise TypeError(f"name must be a str or None, got {type(name).__name__}")
    native.set_isa(name)


def set_num_threads(n: int) -> None:
    """Sets the threads of the kernels' own pool (independent of torch's and rayon's global pools).

    :raises ValueError: n outside [1, 1024].
    """
    n = as_int(n, "n")
    if not 1 <= n <= 1024:
        raise ValueError(f"n must be in [1, 1024], got {n}")
    native.set_num_threads(n)


def get_num_threads() -> int:
    """Threads of the kernels' pool."""
    return int(native.get_num_threads())


def gemm_paths() -> list[str]:
    """GEMM code paths this CPU supports, slowest first (e.g. ``["scalar", "avx2", "avx512vnni"]``)."""
    return list(native.gemm_paths())


def gemm_path() -> str:
    """The GEMM code path used now (it follows :func:`set_isa`)."""
    return native.gemm_path()


def gemm_vnni_peak_gops(rounds: int = 5) -> float | None:
    """One core's int8 peak in GOPS (two per multiply-add): the best of ``rounds`` timings, on this thread's CPU
    time, of independent ``vpdpbusd`` on registers (no loads); ``None`` without AVX-512 VNNI. Why measured here:
    a GEMM's share of the peak is only meaningful against the core it ran on (a 2-port Intel core and a Zen 4
    core, whose 512-bit ``vpdpbusd`` runs at one per cycle, differ by 1.4x at the same clock)."""
    iters = 200_000
    best = None
    for _ in range(max(1, rounds)):
        t = time.thread_time()
        macs = native.gemm_vnni_peak(iters)
        dt = time.thread_time() - t
        if macs is None:
            return None
        if dt > 0:
            best = max(best or 0.0, 2 * macs / dt / 1e9)
    return best


def gemm_backend() -> str:
    """Where the GEMM's threads come from: ``"openmp"`` (PyTorch's OpenMP team, found at run time: no
    contention with torch's spinning workers) or ``"rayon"`` (the kernels' own pool)."""
    return native.gemm_backend()


def set_gemm_backend(name: str) -> None:
    """``"openmp"``: the process's OpenMP team when libgomp is loaded (else the kernels' pool); ``"rayon"``:
    always the kernels' pool. Few-row GEMMs stay on the team too: routing them to the pool measured slower in
    decoding (AMD Zen 4, quiet, llama-1b int8 + ``fast_decode`` 18.8 against 21.1 tok/s).

    :raises ValueError: another name.
    """
    if not isinstance(name, str) or name not in GEMM_BACKENDS:
        raise ValueError(f"GEMM backend must be one of {GEMM_BACKENDS}, got {name!r}")
    native.set_gemm_backend(name)


def set_gemm_tall_tile(on: bool) -> None:
    """Turns the VNNI int8 GEMM's tall tile on (the default) or off. With it, 13 to 28 activation rows run as one
    row panel whose tile reads each weight line once for all rows; without it, as two or three panels of the
    12-row tile (the first streams the weights from DRAM at twice the product's average rate, the others re-read
    them from L2). Both give the same bits: the switch exists to time the two in the same rounds
    (``bench/gemm.py``, ``examples/small_m``).

    :raises TypeError: ``on`` is not a bool.
    """
    if not isinstance(on, bool):
        raise TypeError(f"on must be a bool, got {type(on).__name__}")
    native.set_gemm_tall_tile(on)


def set_gemm_column_lanes(on: bool) -> None:
    """Turns the int8 GEMM's column lanes on (the default) or off. With them, a product whose rows form one row
    block (the VNNI path: 29 to 192 rows, K within one slice, and at two threads 897 or more outputs) gives each
    thread one contiguous range of weight panels, walked in order with the next panel prefetched, and a thread whose
    range has run out takes the back half of the fullest other range, so the threads finish within one 32-column
    panel of each other; without them, the output's planned column blocks (256 columns at 4096 outputs) go to the
    threads from a shared counter, and one thread can idle for a whole block at the end. Both give the same bits:
    the switch exists to time the two in the same rounds (``bench/gemm.py``).

    :raises TypeError: ``on`` is not a bool.
    """
    if not isinstance(on, bool):
        raise TypeError(f"on must be a bool, got {type(on).__name__}")
    native.set_gemm_column_lanes(on)


def set_gemm_spread(on: bool) -> None:
    """Turns the parallel runs' spreading on (the default) or off. With it, each thread of a GEMM's (or another
    kernel's) parallel run notes on which CPU it starts each task, and when another thread of the run has been on the
    caller's CPU at every look for 2 ms, the caller moves to another CPU of its affinity mask (the mask is set without
    that CPU and then given back as it was), at most once per 20 ms. Why: with three runnable threads on two CPUs
    (the run's two and another process's), the kernel counts two and one as balanced whichever threads they are, and
    when the run's two share a CPU it gets one core where it could get one and a half, for the whole call (beside
    ``bench/gemm.py``'s neighbour, 2026-12-02: about half the 2048 x 4096 x 4096 calls). Both give the same bits: the
    switch exists to time the two in the same rounds.

    :raises TypeError: ``on`` is not a bool.
    """
    if not isinstance(on, bool):
        raise TypeError(f"on must be a bool, got {type(on).__name__}")
    native.set_gemm_spread(on)


def set_gemm_tail_pieces(on: bool) -> None:
    """Turns the int8 GEMM's tail pieces on (the default) or off. With them, a product planned as output blocks
    (more rows than one block, or K beyond one slice) runs its last two blocks per thread as single 32-column panels:
    a thread that another process deschedules while it holds a block holds it until it runs again, and at the end
    the threads still on their cores take the tail's panels instead of waiting for it (quiet, the threads also
    finish within one panel of each other instead of one block). Without them every block is one task. Both give the
    same bits: the switch exists to time the two in the same rounds (``bench/gemm.py``).

    :raises TypeError: ``on`` is not a bool.
    """
    if not isinstance(on, bool):
        raise TypeError(f"on must be a bool, got {type(on).__name__}")
    native.set_gemm_tail_pieces(on)


def gemm_spin_us() -> float:
    """Microseconds a GEMM helper of the kernels' pool polls for the next GEMM before it parks."""
    return float(native.gemm_spin_us())


def set_gemm_spin_us(us: float) -> None:
    """Sets how long the GEMM's helper threads poll for the next GEMM before parking (0 to 10000 us; 0 parks
    at once). Polling lets a layer that follows within the bound start without a kernel wake-up (tens of us);
    it holds the helper's core for at most the bound after each GEMM. :func:`gemm_team_stats` measures both.

    :raises ValueError: outside [0, 10000] or not a number.
    """
    if isinstance(us, bool) or not isinstance(us, (int, float)):
        raise TypeError(f"us must be a number of microseconds, got {type(us).__name__}")
    if not 0 <= us <= 10_000:  # also refuses NaN
        raise ValueError(f"us must be in [0, 10000] microseconds, got {us}")
    native.set_gemm_spin_us(float(us))


def gemm_team_stats(reset: bool = False) -> dict[str, int]:
    """What the GEMM's helper threads did since start (or the last ``reset=True``): ``jobs`` (GEMMs handed
    to them), ``taken_spinning`` / ``taken_parked`` (jobs a helper took while polling / after a wake-up), and
    ``spin_ns`` (nanoseconds they polled, all helpers together: the cost of the bound). GEMMs on torch's
    OpenMP team do not count."""
    jobs, spinning, parked, spin_ns = native.gemm_team_stats(bool(reset))
    return {"jobs": jobs, "taken_spinning": spinning, "taken_parked": parked, "spin_ns": spin_ns}


_RUN_STATS = ("runs", "late", "windows", "tasks", "tasks_by_team", "arrival_ns", "tail_ns", "region_ns", "wait_ns",
              "moves")


def gemm_openmp_stats(reset: bool = False) -> dict[str, int]:
    """What the parallel runs (GEMMs, sparse products) on torch's OpenMP team did since start (or the last
    ``reset=True``), summed over runs: ``runs``; ``late`` (runs whose last thread arrived over 0.5 ms after the
    start); ``windows`` (those of them that sent the next 0.5 s of runs to nnic's own helpers, twice as long after
    each late retry, up to 8 s, or until a look at ``/proc/stat`` every 0.1 s finds that other processes left the
    cores: a late thread counts only when it also arrived after half of the caller's own part of the run or the
    run's end then kept the caller waiting over 0.5 ms, so a big run hides it, and a late run after runs on time,
    with the cores left to this process over the last 0.1 s or more, sends none); ``tasks`` and ``tasks_by_team``
    (taken by team threads other than the caller: about half with two threads when the team starts at once);
    ``arrival_ns`` (start to the last thread's arrival: the fork),
    ``tail_ns`` (no task left to the region's end: the join), ``region_ns`` (the whole parallel region) and
    ``wait_ns`` (the caller's own last task to the region's end: what waiting for the others cost it); ``moves``
    (times the caller moved to another CPU because a thread of its run had shared its CPU for 2 ms, see
    :func:`set_gemm_spread`). Runs on nnic's own helpers count in :func:`gemm_pool_stats` instead."""
    return dict(zip(_RUN_STATS, native.gemm_openmp_stats(bool(reset))))


def gemm_pool_stats(reset: bool = False) -> dict[str, int]:
    """The counters of :func:`gemm_openmp_stats` for the parallel runs on nnic's own helper threads (the
    ``rayon`` backend, and the fallback after a late OpenMP thread): ``late`` counts the runs in which no helper
    took a task (the caller ran them all), ``windows`` is 0, and ``arrival_ns`` sums the first helper's arrival."""
    return dict(zip(_RUN_STATS, native.gemm_pool_stats(bool(reset))))


def set_gemm_routing(on: bool) -> None:
    """Turns the int8 GEMM's routing by measured cost on, or off (the default). With it, each GEMM's parallel run
    goes to torch's OpenMP team or to nnic's own helpers, whichever cost its shape class less per multiply-add over
    its last runs (:func:`gemm_route_stats`); without it, GEMMs follow the avoidance window that a late OpenMP
    thread opens (0.5-8 s on the helpers), as the other kernels' parallel runs do. Both give the same bits.

    Off by default because a way's cost depends on what the process ran just before it (torch's OpenMP thread spins
    for milliseconds after its runs), so a probe of the other way finds it dear: under load (2026-12-02) routing
    gained 1.1-8x for int8 Linear calls between torch ops beside a neighbour (``bench/gemm.py --contention``), but
    kept the fused BERT encoder's GEMMs on a late team, 1.2-1.5x slower than the window (``bench/gemm.py --bert``,
    which times both in the same rounds).

    :raises TypeError: ``on`` is not a bool.
    """
    if not isinstance(on, bool):
        raise TypeError(f"on must be a bool, got {type(on).__name__}")
    native.set_gemm_routing(on)


def gemm_route_stats(reset: bool = False) -> dict[str, int]:
    """Where the GEMMs' parallel runs went since start (or the last ``reset=True``) with :func:`set_gemm_routing`
    on and torch's OpenMP team there to choose: ``team`` and ``helpers`` (runs on each way), ``probes`` (runs that tried the way their shape
    class had not chosen) and ``switches`` (a class changing ways). Each class of shapes keeps what its last runs
    cost per multiply-add on each way and runs on the cheaper one, trying the other now and then (as often as 1 %
    of the time pays for: every 80 runs when it costs 1.8 times as much): a late OpenMP thread now and then does
    not send a series of GEMMs to the helpers, a team that is late on every run does
    (``rust/nnic-kernels/src/gemm/route.rs``)."""
    return dict(zip(("team", "helpers", "probes", "switches"), native.gemm_route_stats(bool(reset))))


def apply_env() -> None:
    """Applies ``NNIC_KERNEL_ISA``, ``NNIC_NUM_THREADS``, ``NNIC_GEMM_BACKEND`` and ``NNIC_GEMM_SPIN_US`` (run
    once, at load); a bad value raises ``ValueError`` naming the variable and what it expects."""
    settings = (
        ("NNIC_KERNEL_ISA", str, set_isa, None),
        ("NNIC_NUM_THREADS", int, set_num_threads, "an integer in [1, 1024]"),
        ("NNIC_GEMM_BACKEND", str.lower, set_gemm_backend, None),
        ("NNIC_GEMM_SPIN_US", float, set_gemm_spin_us, "microseconds in [0, 10000]"),
    )
    for name, parse, setter, expected in settings:
        raw = os.environ.get(name, "").strip()
        if not raw:
            continue
        try:
            setter(parse(raw))
        except ValueError as exc:
            hint = f"expected {expected} ({exc})" if expected else str(exc)
            raise ValueError(f"{name}={raw!r}: {hint}") from None


apply_env()
