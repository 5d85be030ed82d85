"""Where an int8 BERT-base forward spends its time, per op class: nnic's own path (with and without the fused encoder
kernels) against onnxruntime running its own ``quantize_dynamic`` model.

    python bench/encoder_profile.py                          # batch 8, seq 128, 2 threads
    python bench/encoder_profile.py --threads 1 --rounds 3   # one thread (on a loaded machine: see the CPU column)
    python bench/encoder_profile.py --attention               # the attention kernel alone, per ISA path
    python bench/encoder_profile.py --kernel-calls --threads 1  # each kernel call of the fused forward, no profiler
    python bench/encoder_profile.py --kernel-calls --threads 1 --attention-products float32  # float32 products
    python bench/encoder_profile.py --kernel-calls --threads 1 2  # one and two threads alternated: what scales

``--attention`` times ``nnic.kernels.attention`` alone at the model's shape (one fused QKV buffer read in place),
on every ISA path this CPU has, in interleaved rounds: one thread (that thread's CPU time) and two threads (wall),
in ms per call and GMAC/s of its two products together. Where its time goes stage by stage (K packing, Q Kᵀ,
softmax, P V, output writes; ns per exponential): ``cargo run --release -p nnic-kernels --example attention_parts``.

``--kernel-calls`` runs the all-fused model's forward as its kernel calls straight from Python (embeddings, then
per layer: QKV GEMM, attention, output GEMM + skip LayerNorm (one call), MLP up + GELU, MLP down + skip LayerNorm;
its output is checked equal to the model's, bit for bit) and times each call on the thread's CPU clock at one thread (wall
time with more), in interleaved rounds with the model's own forward: where the time goes inside the real forward,
with its cache state (each kernel alone, on data it just used, is faster: the MLP-up GEMM 12.4 against 13.8 ms, a
skip LayerNorm 0.27 against 0.77 ms), and without the profiler's own cost per op. Several ``--threads`` alternate
within each round and print each stage's time against the first count's, with the process's CPU time beside the
wall time: a two-thread stage whose process CPU is well under twice its wall time did not have both cores (another
process held one), so only rounds on a quiet machine say how a stage scales.

The model is bench/onnx.py's (BERT-base, random init, seed 0, every Linear int8, GELU in the GEMM epilogue, one
QKV GEMM per layer). nnic's forwards run under ``torch.profiler``; each nnic kernel call is wrapped in a
``record_function`` so that its time counts as one class (its self time is the kernel). Classes: int8 GEMMs
(activation quantization included: it is inside the kernel call), attention (torch's SDPA or nnic's kernel),
LayerNorm and residual adds (torch's two ops, or nnic's skip LayerNorm), embeddings, other torch ops, and for the
all-fused model (``fuse_encoder``: its encoder is one native call since 2026-12-02) the encoder layers as one class,
whose stages ``--kernel-calls`` splits; "Python and glue" is the forward's wall time minus all of these. onnxruntime's rows are its own profile
(``SessionOptions.enable_profiling``), per op type, summed over the same number of runs. Printed per forward.
"""

from __future__ import annotations

import argparse
import collections
import copy
import json
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch
from torch import nn

_BENCH = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _BENCH]  # bench/onnx.py shadows the onnx package
sys.path.insert(0, str(_BENCH.parent))

import nnic  # noqa: E402
from bench.onnx import LastHidden, bert, session  # noqa: E402
from nnic import kernels  # noqa: E402

#: torch profiler keys -> op class (anything else: "other torch ops").
CLASSES = {"nnic int8 GEMM": "int8 GEMMs (+ activation quantization)",
           "aten::_scaled_dot_product_flash_attention_for_cpu": "attention", "nnic attention": "attention",
           "aten::native_layer_norm": "LayerNorm + residual add", "aten::add": "LayerNorm + residual add",
           "nnic skip_layer_norm": "LayerNorm + residual add", "aten::index_select": "embeddings",
           "nnic embed_layer_norm": "embeddings",
           "nnic linear_skip_layer_norm": "block endings (int8 GEMM + skip LayerNorm, one call)",
           "nnic encoder layers": "encoder layers (all their kernels, one native call)"}


