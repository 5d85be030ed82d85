"""Decoder tokens per second on CPU: float32, bfloat16, torch dynamic int8, nnic int8, nnic int4 (and torchao's
CPU int8/int4 weight-only paths when torchao is installed and runs), on LLaMA- and GPT-2-shaped models built
from transformers configs with random weights.

    python bench/decode.py                                   # ~110M LLaMA + GPT-2 (124M), batch 1, short run
    python bench/decode.py --models llama-1b --batch 1 4     # ~1.1B LLaMA (about 10 GiB for all variants)
    python bench/decode.py --prompt 128 --new 64 --rounds 5 --variants fp32 nnic-int4
    python bench/decode.py --models llama-110m --variants fp32 pruned --prune 0.3   # structured pruning
    python bench/decode.py --models llama-1b --variants nnic-int4 --profile          # where a decode step goes
    python bench/decode.py --models llama-110m --variants fp32 nnic-int4 --fast-decode  # with and without fast_decode
    python bench/decode.py --models llama-110m --lm-head-error                         # logit error of a low-bit lm_head

``pruned`` (LLaMA models) prunes ``--prune`` of the attention heads (``transformer_head``, ``l1_weight``: whole
key/value heads with all of their query heads, ``floor(p x kv heads)`` per layer) and of the MLP channels
(``l1norm`` across gate/up/down, dependency-aware), and with ``--prune-hidden`` that much of the hidden size
(``transformer_hidden``) with nnic, records the masked model's greedy tokens on every
batch's prompt, speeds the model up (float32) and checks that it generates the same ``--new`` tokens; then it is
timed in the same rounds as the others ("vs fp32" is its ratio to dense float32).

Each round runs every variant once (interleaved A, B, C, A, B, C, ... so that load from other processes hits
them alike): a prefill of ``--prompt`` random tokens, then ``--new`` greedy decode steps with the KV cache
(``DynamicCache``), timed separately; the tables give medians over rounds. Decode tokens/s counts
``batch x new`` tokens. "GB/s" is the weight bytes read per decode step (every Linear weight, scales and zero
points included, once per step whatever the batch) times steps per second, and "%bw" divides it by the copy
bandwidth measured in the same run (``dst.copy_(src)`` of 512 MiB, read + write bytes, best of 5).
GPT-2's ``Conv1D`` layers are turned into ``nn.Linear`` first (same function), so that every variant sees the
same Linear layers. nnic int4 is symmetric per group of ``--group-size`` (32), group scales in nnic's default format
(8-bit codes times a float32 step per output; ``nnic-int4-u8scales`` names it explicitly; on request float16,
``nnic-int4-f16scales``, the default before, or float32, ``nnic-int4-f32scales``), with per-token int8 activations.
Every Linear is quantized, the vocabulary projection (``lm_head``) included unless ``--float-lm-head``. The nnic variants run each block's
q/k/v and gate/up projections as one GEMM each (``nnic_transformers.fuse_projections``, same outputs);
``nnic-int8-unfused`` / ``nnic-int4-unfused`` (on request) keep them separate. ``--fast-decode`` adds, for every
nnic variant K, ``K+fast``: the same model object (same weights) run with ``nnic_transformers.fast_decode``'s
decoder layers (one-token steps with about half the torch ops) and RMSNorms (one ``F.rms_norm`` call), float32
logits bit-identical (the warm-up tokens are compared), swapped in for its runs only, timed in the same
interleaved rounds; ``--prefetch`` adds ``K+fast+pf``, the same with ``fast_decode(model, prefetch=True)``
(the next GEMMs' weights walked into the cache by a background thread while the small ops run); ``--kernels`` adds
``K+fast+kernels`` (and ``K+fast+kernels+pf``), ``fast_decode(model, exact=False)``: the step's small ops in nnic's
decode kernels, equal to the exact path up to float32 rounding. ``--profile`` also counts the torch ops of a decode step per decoder layer, lists them by self CPU time
(``torch.profiler``), times the GEMMs inside ``fast_decode`` layers and times one small op; ``--lm-head-error`` measures (no timing) what an int8 / int4 ``lm_head`` does to the logits.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import nnic  # noqa: E402
from nnic import kernels  # noqa: E402

MODELS = {
    # name: (family, config kwargs)
    "llama-110m": ("llama", dict(hidden_size=768, intermediate_size=2048, num_hidden_layers=12, num_attention_heads=12,
                                 num_key_value_heads=4, vocab_size=32000, max_position_embeddings=1024)),
    "llama-1b": ("llama", dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32,
                               num_key_value_heads=4, vocab_size=32000, max_position_embeddings=2048)),
    "gpt2": ("gpt2", dict(n_embd=768, n_layer=12, n_head=12, vocab_size=50257, n_positions=1024)),
    "gpt2-large": ("gpt2", dict(n_embd=1280, n_layer=36, n_head=20, vocab_size=50257, n_positions=1024)),
}
VARIANTS = ("fp32", "bf16", "torch-dynamic-int8", "nnic-int8", "nnic-int4", "torchao-int8", "torchao-int4", "pruned")
# On request: the nnic variants without fuse_projections, and nnic int4 with float32 group scales or 8-bit scale
# codes times a float32 step per output (default float16).
EXTRA = ("nnic-int8-unfused", "nnic-int4-unfused", "nnic-int4-f16scales", "nnic-int4-f32scales", "nnic-int4-u8scales")


def build(name: str) -> nn.Module:
    import transformers

    family, kw = MODELS[name]
    torch.manual_seed(0)
    if family == "llama":
        cfg = transformers.LlamaConfig(**kw, attn_implementation="sdpa")
        model = transformers.LlamaForCausalLM(cfg)
    else:
        cfg = transformers.GPT2Config(**kw, attn_implementation="sdpa")
        model = transformers.GPT2LMHeadModel(cfg)
        conv1d_to_linear(model)
    return model.eval()


def conv1d_to_linear(model: nn.Module) -> None:
    """GPT-2's ``Conv1D`` (``x @ W + b``, W ``[in, out]``) as the equivalent ``nn.Linear``."""
    from transformers.pytorch_utils import Conv1D

    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, Conv1D):
                lin = nn.Linear(child.weight.shape[0], child.weight.shape[1])
                lin.weight = nn.Parameter(child.weight.detach().t().contiguous())
                lin.bias = nn.Parameter(child.bias.detach().clone())
                setattr(parent, name, lin)


