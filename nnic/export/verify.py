"""Running an exported file in onnxruntime and comparing it with the model it came from.

Every output is compared by its error relative to the reference's peak, ``max|onnx - torch| / max(max|torch|,
1e-6)``, against the tolerance of the export's kind (the loosest kind among the exported modules):

=============== ========= =======================================================================================
kind            tolerance why
=============== ========= =======================================================================================
``float``       1e-4      float32 kernels that sum in a different order (pruned / sped-up / sparse-as-dense)
``int4``        2e-2      onnxruntime multiplies float activations by the 4-bit weights; nnic quantizes the
                          activations to int8 first
``int8``        6e-2      dynamic activations: onnxruntime quantizes per tensor (u8), nnic per token (static,
                          calibrated activations agree far closer: the same codes, sums rounded differently)
=============== ========= =======================================================================================

Integer and boolean outputs must be equal.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

TOLERANCES: dict[str, float] = {"float": 1e-4, "int4": 2e-2, "int8": 6e-2}

__all__ = ["TOLERANCES", "VerificationError", "compare", "run_onnxruntime"]


class VerificationError(ValueError):
    """The exported file's outputs differ from the model's beyond the export kind's tolerance."""


def run_onnxruntime(path: str, names: Sequence[str], inputs: Sequence[torch.Tensor]) -> list[np.ndarray]:
    """The outputs of the ONNX file at ``path`` on ``inputs`` (fed by ``names``), on onnxruntime's CPU provider."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3  # shape-hint warnings about the dynamic axes are noise here
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    feeds = {name: t.detach().cpu().numpy() for name, t in zip(names, inputs)}
    return session.run(None, feeds)


def relative_error(got: np.ndarray, ref: np.ndarray) -> float:
    diff = np.abs(got.astype(np.float64) - ref.astype(np.float64))
    return float(diff.max(initial=0.0) / max(float(np.abs(ref).max(initial=0.0)), 1e-6))


def compare(outputs: Sequence[np.ndarray], expected: Sequence[torch.Tensor], names: Sequence[str], kind: str,
            tolerance: float | None = None, where: str = "") -> dict[str, float]:
    """Relative error of each output (by name); raises :class:`VerificationError` naming the first output that
    differs in shape, dtype class or beyond the tolerance."""
    tol = TOLERANCES[kind] if tolerance is None else tolerance
    if len(outputs) != len(expected):
        raise VerificationError(f"{where}onnxruntime returned {len(outputs)} outputs, the model {len(expected)}")
    errors: dict[str, float] = {}
    for name, got, ref_t in zip(names, outputs, expected):
        ref = ref_t.detach().cpu().numpy()
        if tuple(got.shape) != tuple(ref.shape):
            raise VerificationError(f"{where}output {name!r}: onnxruntime gives shape {tuple(got.shape)}, the model "
                                    f"{tuple(ref.shape)}")
        if not ref_t.is_floating_point():
            if not np.array_equal(got, ref):
                raise VerificationError(f"{where}output {name!r}: integer values differ in "
                                        f"{int((got != ref).sum())} of {ref.size} places")
            errors[name] = 0.0
            continue
        err = relative_error(got, ref)
        if not err <= tol:  # NaN fails too
            raise VerificationError(f"{where}output {name!r} diverges: max |onnxruntime - model| is {err:.3g} of the "
                                    f"output's peak, tolerance for {kind!r} exports is {tol:.3g}")
        errors[name] = err
    return errors
