"""The nnic command: run a compression recipe and see what it bought.

  nnic compress RECIPE -o OUT     run a recipe (YAML/JSON) into OUT; --example digits runs a shipped one
  nnic report OUT                 the before/after report of a run (table, --json, --html)
  nnic bench OUT                  dense vs compressed latency on this machine
  nnic sensitivity RECIPE -o PNG  how far each layer alone can be pruned
  nnic demo                       the default job: nnic compress --example digits
  nnic plugins                    what is installed
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from nnic.registry import KINDS


class UsageError(Exception):
    """A mistake in what the user asked for: printed as ``nnic: error: ...``, exit status 2."""


def _plugins(args: argparse.Namespace) -> int:
    import nnic

    infos = nnic.list_plugins(args.kind)
    if args.json:
        print(json.dumps([
            {"name": i.name, "kind": i.kind, "aliases": list(i.aliases), "plugin": i.plugin,
             "distribution": i.distribution, "version": i.version} for i in infos
        ], indent=2))
        return 0
    rows = [("name", "kind", "distribution", "version")] + [
        (i.name + (f" ({', '.join(i.aliases)})" if i.aliases else ""), i.kind, i.distribution, i.version) for i in infos
    ]
    widths = [max(len(r[c]) for r in rows) for c in range(4)]
    for n, row in enumerate(rows):
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
        if n == 0:
            print("  ".join("-" * w for w in widths))
    return 0


def _recipe_path(args: argparse.Namespace) -> Path:
    from nnic.recipe import example

    if (args.recipe is None) == (args.example is None):
        raise UsageError("give a RECIPE file or --example NAME (one of them)")
    return Path(args.recipe) if args.recipe is not None else example(args.example)


def _compress(args: argparse.Namespace) -> int:
    from nnic.recipe import compress, load_recipe

    recipe = load_recipe(_recipe_path(args))  # every mistake in the file is reported here, before any work
    result = compress(recipe, args.out, quiet=args.quiet)
    if not args.quiet:
        print(result.report.text())
    print(f"compressed model, masks/calibration, recipe and report written to {args.out} "
          f"(report.html; nnic report {args.out})")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from nnic import demo

    demo.run(args.out, quiet=args.quiet)
    return 0


def _report_of_models(args: argparse.Namespace) -> Any:
    from nnic.recipe import load_model
    from nnic.recipe.artifacts import build_model
    from nnic.recipe.checks import check_callable_path
    from nnic.recipe.errors import Where
    from nnic.recipe.resolve import build_example_input
    from nnic.report import build_report

    check_callable_path(Where("--model"), args.model)
    dense = build_model({"factory": args.model, "kwargs": {}}, Path.cwd(), "--model")
    x = build_example_input({"shape": args.input_shape, "dtype": "float32"}, "--input-shape", 0)
    compressed = load_model(args.compressed) if args.compressed else dense
    return build_report(dense, compressed, x, measure=_measure_options(args))


def _report(args: argparse.Namespace) -> int:
    from nnic.report import CompressionReport

    if args.model is not None:
        if args.input_shape is None:
            raise UsageError("--model needs --input-shape, e.g. --input-shape 1,3,224,224")
        report = _report_of_models(args)
    elif args.out is not None:
        report = _remeasured(args) if args.remeasure else CompressionReport.load(args.out)
    else:
        raise UsageError("give OUT (a folder written by nnic compress) or --model SPEC --input-shape SHAPE")
    if args.html:
        from nnic import io
        from nnic.report.html import render_html

        io.atomic_write(args.html, lambda tmp: Path(tmp).write_text(render_html(report), encoding="utf-8"))
    if args.json:
        print(json.dumps(report.to_dict(), indent=1))
    else:
        print(report.text())
    return 0


def _models_of_run(out: Path) -> tuple[Any, Any, Any, Any]:
    """The dense model (rebuilt from the run's recipe), the compressed one, the example input and the data."""
    from nnic import io
    from nnic.recipe import load_model, validate
    from nnic.recipe.runner import Progress, prepare

    if not (out / "recipe.json").is_file():
        raise UsageError(f"{out}: not a folder written by nnic compress (no recipe.json)")
    spec = io.load_json(out / "recipe.json")
    spec.pop("versions", None)
    recipe = validate(spec, str(out / "recipe.json"), out)
    with Progress(quiet=True) as progress:
        run = prepare(recipe, out, progress)
    return run.model, load_model(out), run.example_input, run.data


def _remeasured(args: argparse.Namespace) -> Any:
    from nnic.report import build_report

    dense, compressed, x, data = _models_of_run(Path(args.out))
    return build_report(dense, compressed, x, data=data, measure=_measure_options(args))


def _measure_options(args: argparse.Namespace) -> dict[str, Any]:
    return {k: getattr(args, k) for k in ("batch", "threads", "warmup", "repeats") if getattr(args, k, None) is not None}


def _bench(args: argparse.Namespace) -> int:
    from nnic.measure import measure_latencies

    dense, compressed, x, _ = _models_of_run(Path(args.out))
    options = {"batch": args.batch, "threads": args.threads, "warmup": args.warmup, "repeats": args.repeats,
               "rounds": args.rounds}
    stats = measure_latencies({"dense": dense, "compressed": compressed}, x, **options)
    result = {name: s.to_dict() for name, s in stats.items()}
    result["speedup"] = stats["dense"].median_ms / stats["compressed"].median_ms
    if args.json:
        print(json.dumps(result, indent=1))
        return 0
    d = stats["dense"]
    print(f"nnic bench {args.out}: {d.repeats} timed runs per model after {d.warmup} warm-up runs, in "
          f"{args.rounds} interleaved rounds; batch {d.batch or 'as in the recipe'}, {d.threads} threads; "
          f"torch.inference_mode, eval mode")
    print(f"{'':<12}{'median ms':>12}{'p90 ms':>12}{'min ms':>12}")
    for name, s in stats.items():
        print(f"{name:<12}{s.median_ms:>12.3f}{s.p90_ms:>12.3f}{s.min_ms:>12.3f}")
    print(f"compressed runs {result['speedup']:.2f}x as fast as dense (ratio of medians)")
    return 0


def _sensitivity(args: argparse.Namespace) -> int:
    import nnic
    from nnic.recipe import load_recipe
    from nnic.recipe.runner import Progress, prepare

    if not hasattr(nnic, "sensitivity"):
        raise UsageError("nnic sensitivity needs nnic.sensitivity (the sensitivity analysis), which this nnic "
                         "does not provide")
    recipe = load_recipe(_recipe_path(args))
    if recipe.spec["data"] is None:
        raise UsageError(f"{recipe.source}: sensitivity scores the model on eval batches: the recipe needs a "
                         f"data section")
    with Progress(quiet=True) as progress:
        run = prepare(recipe, Path(args.out).parent, progress)
    from nnic.recipe.run_stages import _evaluator

    evaluator = _evaluator(run, "sensitivity")
    kwargs: dict[str, Any] = {"pruner": args.pruner, "progress": not args.quiet}
    if args.sparsities is not None:
        kwargs["sparsities"] = args.sparsities
    if args.layers is not None:
        kwargs["layers"] = args.layers
    result = nnic.sensitivity(run.model, evaluator, run.example_input, **kwargs)
    result.plot(args.out)
    print(result.table())
    print(f"plot written to {args.out}")
    return 0


def _floats(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
    if not values or not all(0 < v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected sparsities in (0, 1), got {text!r}")
    return values


def _shape(text: str) -> list[int]:
    try:
        dims = [int(v) for v in text.split(",")]
    except ValueError:
        dims = []
    if not dims or any(d < 1 for d in dims):
        raise argparse.ArgumentTypeError(f"expected comma-separated positive ints like 1,3,224,224, got {text!r}")
    return dims


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive int, got {text!r}")
    return value


def _add_measure_options(p: argparse.ArgumentParser, defaults: bool) -> None:
    p.add_argument("--batch", type=_positive, help="batch size to measure at (default: the example input's)")
    p.add_argument("--threads", type=_positive, help="threads (torch and nnic kernels; default: torch's setting)")
    p.add_argument("--warmup", type=int, default=3 if defaults else None, help="untimed runs first (default 3)")
    p.add_argument("--repeats", type=_positive, default=20 if defaults else None, help="timed runs (default 20)")


def _add_recipe_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("recipe", nargs="?", metavar="RECIPE", help="recipe file (.yaml/.yml/.json)")
    p.add_argument("--example", metavar="NAME", help="a recipe shipped with nnic instead of a file (e.g. digits)")


def _add_compress(sub: Any) -> None:
    c = sub.add_parser("compress", help="run a compression recipe (YAML/JSON) into a folder")
    _add_recipe_argument(c)
    c.add_argument("-o", "--out", required=True, help="output folder (created; earlier stage outputs replaced)")
    c.add_argument("-q", "--quiet", action="store_true", help="no progress bars and no report table")
    c.set_defaults(run=_compress)


def _add_report(sub: Any) -> None:
    r = sub.add_parser("report", help="per-layer and total before/after report of a run, or of a model")
    r.add_argument("out", nargs="?", metavar="OUT", help="a folder written by nnic compress")
    r.add_argument("--json", action="store_true", help="print the report as JSON")
    r.add_argument("--html", metavar="FILE", help="also write the self-contained HTML report to FILE")
    r.add_argument("--remeasure", action="store_true", help="measure OUT's models again on this machine")
    r.add_argument("--model", metavar="SPEC", help="package.module:factory of a model to report on instead of OUT")
    r.add_argument("--input-shape", type=_shape, metavar="SHAPE", help="example input shape for --model")
    r.add_argument("--compressed", metavar="DIR", help="with --model: a saved compressed model to compare with")
    _add_measure_options(r, defaults=False)
    r.set_defaults(run=_report)


def _add_bench(sub: Any) -> None:
    b = sub.add_parser("bench", help="dense vs compressed latency of a run, measured on this machine")
    b.add_argument("out", metavar="OUT", help="a folder written by nnic compress")
    _add_measure_options(b, defaults=True)
    b.add_argument("--rounds", type=_positive, default=3, help="interleaved rounds (default 3)")
    b.add_argument("--json", action="store_true", help="print JSON")
    b.set_defaults(run=_bench)


def _add_sensitivity(sub: Any) -> None:
    s = sub.add_parser("sensitivity", help="score with each layer alone pruned; plot to a PNG")
    _add_recipe_argument(s)
    s.add_argument("-o", "--out", required=True, help="PNG file to write")
    s.add_argument("--pruner", default="l1norm", help="registered pruner (default l1norm)")
    s.add_argument("--sparsities", type=_floats, help="comma-separated, e.g. 0.2,0.4,0.6")
    s.add_argument("--layers", type=lambda t: [v for v in t.split(",") if v], help="comma-separated layer names")
    s.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    s.set_defaults(run=_sensitivity)


def _add_demo(sub: Any) -> None:
    d = sub.add_parser("demo", help="the default job on digits: train, prune, fine-tune, speedup, int8, report")
    d.add_argument("--out", help="output folder (default: a new temporary folder, printed at the end)")
    d.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    d.set_defaults(run=_demo)


def _add_plugins(sub: Any) -> None:
    pl = sub.add_parser("plugins", help="list installed pruners, quantizers, speedup rules, lowerings and strategies")
    pl.add_argument("--kind", choices=KINDS)
    pl.add_argument("--json", action="store_true", help="print JSON instead of a table")
    pl.set_defaults(run=_plugins)


def parser() -> argparse.ArgumentParser:
    import nnic

    p = argparse.ArgumentParser(prog="nnic", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"nnic {nnic.__version__}")
    p.add_argument("--log-level", default="WARNING", choices=("DEBUG", "INFO", "WARNING", "ERROR"),
                   help="logging level (default WARNING; INFO logs every step)")
    sub = p.add_subparsers(dest="command", required=True)
    for add in (_add_compress, _add_report, _add_bench, _add_sensitivity, _add_demo, _add_plugins):
        add(sub)
    from nnic.auto.cli import add_auto_command

    add_auto_command(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    p = parser()
    args = p.parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(levelname)s %(name)s: %(message)s")
    from nnic.recipe.errors import RecipeError
    from nnic.recipe.runner import StageFailed

    try:
        return args.run(args)
    except (UsageError, RecipeError, FileNotFoundError) as exc:
        print(f"nnic: error: {exc}", file=sys.stderr)
        return 2
    except StageFailed as exc:
        print(f"nnic: error: {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # `nnic plugins | head`: the reader left early, which is no error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so the exit flush cannot fail again
        return 1


if __name__ == "__main__":
    sys.exit(main())
