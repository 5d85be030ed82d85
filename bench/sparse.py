"""Sparse execution benchmark: nnic's sparse Linear kernels against dense float32 MKL ``F.linear``, in one run.

    python bench/sparse.py                  # every case of the issue's table, 2 threads
    python bench/sparse.py --only layer --threads 1 --json out.json

Cases (ratios are dense time / sparse time, both measured in this run, interleaved round-robin, medians):
- ``layer``: a 4096x4096 Linear at 90 % / 70 % unstructured (Level) and 2:4 sparsity, batch 1 / 16 / 128, as
  ``SparseLinear`` modules (CSR, or N:M for 2:4), and 80 % at batch 1 (the "kernel" field names the batch-1
  kernel: gathers or bitmask expansion, see ``kernels.sparse_bitmask_break_even``); plus what ``nnic.sparsify``
  decides at each point (the switch keeps dense where sparse loses); plus int8 values at 90 %, batch 1, against
  dense fp32 and nnic's dense int8 layer (``Int8Linear``, same activation quantization);
- ``kernels`` (not in the default set): the two batch-1 kernels of unstructured weights, column-index gathers and
  bitmask expansion, on one 4096x4096 weight per density (0.10-0.35), each call right after a dense MKL call as
  in a model (interleaved, medians): where they break even (``kernels.sparse_bitmask_break_even``, 1/8);
- ``bandwidth``: at batch 1, bytes of the compressed weight per second against memory bandwidth, measured once
  on 256 MiB (not cache) and interleaved with the kernels' rounds: ``copy_`` (read + write traffic, the fractions'
  denominator) and a read-only ``sum``; with the weight warm (one call before: L3-resident where it fits,
  ``fits_llc``) and cold (evicted from every cache before each call, as in a model larger than the cache), beside
  dense float32 ``F.linear`` in the same rounds (``ratio_warm``, ``ratio_cold``);
- ``storage``: state-dict bytes of the sparse layer against the dense float32 weight;
- ``bert``: a BERT-base-shaped encoder (random init, seq 128, batch 1), Level 90 % on the encoder Linears, end to
  end, float32 values and int8 values (``quantization_speedup`` then ``sparsify``), each also with the attention
  and residual + LayerNorm on nnic's fused encoder kernels (``nnic_transformers.fuse_encoder``: ``fused_ratio``,
  ``int8_fused_ratio``), and each with the MLP's GELU in the sparse (or int8) layer's epilogue
  (``nnic_transformers.fuse_mlp_activations``: ``gelu_ratio``, ``int8_gelu_ratio``);
- ``gpt2``: a GPT-2-small-shaped decoder (12 x 768, 3072 FFN, 50257 vocabulary; random init, untied output
  layer), Level 70 % on every Linear, one-token decode step with a 128-token KV cache; ``gelu_ratio``: with each
  block's GELU in its sparse ``fc`` layer's epilogue (``nnic.quantization.fuse_activation``);
  ``ratio_warm_switch``: the same model sparsified with ``cold=False`` (every layer timed with warm weights, the
  switch before cold timing), timed in the same rounds. ``cold_switch`` (here and for ``bert``): whether
  ``sparsify`` timed the layers with their weights evicted (automatic: the model exceeds the last-level cache);
- ``gpt2split`` (not in the default set): the same decode step, dense and sparse in one process, split by layer
  kind (qkv, proj, fc, out, head: summed per step by forward hooks) and the rest of the step (attention,
  LayerNorm, GELU, embeddings), with each kind's dense / sparse ratio and what ``sparsify`` decided for the
  output layer (``head``, untied, 50257 x 768).
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import nnic  # noqa: E402
from nnic import kernels  # noqa: E402
from nnic.sparse import SparseLinear, SparsifyReport, sparsify  # noqa: E402
from nnic.sparse.sparsify import _last_level_cache_bytes  # noqa: E402
import _timing  # noqa: E402

CLOCK = {"wall": time.perf_counter, "cpu": time.process_time}
_clock = CLOCK["wall"]


def timeit_interleaved(fns: dict, repeats: int, budget: float) -> dict[str, list[float]]:
    """Round-robin timing on the chosen clock: wall time, or this process's CPU time (``--clock cpu``, for
    ``--threads 1`` on a loaded machine: time spent waiting for a core is not counted)."""
    return _timing.timeit_interleaved(fns, repeats, budget, clock=_clock)


TARGETS = {
    ("90%", 1): 5.0, ("90%", 16): 3.0, ("90%", 128): 1.5,
    ("70%", 1): 2.0, ("70%", 16): 1.3, ("70%", 128): 1.0,
    ("2:4", 1): 1.5, ("2:4", 16): 1.2,
}


def med(ts: list[float]) -> float:
    return statistics.median(ts)


def level_(w: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Zero the smallest |w| (exactly floor(sparsity * n)), as the Level pruner does."""
    k = int(sparsity * w.numel())
    if k:
        t = w.abs().flatten().kthvalue(k).values
        w[w.abs() <= t] = 0
    return w


