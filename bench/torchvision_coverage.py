"""Speedup coverage over every torchvision classification model: does ``nnic.speedup_model`` run, verify and shrink?

For each model in ``torchvision.models.list_models(module=torchvision.models)`` (random weights, nothing
downloaded): random 50 % output-channel masks on every Conv2d and Linear, ``speedup_model(..., verify=True)``
(which checks the output against the masked model's), and the parameter ratio; with ``--onnx``, also
``nnic.export_onnx`` of the sped-up model, verified in onnxruntime (at the example's batch and twice it).

Models run smallest first (parameter counts from the weights' metadata, nothing downloaded), each in its own process
with a time limit, so that one slow or crashing model costs its own row only. With ``--out FILE`` the markdown
table is rewritten (atomically) after every model and a rerun skips the models the file already has, so a run cut
short by ``--budget`` or by the machine goes on where it stopped.

    python bench/torchvision_coverage.py                          # every model
    python bench/torchvision_coverage.py --only resnet            # names containing "resnet"
    python bench/torchvision_coverage.py --models resnet18,vgg11  # exactly these
    python bench/torchvision_coverage.py --onnx --max-params 30 --budget 1200 \\
        --out bench/results/torchvision_onnx.md                   # resumable, models up to 30 M parameters
    python bench/torchvision_coverage.py --onnx --out bench/results/torchvision_onnx.md --retry-failed
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

# bench/onnx.py is named like the onnx package that --onnx needs: this folder must not shadow it.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import torch  # noqa: E402
import torchvision  # noqa: E402
from torch import nn  # noqa: E402

# Models whose architecture fixes the input size (position embeddings, windows) or needs a minimum one. AlexNet and
# VGG at 64 pixels end in an adaptive pool that enlarges its 1x1 / 2x2 input to 6x6 / 7x7, which torch's ONNX
# exporter cannot write (an output size that is not a factor of the input's); at 224 it is the identity.
INPUT_SIZE = {"vit": 224, "swin": 224, "maxvit": 224, "inception": 96, "alexnet": 224, "vgg": 224}
HEADER = ("| model | params (M) | speedup | params after / before | speedup s | ONNX export + verify | export s |\n"
          "|---|---|---|---|---|---|---|")


def input_size(name: str) -> int:
    return next((size for prefix, size in INPUT_SIZE.items() if name.startswith(prefix)), 64)


def parameter_count(name: str) -> int:
    """The model's parameter count: from its weights' metadata (nothing downloaded), else built on the meta
    device (no memory, no initialisation)."""
    for weights in torchvision.models.get_model_weights(name):
        if "num_params" in weights.meta:
            return int(weights.meta["num_params"])
    with torch.device("meta"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return sum(p.numel() for p in torchvision.models.get_model(name, weights=None).parameters())


def random_channel_masks(model: nn.Module, fraction: float, seed: int) -> dict:
    generator = torch.Generator().manual_seed(seed)
    masks = {}
    for name, m in model.named_modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)) and m.weight.shape[0] > 1:
            out = m.weight.shape[0]
            keep = torch.ones(out, dtype=torch.bool)
            keep[torch.randperm(out, generator=generator)[: int(out * fraction)]] = False
            shape = (out,) + (1,) * (m.weight.dim() - 1)
            masks[name] = {"weight": keep.reshape(shape).expand_as(m.weight).clone(),
                           "bias": keep.clone() if m.bias is not None else None}
    return masks


def _first_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}".splitlines()[0][:300]


def run_one(name: str, fraction: float, onnx: bool) -> dict:
    """Speed up one model (and export it when ``onnx``); the result as a JSON-ready row."""
    import nnic

    torch.manual_seed(0)
    model = torchvision.models.get_model(name, weights=None).eval()
    for m in model.modules():  # torchvision zero-initialises some heads (ViT): every output 0, every check vacuous
        if isinstance(m, (nn.Conv2d, nn.Linear)) and not bool(m.weight.any()):
            nn.init.normal_(m.weight, std=0.02)
    size = input_size(name)
    x = torch.randn(1, 3, size, size)
    before = sum(p.numel() for p in model.parameters())
    row: dict = {"model": name, "params": before}
    masks = random_channel_masks(model, fraction, seed=1)
    start = time.perf_counter()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            nnic.speedup_model(model, x, masks, verify=True)
    except Exception as exc:  # a coverage report lists every failure instead of stopping at the first
        return {**row, "speedup": "FAILED", "error": _first_line(exc)}
    row.update(speedup="ok", ratio=sum(p.numel() for p in model.parameters()) / before,
               speedup_s=time.perf_counter() - start)
    if onnx:
        with tempfile.TemporaryDirectory(prefix="nnic-coverage-onnx-") as tmp:
            start = time.perf_counter()
            try:
                result = nnic.export_onnx(model, x, os.path.join(tmp, f"{name}.onnx"), verify=True)
                row.update(onnx="ok", onnx_error=max(result.errors.values()))
            except Exception as exc:
                row.update(onnx="FAILED", error=_first_line(exc))
            row["export_s"] = time.perf_counter() - start
    return row


def render(row: dict) -> str:
    """One markdown row; ``ratio`` and seconds are blank where the step did not run."""
    def num(key: str, fmt: str) -> str:
        return format(row[key], fmt) if isinstance(row.get(key), (int, float)) else ""

    onnx = row.get("onnx", "")
    if onnx == "ok":
        onnx = f"ok (max rel. error {row['onnx_error']:.1e})"
    status = row["speedup"] if row["speedup"] == "ok" else f"{row['speedup']}: {row.get('error', '')}"
    if row.get("onnx") == "FAILED":
        onnx = f"FAILED: {row.get('error', '')}"
    cells = [row["model"], f"{row['params'] / 1e6:.1f}", status.replace("|", "/"), num("ratio", ".2f"),
             num("speedup_s", ".1f"), onnx.replace("|", "/"), num("export_s", ".1f")]
    return "| " + " | ".join(cells) + " |"


def read_rows(path: Path) -> dict[str, dict]:
    """The rows an earlier run wrote to ``path`` (the JSON comment after each table row), by model."""
    rows: dict[str, dict] = {}
    if path.exists():
        for match in re.finditer(r"^<!-- row (\{.*\}) -->$", path.read_text(), re.M):
            row = json.loads(match.group(1))
            rows[row["model"]] = row
    return rows


def passed(row: dict, onnx: bool) -> bool:
    return row["speedup"] == "ok" and (not onnx or row.get("onnx") == "ok")


def write_table(path: Path, rows: dict[str, dict], names: list[str], args: argparse.Namespace) -> None:
    """The table (models in run order), a summary, and each row's data as a comment, written atomically."""
    done = [rows[n] for n in names if n in rows] + [r for n, r in rows.items() if n not in names]
    ok = [r for r in done if passed(r, args.onnx)]
    what = "sped up, exported to ONNX and verified in onnxruntime" if args.onnx else "sped up and verified"
    lines = [f"# torchvision classifiers: {what}", "",
             f"`python bench/torchvision_coverage.py {' '.join(sys.argv[1:])}` (random {args.fraction:.0%} "
             "output-channel masks on every Conv2d and Linear, batch 1, random weights).", "",
             HEADER, *[render(r) for r in done], "",
             f"{len(ok)} of {len(done)} models run {what}; {len(set(names) - set(rows))} of the selected "
             "models not run yet.", ""]
    lines += [f"<!-- row {json.dumps(r, sort_keys=True)} -->" for r in done]
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        f.write("\n".join(lines) + "\n")
    os.replace(tmp, path)