def _traced(fn, label: str):
    def run(*args, **kw):
        with torch.profiler.record_function(label):
            return fn(*args, **kw)
    return run


def profile_nnic(model: nn.Module, ids: torch.Tensor, rounds: int) -> dict[str, float]:
    """Milliseconds per forward per op class, and the forward's wall and process CPU time."""
    with torch.inference_mode():
        model(ids)
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            t0, c0 = time.perf_counter(), time.process_time()
            for _ in range(rounds):
                model(ids)
            wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    per: dict[str, float] = collections.Counter()
    for e in prof.key_averages():
        per[CLASSES.get(e.key, "other torch ops")] += e.self_cpu_time_total / 1e3 / rounds
    per["Python and glue (wall - ops)"] = wall * 1e3 / rounds - sum(per.values())
    return {"forward wall": wall * 1e3 / rounds, "forward process CPU": cpu * 1e3 / rounds, **per}


def profile_ort(path: str, ids: torch.Tensor, threads: int, rounds: int, tmp: Path) -> dict[str, float]:
    import onnxruntime as ort

    s = session(path, threads)
    feed = {"input_ids": ids.numpy()}
    s.run(None, feed)
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.enable_profiling, options.profile_file_prefix = True, str(tmp / "ort-profile")
    s = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    s.run(None, feed)  # the first run (allocations, kernel choice) is dropped below
    t0 = time.perf_counter()
    for _ in range(rounds):
        s.run(None, feed)
    wall = time.perf_counter() - t0
    events = json.loads(Path(s.end_profiling()).read_text())
    runs = [e for e in events if e.get("name") == "model_run"]
    start = runs[1]["ts"] if len(runs) > 1 else 0
    per: dict[str, float] = collections.Counter()
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time") and e["ts"] >= start:
            per[e["args"]["op_name"]] += e["dur"] / 1e3 / rounds
    return {"forward wall": wall * 1e3 / rounds, **dict(per.most_common())}


def attention_alone(batch: int, seq: int, rounds: int, heads: int = 12, head_dim: int = 64) -> None:
    """Prints ``nnic.kernels.attention``'s time per call at BERT-base's shape on every ISA path (see the module doc)."""
    hidden = heads * head_dim
    qkv = torch.randn(batch, seq, 3 * hidden, generator=torch.Generator().manual_seed(0))
    q, k, v = qkv.split(hidden, -1)
    macs = 2 * batch * heads * seq * seq * head_dim
    before = kernels.active_isa()
    times: dict[tuple[str, int], list[float]] = collections.defaultdict(list)
    for threads, clock in ((1, time.thread_time), (2, time.perf_counter)):
        torch.set_num_threads(threads)
        kernels.set_num_threads(threads)
        for r in range(rounds + 1):
            for isa in kernels.supported_isas():
                kernels.set_isa(isa)
                t0 = clock()
                kernels.attention(q, k, v, heads)
                if r:  # round 0 warms up
                    times[isa, threads].append(clock() - t0)
    kernels.set_isa(before)
    print(f"attention alone: batch {batch}, seq {seq}, {heads} heads of {head_dim}; median of {rounds} interleaved "
          f"rounds")
    for isa in kernels.supported_isas():
        one, two = (statistics.median(times[isa, t]) for t in (1, 2))
        print(f"  {isa:8s} 1 thread (CPU) {one * 1e3:8.2f} ms {macs / one / 1e9:6.1f} GMAC/s   "
              f"2 threads (wall) {two * 1e3:8.2f} ms {macs / two / 1e9:6.1f} GMAC/s")


