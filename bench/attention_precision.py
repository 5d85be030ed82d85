"""How close nnic's int8 BERT stays to the float32 model with the attention's products in float32 and in bfloat16,
beside onnxruntime's own ``quantize_dynamic`` of the same model: the evidence for the attention's default precision.

    pip install 'nnic[onnx]' transformers        # random weights from the config; nothing is downloaded
    python bench/attention_precision.py          # 3 models x seq 128, 32 x batch 1, 8 x 2 input draws
    python bench/attention_precision.py --models 0.02:0 --seqs 128 --batches 8 --draws 1   # one quick case

No timing: every number is a deterministic comparison with the float32 torch model. The models are BERT-base
shaped (12 x 768, FFN 3072, 12 heads) with random weights: ``--models RANGE:SEED ...`` sets each one's
``initializer_range`` and seed. At the default range (0.02) the attention scores are small (standard deviation
~0.3: nearly uniform attention); a range of 0.05 gives scores with a standard deviation of ~2 (peaked attention, as
in trained models), where rounding q and k to bfloat16 moves the scores most.

For each model: the float32 model (torch), nnic int8 (``quantization_speedup`` of every Linear, GELU in the GEMM,
one QKV GEMM, ``fuse_encoder``) with ``attention_products="float32"`` and ``"bfloat16"``, onnxruntime running
``quantize_dynamic(per_channel=True, weight_type=QInt8)`` of the float model's ONNX export, and the float model with
only its attention's products in bfloat16 (``fuse_encoder(float model, attention_products="bfloat16")``: the
rounding's own error, without int8's). Per input shape: the
last hidden state's cosine with float32, its error norm relative to float32's norm and its max |diff|; and a
classification head (BERT's pooler, tanh of a dense layer on the first token, then a 3-way linear classifier, in
float32, seeded like the model) on each variant's last hidden state: its logits' max |diff| from the float32
model's and how many sequences' argmax agree. Prints one line per case and a summary per variant (worst and median
over the cases).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import tempfile
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

_BENCH = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _BENCH]  # bench/onnx.py shadows the onnx package
sys.path.insert(0, str(_BENCH.parent))

import nnic  # noqa: E402
from bench.onnx import LastHidden, session  # noqa: E402
from nnic import kernels  # noqa: E402

VARIANTS = ("nnic int8, float32 attention", "nnic int8, bf16 attention", "ort quantize_dynamic",
            "float32 model, bf16 attention")


def bert(init_range: float, seed: int) -> nn.Module:
    from transformers import BertConfig, BertModel

    torch.manual_seed(seed)
    return LastHidden(BertModel(BertConfig(initializer_range=init_range), add_pooling_layer=False).eval()).eval()


class Head(nn.Module):
    """BERT's sequence classification head: the pooler (tanh of a dense layer on the first token) and a linear
    classifier, in float32."""

    def __init__(self, hidden: int, labels: int, init_range: float, seed: int) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed + 1000)
        self.pool = nn.Linear(hidden, hidden)
        self.classify = nn.Linear(hidden, labels)
        for lin in (self.pool, self.classify):
            nn.init.normal_(lin.weight, std=init_range, generator=g)
            nn.init.zeros_(lin.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.classify(torch.tanh(self.pool(hidden[:, 0])))


def compare(y: torch.Tensor, ref: torch.Tensor, logits: torch.Tensor, ref_logits: torch.Tensor) -> dict:
    y, ref = y.double(), ref.double()
    return {"cos": F.cosine_similarity(y.flatten(), ref.flatten(), dim=0).item(),
            "rel": ((y - ref).norm() / ref.norm()).item(), "max": (y - ref).abs().max().item(),
            "logit_max": (logits - ref_logits).abs().max().item(),
            "agree": int((logits.argmax(-1) == ref_logits.argmax(-1)).sum()), "n": logits.shape[0]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="*", default=["0.02:0", "0.02:1", "0.05:0"], help="initializer_range:seed")
    ap.add_argument("--seqs", nargs="*", type=int, default=[128, 32])
    ap.add_argument("--batches", nargs="*", type=int, default=[1, 8])
    ap.add_argument("--draws", type=int, default=2, help="input draws per (seq, batch)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from nnic_transformers import fuse_encoder, fuse_mlp_activations, fuse_projections

    torch.set_num_threads(args.threads)
    kernels.set_num_threads(args.threads)
    if not kernels.bf16_products_run():
        print("note: this CPU/ISA path has no AVX512_BF16: the bf16 variant computes float32 products")
    results: dict[str, list[dict]] = {v: [] for v in VARIANTS}
    for spec in args.models:
        init_range, seed = float(spec.split(":")[0]), int(spec.split(":")[1])
        model = bert(init_range, seed)
        head = Head(768, 3, init_range, seed).eval()
        q = nnic.quantization_speedup(copy.deepcopy(model), {
            n: 8 for n, m in model.named_modules() if isinstance(m, nn.Linear)})
        fuse_mlp_activations(q)
        fuse_projections(q)
        f32, bf16, float_bf16 = copy.deepcopy(q), copy.deepcopy(q), copy.deepcopy(model)
        fuse_encoder(f32, attention_products="float32")
        fuse_encoder(bf16, attention_products="bfloat16")
        fuse_encoder(float_bf16, attention_products="bfloat16")
        with tempfile.TemporaryDirectory(prefix="nnic-bench-precision-") as tmp_name:
            tmp = Path(tmp_name)
            nnic.export_onnx(model, {"input_ids": torch.randint(0, 30522, (1, 128))}, tmp / "float.onnx")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                quantize_dynamic(str(tmp / "float.onnx"), str(tmp / "ort.onnx"), per_channel=True,
                                 weight_type=QuantType.QInt8)
            ort = session(str(tmp / "ort.onnx"), args.threads)
            for seq in args.seqs:
                for batch in args.batches:
                    for draw in range(args.draws):
                        g = torch.Generator().manual_seed(1 + 7919 * draw + 31 * seq + batch)
                        ids = torch.randint(0, 30522, (batch, seq), generator=g)
                        with torch.inference_mode():
                            ref = model(ids)
                            ys = {VARIANTS[0]: f32(ids), VARIANTS[1]: bf16(ids),
                                  VARIANTS[2]: torch.from_numpy(ort.run(None, {"input_ids": ids.numpy()})[0]),
                                  VARIANTS[3]: float_bf16(ids)}
                            ref_logits = head(ref)
                            line = [f"range {init_range} seed {seed} seq {seq:3d} batch {batch} draw {draw}:"]
                            for name, y in ys.items():
                                r = compare(y, ref, head(y), ref_logits)
                                r["case"] = (init_range, seed, seq, batch, draw)
                                results[name].append(r)
                                line.append(f"{name} cos {r['cos']:.6f} rel {r['rel']:.4f} "
                                            f"max {r['max']:.3f} logits {r['logit_max']:.4f} "
                                            f"argmax {r['agree']}/{r['n']}")
                        print("\n  ".join(line), flush=True)
    by_model: dict[tuple, dict[str, list[dict]]] = {}
    for name, rs in results.items():
        for r in rs:
            by_model.setdefault(r["case"][:2], {}).setdefault(name, []).append(r)
    for (init_range, seed), per in by_model.items():
        print(f"\nmodel range {init_range} seed {seed}, medians over {len(per[VARIANTS[0]])} cases (worst)")
        for name, rs in per.items():
            print(f"  {name:30s} " + "  ".join(
                f"{k} {statistics.median(r[k] for r in rs):.{d}f} ({w(r[k] for r in rs):.{d}f})"
                for k, d, w in (("cos", 6, min), ("rel", 4, max), ("max", 3, max), ("logit_max", 4, max)))
                + f"  argmax {sum(r['agree'] for r in rs)}/{sum(r['n'] for r in rs)}")
    print("\nsummary over all cases (hidden state: cosine, relative error, max |diff|; logits: max |diff|, argmax)")
    for name, rs in results.items():
        cos, rel, mx, lm = ([r[k] for r in rs] for k in ("cos", "rel", "max", "logit_max"))
        agree, n = sum(r["agree"] for r in rs), sum(r["n"] for r in rs)
        print(f"  {name:30s} cos median {statistics.median(cos):.6f} worst {min(cos):.6f}  rel median "
              f"{statistics.median(rel):.4f} worst {max(rel):.4f}  max|diff| median {statistics.median(mx):.3f} "
              f"worst {max(mx):.3f}  logits max|diff| median {statistics.median(lm):.4f} worst {max(lm):.4f}  "
              f"argmax {agree}/{n}")
    bf, o = results[VARIANTS[1]], results[VARIANTS[2]]
    wins = sum(a["cos"] >= b["cos"] for a, b in zip(bf, o))
    print(f"\nbf16 attention's cosine >= onnxruntime's in {wins} of {len(bf)} cases; worst margin "
          f"{min(a['cos'] - b['cos'] for a, b in zip(bf, o)):+.6f}")


if __name__ == "__main__":
    main()
