//! The small ops of one decode step of a LLaMA-style decoder layer (batch of one-token rows): RMSNorm (of a
//! residual sum), the SiLU-gated product of the MLP, and the attention of one query token: rotary embedding of the
//! query and key heads, the key and value written in place into a preallocated cache, grouped-query attention over
//! the cache, the context written where the output projection reads it.
//!
//! In torch these are ~30 ops per layer (the norm alone is a composite of six; attention is `cat` into a growing
//! cache, then `scaled_dot_product_attention`, whose flash kernel is built for long query blocks and takes ~80 us
//! for one query over 200 keys), each a few microseconds of dispatch around a few hundred nanoseconds of
//! arithmetic on a hidden state that fits in L1. Here each is one call on one thread (the work is a few kilobytes;
//! the GEMMs keep the threads), compiled for every ISA by `multiversion!`.
//!
//! Numerics: float32 throughout, sums in 16 independent lanes (vectorised without reassociating inside a lane);
//! the exponential is the attention kernels' polynomial (`attention::exp_body`, ~1 ulp). Results equal torch's up
//! to float32 rounding, not bit for bit (the decode layer's exact path keeps torch's ops).
use crate::attention::{exp_body, softmax_unnormalised};
use crate::cpu;
use crate::error::{KernelError, Result};
use crate::norm::lane_sum;
use crate::simd::multiversion;

/// Columns of the attention context computed per pass (a multiple of every ISA's f32 vector width).
const LANES: usize = 16;

fn check_rows(name: &'static str, len: usize, cols: usize, rows: usize) -> Result<()> {
    if len != rows * cols {
        return Err(KernelError::Mismatch { what: format!("{name} has {len} values, expected {rows} rows of {cols}") });
    }
    Ok(())
}

fn check_eps(eps: f32) -> Result<()> {
    if !(eps.is_finite() && eps >= 0.0) {
        return Err(KernelError::Invalid { what: format!("eps must be finite and >= 0, got {eps}") });
    }
    Ok(())
}

/// The rows of `x` for a norm over rows of `weight.len()` values with `eps`: both norms' argument checks.
fn norm_rows(x: &[f32], weight: &[f32], eps: f32) -> Result<usize> {
    let cols = weight.len();
    if cols == 0 {
        return Err(KernelError::Empty { arg: "weight" });
    }
    check_eps(eps)?;
    if !x.len().is_multiple_of(cols) {
        return Err(KernelError::Mismatch { what: format!("x has {} values, not rows of {cols}", x.len()) });
    }
    Ok(x.len() / cols)
}

/// `out[r] = x[r] / sqrt(mean(x[r]²) + eps) * weight` for every row `r` of `weight.len()` values (transformers'
/// LLaMA / Qwen2 / Mistral RMSNorm in float32).
pub fn rms_norm(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) -> Result<()> {
    let (cols, rows) = (weight.len(), norm_rows(x, weight, eps)?);
    check_rows("out", out.len(), cols, rows)?;
    let isa = cpu::active();
    for (x, o) in x.chunks_exact(cols).zip(out.chunks_exact_mut(cols)) {
        rms_row(isa, x, weight, eps, o);
    }
    Ok(())
}

/// `sum = x + residual`, then `out = rms_norm(sum)` (see [`rms_norm`]), row by row: a decoder layer's residual
/// add and its second norm in one pass over L1-resident rows.
pub fn add_rms_norm(x: &[f32], residual: &[f32], weight: &[f32], eps: f32, sum: &mut [f32], out: &mut [f32]) -> Result<()> {
    let (cols, rows) = (weight.len(), norm_rows(x, weight, eps)?);
    check_rows("residual", residual.len(), cols, rows)?;
    check_rows("sum", sum.len(), cols, rows)?;
    check_rows("out", out.len(), cols, rows)?;
    let isa = cpu::active();
    for (((x, r), s), o) in x.chunks_exact(cols).zip(residual.chunks_exact(cols)).zip(sum.chunks_exact_mut(cols))
        .zip(out.chunks_exact_mut(cols))
    {
        add_row(isa, x, r, s);
        rms_row(isa, s, weight, eps, o);
    }
    Ok(())
}

multiversion! {
    fn rms_row(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) = rms_row_body;
}
multiversion! {
    fn add_row(x: &[f32], r: &[f32], out: &mut [f32]) = add_row_body;
}

#[inline(always)]
fn rms_row_body(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    let n = out.len();
    let (x, w) = (&x[..n], &w[..n]);
    let mean = lane_sum(x, |v| v * v) / n as f32;
    let inv = 1.0 / (mean + eps).sqrt();
    for ((o, &v), &g) in out.iter_mut().zip(x).zip(w) {
        *o = v * inv * g;
    }
}

