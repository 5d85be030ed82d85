"""Warming packed int4/int8 weights into the CPU caches in the background, while other work runs.

Why: decoding one token is a chain of GEMVs separated by small ops (norms, rotary, attention over the cache)
that run on one thread; meanwhile DRAM is idle and the other core waits, and the next GEMV then streams its
weights from DRAM at about half the rate it reads them from L3. :func:`prefetch_weights` hands the next weights
to a background kernel thread that touches one byte per 64-byte line of them, in the order the GEMV reads them,
and returns at once; every int4/int8 linear call stops that walk before it starts (within 4 KiB), so the walker
never takes a core from a GEMM. Results never change: the walk only reads.

Safe by construction: the queue holds the packed weights themselves (shared ownership), so freeing a layer or
re-packing its weight while it is queued cannot leave the walker reading freed memory. Walked bytes are
remembered until the weight next runs a GEMM, so queueing the same upcoming weight again resumes where the walk
stopped instead of re-reading what is already in cache.
"""

from __future__ import annotations

from collections.abc import Sequence

from nnic.kernels.runtime import native

__all__ = ["cancel_prefetch", "prefetch_stats", "prefetch_wait", "prefetch_weights"]

#: Most weights one :func:`prefetch_weights` call may queue.
MAX_PREFETCH = 16


def prefetch_weights(weights: Sequence, max_bytes: int | None = None) -> None:
    """Queues packed weights (``PackedInt4Weight`` / ``PackedInt8Weight``, at most 16, in the order they will
    run) to be walked into the cache in the background, at most ``max_bytes`` bytes in all (``None``: all of
    them), replacing what was queued; returns at once.

    :raises TypeError: an element is not a packed int4/int8 weight (named by its index).
    :raises ValueError: more than 16 weights, or ``max_bytes < 0``.
    """
    if not isinstance(weights, (list, tuple)):
        raise TypeError(f"weights must be a list or tuple of packed weights, got {type(weights).__name__}")
    if max_bytes is not None and (isinstance(max_bytes, bool) or not isinstance(max_bytes, int)):
        raise TypeError(f"max_bytes must be an int or None, got {type(max_bytes).__name__}")
    native.prefetch_weights(list(weights), max_bytes)


def cancel_prefetch() -> None:
    """Stops the background walk and empties its queue (int4/int8 linear calls do this themselves)."""
    native.cancel_prefetch()


def prefetch_wait(timeout: float = 10.0) -> bool:
    """Waits until the queued weights are walked (or the walk is cancelled), at most ``timeout`` seconds; returns
    whether the walker is idle. For tests and benchmarks."""
    return bool(native.prefetch_wait(float(timeout)))


def prefetch_stats() -> dict[str, int]:
    """The walker's counters since the process started: ``jobs`` (calls that queued bytes), ``bytes`` (walked),
    ``cancelled`` (walks stopped by a GEMM before they were done), ``resumed_bytes`` (skipped because an earlier
    walk covered them since the weight last ran)."""
    return dict(native.prefetch_stats())
