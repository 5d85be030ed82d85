"""One-shot LLM compression quality: held-out perplexity of a byte-level LLaMA trained on Python's sources.

    pip install transformers
    python bench/llm.py                          # train (a few minutes on 2 cores), then every method
    python bench/llm.py --steps 300 --dim 128    # smaller and quicker
    python bench/llm.py --peer                   # also llm-compressor's one-shot GPTQ / SparseGPT

The model (``nnic.llm.text.tiny_gpt(arch="llama")``: RMSNorm, rotary positions, SwiGLU MLP, ``nn.Linear``
layers) trains on the standard library's top-level sources; perplexity is measured on files it never saw.
Every method compresses every Linear of the blocks (``lm_head``, tied to the embedding, stays float) with the
same calibration windows. Sparsity 50 % is per row for nnic's one-shot pruners (magnitude: per layer).
Wall time is the compression call alone. ``--peer`` installs ``llmcompressor`` into a separate virtual
environment under ``--peer-venv`` (it pins its own transformers/torch; the current environment is never
changed) and runs its ``oneshot`` with ``GPTQModifier`` / ``SparseGPTModifier`` on the saved model in a
subprocess; an install or run failure is reported with its error.
"""

from __future__ import annotations

import argparse
import copy
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import nnic  # noqa: E402
from nnic.llm import text  # noqa: E402

EXCLUDE = {"exclude": True, "op_names": ["lm_head"]}


def methods(bits: list[int], group: int) -> list[tuple[str, str, str, list[dict]]]:
    out = [("magnitude 50 %", "pruner", "level", [{"sparsity": 0.5, "op_types": ["Linear"]}, EXCLUDE]),
           ("wanda 50 %", "pruner", "wanda", [{"sparsity": 0.5, "op_types": ["Linear"]}, EXCLUDE]),
           ("sparsegpt 50 %", "pruner", "sparsegpt", [{"sparsity": 0.5, "op_types": ["Linear"]}, EXCLUDE]),
           ("magnitude 2:4", "pruner", "nm", [{"n": 2, "m": 4, "op_types": ["Linear"]}, EXCLUDE]),
           ("wanda 2:4", "pruner", "wanda", [{"n": 2, "m": 4, "op_types": ["Linear"]}, EXCLUDE]),
           ("sparsegpt 2:4", "pruner", "sparsegpt", [{"n": 2, "m": 4, "op_types": ["Linear"]}, EXCLUDE])]
    for b in bits:
        cfg = [{"quant_types": ["weight"], "quant_bits": b, "group_size": group,
                "quant_scheme": "per_channel_symmetric", "op_types": ["Linear"]}, EXCLUDE]
        out += [(f"{name} w{b} g{group}", "quantizer", name, cfg) for name in ("rtn", "gptq", "awq")]
    return out


def run(model, heldout, calibration, kind, name, cfg) -> tuple[float, float]:
    model = copy.deepcopy(model)
    kw = {} if name in ("level", "nm", "rtn") else {"calibration_data": calibration, "progress": False}
    start = time.perf_counter()
    c = (nnic.pruner if kind == "pruner" else nnic.quantizer)(name, model, cfg, **kw)
    c.compress()
    seconds = time.perf_counter() - start
    return text.perplexity(model, heldout), seconds


PEER_SCRIPT = r"""
import json, sys, time, torch
from llmcompressor import oneshot
from llmcompressor.modifiers.quantization import GPTQModifier
from llmcompressor.modifiers.obcq import SparseGPTModifier
from transformers import AutoModelForCausalLM
from datasets import Dataset
path, recipe_name, out = sys.argv[1], sys.argv[2], sys.argv[3]
calib = torch.load(path + "/calibration.pt")
ds = Dataset.from_dict({"input_ids": [row.tolist() for row in calib]})
model = AutoModelForCausalLM.from_pretrained(path, torch_dtype=torch.float32)
recipe = (GPTQModifier(targets="Linear", scheme="W4A16", ignore=["lm_head"]) if recipe_name == "gptq" else
          SparseGPTModifier(sparsity=0.5, mask_structure="0:0", targets=["Linear"], ignore=["lm_head"]))
start = time.perf_counter()
oneshot(model=model, dataset=ds, recipe=recipe, num_calibration_samples=len(calib), max_seq_length=calib.shape[1])
seconds = time.perf_counter() - start
model.save_pretrained(out)
json.dump({"seconds": seconds}, open(out + "/timing.json", "w"))
"""