def nm_(w: torch.Tensor, n: int, m: int) -> torch.Tensor:
    from nnic.builtins.nm import nm_mask

    return w.mul_(nm_mask(w, n, m))


def _layer_weights() -> dict[str, tuple[torch.Tensor, SparseLinear]]:
    """The 4096x4096 weight of the ``layer`` cases per pattern (90 %, 80 %, 70 % Level; 2:4), pruned, and its
    ``SparseLinear`` (CSR, or N:M for 2:4)."""
    g = torch.Generator().manual_seed(0)
    dense_w = torch.randn(4096, 4096, generator=g) / 64
    patterns = {"90%": lambda w: level_(w, 0.9), "80%": lambda w: level_(w, 0.8), "70%": lambda w: level_(w, 0.7),
                "2:4": lambda w: nm_(w, 2, 4)}
    out = {}
    for name, prune in patterns.items():
        w = prune(dense_w.clone())
        lin = nn.Linear(4096, 4096, bias=False)
        with torch.no_grad():
            lin.weight.copy_(w)
        out[name] = w, SparseLinear.from_linear(lin, nm=(2, 4) if name == "2:4" else None)
    return out


def layer_cases(repeats: int, budget: float) -> list[dict]:
    g = torch.Generator().manual_seed(10)
    rows = []
    for name, (w, sp) in _layer_weights().items():
        for batch in (1,) if name == "80%" else (1, 16, 128):
            x = torch.randn(batch, 4096, generator=g)
            # the switch: what sparsify decides for this layer at this batch
            model = nn.Sequential(nn.Linear(4096, 4096, bias=False))
            with torch.no_grad():
                model[0].weight.copy_(w)
            decision = sparsify(model, x, max_density=1.0, verify=False).layers["0"]
            chosen = model[0]
            with torch.no_grad():
                t = timeit_interleaved({"dense": lambda: F.linear(x, w), "sparse": lambda: sp(x),
                                        "switch": lambda: chosen(x)}, repeats, budget)
            d, s, c = med(t["dense"]), med(t["sparse"]), med(t["switch"])
            rows.append({"case": name, "batch": batch, "dense_ms": d * 1e3, "sparse_ms": s * 1e3,
                         "ratio": d / s, "switch": decision.chosen, "switch_ratio": d / c,
                         "target": TARGETS.get((name, batch)), "sparse_bytes": sp._packed_weight().stream_bytes,
                         "layout": sp.layout, "kernel": sp._packed_weight().gemv_kernel() if batch == 1 else "tiled"})
            print(json.dumps(rows[-1]), flush=True)
    return rows


def _int8_layer() -> tuple[nn.Linear, nn.Module, SparseLinear]:
    """The 90 % int8-values case: the pruned float32 Linear (4096x4096, bias), nnic's dense int8 layer of it
    (``quantization_speedup``) and the ``SparseLinear`` of that int8 layer."""
    g = torch.Generator().manual_seed(1)
    lin = nn.Linear(4096, 4096)
    with torch.no_grad():
        lin.weight.copy_(level_(torch.randn(4096, 4096, generator=g) / 64, 0.9))
    model = nn.Sequential(nn.Linear(4096, 4096))
    model.load_state_dict({"0." + k: v for k, v in lin.state_dict().items()})
    nnic.quantization_speedup(model, {"0": 8})
    return lin, model[0], SparseLinear.from_int8(model[0])


