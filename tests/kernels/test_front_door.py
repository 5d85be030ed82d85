"""nnic.kernels is the one door to the native module: nothing else in nnic imports ``nnic._kernels``."""

from __future__ import annotations

import ast
from pathlib import Path

import nnic
from nnic import kernels

PACKAGE = Path(nnic.__file__).parent


def _imports_native(tree: ast.AST) -> bool:
    for node in ast.walk(tree):
        if isinstance(node, ast.Import) and any(a.name == "nnic._kernels" for a in node.names):
            return True
        if isinstance(node, ast.ImportFrom):
            names = {a.name for a in node.names}
            if node.module == "nnic._kernels" or ((node.module == "nnic" or node.level) and "_kernels" in names):
                return True
    return False


def test_only_the_runtime_module_imports_the_native_module():
    importers = sorted(str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py")
                       if _imports_native(ast.parse(p.read_text(encoding="utf-8"))))
    assert importers == ["kernels/runtime.py"]


def test_public_kernel_names_live_on_the_package():
    for name in ("kth_smallest_abs", "global_kth_smallest_abs", "apply_mask_", "prune_by_threshold_", "quantize",
                 "dequantize", "pack_int4", "unpack_int4", "int8_matmul", "pack_int8_weight", "int8_linear",
                 "int8_conv2d", "pack_int4_weight", "int4_linear", "cpu_features", "set_isa", "set_num_threads"):
        assert callable(getattr(kernels, name)), name
    assert set(kernels.__all__) <= set(dir(kernels))