#[inline(always)]
fn add_row_body(x: &[f32], r: &[f32], out: &mut [f32]) {
    let n = out.len();
    for ((o, &a), &b) in out.iter_mut().zip(&x[..n]).zip(&r[..n]) {
        *o = a + b;
    }
}

/// `out[r, i] = silu(gate_up[r, i]) * gate_up[r, inner + i]` for `i < inner`: the gated MLP's activation, read
/// from the fused gate/up GEMM's `[rows, 2 · inner]` output; `out` is `[rows, inner]`.
pub fn silu_mul(gate_up: &[f32], inner: usize, out: &mut [f32]) -> Result<()> {
    if inner == 0 {
        return Err(KernelError::Invalid { what: "inner must be >= 1, got 0".into() });
    }
    if !gate_up.len().is_multiple_of(2 * inner) {
        return Err(KernelError::Mismatch {
            what: format!("gate_up has {} values, not rows of 2 * inner = {}", gate_up.len(), 2 * inner),
        });
    }
    check_rows("out", out.len(), inner, gate_up.len() / (2 * inner))?;
    let isa = cpu::active();
    for (g, o) in gate_up.chunks_exact(2 * inner).zip(out.chunks_exact_mut(inner)) {
        let (gate, up) = g.split_at(inner);
        silu_mul_row(isa, gate, up, o);
    }
    Ok(())
}

multiversion! {
    fn silu_mul_row(gate: &[f32], up: &[f32], out: &mut [f32]) = silu_mul_body;
}

#[inline(always)]
fn silu_mul_body(gate: &[f32], up: &[f32], out: &mut [f32]) {
    let n = out.len();
    for ((o, &g), &u) in out.iter_mut().zip(&gate[..n]).zip(&up[..n]) {
        *o = silu(g) * u;
    }
}

/// `x · sigmoid(x)`, with the exponential taken of `-|x|` only (no overflow): `sigmoid(x) = 1 / (1 + e^-x)` for
/// `x >= 0`, `e^x / (1 + e^x)` below. NaN stays NaN.
#[inline(always)]
fn silu(x: f32) -> f32 {
    let e = exp_body(-x.abs());
    let s = if x >= 0.0 { 1.0 / (1.0 + e) } else { e / (1.0 + e) };
    x * s
}

/// The sizes of a one-token attention step: `batch` rows, `heads` query heads sharing `kv_heads` key/value heads
/// (grouped-query attention: query head `h` reads key/value head `h / (heads / kv_heads)`), `head_dim` values
/// per head, and a cache of `capacity` positions per (row, key/value head).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StepShape {
    pub batch: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub capacity: usize,
}

impl StepShape {
    /// Values per row of the fused q/k/v projection's output: `(heads + 2 · kv_heads) · head_dim`.
    pub fn qkv_width(&self) -> usize {
        (self.heads + 2 * self.kv_heads) * self.head_dim
    }

    fn check(&self) -> Result<()> {
        let StepShape { batch, heads, kv_heads, head_dim, capacity } = *self;
        for (name, n) in [("batch", batch), ("heads", heads), ("kv_heads", kv_heads), ("head_dim", head_dim),
                          ("capacity", capacity)] {
            if n == 0 {
                return Err(KernelError::Invalid { what: format!("{name} must be >= 1, got 0") });
            }
        }
        if !heads.is_multiple_of(kv_heads) {
            return Err(KernelError::Invalid { what: format!("heads {heads} is not a multiple of kv_heads {kv_heads}") });
        }
        if !head_dim.is_multiple_of(2) {
            return Err(KernelError::Invalid { what: format!("head_dim must be even (rotary halves), got {head_dim}") });
        }
        Ok(())
    }
}