def peer(model, heldout, calibration, venv: Path) -> list[tuple[str, float | str, float | None]]:
    """llm-compressor's one-shot GPTQ (W4A16, group 128) and SparseGPT 50 %, or why they could not run."""
    python = venv / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        done = subprocess.run([str(python), "-m", "pip", "install", "-q", "llmcompressor", "datasets"],
                              capture_output=True, text=True)
        if done.returncode:
            return [("llm-compressor", f"pip install failed: {done.stderr.strip().splitlines()[-1]}", None)]
    rows: list[tuple[str, float | str, float | None]] = []
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        torch.save(torch.cat(calibration), f"{tmp}/calibration.pt")
        for recipe in ("gptq", "sparsegpt"):
            out = f"{tmp}/{recipe}"
            done = subprocess.run([str(python), "-c", PEER_SCRIPT, tmp, recipe, out], capture_output=True, text=True)
            if done.returncode:
                rows.append((f"llm-compressor {recipe}", f"failed: {done.stderr.strip().splitlines()[-1]}", None))
                continue
            loaded = type(model).from_pretrained(out, torch_dtype=torch.float32)
            seconds = json.loads(Path(out, "timing.json").read_text())["seconds"]
            rows.append((f"llm-compressor {recipe}", text.perplexity(loaded, heldout), seconds))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dim", type=int, default=192)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--steps", type=int, default=1200)
    ap.add_argument("--seq", type=int, default=64)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=4e-3)
    ap.add_argument("--group", type=int, default=64)
    ap.add_argument("--bits", type=int, nargs="+", default=[4, 3])
    ap.add_argument("--calibration", type=int, default=128, help="calibration windows of --seq bytes")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--peer", action="store_true", help="also run llm-compressor (installed into --peer-venv)")
    ap.add_argument("--peer-venv", type=Path, default=Path(tempfile.gettempdir()) / "nnic-bench-llmcompressor")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    train = text.python_text("train", 2_000_000)
    heldout = text.evaluation_tokens(text.python_text("heldout", 400_000), args.seq, 512)
    calibration = list(text.random_windows(train, args.calibration, args.seq, seed=args.seed + 1).split(16))
    model = text.tiny_gpt(n_embd=args.dim, n_layer=args.layers, n_head=4, n_positions=args.seq, seed=args.seed,
                          arch="llama", n_inner=-(-8 * args.dim // 3 // 64) * 64)
    start = time.perf_counter()
    losses = text.train_tiny_gpt(model, train, steps=args.steps, batch_size=args.batch, seq_len=args.seq,
                                 lr=args.lr, seed=args.seed)
    params = sum(p.numel() for p in model.parameters())
    print(f"trained a {params / 1e6:.2f} M-parameter byte-level LLaMA ({args.layers} x {args.dim}) for "
          f"{args.steps} steps in {time.perf_counter() - start:.0f} s (final loss {sum(losses[-50:]) / 50:.3f})")
    dense = text.perplexity(model, heldout)
    rows: list[tuple[str, float | str, float | None]] = [("dense", dense, None)]
    for label, kind, name, cfg in methods(args.bits, args.group):
        ppl, seconds = run(model, heldout, calibration, kind, name, cfg)
        rows.append((label, ppl, seconds))
        print(f"  {label}: {ppl:.3f} ({seconds:.1f} s)", flush=True)
    if args.peer:
        rows += peer(model, heldout, calibration, args.peer_venv)
    print(f"\nheld-out perplexity ({heldout.numel()} bytes), {args.threads} threads\n")
    print("| method | perplexity | increase over dense | compression time |")
    print("|---|---|---|---|")
    for label, ppl, seconds in rows:
        if isinstance(ppl, str):
            print(f"| {label} | {ppl} | | |")
            continue
        inc = "" if label == "dense" else f"{ppl - dense:+.3f}"
        print(f"| {label} | {ppl:.3f} | {inc} | {'' if seconds is None else f'{seconds:.1f} s'} |")


if __name__ == "__main__":
    main()
