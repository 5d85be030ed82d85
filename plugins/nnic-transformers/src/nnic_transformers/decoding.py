"""An exact decode fast path for LLaMA / Qwen2 / Mistral decoders: the per-token work outside the GEMVs (the
norms here; whole decoder layers in :mod:`nnic_transformers.decode_layer`).

A decode step of a compressed 1B decoder spends about a quarter of its time outside the weight GEMVs (README,
"Where a decode token goes"). Part of it is the RMSNorm: transformers writes it as ~7 tensor ops (cast, pow,
mean, add, rsqrt, mul, cast, mul), 45 calls per token at 1B. ``torch.nn.functional.rms_norm`` computes the same
function in one op, and in float32 its output is bit for bit the transformers module's (the reduction, the
epsilon and the weight multiply happen in the same order; the tests compare logits with ``torch.equal``).

For other dtypes the two differ: transformers normalizes in float32, casts back, *then* multiplies by the weight
in the input's dtype, while ``F.rms_norm`` rounds once. :class:`FastRMSNorm` therefore runs the original class's
own ``forward`` for any input or weight that is not float32, so a model cast to bfloat16 after
:func:`fast_decode` still computes what it computed before.

Measured and left out (README): transformers' ``StaticCache`` (preallocated K/V instead of a ``torch.cat`` per
layer and step) gives different logits (1.5e-6 at 110M: it attends over the whole preallocated length under a
mask) and was not faster on CPU at batch 1.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from nnic.selection import replace_module
from nnic_transformers.norms import rms_norm_classes


class FastRMSNorm(nn.Module):
    """A transformers LLaMA/Qwen2/Mistral RMSNorm (same ``weight`` and ``variance_epsilon``, same state dict)
    computed by ``F.rms_norm`` in float32, and by the replaced class's own ``forward`` otherwise."""

    def __init__(self, original: nn.Module) -> None:
        super().__init__()
        if type(original) not in rms_norm_classes():
            raise TypeError(f"FastRMSNorm: expected a transformers LLaMA/Qwen2/Mistral RMSNorm, got "
                            f"{type(original).__qualname__}")
        self.weight = original.weight
        self.variance_epsilon = float(original.variance_epsilon)
        self.reference = type(original)  # its forward reads only weight and variance_epsilon
        self.train(original.training)

    def extra_repr(self) -> str:
        return f"{tuple(self.weight.shape)}, eps={self.variance_epsilon}, as {self.reference.__name__}"

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        if hidden_states.dtype is torch.float32 and self.weight.dtype is torch.float32:
            return F.rms_norm(hidden_states, self.weight.shape, self.weight, self.variance_epsilon)
        return self.reference.forward(self, hidden_states)


def fast_decode(model: nn.Module, *, prefetch: bool = False, exact: bool = True) -> list[str]:
    """Swaps, in place, every decoder layer of ``model`` whose projections are fused low-bit GEMMs (after
    ``quantization_speedup`` and ``fuse_projections``) for a
    :class:`~nnic_transformers.decode_layer.FastDecoderLayer` (one-token steps with about half the torch ops,
    float32 outputs bit-identical), then every transformers LLaMA/Qwen2/Mistral RMSNorm for a :class:`FastRMSNorm`
    (one ``F.rms_norm`` call instead of ~7 ops; float32 outputs bit-identical, other dtypes unchanged); returns
    the names of the swapped modules, layers first. A fast layer runs the torch ops of a one-token step on one
    thread (``decode_layer.SMALL_OP_THREADS``; its GEMMs keep nnic's threads): they are too small to split, and on
    torch's OpenMP team each waits for the team's other threads at its barrier. Opt-in and idempotent (a second call swaps nothing);
    parameters and submodules are shared, not copied. Apply it to the model you run, after
    ``quantization_speedup`` / ``fuse_projections`` (layers whose projections are not fused keep their forward;
    the norms are swapped either way); ``save_pretrained`` still works (same state-dict keys), but a model meant
    to be pruned should be pruned before, since the speedup rules know transformers' classes.

    ``prefetch`` (opt-in): after each of its GEMMs a fast layer queues the next two GEMMs' packed weights (the
    next layer's, then the model's low-bit ``lm_head``; at most half the last-level cache's bytes) for
    ``nnic.kernels.prefetch_weights``, whose background
    thread walks them into the cache on idle cycles of the other core while the small ops run (outputs unchanged).
    It costs a few microseconds per GEMM and pays only where the weights do not fit in the cache and a core is
    idle between GEMVs; ``bench/decode.py --fast-decode --prefetch`` measures both. A second call re-links the
    layers with its own ``prefetch`` and ``exact`` settings.

    ``exact=False`` (opt-in) trades bit-identity for speed: a fast layer's one-token step is one call of nnic's decode
    kernels (``nnic.kernels.decode_layer``: RMSNorm, the four packed GEMMs, the residual add fused into the second
    norm, SiLU-gated product, and rotary + key/value write + grouped-query attention of the one query over a
    preallocated cache written in place, no ``cat``) instead of ~30 torch ops. Each kernel equals torch's op up to float32 rounding (other
    summation orders, a polynomial exponential), but the next GEMM quantizes its activation row to int8, so a
    one-ulp difference that lands on a rounding boundary moves a code by one step, and a deep model carries that
    on: on the small LLaMA / Qwen2 / Mistral test configs (2 layers), int4 and int8, batch 1 and 2, the logits
    differ from the exact path's by ~3e-7 of their largest magnitude (tested with a 1e-5 bound) and the greedy
    tokens and ``generate`` outputs are the same (plugins/nnic-transformers/tests/test_decode_kernels_path.py);
    on bench/decode.py's random-weight LLaMA-1B (22 layers; 25 steps teacher-forced on the exact path's tokens)
    the RMS logit difference is 0.05 (int8) / 0.06 (int4) against a logit RMS of 0.9, as large as a different
    but equally valid activation rounding: both paths stay as far from the float32 model (RMS 0.104 / 0.655) as
    each other, and the greedy token differs only where the top two logits are within 0.06 (int8: 5 of 25
    steps; int4: none). Use the default exact path where tokens must match transformers' own. Steps the kernels do not cover (an attention
    mask, e.g. padding; a sliding window about to drop positions; offloaded, quantized or static caches) run the
    exact path; the transformers cache stays valid for either (its layers' keys and values become views of the
    kernel's buffers)."""
    from nnic.quantization import Int4Linear, Int8Linear
    from nnic_transformers.decode_layer import FastDecoderLayer, fast_decoder_layer, link_layers, why_not_fast

    if not isinstance(model, nn.Module):
        raise TypeError(f"fast_decode: model must be a torch.nn.Module, got {type(model).__qualname__}")
    swapped = []
    for name, module in list(model.named_modules()):
        if name and not isinstance(module, FastDecoderLayer) and why_not_fast(module) is None:
            replace_module(model, name, fast_decoder_layer(module))
            swapped.append(name)
    classes = rms_norm_classes()
    for name, module in list(model.named_modules()):
        if not name or type(module) not in classes:  # the root cannot be swapped in place
            continue
        replace_module(model, name, FastRMSNorm(module))
        swapped.append(name)
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    lowbit_head = head if isinstance(head, (Int4Linear, Int8Linear)) else None
    link_layers([m for m in model.modules() if isinstance(m, FastDecoderLayer)], lowbit_head, prefetch, exact)
    return swapped


__all__ = ["FastRMSNorm", "fast_decode"]