/// One decode step's attention for every row `b` of the batch, at cache position `pos`:
///
/// 1. the query and key heads of `qkv[b]` (`[heads · d | kv_heads · d | kv_heads · d]`, the fused projection's
///    row) get the rotary embedding `x · cos + rotate_half(x) · sin` with `cos[b]`, `sin[b]` (`head_dim` values
///    each; `rotate_half(x) = [-x[d/2..], x[..d/2]]`, transformers' LLaMA convention);
/// 2. the rotated key and the value of each key/value head are written at position `pos` of `k_cache` /
///    `v_cache` (`[batch, kv_heads, capacity, head_dim]`, row-major);
/// 3. `out[b, h · d .. (h+1) · d] = softmax(scale · q_h · K[0..=pos]ᵀ) · V[0..=pos]` with the key/value head of
///    `h`'s group (no mask: every cached position is attended, the causal mask of a single newest query).
///
/// `qkv` is not modified (the rotated query lives in a scratch row).
#[allow(clippy::too_many_arguments)]
pub fn decode_attention(
    qkv: &[f32],
    cos: &[f32],
    sin: &[f32],
    k_cache: &mut [f32],
    v_cache: &mut [f32],
    shape: StepShape,
    pos: usize,
    scale: f32,
    out: &mut [f32],
) -> Result<()> {
    shape.check()?;
    let StepShape { batch, heads, kv_heads, head_dim: d, capacity } = shape;
    if pos >= capacity {
        return Err(KernelError::Invalid { what: format!("pos {pos} is outside the cache's capacity {capacity}") });
    }
    if !scale.is_finite() {
        return Err(KernelError::Invalid { what: format!("scale must be finite, got {scale}") });
    }
    check_rows("qkv", qkv.len(), shape.qkv_width(), batch)?;
    check_rows("cos", cos.len(), d, batch)?;
    check_rows("sin", sin.len(), d, batch)?;
    check_rows("k_cache", k_cache.len(), kv_heads * capacity * d, batch)?;
    check_rows("v_cache", v_cache.len(), kv_heads * capacity * d, batch)?;
    check_rows("out", out.len(), heads * d, batch)?;
    let threads = if (pos + 1) * heads * d >= PARALLEL_WORK { crate::pool::num_threads() } else { 1 };
    attention_tasks(qkv, cos, sin, k_cache, v_cache, shape, pos, scale, out, threads);
    Ok(())
}

/// Score multiply-adds (`positions · heads · head_dim`) from which [`decode_attention`] splits its key/value
/// groups over the kernel threads: LLaMA-1B's 32 heads of 64 over ~200 positions (~400 K) take ~65 us on one
/// core inside a model (the cache comes from DRAM after the GEMMs streamed their weights), against a hand-off of
/// about a microsecond to a helper still polling after the q/k/v GEMM; a test-sized step stays on the caller.
const PARALLEL_WORK: usize = 1 << 15;

/// A pointer that tasks writing disjoint ranges of one buffer share.
#[derive(Clone, Copy)]
struct Shared(*mut f32);
// SAFETY: every task derives from it only the range of its own (row, key/value head) pair: no two tasks alias.
unsafe impl Send for Shared {}
unsafe impl Sync for Shared {}

/// The steps of [`decode_attention`] (arguments checked), one task per (row, key/value head): the key and value
/// written at `pos`, the group's query heads rotated, then [`group_attention`] into the group's context columns.
/// Tasks touch disjoint ranges of the caches and of `out`, and each computes what the one-thread loop computes,
/// so the bits do not depend on `threads`.
#[allow(clippy::too_many_arguments)]
fn attention_tasks(qkv: &[f32], cos: &[f32], sin: &[f32], k_cache: &mut [f32], v_cache: &mut [f32], shape: StepShape,
                   pos: usize, scale: f32, out: &mut [f32], threads: usize) {
    let StepShape { batch, heads, kv_heads, head_dim: d, capacity } = shape;
    let isa = cpu::active();
    let group = heads / kv_heads;
    let len = pos + 1;
    let per_head = capacity * d;
    let width = shape.qkv_width();
    let (kp, vp, op) = (Shared(k_cache.as_mut_ptr()), Shared(v_cache.as_mut_ptr()), Shared(out.as_mut_ptr()));
    let task = move |i: usize| {
        let (b, g) = (i / kv_heads, i % kv_heads);
        let row = &qkv[b * width..(b + 1) * width];
        let (c, s) = (&cos[b * d..(b + 1) * d], &sin[b * d..(b + 1) * d]);
        let base = (b * kv_heads + g) * per_head;
        let at = b * heads * d + g * group * d;
        // SAFETY: (b, g) owns positions 0..=pos of its cache head and its group's `group · d` context values.
        let (keys, values, o) = unsafe {
            (std::slice::from_raw_parts_mut({ kp }.0.add(base), len * d),
             std::slice::from_raw_parts_mut({ vp }.0.add(base), len * d),
             std::slice::from_raw_parts_mut({ op }.0.add(at), group * d))
        };
        rotary(isa, &row[(heads + g) * d..(heads + g + 1) * d], c, s, &mut keys[pos * d..]);
        values[pos * d..].copy_from_slice(&row[(heads + kv_heads + g) * d..(heads + kv_heads + g + 1) * d]);
        let mut q_rot = vec![0.0f32; group * d];
        for (h, q) in q_rot.chunks_exact_mut(d).enumerate() {
            let h = g * group + h;
            rotary(isa, &row[h * d..(h + 1) * d], c, s, q);
        }
        let (mut scores, mut qt) = (vec![0.0f32; group * len], vec![0.0f32; d * HEAD_BLOCK]);
        group_attention(isa, &q_rot, keys, values, d, scale, &mut scores, &mut qt, o);
    };
    crate::gemm::par::for_each(batch * kv_heads, threads, &task);
}

