"""``nnic.kernels.prefetch_weights``: a background thread walks packed int4/int8 weights into the cache, in the order
a GEMV reads them, while other work runs; any int4/int8 linear call stops it first. It only reads (outputs are
unchanged), the queue keeps its weights alive (freeing them meanwhile is safe by construction), and bad arguments
are refused by name."""

from __future__ import annotations

import gc
import os

import pytest
import torch

from nnic import kernels

pytestmark = pytest.mark.skipif(os.environ.get("NNIC_PREFETCH") == "off", reason="NNIC_PREFETCH=off queues nothing")


def int4_weight(n: int, k: int, seed: int = 0) -> kernels.PackedInt4Weight:
    w = torch.randn(n, k, generator=torch.Generator().manual_seed(seed))
    q, s = kernels.quantize_int4_weight(w, 32, torch.float16)
    return kernels.pack_int4_weight(q, s, 32)


def walked_bytes(w) -> int:
    """Bytes the walker touches for a whole weight: everything but the per-column sums (4 bytes per padded
    column, read once per panel by the GEMV)."""
    return w.nbytes - 4 * (-(-w.out_features // 32) * 32)


def delta(before: dict[str, int], key: str) -> int:
    return kernels.prefetch_stats()[key] - before[key]


def test_bad_arguments_are_named():
    w = int4_weight(32, 64)
    with pytest.raises(TypeError, match=r"weights\[1\] must be a PackedInt4Weight or PackedInt8Weight, got Tensor"):
        kernels.prefetch_weights([w, torch.zeros(3)])
    with pytest.raises(TypeError, match="weights must be a list or tuple"):
        kernels.prefetch_weights(w)
    with pytest.raises(ValueError, match="at most 16 weights"):
        kernels.prefetch_weights([w] * 17)
    with pytest.raises(ValueError, match="max_bytes must be >= 0, got -1"):
        kernels.prefetch_weights([w], max_bytes=-1)
    with pytest.raises(TypeError, match="max_bytes must be an int"):
        kernels.prefetch_weights([w], max_bytes=1.5)
    with pytest.raises(ValueError, match="timeout must be"):
        kernels.prefetch_wait(-1.0)


def test_walks_every_byte_of_int4_and_int8_weights_within_the_budget():
    kernels.cancel_prefetch()
    assert kernels.prefetch_wait(60)
    w4 = int4_weight(100, 320)  # 4 panels, 10 groups: codes and float16 scales
    q8, s8 = kernels.quantize_int8_weight(torch.randn(70, 96, generator=torch.Generator().manual_seed(1)))
    w8 = kernels.pack_int8_weight(q8, s8)
    before = kernels.prefetch_stats()
    kernels.prefetch_weights([w4])
    assert kernels.prefetch_wait(60)
    assert delta(before, "bytes") == walked_bytes(w4)
    before = kernels.prefetch_stats()
    kernels.prefetch_weights((w8,))
    assert kernels.prefetch_wait(60)
    assert delta(before, "bytes") == 96 * 96  # the codes: K 96, N padded to 96
    fresh = int4_weight(100, 320, seed=2)  # never walked: nothing to resume
    before = kernels.prefetch_stats()
    kernels.prefetch_weights([fresh, w8], max_bytes=5000)
    assert kernels.prefetch_wait(60)
    assert delta(before, "bytes") == 5000


def test_a_weight_walked_since_it_last_ran_is_not_walked_again():
    kernels.cancel_prefetch()
    w = int4_weight(64, 256, seed=3)
    x = torch.randn(1, 256, generator=torch.Generator().manual_seed(4))
    kernels.int4_linear(x, w)  # forgets any earlier record of w
    kernels.prefetch_weights([w])
    assert kernels.prefetch_wait(60)
    before = kernels.prefetch_stats()
    kernels.prefetch_weights([w])  # queued again before it ran: already walked
    assert kernels.prefetch_wait(60)
    assert delta(before, "bytes") == 0 and delta(before, "resumed_bytes") == walked_bytes(w)
    kernels.int4_linear(x, w)  # it ran: walked again next time
    before = kernels.prefetch_stats()
    kernels.prefetch_weights([w])
    assert kernels.prefetch_wait(60)
    assert delta(before, "bytes") == walked_bytes(w)


def test_a_linear_call_stops_the_walk_and_outputs_do_not_change():
    kernels.cancel_prefetch()
    big = [int4_weight(4096, 8192, seed=s) for s in range(2)] * 8  # 16 x 18.9 MB: tens of ms to walk
    small = int4_weight(256, 512, seed=5)
    x = torch.randn(1, 512, generator=torch.Generator().manual_seed(6))
    want = kernels.int4_linear(x, small)
    before = kernels.prefetch_stats()
    kernels.prefetch_weights(big)
    assert not kernels.prefetch_wait(0)  # still walking
    got = kernels.int4_linear(x, small)
    assert kernels.prefetch_wait(60)
    assert torch.equal(got, want)
    assert delta(before, "cancelled") == 1
    assert delta(before, "bytes") < 16 * walked_bytes(big[0])


def test_freeing_a_queued_weight_is_safe():
    """The queue owns its weights: dropping the last Python reference while the walk runs leaves it walking the
    same (still allocated) bytes to the end."""
    kernels.cancel_prefetch()
    ws = [int4_weight(2048, 4096, seed=s) for s in range(3)]
    total = sum(walked_bytes(w) for w in ws)
    before = kernels.prefetch_stats()
    kernels.prefetch_weights(ws)
    del ws
    gc.collect()
    assert kernels.prefetch_wait(60)  # the walker runs on idle cycles only: slow on a busy machine
    assert delta(before, "bytes") == total and delta(before, "cancelled") == 0
