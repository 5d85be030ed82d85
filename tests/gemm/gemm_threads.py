"""A kernel call under a chosen thread count and GEMM backend, for the tests that check the same bits on every
partitioning (column lanes, tail pieces): one helper, so that each restores the process's settings the same way."""

from __future__ import annotations

from typing import Callable, TypeVar

from nnic import kernels

T = TypeVar("T")


def on_threads(threads: int, backend: str, f: Callable[[], T]) -> T:
    """``f()`` with the kernels' pool on ``threads`` threads and ``backend``; both restored after."""
    before_threads, before_backend = kernels.get_num_threads(), kernels.gemm_backend()
    try:
        kernels.set_gemm_backend(backend)
        kernels.set_num_threads(threads)
        return f()
    finally:
        kernels.set_num_threads(before_threads)
        kernels.set_gemm_backend(before_backend)
