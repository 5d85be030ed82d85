"""The recipe's ``export`` stage runs nnic.export_onnx on the compressed model: the file lands in the output
folder and runs in onnxruntime like the model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nnic.recipe import compress, validate

ort = pytest.importorskip("onnxruntime")


def test_export_stage_after_prune_speedup_and_int8(tmp_path):
    recipe = {"name": "tiny", "model": {"factory": "nnic.demo:DigitsCNN", "kwargs": {"width": 4, "hidden": 16}},
              "example_input": {"shape": [2, 1, 8, 8]}, "data": {"factory": "nnic.demo:digits_data"},
              "measure": {"threads": 1, "warmup": 1, "repeats": 3},
              "stages": [{"stage": "prune", "pruner": "l1norm", "kwargs": {"dependency_aware": True},
                          "config_list": [{"sparsity": 0.5, "op_types": ["Conv2d"]}]},
                         {"stage": "speedup"},
                         {"stage": "quantize", "quantizer": "naive",
                          "config_list": [{"quant_types": ["weight"], "quant_bits": 8,
                                           "op_types": ["Conv2d", "Linear"]}]},
                         {"stage": "quantization_speedup"},
                         {"stage": "export"}]}
    result = compress(validate(recipe, "tiny.yaml"), tmp_path, quiet=True)
    files = list(tmp_path.rglob("*.onnx"))
    assert len(files) == 1
    x = torch.rand(5, 1, 8, 8)
    session = ort.InferenceSession(str(files[0]), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    with torch.inference_mode():
        ref = result.model(x).numpy()
    assert np.abs(got - ref).max() <= 0.06 * np.abs(ref).max()
