"""Measurements of a model, before and after compression: the numbers reports, benchmarks and the automatic
search are built on.

- :func:`count_flops` — exact multiply-accumulates per layer and in total (:class:`FlopsCount`);
- :func:`count_params`, :func:`count_nonzero_params`, :func:`params_per_layer` — weights, and those left nonzero;
- :func:`size_on_disk` — bytes of the pickle-free safetensors save;
- :func:`measure_latency` — median / p90 / min forward time with a documented method (:class:`LatencyStats`);
  :func:`measure_latencies` compares several models in interleaved rounds;
- :func:`channel_groups` — which layers must lose the same channels together, printable.
"""

from nnic.measure.flops import FlopsCount, count_flops, count_nonzero_params, count_params, layer_macs, params_per_layer
from nnic.measure.groups import ChannelGroup, ChannelGroups, channel_groups
from nnic.measure.latency import LatencyStats, measure_latencies, measure_latency
from nnic.measure.size import size_on_disk

__all__ = [
    "ChannelGroup", "ChannelGroups", "FlopsCount", "LatencyStats", "channel_groups", "count_flops",
    "count_nonzero_params", "count_params", "layer_macs", "measure_latencies", "measure_latency", "params_per_layer",
    "size_on_disk",
]
