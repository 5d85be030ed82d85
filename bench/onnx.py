"""int8 BERT-base encoder: nnic's kernels vs onnxruntime running nnic's export vs onnxruntime's own quantization.

    pip install 'nnic[onnx]' transformers        # random weights from the config; nothing is downloaded
    python bench/onnx.py                         # seq 128, batch 1 and 8, 2 threads
    python bench/onnx.py --batches 8 --threads 2 --budget 60

One BERT-base encoder (12 x 768, FFN 3072, random init, seed 0) in five forms, all timed round-robin (medians of
interleaved rounds) at the same thread count:

- ``float32 torch``: the float model in torch;
- ``nnic int8``: ``nnic.quantization_speedup`` (every Linear: per-channel int8 weights, per-token dynamic int8
  activations) on nnic's Rust GEMM; ``nnic int8, GELU fused``: the same after
  ``nnic_transformers.fuse_mlp_activations`` (the MLP's GELU computed in the GEMM epilogue); ``GELU + QKV
  fused``: also each self-attention's query/key/value as one GEMM (``nnic_transformers.fuse_projections``);
  ``all fused``: also the attention and each residual + LayerNorm on nnic's fused encoder kernels
  (``nnic_transformers.fuse_encoder``: the attention reads the QKV GEMM's output in place; its default computes
  the attention's products in bfloat16 where the CPU has AVX512_BF16, since the projections are int8: the goal
  rows); ``all fused, float32 attn``: the same with ``fuse_encoder(..., attention_products="float32")``, the
  switch back (the default before 2026-12-02);
- ``ort: nnic export (integer)`` / ``(qdq)``: that model written by ``nnic.export_onnx`` with
  ``int8_format="integer"`` (DynamicQuantizeLinear + MatMulInteger) and ``"qdq"`` (Quantize/DequantizeLinear
  around float MatMul), run by onnxruntime;
- ``ort: quantize_dynamic``: the float model exported to ONNX, then
  ``onnxruntime.quantization.quantize_dynamic(..., per_channel=True, weight_type=QInt8)``.

``--ops`` prints the op types onnxruntime runs for each ONNX model (its optimised graph, as the sessions here build
it): ``quantize_dynamic``'s BERT runs its 72 weight products as ``DynamicQuantizeMatMul`` / ``MatMulIntegerToFloat``
and the attention's two activation products (``q kᵀ``, ``p v``) as float32 ``FusedMatMul`` / ``MatMul``, unfused.

``--clock cpu`` times process CPU time instead of wall time (use it with ``--threads 1`` on a loaded machine).
Agreement: cosine similarity and max |diff| of the last hidden state against float32 torch. Each ONNX file is
exported once at batch 1 and run at every batch (the batch and sequence axes are dynamic).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

# This file is named like the onnx package: its folder must not shadow it on sys.path.
_BENCH = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _BENCH]
sys.path.insert(0, str(_BENCH.parent))

import nnic  # noqa: E402
from bench import _timing  # noqa: E402
from nnic import kernels  # noqa: E402


def bert() -> nn.Module:
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    return BertModel(BertConfig(), add_pooling_layer=False).eval()


class LastHidden(nn.Module):
    """The encoder returning only its last hidden state (the one output every variant is compared on)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids).last_hidden_state


