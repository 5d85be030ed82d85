"""The public names users rely on are importable, and class imports equal registry lookups."""

from __future__ import annotations

import subprocess
import sys

import pytest

import nnic
import nnic.pruning
import nnic.quantization


@pytest.mark.parametrize("package, kind", [(nnic.pruning, "pruner"), (nnic.quantization, "quantizer")])
def test_every_registered_class_is_importable_by_class_name_and_is_the_registered_one(package, kind):
    registered = [info.obj for info in nnic.list_plugins(kind)]
    assert {"LevelPruner", "NaiveQuantizer"} & {cls.__name__ for cls in registered}
    for cls in registered:
        assert getattr(package, cls.__name__) is cls
        assert cls.__name__ in dir(package)


def test_class_imports_do_not_load_plugins_until_asked():
    code = ("import sys, nnic.pruning, nnic.quantization; print('nnic.builtins.level' in sys.modules); "
            "from nnic.pruning import LevelPruner; print(LevelPruner is nnic.pruner('level', "
            "__import__('torch').nn.Linear(2, 2), [{'sparsity': 0.5, 'op_types': ['Linear']}]).__class__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "True"]


def test_the_registry_names_of_api_md_exist():
    names = {(i.kind, i.name) for i in nnic.list_plugins()}
    for pruner in ("level", "l1norm", "l2norm", "fpgm", "slim", "taylor", "apoz", "mean_activation", "nm", "agp",
                   "linear", "lottery_ticket", "movement", "admm"):
        assert ("pruner", pruner) in names
    for quantizer in ("naive", "qat", "lsq", "dorefa", "bnn", "ptq"):
        assert ("quantizer", quantizer) in names


def test_unknown_attributes_are_attribute_errors():
    with pytest.raises(AttributeError, match="has no attribute 'Nope'"):
        nnic.pruning.Nope  # noqa: B018
    with pytest.raises(AttributeError, match="has no attribute 'nope'"):
        nnic.nope  # noqa: B018


def test_the_top_level_names_of_api_md_exist():
    for name in ("__version__", "hookimpl", "list_plugins", "pruner", "quantizer", "speedup_model", "ModelSpeedup",
                 "quantization_speedup", "kernels"):
        assert hasattr(nnic, name), name
    for name in ("kth_smallest_abs", "global_kth_smallest_abs", "apply_mask_", "prune_by_threshold_", "quantize",
                 "dequantize", "pack_int4", "unpack_int4", "int8_matmul", "pack_int8_weight", "int8_linear",
                 "cpu_features"):
        assert callable(getattr(nnic.kernels, name)), name


def test_prune_quantize_then_really_run_int8():
    import torch
    from torch import nn

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10)).eval()
    nnic.pruner("level", model, [{"sparsity": 0.5, "op_types": ["Linear"]}]).compress()
    q = nnic.quantizer("naive", model, [{"quant_types": ["weight"], "quant_bits": 8, "op_types": ["Linear"]}])
    q.compress()
    x = torch.randn(16, 64)
    with torch.no_grad():
        simulated = model(x)
    nnic.quantization_speedup(model, q.calibration())
    assert type(model[0]).__name__ == "Int8Linear"
    with torch.no_grad():
        real = model(x)
    assert float(nn.functional.cosine_similarity(real.flatten(), simulated.flatten(), dim=0)) > 0.999
