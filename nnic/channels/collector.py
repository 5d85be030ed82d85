"""Python's cyclic garbage collector paused while a pruner computes and attaches its masks, and while channel
analysis and speedup run.

Why: tracing, propagation and speedup allocate some hundred thousand small objects (fx nodes and proxies, channel
id lists, specs, rule calls) that all stay alive until the analysis ends. Each allocation burst triggers the
collector, whose passes traverse them again and find nothing to free: 4-8 % of a torchvision classifier's
prune and speedup (ResNet-50, ConvNeXt-tiny, RegNetX-400MF; more in a process holding many other objects). The
garbage cycles the analysis does leave (a tracer and its proxies) are collected by the first collection after
it, so what is paused is only work, never memory for longer than one analysis. The pause is process-wide (as
the collector is): another thread allocating meanwhile is not collected either, for that long.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator


@contextlib.contextmanager
def collection_paused() -> Iterator[None]:
    """No automatic garbage collection within the block; the collector is enabled again after it only if it was
    before (nested pauses, and a caller who had disabled it, are left as they were)."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


__all__ = ["collection_paused"]
