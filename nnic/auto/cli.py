"""``nnic auto worker --storage URL --study NAME SPEC``: join (or start) a shared search from any machine.

A worker on another machine cannot receive Python objects, so the search is described by an importable spec,
``package.module:function``, a function of no arguments returning ``(model, evaluator, dummy_input)`` or
``(model, evaluator, dummy_input, options)``, where ``options`` are ``nnic.auto_compress`` keywords
(constraints, objectives, space, n_trials, ...). The first worker to find no study creates it with those
options; every later worker runs the settings stored in the study.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from collections.abc import Mapping
from typing import Any

_WORKER_OWNED = ("storage", "study_name", "join", "progress", "out_dir", "heartbeat_s")


def load_spec(spec: str) -> tuple[Any, Any, Any, dict[str, Any]]:
    """Import and call ``package.module:function``; ``ValueError`` naming the spec when it is not one."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"SPEC: expected 'package.module:function', got {spec!r}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"SPEC {spec!r}: cannot import {module_name!r}: {exc}") from exc
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise ValueError(f"SPEC {spec!r}: {module_name} has no function {attr!r}")
    got = fn()
    if not isinstance(got, (tuple, list)) or len(got) not in (3, 4):
        raise ValueError(f"SPEC {spec!r}: expected the function to return (model, evaluator, dummy_input[, "
                         f"options]), got {type(got).__name__}")
    options = dict(got[3]) if len(got) == 4 else {}
    if len(got) == 4 and not isinstance(got[3], Mapping):
        raise ValueError(f"SPEC {spec!r}: options (the 4th item) must be a dict of auto_compress keywords")
    for key in _WORKER_OWNED:
        if key in options:
            raise ValueError(f"SPEC {spec!r}: options[{key!r}] is given by the worker's command line, not the spec")
    return got[0], got[1], got[2], options


def _worker(args: argparse.Namespace) -> int:
    import nnic
    from nnic.auto.search import study_exists

    model, evaluator, dummy_input, options = load_spec(args.spec)
    if args.n_trials is not None:
        options["n_trials"] = args.n_trials
    joining = study_exists(args.storage, args.study)
    result = nnic.auto_compress(model, evaluator, dummy_input, storage=args.storage, study_name=args.study,
                                out_dir=args.out, progress=not args.no_progress, heartbeat_s=args.heartbeat_s,
                                join=joining, **options)
    best = result.best
    print(json.dumps({"study": args.study, "finished": len(result.trials),
                      "best": None if best is None else {"number": best.number, "measured": best.measured}}))
    return 0


def add_auto_command(sub: argparse._SubParsersAction) -> None:
    """Add ``nnic auto worker`` to the ``nnic`` command's subparsers."""
    auto = sub.add_parser("auto", help="automatic compression: run a search worker")
    auto_sub = auto.add_subparsers(dest="auto_command", required=True)
    w = auto_sub.add_parser("worker", help="join (or start) an auto_compress study in a shared database",
                            description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    w.add_argument("spec", metavar="SPEC", help="package.module:function returning (model, evaluator, dummy_input"
                                                "[, auto_compress options])")
    w.add_argument("--storage", required=True, help="database URL, e.g. postgresql://user:pw@host/db")
    w.add_argument("--study", required=True, help="study name")
    w.add_argument("--n-trials", type=int, default=None, help="finished trials to reach (default: the spec's)")
    w.add_argument("--out", default=None, help="directory for the trials table, plot and best config lists")
    w.add_argument("--heartbeat-s", type=int, default=5, help="heartbeat interval in seconds (default 5)")
    w.add_argument("--no-progress", action="store_true", help="no progress bar")
    w.set_defaults(run=_worker)


__all__ = ["add_auto_command", "load_spec"]


if __name__ == "__main__":  # python -m nnic.auto.cli worker ...
    p = argparse.ArgumentParser(prog="nnic")
    add_auto_command(p.add_subparsers(dest="command", required=True))
    a = p.parse_args(["auto", *sys.argv[1:]])
    sys.exit(a.run(a))