def linear_names(model: nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]


def tied(model: nn.Module) -> bool:
    head = model.get_output_embeddings()
    return head is not None and head.weight is model.get_input_embeddings().weight


def untie(model: nn.Module) -> None:
    """A quantized output layer must not take the (float) embedding with it: give it its own weight."""
    if tied(model):
        head = model.get_output_embeddings()
        head.weight = nn.Parameter(head.weight.detach().clone())


def native_bf16() -> bool:
    """Whether the CPU multiplies bfloat16 natively (AVX512_BF16 or AMX), per /proc/cpuinfo (True elsewhere)."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith("flags")), "").split()
    except OSError:
        return True
    return "avx512_bf16" in flags or "amx_bf16" in flags


def variant(base: nn.Module, kind: str, group_size: int) -> nn.Module | None:
    """The model for one variant (a copy of ``base``), or None with a message when it cannot run here."""
    if kind == "bf16":
        if not BF16_NATIVE:
            # Without AVX512_BF16 / AMX torch emulates bfloat16 matmuls: on a Zen 3 machine one llama-1b warm-up
            # had not finished after 10 minutes.
            print(f"  {kind}: skipped (this CPU has no native bfloat16; name it in --variants to run it anyway)")
            return None
        return copy.deepcopy(base).to(torch.bfloat16)
    if kind == "fp32" and not tied(base):
        return base  # never changed: timing only reads it (one copy less of a 1B model)
    m = copy.deepcopy(base)
    untie(m)
    if kind == "fp32":
        return m
    names = linear_names(m)
    if FLOAT_LM_HEAD:
        head = m.get_output_embeddings()
        names = [n for n in names if m.get_submodule(n) is not head]
    if kind == "torch-dynamic-int8":
        return torch.ao.quantization.quantize_dynamic(m, {nn.Linear}, dtype=torch.qint8)
    if kind.startswith(("nnic-int8", "nnic-int4")):
        if kind.startswith("nnic-int8"):
            m = nnic.quantization_speedup(m, {n: 8 for n in names})
        else:
            from nnic.quantization import Int4Linear

            scales = {"-f16scales": torch.float16, "-f32scales": torch.float32, "-u8scales": torch.uint8}.get(
                kind[len("nnic-int4"):], kernels.DEFAULT_INT4_SCALE_DTYPE)
            for n in names:
                parent, _, leaf = n.rpartition(".")
                owner = m.get_submodule(parent) if parent else m
                setattr(owner, leaf, Int4Linear.from_float(getattr(owner, leaf), group_size=group_size,
                                                           scale_dtype=scales))
        if not kind.endswith("-unfused"):
            from nnic_transformers import fuse_projections

            fuse_projections(m)  # q/k/v and gate/up as one GEMM each: exactly the same outputs
        return m
    if kind.startswith("torchao"):
        try:
            from torchao.quantization import Int8WeightOnlyConfig, Int4WeightOnlyConfig, quantize_
        except Exception as e:  # not installed, or an install that does not import with this torch
            print(f"  {kind}: skipped (torchao does not import: {type(e).__name__}: {str(e)[:80]})")
            return None
        try:
            if kind == "torchao-int8":
                quantize_(m, Int8WeightOnlyConfig())
            else:
                m = m.to(torch.bfloat16)
                quantize_(m, Int4WeightOnlyConfig(group_size=group_size, int4_packing_format="opaque"))
            return m
        except Exception as e:
            print(f"  {kind}: skipped (torchao refused: {type(e).__name__}: {str(e)[:120]})")
            return None
    raise ValueError(f"unknown variant {kind!r}")


def pruned(m: nn.Module, fraction: float, prompts: list[torch.Tensor], new: int,
           hidden: float = 0.0) -> tuple[nn.Module, str]:
    """``m`` with ``fraction`` of its heads (grouped-query units) and MLP channels (and ``hidden`` of its hidden
    size) pruned and sped up in place, and a line saying what went and whether it generates the masked model's
    tokens on every prompt. Called before the other variants exist: speedup holds a copy of the weights while it
    works, which for a 1B model is the memory of another model."""
    if not 0 < fraction < 1 or not 0 <= hidden < 1:
        raise ValueError(f"--prune / --prune-hidden: expected fractions in (0, 1) / [0, 1), got {fraction}, {hidden}")
    if not all(hasattr(mlp, "gate_proj") for mlp in (layer.mlp for layer in m.model.layers)):
        raise ValueError("--prune: the pruned variant is for LLaMA-shaped models (gate/up/down MLPs)")
    dense = copy.deepcopy(m.config)
    dummy = {"input_ids": prompts[0][:1, :8], "use_cache": False}  # no cache object: one graph of the whole model
    masks = nnic.pruner("transformer_head", m, [{"sparsity": fraction}], criterion="l1_weight").compress()[1]
    mlp_names = [n for n, _ in m.named_modules() if n.endswith(("mlp.gate_proj", "mlp.up_proj"))]
    masks.update(nnic.pruner("l1norm", m, [{"sparsity": fraction, "op_names": mlp_names}], dependency_aware=True,
                             dummy_input=dummy).compress()[1])
    if hidden:  # after the others: its masks include theirs
        masks.update(nnic.pruner("transformer_hidden", m, [{"sparsity": hidden}], round_to=32).compress()[1])
    masked = [run_once(m, ids, new)[2] for ids in prompts]
    params = sum(p.numel() for p in m.parameters())
    t0 = time.perf_counter()
    nnic.speedup_model(m, dummy, masks)
    took = time.perf_counter() - t0
    same = [int((run_once(m, ids, new)[2] == want).all(0).sum()) for ids, want in zip(prompts, masked)]
    attn, mlp_layer = m.model.layers[0].self_attn, m.model.layers[0].mlp
    kept = (f"heads {attn.q_proj.out_features // attn.head_dim}/{dense.num_attention_heads}, "
            f"MLP {mlp_layer.gate_proj.out_features}/{dense.intermediate_size}, "
            f"hidden {attn.q_proj.in_features}/{dense.hidden_size}")
    ratio = sum(p.numel() for p in m.parameters()) / params
    what = f"{fraction:.0%}" + (f" + hidden {hidden:.0%}" if hidden else "")
    line = (f"  pruned {what}: {kept} per layer, parameters x{ratio:.3f}, speedup took {took:.1f} s; greedy "
            f"tokens equal to the masked model's: {', '.join(f'{s}/{new}' for s in same)} (per prompt)")
    if any(s != new for s in same):
        line += "  <-- DIFFERENT"
    return m.eval(), line


FAST_MODULES: dict[str, tuple[dict[str, nn.Module], dict[str, nn.Module]]] = {}  # "K+fast": (fast, original) modules


def with_fast_decode(models: dict[str, nn.Module], prefetch: bool = False,
                     kernels: bool = False) -> dict[str, nn.Module]:
    """``models`` with ``K+fast`` after each nnic variant ``K``: the same model object (same weights, same memory),
    whose decoder layers and RMSNorms :func:`running` swaps for ``nnic_transformers.fast_decode``'s while ``K+fast``
    runs (``fast_decode``'s default: no background prefetch of the next weights); ``prefetch`` adds ``K+fast+pf``,
    with it (``fast_decode(model, prefetch=True)``). ``kernels`` adds ``K+fast+kernels`` (and ``K+fast+kernels+pf``
    with ``prefetch``): ``fast_decode(model, exact=False)``, the step's small ops in nnic's decode kernels."""
    from nnic_transformers import fast_decode

    out = {}
    for k, m in models.items():
        out[k] = m
        if not k.startswith("nnic-"):
            continue
        kinds = [("+fast", False, True)] + ([("+fast+pf", True, True)] if prefetch else [])
        if kernels:
            kinds += [("+fast+kernels", False, False)] + ([("+fast+kernels+pf", True, False)] if prefetch else [])
        for suffix, pf, exact in kinds:
            original = {n: mod for n, mod in m.named_modules()}
            names = fast_decode(m, prefetch=pf, exact=exact)  # decoder layers first, then norms: put back in that order
            fast = {n: m.get_submodule(n) for n in names}
            set_modules(m, {n: original[n] for n in names})
            if fast:
                out[f"{k}{suffix}"] = m
                FAST_MODULES[f"{k}{suffix}"] = (fast, {n: original[n] for n in fast})
    return out


def set_modules(model: nn.Module, modules: dict[str, nn.Module]) -> None:
    for name, mod in modules.items():
        parent, _, leaf = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, leaf, mod)


@contextlib.contextmanager
def running(kind: str, model: nn.Module):
    """``model`` as variant ``kind`` runs it: with the fast layers and norms in place for a ``+fast`` variant."""
    fast, original = FAST_MODULES.get(kind, ({}, {}))
    set_modules(model, fast)
    try:
        yield model
    finally:
        set_modules(model, original)


def weight_bytes(model: nn.Module) -> int:
    """Bytes of every Linear-like layer's weights, as stored for the kernels (read once per decode step)."""
    from nnic.quantization import Int4Linear, Int8Linear

    total = 0
    for mod in model.modules():
        if isinstance(mod, Int4Linear):
            total += mod._packed_weight().nbytes
        elif isinstance(mod, Int8Linear):
            total += mod._packed_weight().nbytes
        elif isinstance(mod, torch.ao.nn.quantized.dynamic.Linear):
            w = mod.weight()
            total += w.numel() + 8 * w.q_per_channel_scales().numel() if w.qscheme() in (
                torch.per_channel_affine, torch.per_channel_symmetric) else w.numel()
        elif isinstance(mod, nn.Linear):
            total += _tensor_bytes(mod.weight)
    return total


def _tensor_bytes(t: torch.Tensor) -> int:
    """Storage bytes of a tensor, or of the inner tensors of a tensor subclass (torchao's packed weights)."""
    if type(t) not in (torch.Tensor, nn.Parameter) and hasattr(t, "__tensor_flatten__"):
        names, _ = t.__tensor_flatten__()
        return sum(_tensor_bytes(getattr(t, n)) for n in names)
    return t.numel() * t.element_size()


CLOCK = time.perf_counter  # --clock cpu: time.thread_time (one thread)
FLOAT_LM_HEAD = False  # --float-lm-head: the quantized variants keep the vocabulary projection in float32
BF16_NATIVE = True  # False: bf16 skipped unless named in --variants (main sets it from the CPU's flags)


@torch.inference_mode()
def run_once(model: nn.Module, ids: torch.Tensor, new: int) -> tuple[float, float, torch.Tensor]:
    """(prefill seconds, decode seconds, generated tokens) for greedy decoding with the KV cache."""
    from transformers import DynamicCache

    cache = DynamicCache()
    t0 = CLOCK()
    out = model(input_ids=ids, past_key_values=cache, use_cache=True)
    nxt = out.logits[:, -1].argmax(-1, keepdim=True)
    t1 = CLOCK()
    toks = [nxt]
    for _ in range(new - 1):
        out = model(input_ids=nxt, past_key_values=out.past_key_values, use_cache=True)
        nxt = out.logits[:, -1].argmax(-1, keepdim=True)
        toks.append(nxt)
    t2 = CLOCK()
    return t1 - t0, t2 - t1, torch.cat(toks, 1)


def prefill_then_decode(model: nn.Module, ids: torch.Tensor, steps: int,
                        around_steps: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext) -> None:
    """A prefill of ``ids`` into a fresh cache, then ``steps`` KV-cached greedy steps inside ``around_steps()``
    (what :func:`profile` and :func:`op_counts` measure: the steps, not the prefill)."""
    from transformers import DynamicCache

    out = model(input_ids=ids, past_key_values=DynamicCache(), use_cache=True)
    nxt = out.logits[:, -1].argmax(-1, keepdim=True)
    with around_steps():
        for _ in range(steps):
            out = model(input_ids=nxt, past_key_values=out.past_key_values, use_cache=True)
            nxt = out.logits[:, -1].argmax(-1, keepdim=True)


@torch.inference_mode()
def profile(model: nn.Module, ids: torch.Tensor, steps: int) -> list[tuple[str, float, int]]:
    """Where a decode step goes: (module kind, ms per step, calls per step) for ``steps`` KV-cached greedy steps
    after a prefill of ``ids``, timed by forward hooks on every module (kinds: the last part of the module's name,
    ``layers.N`` as ``layer``, the whole model as ``total``, a ``fuse_projections`` GEMM as ``qkv_proj (fused
    GEMM)``), largest first. Times are inclusive: a block's time contains its projections', and the first part of
    a fused group (``q_proj``) contains the fused GEMM. Hooks add a few microseconds per module call. Timed on the
    bench's clock (``--clock cpu``: the thread's CPU time, which other processes' load does not inflate). A
    ``fast_decode`` layer calls its projections without module hooks: its GEMVs are inside ``layer``."""
    spent: dict[str, float] = {}
    calls: dict[str, int] = {}
    started: dict[str, float] = {}
    handles = []
    for name, mod in model.named_modules():
        parts = name.split(".")
        kind = ("total" if not name else "layer" if parts[-1].isdigit()
                else f"{parts[-2]} (fused GEMM)" if parts[-1] == "fused" and len(parts) > 1 else parts[-1])

        def pre(mod, args, name=name):
            started[name] = CLOCK()

        def post(mod, args, out, name=name, kind=kind):
            spent[kind] = spent.get(kind, 0.0) + CLOCK() - started.pop(name)
            calls[kind] = calls.get(kind, 0) + 1

        handles += [mod.register_forward_pre_hook(pre), mod.register_forward_hook(post)]
    def start_counting() -> contextlib.AbstractContextManager:
        spent.clear()
        calls.clear()
        return contextlib.nullcontext()

    try:
        with fast_layer_gemms_timed(spent, calls):
            prefill_then_decode(model, ids, steps, start_counting)
    finally:
        for h in handles:
            h.remove()
    rows = [(k, 1e3 * v / steps, calls[k] // steps) for k, v in spent.items()]
    return sorted(rows, key=lambda r: -r[1])


@contextlib.contextmanager
def fast_layer_gemms_timed(spent: dict[str, float], calls: dict[str, int]):
    """Inside: every GEMM a ``fast_decode`` layer runs (which no module hook sees) adds its time to ``spent`` under
    ``<name> GEMM (fast)`` (``qkv``, ``o``, ``gate_up``, ``down``), on the bench's clock."""
    from nnic_transformers.decode_layer import _StepIO

    plain = _StepIO.gemm

    def timed(io, layer, name):
        t0 = CLOCK()
        out = plain(io, layer, name)
        kind = f"{name} GEMM (fast)"
        spent[kind] = spent.get(kind, 0.0) + CLOCK() - t0
        calls[kind] = calls.get(kind, 0) + 1
        return out

    _StepIO.gemm = timed
    try:
        yield
    finally:
        _StepIO.gemm = plain


@torch.inference_mode()
def op_times(model: nn.Module, ids: torch.Tensor, steps: int) -> list[tuple[str, float, float]]:
    """(torch op, self CPU ms per decode step, calls per step) of ``steps`` KV-cached greedy steps after a prefill,
    from ``torch.profiler`` (self time: an op's own time without the ops it calls; nnic's GEMMs are not torch ops
    and appear in :func:`profile`), largest first."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    held = {}

    @contextlib.contextmanager
    def profiled():
        with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
            yield
        held["prof"] = prof

    prefill_then_decode(model, ids, steps, profiled)
    rows = [(e.key, e.self_cpu_time_total / 1e3 / steps, e.count / steps) for e in held["prof"].key_averages()]
    return sorted(rows, key=lambda r: -r[1])


@torch.inference_mode()
def op_counts(model: nn.Module, ids: torch.Tensor, steps: int) -> tuple[dict[str, float], dict[str, float], int]:
    """The torch ops one KV-cached decode step runs (after a prefill of ``ids``), as the dispatcher sees them
    (``TorchDispatchMode``: views and in-place ops included, composites already decomposed), averaged over ``steps``
    steps: (ops per step inside the decoder layers by op name, outside them by op name, decoder layers per step).
    nnic's kernels are called through numpy and are not torch ops (they are the GEMV rows of :func:`profile`)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    layers = [m for n, m in model.named_modules() if n.split(".")[-1].isdigit()]
    inside = [0]
    counts: tuple[dict[str, float], dict[str, float]] = ({}, {})

    class Count(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            table = counts[0] if inside[0] else counts[1]
            name = func.overloadpacket.__name__
            table[name] = table.get(name, 0) + 1
            return func(*args, **(kwargs or {}))

    def enter(*_):
        inside[0] += 1

    def leave(*_):
        inside[0] -= 1

    handles = [h for m in layers for h in (m.register_forward_pre_hook(enter), m.register_forward_hook(leave))]
    try:
        prefill_then_decode(model, ids, steps, Count)
    finally:
        for h in handles:
            h.remove()
    per_step = tuple({k: v / steps for k, v in sorted(t.items(), key=lambda kv: -kv[1])} for t in counts)
    return per_step[0], per_step[1], len(layers)


def dispatch_cost(hidden: int) -> dict[str, float]:
    """Microseconds per call, on the bench's clock (median of 2000), of small torch ops on a one-token hidden state
    ``[1, 1, hidden]``: what each op of a decode step costs besides its arithmetic."""
    x, y = torch.randn(1, 1, hidden), torch.randn(1, 1, hidden)
    ops = {"add": lambda: x + y, "mul": lambda: x * y, "view": lambda: x.view(1, -1),
           "transpose": lambda: x.transpose(0, 1), "cat (2 halves)": lambda: torch.cat((x, y), -1)}
    out = {}
    with torch.inference_mode():
        for name, op in ops.items():
            t = []
            for _ in range(2000):
                t0 = CLOCK()
                op()
                t.append(CLOCK() - t0)
            out[name] = 1e6 * statistics.median(t)
    return out


@torch.inference_mode()
def lm_head_error(name: str, group_size: int, tokens: int = 128, batch: int = 4) -> None:
    """What quantizing the vocabulary projection costs in logits: the float32 model against models whose
    ``lm_head`` alone is int8 / int4 (the rest float32: the head's own error), and whose every other Linear is int4
    with the head float32 / int8 / int4 (what the decode variants run); teacher-forced on ``batch x tokens`` random
    tokens. Columns: RMS of the logit error (and of the float logits), mean KL(float || quantized) of the next-token
    distributions, the share of positions whose top-1 token equals the float model's. Random-weight models are
    near-uniform predictors: compare rows with each other, not with published numbers."""
    from nnic.quantization import Int4Linear, Int8Linear

    base = build(name)
    ids = torch.randint(0, MODELS[name][1]["vocab_size"], (batch, tokens), generator=torch.Generator().manual_seed(0))
    want = base(input_ids=ids).logits.float()
    p = torch.log_softmax(want, -1)

    def lowered(head_bits: int | None, body_bits: int | None) -> nn.Module:
        m = copy.deepcopy(base)
        untie(m)
        head = m.get_output_embeddings()
        for n in linear_names(m):
            bits = head_bits if m.get_submodule(n) is head else body_bits
            if bits is None:
                continue
            parent, _, leaf = n.rpartition(".")
            owner = m.get_submodule(parent) if parent else m
            lin = getattr(owner, leaf)
            setattr(owner, leaf, Int8Linear.from_float(lin) if bits == 8 else
                    Int4Linear.from_float(lin, group_size=group_size))
        return m

    print(f"\n{name}: lm_head quantization error ({batch} x {tokens} random tokens, teacher-forced, int4 g{group_size})")
    print(f"  {'lm_head':8s} {'rest':8s} {'logits RMS err':>14s} {'KL(float||q)':>12s} {'top-1 = float':>13s}")
    print(f"  {'float32':8s} {'float32':8s} {0:14.4f} {0:12.2e} {1:13.3f}   (float logits RMS "
          f"{want.pow(2).mean().sqrt().item():.4f})")
    for body in (None, 4):
        for head in ((8, 4) if body is None else (None, 8, 4)):
            got = lowered(head, body)(input_ids=ids).logits.float()
            q = torch.log_softmax(got, -1)
            kl = (p.exp() * (p - q)).sum(-1).mean().item()
            top1 = (got.argmax(-1) == want.argmax(-1)).float().mean().item()
            label = lambda b: "float32" if b is None else f"int{b}"  # noqa: E731
            print(f"  {label(head):8s} {label(body):8s} {(got - want).pow(2).mean().sqrt().item():14.4f} "
                  f"{kl:12.2e} {top1:13.3f}")


def copy_bandwidth() -> float:
    """Bytes per second of ``dst.copy_(src)`` (read + write), best of 5, 512 MiB buffers, on the bench's clock."""
    src = torch.ones(1 << 27)
    dst = torch.empty_like(src)
    best = float("inf")
    for _ in range(5):
        t0 = CLOCK()
        dst.copy_(src)
        best = min(best, CLOCK() - t0)
    return 2 * src.numel() * 4 / best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="*", default=["llama-110m", "gpt2"], choices=sorted(MODELS))
    ap.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=VARIANTS + EXTRA)
    ap.add_argument("--batch", nargs="*", type=int, default=[1])
    ap.add_argument("--prompt", type=int, default=128, help="prompt tokens (prefill)")
    ap.add_argument("--new", type=int, default=32, help="generated tokens (decode steps); the issue's setting is 64")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds (medians are reported)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                    help="cpu: one thread, timed by its own CPU time (steadier on a shared machine)")
    ap.add_argument("--group-size", type=int, default=32, help="int4 group size (32, 64, 128)")
    ap.add_argument("--prune", type=float, default=0.3, help="fraction of heads and MLP channels the pruned "
                    "variant removes")
    ap.add_argument("--prune-hidden", type=float, default=0.0, help="fraction of the hidden size the pruned variant "
                    "also removes (transformer_hidden, kept count a multiple of 32)")
    ap.add_argument("--profile", action="store_true", help="instead of timing: where one decode step goes, per "
                    "module kind (projections, norms, attention, lm_head, ...), for each variant")
    ap.add_argument("--fast-decode", action="store_true", help="also time every nnic variant after "
                    "nnic_transformers.fast_decode (as K+fast, same rounds)")
    ap.add_argument("--kernels", action="store_true", help="with --fast-decode: also K+fast+kernels, "
                    "fast_decode(model, exact=False): the step's small ops in nnic's decode kernels (float32 "
                    "rounding-level differences; same rounds)")
    ap.add_argument("--prefetch", action="store_true", help="with --fast-decode: K+fast runs without the background "
                    "prefetch of the next weights, and K+fast+pf with it (same rounds)")
    ap.add_argument("--lm-head-error", action="store_true", help="instead of timing: the logit error of an int8 / "
                    "int4 lm_head against float32, alone and beside an int4 body (no timing)")
    ap.add_argument("--float-lm-head", action="store_true", help="the quantized variants keep the vocabulary "
                    "projection (lm_head) in float32 (default: quantized like every other Linear)")
    args = ap.parse_args()
    global CLOCK, FLOAT_LM_HEAD, BF16_NATIVE
    FLOAT_LM_HEAD = args.float_lm_head
    BF16_NATIVE = "--variants" in sys.argv or native_bf16()
    if args.clock == "cpu":
        CLOCK, args.threads = time.thread_time, 1

    torch.set_num_threads(args.threads)
    kernels.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    if args.lm_head_error:
        for name in args.models:
            lm_head_error(name, args.group_size)
        return
    bw = copy_bandwidth()
    print(f"torch {torch.__version__}, threads {args.threads}, nnic path {kernels.gemm_path()}, "
          f"copy_ bandwidth {bw / 1e9:.1f} GB/s; clock {args.clock}; prompt {args.prompt}, new {args.new}, "
          f"medians of {args.rounds} interleaved rounds")
    for name in args.models:
        family, kw = MODELS[name]
        vocab = kw["vocab_size"]
        prompts = [torch.randint(0, vocab, (batch, args.prompt), generator=torch.Generator().manual_seed(batch))
                   for batch in args.batch]
        built, notes = {}, []
        if "pruned" in args.variants and family != "llama":
            print(f"  pruned: skipped for {name} (LLaMA-shaped models only)")
        elif "pruned" in args.variants:  # first, from its own copy of the (seeded) model: see pruned()
            built["pruned"], note = pruned(build(name), args.prune, prompts, args.new, args.prune_hidden)
            notes.append(note)
        base = build(name)
        params = sum(p.numel() for p in base.parameters())
        for kind in args.variants:
            if kind != "pruned":
                built[kind] = variant(base, kind, args.group_size)
        models = {k: built[k] for k in args.variants if built.get(k) is not None}
        if args.fast_decode:
            models = with_fast_decode(models, args.prefetch, args.kernels)
        wbytes = {k: weight_bytes(m) for k, m in models.items()}
        if args.profile:
            for k, mod in models.items():
                with running(k, mod) as m:
                    run_once(m, prompts[0], 4)  # warm-up
                    print(f"\n{name} {k}, batch {args.batch[0]}: per decode step, by module kind (forward hooks)")
                    for kind, ms, n in profile(m, prompts[0], args.new):
                        print(f"  {kind:28s} {ms:8.3f} ms  {n:4d} calls")
                    in_layers, outside, n_layers = op_counts(m, prompts[0], 4)
                    print(f"  torch ops per decode step: {sum(in_layers.values()) / n_layers:.0f} per decoder "
                          f"layer x {n_layers}, {sum(outside.values()):.0f} outside the layers")
                    print("    per layer: " + ", ".join(f"{k} {v / n_layers:g}" for k, v in in_layers.items()))
                    print("    outside:   " + ", ".join(f"{k} {v:g}" for k, v in outside.items()))
                    ops = op_times(m, prompts[0], args.new)
                    print(f"  torch ops by self CPU time per decode step (torch.profiler; "
                          f"{sum(ms for _, ms, _ in ops):.2f} ms in all):")
                    for op, ms, n in ops[:14]:
                        print(f"    {op:36s} {ms:7.3f} ms {n:6.1f} calls")
            print("\n  dispatch cost of one small op (us, one token): " + ", ".join(
                f"{k} {v:.2f}" for k, v in dispatch_cost(kw.get("hidden_size", kw.get("n_embd", 768))).items()))
            continue
        for batch, ids in zip(args.batch, prompts):
            times: dict[str, list[tuple[float, float]]] = {k: [] for k in models}
            first: dict[str, torch.Tensor] = {}
            for k, mod in models.items():  # warm-up (packing, caches), and the tokens each variant generates
                with running(k, mod) as m:
                    first[k] = run_once(m, ids, min(args.new, 8))[2]
            base_of = lambda k: k.split("+")[0]  # noqa: E731
            fast_same = {k: torch.equal(first[k], first[base_of(k)]) for k in models if "+fast" in k}
            for _ in range(args.rounds):
                for k, mod in models.items():
                    with running(k, mod) as m:
                        pre, dec, _ = run_once(m, ids, args.new)
                    times[k].append((pre, dec))
            print(f"\n{name} ({params / 1e6:.0f}M parameters), batch {batch}")
            for note in notes:
                print(note)
            for k, same in fast_same.items():
                print(f"  {k}: warm-up tokens {'equal to' if same else 'DIFFERENT from'} {base_of(k)}'s")
            print(f"  {'variant':26s} {'prefill ms':>10s} {'decode tok/s':>12s} {'vs fp32':>8s} {'weights MB':>10s} "
                  f"{'GB/s':>6s} {'%bw':>5s} {'same tokens as fp32 (of 8)':>26s}")
            ref = statistics.median(d for _, d in times["fp32"]) if "fp32" in times else None
            for k in models:
                pre = statistics.median(p for p, _ in times[k])
                dec = statistics.median(d for _, d in times[k])
                steps = (args.new - 1) / dec
                gbs = wbytes[k] * steps / 1e9
                same = (first[k] == first["fp32"]).float().mean().item() * 8 if "fp32" in first else float("nan")
                print(f"  {k:26s} {pre * 1e3:10.1f} {batch * steps:12.1f} {(ref / dec if ref else float('nan')):7.2f}x "
                      f"{wbytes[k] / 1e6:10.0f} {gbs:6.1f} {100 * gbs * 1e9 / bw:4.0f}% {same:26.1f}")
        del models, base


if __name__ == "__main__":
    main()