def int8_case(repeats: int, budget: float) -> dict:
    lin, dense_int8, sp8 = _int8_layer()
    w = lin.weight.detach()
    x = torch.randn(1, 4096, generator=torch.Generator().manual_seed(11))
    with torch.no_grad():
        t = timeit_interleaved({"fp32": lambda: F.linear(x, w, lin.bias), "int8": lambda: dense_int8(x),
                                "sparse_int8": lambda: sp8(x)}, repeats, budget)
    f, i, s = med(t["fp32"]), med(t["int8"]), med(t["sparse_int8"])
    row = {"case": "90% int8 values", "batch": 1, "fp32_ms": f * 1e3, "dense_int8_ms": i * 1e3,
           "sparse_int8_ms": s * 1e3, "vs_fp32": f / s, "vs_dense_int8": i / s, "targets": [8.0, 2.0],
           "sparse_bytes": sp8._packed_weight().stream_bytes, "kernel": sp8._packed_weight().gemv_kernel(True)}
    print(json.dumps(row), flush=True)
    return row


def kernel_choice(repeats: int) -> list[dict]:
    """Bitmask against gather batch-1 kernel on the same weight: the break-even density pinned to 0 (always the
    bitmask) or 2 (never), alternating, each call after a dense ``F.linear`` of the same size (which streams 64 MB,
    as other layers do between two calls of a layer in a model); the median of the paired per-round ratios."""
    g = torch.Generator().manual_seed(5)
    dense_w = torch.randn(4096, 4096, generator=g) / 64
    x = torch.randn(1, 4096, generator=g)
    out = []
    for sparsity in (0.9, 0.85, 0.8, 0.75, 0.7, 0.65):
        w = level_(dense_w.clone(), sparsity)
        sp = SparseLinear.from_dense(w)
        t: dict[str, list[float]] = {"bitmask": [], "gather": []}
        try:
            with torch.no_grad():
                for r in range(max(repeats, 5) * 2):
                    pins = (("gather", 2.0), ("bitmask", 0.0))
                    for name, pin in pins if r % 2 else pins[::-1]:
                        kernels.set_sparse_bitmask_break_even(pin)
                        F.linear(x, w)
                        t0 = _clock()
                        sp(x)
                        t[name].append(_clock() - t0)
        finally:
            kernels.set_sparse_bitmask_break_even(None)
        paired = statistics.median(b / c for b, c in zip(t["bitmask"], t["gather"]))
        out.append({"case": "batch-1 kernel", "density": round(1 - sparsity, 2), "bitmask_ms": med(t["bitmask"]) * 1e3,
                    "gather_ms": med(t["gather"]) * 1e3, "bitmask_over_gather": paired,
                    "chosen": sp._packed_weight().gemv_kernel()})
        print(json.dumps(out[-1]), flush=True)
    return out


#: The memory references stream 256 MiB, well above any last-level cache (32 MiB on the AMD Zen 4 host), so that
#: they measure memory, not cache, bandwidth.
REFERENCE_BYTES = 256 << 20
#: Calls per timed sample of a batch-1 kernel (each ~0.1-1 ms): summed, so that timer resolution vanishes.
CALLS = 5


def _sample(fn, before=None) -> float:
    """Seconds per call of ``fn`` over :data:`CALLS` calls, each preceded (untimed) by ``before`` when given."""
    total = 0.0
    for _ in range(CALLS):
        if before is not None:
            before()
        t0 = _clock()
        fn()
        total += _clock() - t0
    return total / CALLS


def _gbps(nbytes: int, times: list[float]) -> float:
    return nbytes / med(times) / 1e9