def kernel_calls(model: nn.Module, ids: torch.Tensor, rounds: int, thread_counts: list[int]) -> None:
    """Prints the ms per forward of each kernel class of the all-fused model's forward (see the module doc), at each
    thread count in ``thread_counts``, the counts alternating within every round."""
    from nnic.kernels.adapters import float_output

    bert_model = model.model if isinstance(model, LastHidden) else model

    def linear(layer: nn.Module, x2: torch.Tensor) -> torch.Tensor:
        y = float_output(x2.shape[0], layer.out_features)
        bias = None if layer.bias is None else layer.bias.numpy()
        kernels.run_packed_linear(layer._packed_weight(), x2, y, bias, *layer.kernel_args())
        return y

    def ending(x2: torch.Tensor, residual: torch.Tensor, block: nn.Module) -> torch.Tensor:
        dense, ln = block.dense, block.LayerNorm
        act, symmetric, act_scale, act_zero_point, path, _, reduce_range = dense.kernel_args()
        return kernels.linear_skip_layer_norm(x2, dense._packed_weight(), residual, ln.weight, ln.bias, ln.eps,
                                              linear_bias=dense.bias, act=act, symmetric=symmetric,
                                              act_scale=act_scale, act_zero_point=act_zero_point, path=path,
                                              reduce_range=reduce_range)

    def forward(times: collections.Counter, cpu: collections.Counter, clock) -> torch.Tensor:
        def timed(name: str, fn, *args):
            t, c = clock(), time.process_time()
            y = fn(*args)
            times[name] += clock() - t
            cpu[name] += time.process_time() - c
            return y

        h = timed("embeddings", lambda: bert_model.embeddings(input_ids=ids))
        batch, seq, hidden = h.shape
        h = h.reshape(-1, hidden)
        for layer in bert_model.encoder.layer:
            sa, so, out = layer.attention.self.inner, layer.attention.output.inner, layer.output.inner
            qkv = timed("GEMM QKV", linear, sa.qkv.fused, h).view(batch, seq, 3 * hidden)
            ctx = timed("attention", lambda: kernels.attention(
                qkv[..., :hidden], qkv[..., hidden:2 * hidden], qkv[..., 2 * hidden:], sa.num_attention_heads,
                sa.scaling, None, products=layer.attention.self.products_now()))
            a = timed("GEMM attention output + LN", ending, ctx.view(-1, hidden), h, so)
            m = timed("GEMM MLP up + GELU", linear, layer.intermediate.dense, a)
            h = timed("GEMM MLP down + LN", ending, m, a, out)
        return h.view(batch, seq, hidden)

    def set_threads(threads: int) -> None:
        torch.set_num_threads(threads)
        kernels.set_num_threads(threads)

    with torch.inference_mode():
        for threads in thread_counts:
            set_threads(threads)
            want = model(ids)
            if not torch.equal(forward(collections.Counter(), collections.Counter(), time.perf_counter), want):
                raise SystemExit("the kernel calls do not reproduce the fused model's output: the model's layout "
                                 "changed")
        # per (name, threads): the clock's ms (thread CPU at one thread, wall with more) and the process's CPU ms
        per: dict[tuple[str, int], list[float]] = collections.defaultdict(list)
        per_cpu: dict[tuple[str, int], list[float]] = collections.defaultdict(list)
        for _ in range(rounds):
            for threads in thread_counts:
                set_threads(threads)
                clock = time.thread_time if threads == 1 else time.perf_counter
                times: collections.Counter = collections.Counter()
                cpu: collections.Counter = collections.Counter()
                t, c = clock(), time.process_time()
                forward(times, cpu, clock)
                times["forward by kernel calls"], cpu["forward by kernel calls"] = clock() - t, time.process_time() - c
                t, c = clock(), time.process_time()
                model(ids)
                times["model forward (modules)"], cpu["model forward (modules)"] = clock() - t, time.process_time() - c
                for k in times:
                    per[k, threads].append(times[k] * 1e3)
                    per_cpu[k, threads].append(cpu[k] * 1e3)
    names = list(dict.fromkeys(k for k, _ in per))
    med = {k: statistics.median(v) for k, v in per.items()}
    med_cpu = {k: statistics.median(v) for k, v in per_cpu.items()}
    print(f"kernel calls of the all-fused forward, median of {rounds} interleaved rounds, ms per forward; at one "
          f"thread that thread's CPU time, with more the wall time, and the process's CPU time beside it (both "
          f"threads' work plus any spinning: about twice the wall time when both cores were ours throughout)")
    first = thread_counts[0]
    for threads in thread_counts:
        total = med["forward by kernel calls", threads]
        clock = "thread CPU" if threads == 1 else "wall"
        print(f"\n{threads} thread{'s' if threads > 1 else ''}: {clock:10s} share  process CPU"
              + (f"  {clock} / {first} thread{'s' if first > 1 else ''}'s" if threads != first else ""))
        for k in names:
            v = med[k, threads]
            ratio = f"  {v / med[k, first]:9.3f}" if threads != first else ""
            print(f"  {k:32s} {v:8.1f} {100 * v / total:6.1f} %  {med_cpu[k, threads]:8.1f}{ratio}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--threads", type=int, nargs="+", default=[2],
                    help="thread count (several, with --kernel-calls: alternated within each round)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--no-ort", action="store_true", help="skip onnxruntime (its export takes about a minute)")
    ap.add_argument("--attention", action="store_true", help="time the attention kernel alone (see above)")
    ap.add_argument("--kernel-calls", action="store_true", help="time each kernel call of the fused forward (see above)")
    ap.add_argument("--reduce-range", action="store_true",
                    help="lower with reduce_range=True (7-bit activations, as torch's quantize_dynamic on x86)")
    ap.add_argument("--attention-products", choices=("auto", "float32", "bfloat16"), default="auto",
                    help="fuse_encoder's attention products (auto, the default: bfloat16 where the CPU has "
                         "AVX512_BF16, the projections being int8; float32: the switch back)")
    args = ap.parse_args()
    if args.attention:
        attention_alone(args.batch, args.seq, max(args.rounds, 15))
        return
    threads = args.threads[0]
    torch.set_num_threads(threads)
    kernels.set_num_threads(threads)
    from nnic.quantization.modules import Int8Linear
    from nnic_transformers import fuse_encoder, fuse_mlp_activations, fuse_projections

    Int8Linear.forward = _traced(Int8Linear.forward, "nnic int8 GEMM")
    kernels.attention = _traced(kernels.attention, "nnic attention")
    kernels.skip_layer_norm = _traced(kernels.skip_layer_norm, "nnic skip_layer_norm")
    kernels.embed_layer_norm = _traced(kernels.embed_layer_norm, "nnic embed_layer_norm")
    kernels.linear_skip_layer_norm = _traced(kernels.linear_skip_layer_norm, "nnic linear_skip_layer_norm")
    kernels.encoder_layer = _traced(kernels.encoder_layer, "nnic encoder layers")
    kernels.encoder_layers = _traced(kernels.encoder_layers, "nnic encoder layers")
    model = LastHidden(bert()).eval()
    q = nnic.quantization_speedup(copy.deepcopy(model), {
        n: 8 for n, m in model.named_modules() if isinstance(m, nn.Linear)}, reduce_range=args.reduce_range)
    fuse_mlp_activations(q)
    fuse_projections(q)
    fused = copy.deepcopy(q)
    fuse_encoder(fused, attention_products=args.attention_products)
    ids = torch.randint(0, 30522, (args.batch, args.seq), generator=torch.Generator().manual_seed(args.batch))
    if args.kernel_calls:
        kernel_calls(fused, ids, args.rounds, args.threads)
        return
    print(f"batch {args.batch}, seq {args.seq}, threads {threads}, {args.rounds} forwards each; ms per forward")
    tables = {"nnic int8 (GELU + QKV fused)": profile_nnic(q, ids, args.rounds),
              "nnic int8 + fuse_encoder": profile_nnic(fused, ids, args.rounds)}
    if not args.no_ort:
        from onnxruntime.quantization import QuantType, quantize_dynamic

        with tempfile.TemporaryDirectory(prefix="nnic-bench-profile-") as name:
            tmp = Path(name)
            nnic.export_onnx(model, {"input_ids": ids[:1]}, tmp / "float.onnx")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                quantize_dynamic(str(tmp / "float.onnx"), str(tmp / "ort.onnx"), per_channel=True,
                                 weight_type=QuantType.QInt8)
            tables["onnxruntime quantize_dynamic"] = profile_ort(str(tmp / "ort.onnx"), ids, threads,
                                                                 args.rounds, tmp)
    for title, rows in tables.items():
        print(f"\n{title}")
        total = rows["forward wall"]
        for k, v in rows.items():
            share = "" if k.startswith("forward") else f"{100 * v / total:5.1f} %"
            print(f"  {k:42s} {v:8.1f} {share}")


if __name__ == "__main__":
    main()
