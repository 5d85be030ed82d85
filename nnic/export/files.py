"""Where an export lands: the model file written atomically, and weights past protobuf's 2 GB limit in one data file.

Above 2 GB torch's exporter cannot hold the weights inside the model proto and writes each one to its own file
beside the model (hundreds of files named after tensors, in the user's folder). The exporter here writes into a
private staging folder instead; the model is then published at ``path`` and, when it has external weights, those
go into a single ``<name>.data`` file beside it (onnxruntime and ``onnx.load`` find it from the model). The data
file lands before the model, so a model file at ``path`` is always complete.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator

#: Tensors at least this many bytes go to the data file when a model has external data (onnx's own default).
EXTERNAL_THRESHOLD = 1024


@contextlib.contextmanager
def staged_onnx(path: str) -> Iterator[str]:
    """A file name for the exporter in a staging folder beside ``path``; on a clean exit the model is published at
    ``path`` (see the module docstring), and the staging folder is removed either way."""
    directory = os.path.dirname(os.path.abspath(path))
    staging = tempfile.mkdtemp(prefix=".nnic-export-", dir=directory)
    try:
        staged = os.path.join(staging, "model.onnx")
        yield staged
        publish(staged, path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def publish(staged: str, path: str) -> None:
    """Move the exporter's file ``staged`` to ``path``, gathering external weights into ``<path>.data``."""
    staging = os.path.dirname(staged)
    if os.listdir(staging) == [os.path.basename(staged)]:  # the weights are inside the model: nothing to gather
        os.replace(staged, path)
        return
    import onnx

    model = onnx.load(staged)  # with the external tensors, read from beside it
    data_name = os.path.basename(path) + ".data"
    if os.path.exists(os.path.join(staging, data_name)):
        raise FileExistsError(f"{path}: the exporter wrote a tensor file named {data_name!r}; choose another name")
    gathered = os.path.join(staging, "gathered.onnx")
    onnx.save_model(model, gathered, save_as_external_data=True, all_tensors_to_one_file=True, location=data_name,
                    size_threshold=EXTERNAL_THRESHOLD)
    os.replace(os.path.join(staging, data_name), os.path.join(os.path.dirname(os.path.abspath(path)), data_name))
    os.replace(gathered, path)