def bandwidth(repeats: int) -> dict:
    """Batch-1 bytes of the compressed weight per second against memory bandwidth, the weights warm and cold.

    The references, measured once: ``dst.copy_(src)`` of :data:`REFERENCE_BYTES`, counted as the memory traffic it
    makes (read + write, ``copy_GBps``: the fractions' denominator), and ``src.sum()`` of the same buffer
    (``read_GBps``: what a read-only stream such as a batch-1 kernel's reaches from memory). Per case the sparse
    layer warm (one untimed call first brings its weight into the caches: L3-resident when it fits,
    ``fits_llc``), the sparse layer cold (its weight evicted with ``kernels.flush_caches`` before every call: it
    comes from memory, as in a model larger than the cache) and the dense float32 ``F.linear`` (64 MB: always from
    memory). All of them run once per round, the rounds repeat, every figure is a median over rounds. A kernel's
    GB/s counts the bytes of its compressed weight (``stream_bytes``), read once per call."""
    llc = _last_level_cache_bytes()
    layers = {name: (w, sp) for name, (w, sp) in _layer_weights().items() if name != "80%"}
    lin, _, sp8 = _int8_layer()
    layers["90% int8 values"] = lin.weight.detach(), sp8
    src = torch.ones(REFERENCE_BYTES // 4)
    dst = torch.empty_like(src)
    x = torch.randn(1, 4096, generator=torch.Generator().manual_seed(12))
    fns = {"copy": lambda: _sample(lambda: dst.copy_(src)), "sum": lambda: _sample(src.sum)}
    for name, (w, sp) in layers.items():
        fns[f"{name} dense"] = lambda w=w: _sample(lambda: F.linear(x, w))
        fns[f"{name} warm"] = lambda sp=sp: _sample(lambda: sp(x), before=lambda: sp(x))
        fns[f"{name} cold"] = lambda sp=sp: _sample(lambda: sp(x), before=lambda: kernels.flush_caches(sp))
    with torch.no_grad():
        for fn in fns.values():  # warm-up: packing, page faults
            fn()
        t: dict[str, list[float]] = {name: [] for name in fns}
        for _ in range(max(repeats, 5)):
            for name, fn in fns.items():
                t[name].append(fn())
    copy_gbs = _gbps(2 * REFERENCE_BYTES, t["copy"])
    out = {"reference": {"MB": REFERENCE_BYTES / 1e6, "copy_GBps": copy_gbs,
                         "copy_GBps_range": [2 * REFERENCE_BYTES / f / 1e9 for f in (max(t["copy"]), min(t["copy"]))],
                         "read_GBps": _gbps(REFERENCE_BYTES, t["sum"]), "rounds": len(t["copy"]),
                         "llc_MB": None if llc is None else llc / 1e6}, "cases": []}
    print(json.dumps(out["reference"]), flush=True)
    for name, (_, sp) in layers.items():
        nbytes = sp._packed_weight().stream_bytes
        d, warm, cold = (med(t[f"{name} {k}"]) for k in ("dense", "warm", "cold"))
        row = {"case": name, "compressed_MB": nbytes / 1e6, "fits_llc": llc is not None and nbytes <= llc,
               "warm_ms": warm * 1e3, "cold_ms": cold * 1e3, "dense_ms": d * 1e3,
               "warm_GBps": nbytes / warm / 1e9, "cold_GBps": nbytes / cold / 1e9,
               "warm_fraction": nbytes / warm / 1e9 / copy_gbs, "cold_fraction": nbytes / cold / 1e9 / copy_gbs,
               "cold_fraction_of_read": nbytes / cold / 1e9 / out["reference"]["read_GBps"],
               "ratio_warm": d / warm, "ratio_cold": d / cold}
        out["cases"].append(row)
        print(json.dumps(row), flush=True)
    return out


def storage() -> list[dict]:
    g = torch.Generator().manual_seed(2)
    w = level_(torch.randn(4096, 4096, generator=g), 0.9)
    fp32 = SparseLinear.from_dense(w)
    codes = torch.clamp(torch.round(w / (w.abs().amax(1, keepdim=True) / 127)), -127, 127).to(torch.int8)
    int8 = SparseLinear.from_dense(codes, weight_scale=w.abs().amax(1) / 127)
    dense = w.numel() * 4
    rows = [{"case": f"storage 90% {n}", "bytes": m.storage_bytes(), "fraction": m.storage_bytes() / dense,
             "target": t} for n, m, t in (("fp32", fp32, 0.15), ("int8", int8, 0.06))]
    for r in rows:
        print(json.dumps(r), flush=True)
    return rows


def _prune_linears(model: nn.Module, sparsity: float, prefix: str = "") -> None:
    with torch.no_grad():
        for name, m in model.named_modules():
            if isinstance(m, nn.Linear) and name.startswith(prefix):
                level_(m.weight, sparsity)


def bert(repeats: int, budget: float) -> dict:
    from nnic_transformers import fuse_encoder, fuse_mlp_activations
    from transformers import BertConfig, BertModel

    torch.manual_seed(3)
    dense = BertModel(BertConfig(), add_pooling_layer=False).eval()
    ids = torch.randint(0, dense.config.vocab_size, (1, 128))
    _prune_linears(dense, 0.9, "encoder")
    sp = copy.deepcopy(dense)
    report = sparsify(sp, ids)
    q = copy.deepcopy(dense)
    nnic.quantization_speedup(q, {n: 8 for n, m in q.named_modules() if isinstance(m, nn.Linear) and n.startswith("encoder")})
    report8 = sparsify(q, ids)
    with torch.no_grad():
        ref = dense(ids).last_hidden_state
        cos = F.cosine_similarity(q(ids).last_hidden_state.flatten(), ref.flatten(), 0).item()
        err = (sp(ids).last_hidden_state - ref).abs().max().item()
        fused, fused8 = copy.deepcopy(sp), copy.deepcopy(q)
        fuse_encoder(fused)
        fuse_encoder(fused8)
        err_fused = (fused(ids).last_hidden_state - ref).abs().max().item()
        gelu, gelu8 = copy.deepcopy(sp), copy.deepcopy(q)
        fuse_mlp_activations(gelu)
        fuse_mlp_activations(gelu8)
        err_gelu = (gelu(ids).last_hidden_state - ref).abs().max().item()
        t = timeit_interleaved({"dense": lambda: dense(ids), "sparse": lambda: sp(ids), "sparse_int8": lambda: q(ids),
                                "sparse_fused": lambda: fused(ids), "sparse_int8_fused": lambda: fused8(ids),
                                "sparse_gelu": lambda: gelu(ids), "sparse_int8_gelu": lambda: gelu8(ids)},
                               repeats, budget)
    d = med(t["dense"])
    row = {"case": "BERT-base encoder, Level 90%, seq 128, batch 1", "dense_ms": d * 1e3,
           "sparse_ms": med(t["sparse"]) * 1e3, "ratio": d / med(t["sparse"]), "int8_ratio": d / med(t["sparse_int8"]),
           "sparse_layers": f"{len(report.sparse_layers)}/{len(report.layers)}",
           "int8_sparse_layers": f"{len(report8.sparse_layers)}/{len(report8.layers)}",
           "cold_switch": any(d.cold for d in report.layers.values()),
           "fused_ratio": d / med(t["sparse_fused"]), "int8_fused_ratio": d / med(t["sparse_int8_fused"]),
           "gelu_ratio": d / med(t["sparse_gelu"]), "int8_gelu_ratio": d / med(t["sparse_int8_gelu"]),
           "max_abs_err_fp32": err, "max_abs_err_fp32_fused": err_fused, "max_abs_err_fp32_gelu": err_gelu,
           "int8_cosine": cos, "targets": [1.8, 3.0]}
    print(json.dumps(row), flush=True)
    return row


class _Block(nn.Module):
    def __init__(self, d: int, heads: int) -> None:
        super().__init__()
        self.heads, self.ln1, self.ln2 = heads, nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.fc, self.act, self.out = nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d)

    def forward(self, x, cache):
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(d, -1)
        split = lambda z: z.view(b, -1, self.heads, d // self.heads).transpose(1, 2)  # noqa: E731
        q, k, v = split(q), torch.cat([cache[0], split(k)], 2), torch.cat([cache[1], split(v)], 2)
        a = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, t, d)
        x = x + self.proj(a)
        return x + self.out(self.act(self.fc(self.ln2(x))))