multiversion! {
    fn rotary(x: &[f32], cos: &[f32], sin: &[f32], out: &mut [f32]) = rotary_body;
}
multiversion! {
    fn group_attention(q: &[f32], keys: &[f32], values: &[f32], d: usize, scale: f32, scores: &mut [f32], qt: &mut [f32], out: &mut [f32]) = group_body;
}

/// `out = x · cos + rotate_half(x) · sin`, `rotate_half(x) = [-x[half..], x[..half]]`.
#[inline(always)]
fn rotary_body(x: &[f32], cos: &[f32], sin: &[f32], out: &mut [f32]) {
    let d = out.len();
    let half = d / 2;
    let (x, cos, sin) = (&x[..d], &cos[..d], &sin[..d]);
    let (lo, hi) = out.split_at_mut(half);
    for i in 0..half {
        lo[i] = x[i] * cos[i] + (-x[half + i]) * sin[i];
    }
    for i in 0..half {
        hi[i] = x[half + i] * cos[half + i] + x[i] * sin[half + i];
    }
}

/// The query heads of one group (`q`: `group` rows of `d`) against the group's `keys` / `values` (`len` rows of
/// `d`), in three passes with no horizontal sums in the inner loops, [`HEAD_BLOCK`] heads at a time:
///
/// 1. scores: the block's queries are transposed once into `qt` (`[d][HEAD_BLOCK]`, zero-padded), then each key
///    row gives the block's scores as `Σ_i k[i] · qt[i]` (one vector of heads per step; four independent
///    accumulators for the add latency);
/// 2. softmax per head, in place, keeping `1 / sum`;
/// 3. context, [`LANES`] columns at a time: each value row's chunk is loaded once and added into the block's
///    heads (eight accumulators, one per head), times `1 / sum` at the end.
///
/// A plain loop (a 64-value dot product per (head, key) reduced across its lanes, then each value row added into
/// every head's context) took 66 us for 32 heads over 181 keys: the lane reductions, and the value rows read once
/// per head and column chunk (32 passes over 46 KB per group, from L2).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn group_body(q: &[f32], keys: &[f32], values: &[f32], d: usize, scale: f32, scores: &mut [f32], qt: &mut [f32],
              out: &mut [f32]) {
    let group = q.len() / d;
    let len = keys.len() / d;
    let scores = &mut scores[..group * len];
    let values = &values[..len * d];
    let qt = &mut qt[..d * HEAD_BLOCK];
    let zeros = vec![0.0f32; len];
    for h0 in (0..group).step_by(HEAD_BLOCK) {
        let hn = HEAD_BLOCK.min(group - h0);
        for i in 0..d {
            for jj in 0..HEAD_BLOCK {
                qt[i * HEAD_BLOCK + jj] = if jj < hn { q[(h0 + jj) * d + i] } else { 0.0 };
            }
        }
        let qt: &[f32] = qt;
        for (t, k) in keys.chunks_exact(d).enumerate() {
            // four named accumulators: LLVM keeps those in registers (a `[[f32; 8]; 4]` stayed on the stack)
            let (mut a0, mut a1, mut a2, mut a3) = ([0.0f32; HEAD_BLOCK], [0.0f32; HEAD_BLOCK], [0.0f32; HEAD_BLOCK],
                                                    [0.0f32; HEAD_BLOCK]);
            let mut k4s = k.chunks_exact(4);
            for (k4, q4) in (&mut k4s).zip(qt.chunks_exact(4 * HEAD_BLOCK)) {
                let q0: &[f32; HEAD_BLOCK] = q4[..HEAD_BLOCK].try_into().expect("block");
                let q1: &[f32; HEAD_BLOCK] = q4[HEAD_BLOCK..2 * HEAD_BLOCK].try_into().expect("block");
                let q2: &[f32; HEAD_BLOCK] = q4[2 * HEAD_BLOCK..3 * HEAD_BLOCK].try_into().expect("block");
                let q3: &[f32; HEAD_BLOCK] = q4[3 * HEAD_BLOCK..].try_into().expect("block");
                let (k0, k1, k2, k3) = (k4[0], k4[1], k4[2], k4[3]);
                for l in 0..HEAD_BLOCK {
                    a0[l] += k0 * q0[l];
                    a1[l] += k1 * q1[l];
                    a2[l] += k2 * q2[l];
                    a3[l] += k3 * q3[l];
                }
            }
            for (&kv, q0) in k4s.remainder().iter().zip(qt[(d - d % 4) * HEAD_BLOCK..].chunks_exact(HEAD_BLOCK)) {
                for l in 0..HEAD_BLOCK {
                    a0[l] += kv * q0[l];
                }
            }
            for jj in 0..hn {
                scores[(h0 + jj) * len + t] = scale * ((a0[jj] + a1[jj]) + (a2[jj] + a3[jj]));
            }
        }
        let mut inv = [0.0f32; HEAD_BLOCK];
        for jj in 0..hn {
            inv[jj] = softmax_unnormalised(&mut scores[(h0 + jj) * len..(h0 + jj + 1) * len]);
        }
        let scores: &[f32] = scores;
        // a missing head of the last block reads zero probabilities (its context is not written)
        let prob = |jj: usize| -> &[f32] { if jj < hn { &scores[(h0 + jj) * len..(h0 + jj + 1) * len] } else { &zeros } };
        let (p0, p1, p2, p3, p4, p5, p6, p7) = (prob(0), prob(1), prob(2), prob(3), prob(4), prob(5), prob(6), prob(7));
        let mut c0 = 0;
        while c0 + LANES <= d {
            let (mut a0, mut a1, mut a2, mut a3) = ([0.0f32; LANES], [0.0f32; LANES], [0.0f32; LANES], [0.0f32; LANES]);
            let (mut a4, mut a5, mut a6, mut a7) = ([0.0f32; LANES], [0.0f32; LANES], [0.0f32; LANES], [0.0f32; LANES]);
            for (t, row) in values.chunks_exact(d).enumerate() {
                let v: &[f32; LANES] = row[c0..c0 + LANES].try_into().expect("LANES values");
                let (w0, w1, w2, w3) = (p0[t], p1[t], p2[t], p3[t]);
                let (w4, w5, w6, w7) = (p4[t], p5[t], p6[t], p7[t]);
                for l in 0..LANES {
                    a0[l] += w0 * v[l];
                    a1[l] += w1 * v[l];
                    a2[l] += w2 * v[l];
                    a3[l] += w3 * v[l];
                    a4[l] += w4 * v[l];
                    a5[l] += w5 * v[l];
                    a6[l] += w6 * v[l];
                    a7[l] += w7 * v[l];
                }
            }
            for (jj, a) in [a0, a1, a2, a3, a4, a5, a6, a7].iter().enumerate().take(hn) {
                let o = &mut out[(h0 + jj) * d + c0..(h0 + jj) * d + c0 + LANES];
                for (o, &x) in o.iter_mut().zip(a) {
                    *o = x * inv[jj];
                }
            }
            c0 += LANES;
        }
        for c in c0..d {
            for jj in 0..hn {
                let p = &scores[(h0 + jj) * len..(h0 + jj + 1) * len];
                let mut a = 0.0f32;
                for (t, &pt) in p.iter().enumerate() {
                    a += pt * values[t * d + c];
                }
                out[(h0 + jj) * d + c] = a * inv[jj];
            }
        }
    }
}