def session(path: str, threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    # Idle onnxruntime workers spin by default and would steal the cores from the torch runs interleaved with them.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def op_counts(path: str, threads: int, tmp: Path) -> list[tuple[str, int]]:
    """The op types (``domain:op``, ``com.microsoft`` for onnxruntime's contrib ops) of the graph onnxruntime runs
    for the model at ``path`` after its graph optimisations (the default level, as :func:`session` uses), most
    frequent first."""
    import collections

    import onnx
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    options.optimized_model_filepath = str(tmp / f"optimised-{Path(path).name}")
    ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    graph = onnx.load(options.optimized_model_filepath, load_external_data=False).graph
    return collections.Counter(f"{n.domain or 'ai.onnx'}:{n.op_type}" for n in graph.node).most_common()


def agreement(y: np.ndarray | torch.Tensor, ref: torch.Tensor) -> str:
    y = torch.as_tensor(y)
    c = F.cosine_similarity(y.flatten().double(), ref.flatten().double(), dim=0).item()
    return f"cos {c:.5f}  max|diff| {(y - ref).abs().max().item():.4g}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batches", nargs="*", type=int, default=[1, 8])
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=11, help="max rounds")
    ap.add_argument("--budget", type=float, default=40.0, help="seconds per batch")
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall", help="wall time, or process CPU time")
    ap.add_argument("--ops", action="store_true", help="print the op types onnxruntime runs for each ONNX model")
    ap.add_argument("--int8-weights", choices=("uint8", "int8"), default="uint8",
                    help="how nnic's export stores the weight codes (export_onnx's int8_weights; the README's onnx "
                         "rows before 2026-12-02 are int8, on a VNNI machine)")
    args = ap.parse_args()
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    import onnxruntime as ort
    from onnxruntime.quantization import QuantType, quantize_dynamic

    torch.set_num_threads(args.threads)
    kernels.set_num_threads(args.threads)
    from nnic_transformers import fuse_encoder, fuse_mlp_activations, fuse_projections

    print(f"torch {torch.__version__}, onnxruntime {ort.__version__}, threads {args.threads}, seq {args.seq}, "
          f"clock {args.clock}")
    model = LastHidden(bert()).eval()
    qmodel = nnic.quantization_speedup(copy.deepcopy(model), {
        n: 8 for n, m in model.named_modules() if isinstance(m, nn.Linear)})
    fused = copy.deepcopy(qmodel)
    fuse_mlp_activations(fused)
    shared = copy.deepcopy(fused)
    fuse_projections(shared)
    encoder = copy.deepcopy(shared)
    f32_attention = copy.deepcopy(shared)
    fuse_encoder(encoder)
    fuse_encoder(f32_attention, attention_products="float32")
    example = {"input_ids": torch.randint(0, 30522, (1, args.seq))}
    # the exported models (~0.9 GB) are removed when the run ends, on success or error
    with tempfile.TemporaryDirectory(prefix="nnic-bench-onnx-") as tmp_name:
        tmp = Path(tmp_name)
        files = {}
        for fmt in ("integer", "qdq"):
            result = nnic.export_onnx(qmodel, example, tmp / f"nnic-{fmt}.onnx", int8_format=fmt,
                                      int8_weights=args.int8_weights)
            print(f"nnic export ({fmt}): verified at batch 1 and 2, error {max(result.errors.values()):.3g} of the peak "
                  f"(tolerance {nnic.export.TOLERANCES[result.kind]})")
            files[fmt] = str(result.path)
        nnic.export_onnx(model, example, tmp / "float.onnx")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            quantize_dynamic(str(tmp / "float.onnx"), str(tmp / "ort-dynamic.onnx"), per_channel=True,
                             weight_type=QuantType.QInt8)
        if args.ops:
            for name, path in (("nnic export (integer)", files["integer"]), ("nnic export (qdq)", files["qdq"]),
                               ("quantize_dynamic", str(tmp / "ort-dynamic.onnx"))):
                ops = ", ".join(f"{op} {n}" for op, n in op_counts(path, args.threads, tmp))
                print(f"onnxruntime runs for {name}: {ops}")
        sessions = {"integer": session(files["integer"], args.threads), "qdq": session(files["qdq"], args.threads),
                    "ort": session(str(tmp / "ort-dynamic.onnx"), args.threads)}
        for batch in args.batches:
            ids = torch.randint(0, 30522, (batch, args.seq), generator=torch.Generator().manual_seed(batch))
            feed = {"input_ids": ids.numpy()}
            with torch.inference_mode():
                ref = model(ids)
            fns = {
                "float32 torch": lambda: model(ids),
                "nnic int8": lambda: qmodel(ids),
                "nnic int8, GELU fused": lambda: fused(ids),
                "nnic int8, GELU + QKV fused": lambda: shared(ids),
                "nnic int8, all fused": lambda: encoder(ids),
                **({"nnic int8, all fused, f32 attn": lambda: f32_attention(ids)} if kernels.bf16_products_run()
                   else {}),
                "ort: nnic export (integer)": lambda: sessions["integer"].run(None, feed),
                "ort: nnic export (qdq)": lambda: sessions["qdq"].run(None, feed),
                "ort: quantize_dynamic": lambda: sessions["ort"].run(None, feed),
            }
            with torch.inference_mode():
                times = _timing.timeit_interleaved(fns, args.repeats, args.budget, clock)
                outputs = {"float32 torch": ref, "nnic int8": qmodel(ids), "nnic int8, GELU fused": fused(ids),
                           "nnic int8, GELU + QKV fused": shared(ids), "nnic int8, all fused": encoder(ids),
                           "nnic int8, all fused, f32 attn": f32_attention(ids)}
            outputs.update({k: fns[k]()[0] for k in fns if k.startswith("ort")})
            med = {k: statistics.median(v) for k, v in times.items()}
            print(f"\nbatch {batch}  [median of {len(times['nnic int8'])} rounds]")
            for k, t in med.items():
                print(f"  {k:28s} {t * 1e3:8.1f} ms  {med['float32 torch'] / t:5.2f}x float32  "
                      f"{med['ort: quantize_dynamic'] / t:5.2f}x ort quantize_dynamic   {agreement(outputs[k], ref)}")


if __name__ == "__main__":
    main()