class GPT2Shaped(nn.Module):
    """GPT-2 small's shapes with nn.Linear layers (12 x 768, 12 heads, 3072 FFN, 50257 vocabulary, untied head)."""

    def __init__(self, layers: int = 12, d: int = 768, heads: int = 12, vocab: int = 50257) -> None:
        super().__init__()
        self.emb, self.pos = nn.Embedding(vocab, d), nn.Embedding(1024, d)
        self.blocks = nn.ModuleList(_Block(d, heads) for _ in range(layers))
        self.ln, self.head = nn.LayerNorm(d), nn.Linear(d, vocab, bias=False)

    def forward(self, ids, caches):
        x = self.emb(ids) + self.pos(torch.tensor([caches[0][0].shape[2]]))
        for blk, cache in zip(self.blocks, caches):
            x = blk(x, cache)
        return self.head(self.ln(x))


def _gpt2_decode() -> tuple[GPT2Shaped, GPT2Shaped, SparsifyReport, torch.Tensor, list]:
    """The ``gpt2`` cases' decode step: the 70 % dense model, its ``sparsify``-ed copy (with cold weights: the model
    exceeds the last-level cache) and the report, one token's ids and the 12 layers' 128-token KV caches."""
    torch.manual_seed(4)
    dense = GPT2Shaped().eval()
    _prune_linears(dense, 0.7)
    caches = [(torch.randn(1, 12, 128, 64), torch.randn(1, 12, 128, 64)) for _ in range(12)]
    ids = torch.randint(0, 50257, (1, 1))
    sp = copy.deepcopy(dense)
    return dense, sp, sparsify(sp, (ids, caches)), ids, caches


