"""One-shot LLM compression quality: held-out perplexity of a byte-level LLaMA (or GPT-2) trained on Python's sources.

    pip install transformers
    python bench/llm.py                          # train (a few minutes on 2 cores), then every method
    python bench/llm.py --steps 300 --dim 128    # smaller and quicker
    python bench/llm.py --peer                   # also llm-compressor's one-shot GPTQ / SparseGPT
    python bench/llm.py --arch gpt2              # GPT-2 blocks (LayerNorm, GELU MLP, Conv1D layers)

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
LAYERS = ["Linear", "Conv1D"]  # LLaMA's nn.Linear, GPT-2's transformers Conv1D


def methods(bits: list[int], group: int) -> list[tuple[str, str, str, list[dict]]]:
    out = [("magnitude 50 %", "pruner", "level", [{"sparsity": 0.5, "op_types": LAYERS}, EXCLUDE]),
           ("wanda 50 %", "pruner", "wanda", [{"sparsity": 0.5, "op_types": LAYERS}, EXCLUDE]),
           ("sparsegpt 50 %", "pruner", "sparsegpt", [{"sparsity": 0.5, "op_types": LAYERS}, EXCLUDE]),
           ("magnitude 2:4", "pruner", "nm", [{"n": 2, "m": 4, "op_types": LAYERS}, EXCLUDE]),
           ("wanda 2:4", "pruner", "wanda", [{"n": 2, "m": 4, "op_types": LAYERS}, EXCLUDE]),
           ("sparsegpt 2:4", "pruner", "sparsegpt", [{"n": 2, "m": 4, "op_types": LAYERS}, EXCLUDE])]
    for b in bits:
        cfg = [{"quant_types": ["weight"], "quant_bits": b, "group_size": group,
                "quant_scheme": "per_channel_symmetric", "op_types": LAYERS}, EXCLUDE]
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
path, recipe_name, out, group, bits = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
calib = torch.load(path + "/calibration.pt")
ds = Dataset.from_dict({"input_ids": [row.tolist() for row in calib]})
model = AutoModelForCausalLM.from_pretrained(path, torch_dtype=torch.float32)
# The calibration is already token ids (bytes); llm-compressor still wants a processor object for its collator.
from tokenizers import Tokenizer, models
from transformers import PreTrainedTokenizerFast
processor = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel({"<pad>": 0}, unk_token="<pad>")),
                                    pad_token="<pad>")
weights = {"num_bits": bits, "type": "int", "symmetric": True, "strategy": "group", "group_size": group}
recipe = (GPTQModifier(config_groups={"g": {"targets": ["Linear"], "weights": weights}}, ignore=["re:.*lm_head"])
          if recipe_name == "gptq" else
          SparseGPTModifier(sparsity=0.5, mask_structure="0:0", targets=["Linear"], ignore=["re:.*lm_head"]))
start = time.perf_counter()
oneshot(model=model, processor=processor, dataset=ds, recipe=recipe, num_calibration_samples=len(calib),
        max_seq_length=calib.shape[1])
seconds = time.perf_counter() - start
model.save_pretrained(out, save_compressed=False)  # plain float weights (quantized values / zeros) to reload
json.dump({"seconds": seconds}, open(out + "/timing.json", "w"))
"""


def _load_peer_weights(model, path: Path):
    """A copy of ``model`` with llm-compressor's saved weights: ``save_compressed=False`` writes each quantized
    weight as its dequantized float values (plus scales and zero points, which are not needed here), and a config
    that only ``compressed-tensors`` reads, so the tensors are loaded into the bench's own model instead."""
    from safetensors.torch import load_file

    loaded = copy.deepcopy(model)
    state = load_file(str(path))
    own = loaded.state_dict()
    missing = [k for k in own if k not in state and not k.endswith("lm_head.weight")]  # lm_head is tied
    if missing:
        raise RuntimeError(f"llm-compressor's output lacks {missing[:3]}")
    loaded.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)
    return loaded


def peer(model, heldout, calibration, venv: Path, group: int, bits: int) -> list[tuple[str, float | str, float | None]]:
    """llm-compressor's one-shot GPTQ (``bits``-bit symmetric weights in groups of ``group``, as nnic's rows) and
    SparseGPT 50 %, or why they could not run."""
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
            done = subprocess.run([str(python), "-c", PEER_SCRIPT, tmp, recipe, out, str(group), str(bits)],
                                  capture_output=True, text=True)
            if done.returncode:
                rows.append((f"llm-compressor {recipe}", f"failed: {done.stderr.strip().splitlines()[-1]}", None))
                continue
            loaded = _load_peer_weights(model, Path(out, "model.safetensors"))
            seconds = json.loads(Path(out, "timing.json").read_text())["seconds"]
            label = f"llm-compressor gptq w{bits} g{group}" if recipe == "gptq" else "llm-compressor sparsegpt 50 %"
            rows.append((label, text.perplexity(loaded, heldout), seconds))
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
    ap.add_argument("--arch", choices=("llama", "gpt2"), default="llama")
    ap.add_argument("--peer", action="store_true", help="also run llm-compressor (installed into --peer-venv)")
    ap.add_argument("--peer-venv", type=Path, default=Path(tempfile.gettempdir()) / "nnic-bench-llmcompressor")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    train = text.python_text("train", 2_000_000)
    heldout = text.evaluation_tokens(text.python_text("heldout", 400_000), args.seq, 512)
    calibration = list(text.random_windows(train, args.calibration, args.seq, seed=args.seed + 1).split(16))
    model = text.tiny_gpt(n_embd=args.dim, n_layer=args.layers, n_head=4, n_positions=args.seq, seed=args.seed,
                          arch=args.arch, n_inner=-(-8 * args.dim // 3 // 64) * 64 if args.arch == "llama" else None)
    start = time.perf_counter()
    losses = text.train_tiny_gpt(model, train, steps=args.steps, batch_size=args.batch, seq_len=args.seq,
                                 lr=args.lr, seed=args.seed)
    params = sum(p.numel() for p in model.parameters())
    print(f"trained a {params / 1e6:.2f} M-parameter byte-level {args.arch} ({args.layers} x {args.dim}) for "
          f"{args.steps} steps in {time.perf_counter() - start:.0f} s (final loss {sum(losses[-50:]) / 50:.3f})")
    dense = text.perplexity(model, heldout)
    rows: list[tuple[str, float | str, float | None]] = [("dense", dense, None)]
    for label, kind, name, cfg in methods(args.bits, args.group):
        ppl, seconds = run(model, heldout, calibration, kind, name, cfg)
        rows.append((label, ppl, seconds))
        print(f"  {label}: {ppl:.3f} ({seconds:.1f} s)", flush=True)
    if args.peer and args.arch != "llama":
        rows.append(("llm-compressor", "not run: its modifiers target nn.Linear, GPT-2's layers are Conv1D", None))
    elif args.peer:
        rows += peer(model, heldout, calibration, args.peer_venv, args.group, args.bits[0])
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
