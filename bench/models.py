"""End-to-end latency and output agreement: nnic int8 vs float32 vs torch dynamic quantization.

    pip install transformers torchvision        # random weights from configs; nothing is downloaded
    python bench/models.py                      # BERT-base encoder (seq 128, batch 1 and 8) and ResNet-50
    python bench/models.py --models bert --batches 8 --threads 2

nnic int8: ``nnic.quantization_speedup(model, {layer: 8 for every Linear (and Conv2d for ResNet)})``, i.e.
per-channel int8 weights and per-token dynamic int8 activations on the Rust GEMM. torch dynamic:
``torch.ao.quantization.quantize_dynamic(model, {nn.Linear}, torch.qint8)`` with its default engine (it
quantizes Linear layers only). Agreement is measured against the float32 output (BERT: last hidden state;
ResNet: logits): cosine similarity and max |diff|. The three variants are timed round-robin; times are
medians (``--stat min``: the least-disturbed round, on a shared machine).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from nnic import kernels  # noqa: E402
import _timing  # noqa: E402
from nnic.quantization.speedup import quantization_speedup  # noqa: E402


def timeit_interleaved(fns: dict, repeats: int, budget: float) -> dict[str, list[float]]:
    with torch.inference_mode():
        return _timing.timeit_interleaved(fns, repeats, budget)


def bert(batch: int, seq: int):
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    model = BertModel(BertConfig(), add_pooling_layer=False).eval()  # BERT-base: 12 x 768, 3072 FFN
    ids = torch.randint(0, model.config.vocab_size, (batch, seq))

    def run(m):
        return m(input_ids=ids).last_hidden_state

    return model, run, (nn.Linear,)


def resnet50(batch: int, seq: int):
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.resnet50(weights=None).eval()
    x = torch.randn(batch, 3, 224, 224)

    def run(m):
        return m(x)

    return model, run, (nn.Linear, nn.Conv2d)


MODELS = {"bert": bert, "resnet50": resnet50}


def agreement(y: torch.Tensor, ref: torch.Tensor) -> str:
    c = F.cosine_similarity(y.flatten().double(), ref.flatten().double(), dim=0).item()
    return f"cos {c:.5f}  max|diff| {(y - ref).abs().max().item():.4g}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="*", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--batches", nargs="*", type=int, default=[1, 8])
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=11, help="max rounds")
    ap.add_argument("--budget", type=float, default=30.0, help="seconds per model and batch")
    ap.add_argument("--stat", choices=("median", "min"), default="median")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    kernels.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, threads {args.threads}, quantized engine {torch.backends.quantized.engine}")
    for name in args.models:
        for batch in args.batches:
            model, run, types = MODELS[name](batch, args.seq)
            with torch.inference_mode():
                ref = run(model)
            qmodel = quantization_speedup(copy.deepcopy(model), {
                n: 8 for n, m in model.named_modules() if isinstance(m, types)
            })
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                dyn = torch.ao.quantization.quantize_dynamic(copy.deepcopy(model), {nn.Linear}, dtype=torch.qint8)
            times = timeit_interleaved(
                {"f": lambda: run(model), "q": lambda: run(qmodel), "d": lambda: run(dyn)}, args.repeats, args.budget
            )
            stat = min if args.stat == "min" else statistics.median
            t_f, t_q, t_d = (stat(times[key]) for key in "fqd")
            with torch.inference_mode():
                yq, yd = run(qmodel), run(dyn)
            rounds = len(times["f"])
            print(f"\n{name} batch {batch}" + (f" seq {args.seq}" if name == "bert" else "") + f"  [{args.stat} of {rounds}]")
            print(f"  float32            {t_f * 1e3:9.1f} ms")
            print(f"  nnic int8          {t_q * 1e3:9.1f} ms  {t_f / t_q:5.2f}x float32, {t_d / t_q:5.2f}x torch "
                  f"dynamic   {agreement(yq, ref)}")
            print(f"  torch dynamic int8 {t_d * 1e3:9.1f} ms  {t_f / t_d:5.2f}x float32                     "
                  f"{agreement(yd, ref)}")


if __name__ == "__main__":
    main()