def gpt2(repeats: int, budget: float) -> dict:
    dense, sp, report, ids, caches = _gpt2_decode()
    warm = copy.deepcopy(dense)
    report_warm = sparsify(warm, (ids, caches), cold=False)  # the switch as before: every layer timed warm
    from nnic.quantization import fuse_activation

    gelu = copy.deepcopy(sp)
    fused = sum(1 for blk in gelu.blocks if isinstance(blk.fc, SparseLinear) and fuse_activation(blk, "fc", "act"))
    with torch.no_grad():
        err = (sp(ids, caches) - dense(ids, caches)).abs().max().item()
        err_gelu = (gelu(ids, caches) - dense(ids, caches)).abs().max().item()
        t = timeit_interleaved({"dense": lambda: dense(ids, caches), "sparse": lambda: sp(ids, caches),
                                "sparse_gelu": lambda: gelu(ids, caches),
                                "sparse_warm_switch": lambda: warm(ids, caches)}, repeats, budget)
    d = med(t["dense"])
    row = {"case": "GPT-2-small-shaped decoder, Level 70%, one-token decode (128 cached)", "dense_ms": d * 1e3,
           "sparse_ms": med(t["sparse"]) * 1e3, "ratio": d / med(t["sparse"]),
           "gelu_ratio": d / med(t["sparse_gelu"]), "gelu_fused_blocks": fused, "max_abs_err_gelu": err_gelu,
           "sparse_layers": f"{len(report.sparse_layers)}/{len(report.layers)}", "max_abs_err": err,
           "cold_switch": any(d.cold for d in report.layers.values()),
           "ratio_warm_switch": d / med(t["sparse_warm_switch"]),
           "sparse_layers_warm_switch": f"{len(report_warm.sparse_layers)}/{len(report_warm.layers)}", "target": 2.0}
    print(json.dumps(row), flush=True)
    return row


def _kind_of(name: str, module: nn.Module) -> str | None:
    """The GPT2Shaped layer kind a module is timed under (``qkv``, ``proj``, ``fc``, ``out``, ``head``)."""
    if isinstance(module, (nn.Linear, SparseLinear)):
        return name.rsplit(".", 1)[-1]
    return None