def run_isolated(name: str, args: argparse.Namespace, limit: float) -> dict | None:
    """``run_one`` in a child process, killed after ``limit`` seconds: a row saying so when that is the model's own
    limit, ``None`` (not run) when the run's budget cut it."""
    command = [sys.executable, os.path.abspath(__file__), "--one", name, "--fraction", str(args.fraction)]
    command += ["--onnx"] if args.onnx else []
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=limit)
    except subprocess.TimeoutExpired:
        if limit < args.model_limit:
            return None
        return {"model": name, "params": parameter_count(name), "speedup": "TIMEOUT",
                "error": f"more than {limit:.0f} s"}
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1][:300]
        return {"model": name, "params": parameter_count(name), "speedup": "FAILED",
                "error": f"exit {done.returncode}: {tail}"}
    return json.loads(lines[-1])


def select(args: argparse.Namespace) -> list[str]:
    names = torchvision.models.list_models(module=torchvision.models)
    if args.models:
        wanted = [n.strip() for n in args.models.split(",") if n.strip()]
        unknown = [n for n in wanted if n not in names]
        if unknown:
            raise SystemExit(f"--models: not torchvision classifiers: {', '.join(unknown)}")
        names = wanted
    names = [n for n in names if args.only in n]
    counts = {n: parameter_count(n) for n in names}
    if args.max_params is not None:
        names = [n for n in names if counts[n] <= args.max_params * 1e6]
    return sorted(names, key=lambda n: (counts[n], n))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="", help="substring of the model names to run")
    parser.add_argument("--models", default="", help="comma-separated model names to run (else all)")
    parser.add_argument("--max-params", type=float, default=None, help="skip models above this many M parameters")
    parser.add_argument("--fraction", type=float, default=0.5)
    parser.add_argument("--onnx", action="store_true", help="export each sped-up model to ONNX and verify it")
    parser.add_argument("--budget", type=float, default=None,
                        help="seconds for the whole run: no model starts after it, a running one is cut at it")
    parser.add_argument("--model-limit", type=float, default=900, help="seconds one model may take")
    parser.add_argument("--out", type=Path, default=None,
                        help="markdown table, rewritten after each model; models it already has are skipped")
    parser.add_argument("--retry-failed", action="store_true", help="run again the models --out has as failed")
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)  # the child process: one model, JSON out
    args = parser.parse_args()
    if not 0 < args.fraction < 1:
        parser.error(f"--fraction: expected a number in (0, 1), got {args.fraction}")
    torch.set_grad_enabled(False)
    if args.one is not None:
        print(json.dumps(run_one(args.one, args.fraction, args.onnx)), flush=True)
        return
    names = select(args)
    rows = read_rows(args.out) if args.out is not None else {}
    todo = [n for n in names if n not in rows or (args.retry_failed and not passed(rows[n], args.onnx))]
    print(f"{len(names)} models selected, {len(names) - len(todo)} already in {args.out}, {len(todo)} to run",
          flush=True)
    deadline = None if args.budget is None else time.monotonic() + args.budget
    for name in todo:
        left = args.model_limit if deadline is None else min(args.model_limit, deadline - time.monotonic())
        if left <= 1:
            print(f"budget spent: {len(todo) - todo.index(name)} models not run", flush=True)
            break
        row = run_isolated(name, args, left)
        if row is None:
            print(f"budget spent while running {name}: {len(todo) - todo.index(name)} models not run", flush=True)
            break
        rows[name] = row
        print(render(row), flush=True)
        if args.out is not None:
            write_table(args.out, rows, names, args)
    if args.out is None:
        print("\n" + HEADER + "\n" + "\n".join(render(rows[n]) for n in names if n in rows))
    ok = [n for n in names if n in rows and passed(rows[n], args.onnx)]
    print(f"\n{len(ok)} of {len(names)} selected models passed ({len(rows)} run)")
    for name in names:
        if name in rows and name not in ok:
            print(f"- {name}: {rows[name].get('error', '')}")


if __name__ == "__main__":
    main()