/// A decoder layer's step apart from its GEMMs: the two norms' weights and epsilons, the MLP's inner width, the
/// attention's sizes, the cache position written and the score scale.
#[derive(Clone, Copy, Debug)]
pub struct LayerStep<'a> {
    pub input_norm: &'a [f32],
    pub input_eps: f32,
    pub post_norm: &'a [f32],
    pub post_eps: f32,
    pub inner: usize,
    pub shape: StepShape,
    pub pos: usize,
    pub scale: f32,
}

/// The layer's GEMM `i` (0: q/k/v, 1: output projection, 2: gate/up, 3: down) of every row of its input into its
/// output: supplied by the caller (the packed weights, and any prefetch between GEMMs, live outside this crate's
/// decoder module).
pub type LayerGemm<'f> = dyn FnMut(usize, &[f32], &mut [f32]) -> Result<()> + 'f;

thread_local! {
    /// The intermediate rows of [`decode_layer`], kept per thread and reused by every layer and step: a few tens
    /// of kilobytes that stay in the cache instead of a fresh allocation (and its page touches) per call.
    static LAYER_SCRATCH: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// One decode step of a LLaMA-style decoder layer for every row of `x` (`[batch, hidden]`, `hidden =
/// input_norm.len()`), into `out` (same shape): `h = x + o_proj(attention(qkv(rms_norm(x))))`, then
/// `out = h + down(silu(gate) · up)` with `gate | up = gate_up(rms_norm(h))`; the attention is
/// [`decode_attention`] (rotary, key/value written at `step.pos` of the caches, grouped-query attention over
/// `0..=pos`). The same kernels, in the same order, as calling [`rms_norm`], the GEMM, [`decode_attention`], the
/// GEMM, [`add_rms_norm`], the GEMM, [`silu_mul`], the GEMM and an add one by one (the same bits), in one call:
/// a caller in Python pays one call per layer instead of nine, and no intermediate leaves this thread's scratch.
#[allow(clippy::too_many_arguments)]
pub fn decode_layer(
    step: &LayerStep<'_>,
    x: &[f32],
    cos: &[f32],
    sin: &[f32],
    k_cache: &mut [f32],
    v_cache: &mut [f32],
    gemm: &mut LayerGemm<'_>,
    out: &mut [f32],
) -> Result<()> {
    let sh = step.shape;
    sh.check()?;
    let hidden = step.input_norm.len();
    let rows = norm_rows(x, step.input_norm, step.input_eps)?;
    if rows != sh.batch {
        return Err(KernelError::Mismatch { what: format!("x has {rows} rows of {hidden}, the step's batch is {}", sh.batch) });
    }
    check_eps(step.post_eps)?;
    check_rows("post_norm", step.post_norm.len(), hidden, 1)?;
    check_rows("out", out.len(), hidden, rows)?;
    if step.inner == 0 {
        return Err(KernelError::Invalid { what: "inner must be >= 1, got 0".into() });
    }
    let sizes = [hidden, sh.qkv_width(), sh.heads * sh.head_dim, hidden, hidden, 2 * step.inner, step.inner, hidden];
    LAYER_SCRATCH.with(|cell| {
        let mut held = cell.borrow_mut();
        let total: usize = sizes.iter().map(|n| n * rows).sum();
        if held.len() < total {
            held.resize(total, 0.0);
        }
        let rest = &mut held[..total];
        let (normed, rest) = rest.split_at_mut(sizes[0] * rows);
        let (qkv, rest) = rest.split_at_mut(sizes[1] * rows);
        let (context, rest) = rest.split_at_mut(sizes[2] * rows);
        let (o, rest) = rest.split_at_mut(sizes[3] * rows);
        let (h, rest) = rest.split_at_mut(sizes[4] * rows);
        let (gate_up, rest) = rest.split_at_mut(sizes[5] * rows);
        let (act, down) = rest.split_at_mut(sizes[6] * rows);
        rms_norm(x, step.input_norm, step.input_eps, normed)?;
        gemm(0, normed, qkv)?;
        decode_attention(qkv, cos, sin, k_cache, v_cache, sh, step.pos, step.scale, context)?;
        gemm(1, context, o)?;
        add_rms_norm(x, o, step.post_norm, step.post_eps, h, normed)?;
        gemm(2, normed, gate_up)?;
        silu_mul(gate_up, step.inner, act)?;
        gemm(3, act, down)?;
        let isa = cpu::active();
        for ((h, d), o) in h.chunks_exact(hidden).zip(down.chunks_exact(hidden)).zip(out.chunks_exact_mut(hidden)) {
            add_row(isa, h, d, o);
        }
        Ok(())
    })
}

/// Query heads per block (LLaMA-style models group 4 to 8 query heads per key/value head): the scores pass
/// computes one vector of the block's scores per key row, the context pass adds each value chunk into the block's
/// eight accumulators (named in the code: this constant must stay 8).
const HEAD_BLOCK: usize = 8;

/// The examples' seeded generator (one copy in the crate).
#[cfg(test)]
#[path = "../examples/common/mod.rs"]
mod xorshift;

#[cfg(test)]
mod tests {
    use super::*;

    /// `n` values in [-1, 1) from a generator seeded by `seed` (distinct seeds, distinct sequences).
    fn seeded(n: usize, seed: u32) -> Vec<f32> {
        let mut rng = xorshift::Rng((seed as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15).wrapping_add(1));
        (0..n).map(|_| 2.0 * rng.f()).collect()
    }

    /// The same step in f64 with plain loops: rotary, cache write, softmax attention per head.
    #[allow(clippy::too_many_arguments)]
    fn reference(qkv: &[f32], cos: &[f32], sin: &[f32], kc: &mut [f32], vc: &mut [f32], sh: StepShape, pos: usize,
                 scale: f32) -> Vec<f64> {
        let StepShape { batch, heads, kv_heads, head_dim: d, capacity } = sh;
        let rot = |x: &[f32], c: &[f32], s: &[f32]| -> Vec<f32> {
            (0..d).map(|i| {
                let r = if i < d / 2 { -x[i + d / 2] } else { x[i - d / 2] };
                x[i] * c[i] + r * s[i]
            }).collect()
        };
        let mut out = vec![0.0f64; batch * heads * d];
        for b in 0..batch {
            let row = &qkv[b * sh.qkv_width()..];
            let (c, s) = (&cos[b * d..], &sin[b * d..]);
            for g in 0..kv_heads {
                let at = (b * kv_heads + g) * capacity * d + pos * d;
                kc[at..at + d].copy_from_slice(&rot(&row[(heads + g) * d..], c, s));
                vc[at..at + d].copy_from_slice(&row[(heads + kv_heads + g) * d..(heads + kv_heads + g + 1) * d]);
            }
            for h in 0..heads {
                let g = h / (heads / kv_heads);
                let q = rot(&row[h * d..], c, s);
                let base = (b * kv_heads + g) * capacity * d;
                let sc: Vec<f64> = (0..=pos)
                    .map(|t| scale as f64 * (0..d).map(|i| q[i] as f64 * kc[base + t * d + i] as f64).sum::<f64>())
                    .collect();
                let m = sc.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = sc.iter().map(|x| (x - m).exp()).collect();
                let z: f64 = e.iter().sum();
                for i in 0..d {
                    out[(b * heads + h) * d + i] =
                        (0..=pos).map(|t| e[t] * vc[base + t * d + i] as f64).sum::<f64>() / z;
                }
            }
        }
        out
    }

    #[test]
    fn decode_attention_matches_f64_reference_on_every_isa() {
        for &(batch, heads, kv_heads, d, pos) in &[(1, 32, 4, 64, 130), (2, 4, 2, 16, 0), (3, 6, 6, 10, 37), (1, 2, 1, 8, 15)] {
            let sh = StepShape { batch, heads, kv_heads, head_dim: d, capacity: pos + 5 };
            let qkv = seeded(batch * sh.qkv_width(), 1);
            let (cos, sin) = (seeded(batch * d, 2), seeded(batch * d, 3));
            let cache = batch * kv_heads * sh.capacity * d;
            let (k0, v0) = (seeded(cache, 4), seeded(cache, 5));
            let (mut kr, mut vr) = (k0.clone(), v0.clone());
            let want = reference(&qkv, &cos, &sin, &mut kr, &mut vr, sh, pos, 0.3);
            for isa in cpu::supported() {
                cpu::set_isa(Some(isa)).unwrap();
                let (mut k, mut v) = (k0.clone(), v0.clone());
                let mut out = vec![0.0f32; batch * heads * d];
                decode_attention(&qkv, &cos, &sin, &mut k, &mut v, sh, pos, 0.3, &mut out).unwrap();
                assert_eq!(v, vr, "{isa:?}: the value is copied into its slot, nothing else changes");
                for (a, b) in k.iter().zip(&kr) {
                    assert!((a - b).abs() <= 1e-6, "{isa:?}: key cache {a} vs {b}");
                }
                for (a, b) in out.iter().zip(&want) {
                    assert!((*a as f64 - b).abs() <= 1e-5, "{isa:?}: {a} vs {b}");
                }
            }
            cpu::set_isa(None).unwrap();
        }
    }

    #[test]
    fn attention_bits_do_not_depend_on_the_thread_count() {
        let sh = StepShape { batch: 2, heads: 12, kv_heads: 3, head_dim: 32, capacity: 90 };
        let qkv = seeded(sh.batch * sh.qkv_width(), 11);
        let (cos, sin) = (seeded(sh.batch * 32, 12), seeded(sh.batch * 32, 13));
        let cache = sh.batch * sh.kv_heads * sh.capacity * 32;
        let mut runs = Vec::new();
        for threads in [1, 2, 3] {
            let (mut k, mut v) = (seeded(cache, 14), seeded(cache, 15));
            let mut out = vec![0.0f32; sh.batch * sh.heads * 32];
            attention_tasks(&qkv, &cos, &sin, &mut k, &mut v, sh, 70, 0.2, &mut out, threads);
            runs.push((k, v, out));
        }
        assert!(runs.windows(2).all(|w| w[0] == w[1]), "caches and context equal bit for bit on 1, 2, 3 threads");
    }

    #[test]
    fn decode_layer_is_the_separate_calls() {
        let sh = StepShape { batch: 2, heads: 4, kv_heads: 2, head_dim: 8, capacity: 12 };
        let (hidden, inner, pos) = (24, 20, 9);
        let (w_in, w_post) = (seeded(hidden, 20), seeded(hidden, 21));
        let dims = [(sh.qkv_width(), hidden), (hidden, sh.heads * 8), (2 * inner, hidden), (hidden, inner)];
        let mats: Vec<Vec<f32>> = dims.iter().enumerate().map(|(i, &(n, k))| seeded(n * k, 30 + i as u32)).collect();
        let gemm = |i: usize, x: &[f32], out: &mut [f32]| {
            let (n, k) = dims[i];
            for (xr, orow) in x.chunks_exact(k).zip(out.chunks_exact_mut(n)) {
                for (j, o) in orow.iter_mut().enumerate() {
                    *o = mats[i][j * k..(j + 1) * k].iter().zip(xr).map(|(a, b)| a * b).sum();
                }
            }
        };
        let x = seeded(sh.batch * hidden, 22);
        let (cos, sin) = (seeded(sh.batch * 8, 23), seeded(sh.batch * 8, 24));
        let cache = sh.batch * sh.kv_heads * sh.capacity * 8;
        let (mut k1, mut v1) = (seeded(cache, 25), seeded(cache, 26));
        let (mut k2, mut v2) = (k1.clone(), v1.clone());
        let step = LayerStep { input_norm: &w_in, input_eps: 1e-5, post_norm: &w_post, post_eps: 1e-6, inner,
                               shape: sh, pos, scale: 0.3 };
        let mut got = vec![0.0f32; x.len()];
        decode_layer(&step, &x, &cos, &sin, &mut k1, &mut v1, &mut |i, a, o| { gemm(i, a, o); Ok(()) }, &mut got)
            .unwrap();
        let rows = sh.batch;
        let mut normed = vec![0.0; rows * hidden];
        rms_norm(&x, &w_in, 1e-5, &mut normed).unwrap();
        let mut qkv = vec![0.0; rows * sh.qkv_width()];
        gemm(0, &normed, &mut qkv);
        let mut ctx = vec![0.0; rows * sh.heads * 8];
        decode_attention(&qkv, &cos, &sin, &mut k2, &mut v2, sh, pos, 0.3, &mut ctx).unwrap();
        let mut o = vec![0.0; rows * hidden];
        gemm(1, &ctx, &mut o);
        let mut h = vec![0.0; rows * hidden];
        add_rms_norm(&x, &o, &w_post, 1e-6, &mut h, &mut normed).unwrap();
        let mut gu = vec![0.0; rows * 2 * inner];
        gemm(2, &normed, &mut gu);
        let mut act = vec![0.0; rows * inner];
        silu_mul(&gu, inner, &mut act).unwrap();
        let mut down = vec![0.0; rows * hidden];
        gemm(3, &act, &mut down);
        let want: Vec<f32> = h.iter().zip(&down).map(|(a, b)| a + b).collect();
        assert_eq!(got, want);
        assert_eq!((&k1, &v1), (&k2, &v2));
        let bad = LayerStep { inner: 0, ..step };
        assert!(decode_layer(&bad, &x, &cos, &sin, &mut k2, &mut v2, &mut |_, _, _| Ok(()), &mut got).is_err());
    }

    #[test]
    fn norms_and_silu_match_f64_on_every_isa() {
        let (n, rows) = (77, 3);
        let (x, r, w) = (seeded(n * rows, 7), seeded(n * rows, 8), seeded(n, 9));
        for isa in cpu::supported() {
            cpu::set_isa(Some(isa)).unwrap();
            let (mut s, mut o, mut o2) = (vec![0.0; n * rows], vec![0.0; n * rows], vec![0.0; n * rows]);
            add_rms_norm(&x, &r, &w, 1e-5, &mut s, &mut o).unwrap();
            rms_norm(&s, &w, 1e-5, &mut o2).unwrap();
            assert_eq!(o, o2, "{isa:?}: add_rms_norm is the add, then rms_norm");
            for row in 0..rows {
                let h: Vec<f64> = (0..n).map(|i| x[row * n + i] as f64 + r[row * n + i] as f64).collect();
                let inv = 1.0 / (h.iter().map(|v| v * v).sum::<f64>() / n as f64 + 1e-5).sqrt();
                for i in 0..n {
                    assert!((o[row * n + i] as f64 - h[i] * inv * w[i] as f64).abs() <= 1e-5);
                }
            }
            let gu: Vec<f32> = seeded(2 * n * rows, 10).iter().map(|v| v * 30.0).collect();
            let mut out = vec![0.0; n * rows];
            silu_mul(&gu, n, &mut out).unwrap();
            for row in 0..rows {
                for i in 0..n {
                    let (g, u) = (gu[row * 2 * n + i] as f64, gu[row * 2 * n + n + i] as f64);
                    let want = g / (1.0 + (-g).exp()) * u;
                    assert!((out[row * n + i] as f64 - want).abs() <= 1e-5 * want.abs().max(1.0), "{isa:?}");
                }
            }
        }
        cpu::set_isa(None).unwrap();
    }
}