def gpt2_split(repeats: int) -> dict:
    """One decode step of the 70 % GPT-2 split by layer kind, dense against sparse (``sparsify`` as in ``gpt2``) in
    the same process: forward hooks around every Linear / ``SparseLinear`` read the clock, the steps alternate
    dense, sparse, sparse, dense...; per kind the median over steps of its summed time, and the rest of the
    step (attention, LayerNorm, GELU, embeddings, the hooks themselves) as the step minus its layers."""
    dense, sp, report, ids, caches = _gpt2_decode()
    spent: dict[tuple[str, str], list[float]] = {}
    steps: dict[str, list[float]] = {"dense": [], "sparse": []}
    for tag, model in (("dense", dense), ("sparse", sp)):
        started: dict[str, float] = {}
        for name, m in model.named_modules():
            kind = _kind_of(name, m)
            if kind is not None:
                m.register_forward_pre_hook(lambda mod, inp, name=name: started.__setitem__(name, _clock()))
                m.register_forward_hook(lambda mod, inp, out, name=name, kind=kind, tag=tag:
                                        spent.setdefault((tag, kind), []).append(_clock() - started[name]))
    n = max(repeats, 5)
    with torch.no_grad():
        for r in range(2 * n):
            tag, model = (("dense", dense), ("sparse", sp))[(r + r // 2) % 2]  # dense, sparse, sparse, dense, ...
            t = _clock()
            model(ids, caches)
            steps[tag].append(_clock() - t)
    row: dict = {"case": "GPT-2 70% decode step by layer kind (ms; median over steps)",
                 "sparse_layers": f"{len(report.sparse_layers)}/{len(report.layers)}",
                 "head": {k: getattr(report.layers["head"], k) for k in ("chosen", "dense_ms", "sparse_ms", "speedup")}}
    for tag in ("dense", "sparse"):
        per_kind = {}
        for (t, kind), times in spent.items():
            if t == tag:
                calls = len(times) // n
                per_kind[kind] = med([sum(times[i * calls:(i + 1) * calls]) for i in range(n)]) * 1e3
        step = med(steps[tag]) * 1e3
        row[tag] = {"step_ms": step, **per_kind, "rest_ms": step - sum(per_kind.values())}
    row["ratio"] = row["dense"]["step_ms"] / row["sparse"]["step_ms"]
    row["layer_ratios"] = {k: row["dense"][k] / row["sparse"][k] for k in row["sparse"] if k != "step_ms"}
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=21)
    ap.add_argument("--budget", type=float, default=4.0, help="seconds per timing group")
    ap.add_argument("--only", nargs="*", default=["layer", "bandwidth", "storage", "bert", "gpt2"])
    ap.add_argument("--json", type=Path)
    ap.add_argument("--clock", choices=sorted(CLOCK), default="wall",
                    help="wall time, or process CPU time (meaningful with --threads 1 on a loaded machine)")
    a = ap.parse_args()
    global _clock
    _clock = CLOCK[a.clock]
    torch.set_num_threads(a.threads)
    kernels.set_num_threads(a.threads)
    print(f"threads={a.threads} clock={a.clock} isa={kernels.active_isa()} backend={kernels.gemm_backend()}",
          flush=True)
    results: dict = {}
    if "layer" in a.only:
        results["layer"] = layer_cases(a.repeats, a.budget)
        results["int8"] = int8_case(a.repeats, a.budget)
    if "kernels" in a.only:
        results["kernels"] = kernel_choice(a.repeats)
    if "bandwidth" in a.only:
        results["bandwidth"] = bandwidth(a.repeats)
    if "storage" in a.only:
        results["storage"] = storage()
    if "bert" in a.only:
        results["bert"] = bert(max(5, a.repeats // 3), a.budget * 2)
    if "gpt2" in a.only:
        results["gpt2"] = gpt2(a.repeats, a.budget)
    if "gpt2split" in a.only:
        results["gpt2split"] = gpt2_split(a.repeats)
    if a.json:
        a.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
