"""Another build's native module beside this tree's, for the benchmarks that compare two builds in one process."""

from __future__ import annotations

import importlib.util
from types import ModuleType


def load_before(path: str) -> ModuleType:
    """The native module in the shared object at ``path``, as ``nnic_before._kernels`` (its init function is named
    after the last component, so any package name works; its statics, thread pool included, are its own)."""
    spec = importlib.util.spec_from_file_location("nnic_before._kernels", path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"cannot load {path}")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod
