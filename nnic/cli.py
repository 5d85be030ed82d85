"""The ``nnic`` command: ``nnic plugins`` lists what is installed, ``nnic demo`` runs the built-in default job."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from nnic.registry import KINDS


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


def _demo(args: argparse.Namespace) -> int:
    from nnic import demo

    demo.run(sparsity=args.sparsity, bits=args.bits, steps=args.steps, seed=args.seed, out_dir=args.out)
    return 0


def _fraction(text: str) -> float:
    value = float(text)
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"expected a sparsity in [0, 1), got {text}")
    return value


def _bits(text: str) -> int:
    value = int(text)
    if not 2 <= value <= 8:
        raise argparse.ArgumentTypeError(f"expected 2 to 8 bits, got {text}")
    return value


def parser() -> argparse.ArgumentParser:
    import nnic

    p = argparse.ArgumentParser(prog="nnic", description=__doc__)
    p.add_argument("--version", action="version", version=f"nnic {nnic.__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    pl = sub.add_parser("plugins", help="list installed pruners, quantizers and speedup rules")
    pl.add_argument("--kind", choices=KINDS)
    pl.add_argument("--json", action="store_true", help="print JSON instead of a table")
    pl.set_defaults(run=_plugins)
    d = sub.add_parser("demo", help="prune and quantize a small built-in model, print a before/after table")
    d.add_argument("--sparsity", type=_fraction, default=0.8)
    d.add_argument("--bits", type=_bits, default=8)
    d.add_argument("--steps", type=int, default=100, help="fine-tuning steps after pruning (default 100)")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--out", help="directory to keep the exported files in (default: a temporary one)")
    d.set_defaults(run=_demo)
    from nnic.auto.cli import add_auto_command

    add_auto_command(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
