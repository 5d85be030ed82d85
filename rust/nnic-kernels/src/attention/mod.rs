//! Multi-head self-attention of an encoder: `softmax(Q Kᵀ · scale + mask) V` for every (sequence, head), read
//! straight from the projections' output rows and written straight into the `[tokens, heads · head_dim]` rows the
//! output projection reads.
//!
//! In torch, BERT's attention views each projection as `[batch, heads, seq, head_dim]` (strided), runs
//! `scaled_dot_product_attention` and copies the result back to `[batch, seq, hidden]`. Here one task per
//! (sequence, head) runs five stages on per-thread buffers ([`Scratch`]): it packs that head's `Kᵀ` (in panels of
//! [`KEY_PANEL`] keys) and a contiguous copy of `V` once; then for each block of [`QUERY_BLOCK`] query rows it
//! computes the scores block `scale · Q Kᵀ` with a register-tiled product, turns each score row into unnormalised
//! probabilities in place (mask, max, exp, sum: two passes in L1), multiplies by `V`, and writes each context row
//! times its `1 / sum` into the output rows. Nothing of size `seq × seq` per head is ever written to memory. The
//! pairs run where the GEMMs run (`gemm::par`: torch's OpenMP team when it is loaded, whose threads are still
//! spinning from the previous op, else the kernels' own threads). `profile` times the stages one by one
//! (`examples/attention_parts.rs`).
//!
//! Paths: AVX-512 has its own products (6 × 64 register tiles of 24 accumulators, near the FMA peak), `Kᵀ` packing
//! (16 × 16 register transposes) and softmax (the exponential on 16 lanes), in [`x86`]; AVX2 its own products
//! (6 × 16 tiles of 12 accumulators) and softmax (8 lanes, four rows at a time), in [`avx2`]; the portable stages
//! ([`portable`], compiled for the baseline and for AVX2 by `multiversion!`) are their ground truth.
//!
//! The products accumulate in the order of the head dimension (Q Kᵀ) and of the keys (P V), the same order a
//! plain loop uses, with fused multiply-adds, on every path; the exponential is a degree-6 polynomial after range
//! reduction (relative error ~1 ulp over the range that matters, [`portable::exp_body`]). The result differs from
//! torch's by float32 rounding. NaN in a score row makes that row's output NaN, as in torch.
use crate::cpu::{self, Isa};
use crate::error::{KernelError, Result};
use crate::gemm::par;
use crate::pool;
use portable::{rows1, rows4, softmax_portable, transpose_portable, TILE_ROWS};
/// The exponential of the softmax, shared with the decode-step kernels ([`crate::decoder`]).
pub(crate) use portable::{exp_body, softmax_unnormalised};

#[cfg(target_arch = "x86_64")]
mod avx2;
mod portable;
#[cfg(target_arch = "x86_64")]
mod x86;
#[doc(hidden)]
pub mod profile;

/// Query rows per block: the scores block is `QUERY_BLOCK × seq` floats (24 KiB at seq 128); a multiple of both
/// paths' tile rows (4 portable, 6 AVX2 and AVX-512).
const QUERY_BLOCK: usize = 48;
/// Keys per panel of the packed `Kᵀ`: each panel, `[head_dim, KEY_PANEL]`, is contiguous (16 KiB at head_dim 64),
/// so that the scores' product streams one L1-resident panel per column block instead of rows 4 × seq bytes apart.
const KEY_PANEL: usize = 64;

/// Where one of Q, K, V is: token `t` (`t = sequence · seq + position`) has its `heads · head_dim` values at
/// `data[offset + t · row_stride ..]`, head `h` at `+ h · head_dim`. A fused QKV projection's output is one buffer
/// passed three times with offsets `0`, `hidden` and `2 · hidden`.
#[derive(Clone, Copy, Debug)]
pub struct Operand<'a> {
    pub data: &'a [f32],
    pub offset: usize,
    pub row_stride: usize,
}

/// The attention's sizes: `batch` sequences of `seq` tokens, `heads` heads of `head_dim` values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shape {
    pub batch: usize,
    pub seq: usize,
    pub heads: usize,
    pub head_dim: usize,
}

impl Shape {
    fn hidden(&self) -> usize {
        self.heads * self.head_dim
    }
}

fn check_operand(name: &'static str, op: &Operand<'_>, shape: &Shape) -> Result<()> {
    let (tokens, hidden) = (shape.batch * shape.seq, shape.hidden());
    if op.row_stride < hidden {
        return Err(KernelError::Invalid {
            what: format!("{name}: row_stride {} is below heads * head_dim = {hidden}", op.row_stride),
        });
    }
    let end = (tokens - 1).checked_mul(op.row_stride).and_then(|v| v.checked_add(op.offset + hidden));
    if end.is_none_or(|end| end > op.data.len()) {
        return Err(KernelError::Mismatch {
            what: format!(
                "{name}: {tokens} rows of {hidden} values at offset {} with row_stride {} do not fit in its {} values",
                op.offset,
                op.row_stride,
                op.data.len()
            ),
        });
    }
    Ok(())
}

/// The number format of the attention's two products (`Q Kᵀ` and `P V`); the softmax, the sums and the output
/// are float32 either way.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Products {
    /// float32 operands (the default).
    #[default]
    F32,
    /// bfloat16 operands where the CPU has AVX512_BF16 on the AVX-512 path, float32 elsewhere: Q, K, V and the
    /// unnormalised probabilities rounded to bfloat16 (8 significant bits, round to nearest even), products
    /// accumulated in float32 by `vdpbf16ps`, twice the multiply-adds per instruction of float32 FMAs. The
    /// rounding is of the order of the int8 activations' own (1/256 of a value against 1/255 of a row's range);
    /// the tests bound the result against float64 (`tests/kernels/test_attention_bf16.py`: within 1 % of a head's
    /// largest `|v|` at unit scale).
    Bf16,
}

impl Products {
    /// Whether `Bf16` runs in bfloat16 with `isa` on this CPU (else it runs the float32 products).
    pub fn bf16_on(isa: Isa) -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            isa == Isa::Avx512 && std::arch::is_x86_feature_detected!("avx512bf16")
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = isa;
            false
        }
    }
}

/// `out[t, h·d .. (h+1)·d] = softmax(q_h(t) · K_hᵀ · scale + mask[sequence]) · V_h` for every token `t` and head
/// `h`, where the keys and values are those of `t`'s own sequence. `mask` (optional, `[batch, seq]`) is added to
/// every score row of its sequence (one value per key: a padding mask, `0` or a large negative number). `out` is
/// `[batch · seq, heads · head_dim]`, row-major. The (sequence, head) pairs run on the kernel pool. float32
/// products: [`attention_with`] chooses.
pub fn attention(
    q: Operand<'_>,
    k: Operand<'_>,
    v: Operand<'_>,
    shape: Shape,
    scale: f32,
    mask: Option<&[f32]>,
    out: &mut [f32],
) -> Result<()> {
    attention_with(q, k, v, shape, scale, mask, Products::F32, out)
}

/// [`attention`] with the products in the format `products` says.
#[allow(clippy::too_many_arguments)]
pub fn attention_with(
    q: Operand<'_>,
    k: Operand<'_>,
    v: Operand<'_>,
    shape: Shape,
    scale: f32,
    mask: Option<&[f32]>,
    products: Products,
    out: &mut [f32],
) -> Result<()> {
    let Shape { batch, seq, heads, head_dim } = shape;
    for (name, n) in [("batch", batch), ("seq", seq), ("heads", heads), ("head_dim", head_dim)] {
        if n == 0 {
            return Err(KernelError::Invalid { what: format!("{name} must be >= 1, got 0") });
        }
    }
    check_operand("q", &q, &shape)?;
    check_operand("k", &k, &shape)?;
    check_operand("v", &v, &shape)?;
    let hidden = shape.hidden();
    if out.len() != batch * seq * hidden {
        return Err(KernelError::Mismatch {
            what: format!("out has {} values, expected batch * seq * heads * head_dim = {}", out.len(), batch * seq * hidden),
        });
    }
    if let Some(m) = mask {
        if m.len() != batch * seq {
            return Err(KernelError::Mismatch {
                what: format!("mask has {} values, expected batch * seq = {}", m.len(), batch * seq),
            });
        }
    }
    if !scale.is_finite() {
        return Err(KernelError::Invalid { what: format!("scale must be finite, got {scale}") });
    }
    let isa = cpu::active();
    let bf16 = products == Products::Bf16 && Products::bf16_on(isa);
    let out = OutRows { ptr: out.as_mut_ptr(), len: out.len() };
    let threads = pool::num_threads();
    let task = |pair: usize| {
        let (b, h) = (pair / heads, pair % heads);
        let mask = mask.map_or(&[][..], |m| &m[b * seq..(b + 1) * seq]);
        // The tasks are taken in order, one at a time per thread: this thread's next pair is most likely `threads`
        // further on.
        let next = Some(pair + threads).filter(|&p| p < batch * heads).map(|p| (p / heads, p % heads));
        head(isa, bf16, [&q, &k, &v], shape, b, h, next, scale, mask, &out);
    };
    par::for_each(batch * heads, threads, &task);
    Ok(())
}

/// The output buffer shared by the tasks. Each task writes only its own head's columns (`h·d .. (h+1)·d`) of its
/// own sequence's rows, so no two tasks write the same element.
struct OutRows {
    ptr: *mut f32,
    len: usize,
}

// SAFETY: the tasks write disjoint elements (see `OutRows`), and `attention` holds the `&mut` for their lifetime.
unsafe impl Sync for OutRows {}

impl OutRows {
    /// Asks for the output rows `rows` of pair (`b`, `h`) to be brought into L2 (see [`prefetch_rows`]): the
    /// context rows are written there, each line read for ownership first.
    fn prefetch(&self, shape: Shape, b: usize, h: usize, rows: std::ops::Range<usize>) {
        #[cfg(target_arch = "x86_64")]
        for t in rows {
            let at = (b * shape.seq + t) * shape.hidden() + h * shape.head_dim;
            for line in (0..shape.head_dim).step_by(16).chain([shape.head_dim - 1]) {
                // SAFETY: a prefetch does not access memory architecturally; the address is inside the buffer.
                unsafe {
                    use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T1};
                    _mm_prefetch::<_MM_HINT_T1>(self.ptr.add(at + line).cast::<i8>());
                }
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = (shape, b, h, rows);
    }

    /// `[at, at + src.len()) = src · factor`.
    fn write_scaled(&self, at: usize, src: &[f32], factor: f32) {
        assert!(at + src.len() <= self.len, "attention output write out of bounds");
        // SAFETY: in bounds (checked above); disjoint from every other task's writes (see `OutRows`).
        let dst = unsafe { std::slice::from_raw_parts_mut(self.ptr.add(at), src.len()) };
        for (o, &x) in dst.iter_mut().zip(src) {
            *o = x * factor;
        }
    }
}

/// Per-thread working buffers of [`head`], kept between calls (a task allocates nothing once its thread has run
/// one pair of the same shape).
#[derive(Default)]
pub(crate) struct Scratch {
    /// This head's `Kᵀ` in panels of [`KEY_PANEL`] keys, `[seq / KEY_PANEL, head_dim, KEY_PANEL]` (the last panel
    /// padded): the scores' right-hand operand.
    kt: Vec<f32>,
    /// This head's values, `[seq, head_dim]`, contiguous (the projection rows are `row_stride` apart: 9 KiB for a
    /// fused BERT-base QKV, which maps every row to the same few L1 sets).
    v: Vec<f32>,
    /// One query block's rows of `Q`, `[QUERY_BLOCK, head_dim]`, contiguous (as `v`; the products broadcast
    /// every value of them, and a strided row costs a cache or TLB miss on each of its first values).
    q: Vec<f32>,
    /// One query block's scores, then its unnormalised probabilities, `[QUERY_BLOCK, seq]`.
    scores: Vec<f32>,
    /// One query block's context before normalisation, `[QUERY_BLOCK, head_dim]`.
    ctx: Vec<f32>,
    /// `1 / sum` of each probability row of the block.
    inv: Vec<f32>,
    /// The bfloat16 products' operands as pairs ([`x86::to_bf16_pairs`]), when they run: this head's keys
    /// `[seq, head_dim / 2]`, then `Kᵀ` in panels as `kt` (of pairs), `V` as pairs of rows `[seq / 2, head_dim]`,
    /// the query block `[QUERY_BLOCK, head_dim / 2]` and its probabilities `[QUERY_BLOCK, seq / 2]` (halves
    /// rounded up).
    k2: Vec<u32>,
    kt2: Vec<u32>,
    v2: Vec<u32>,
    q2: Vec<u32>,
    p2: Vec<u32>,
}

thread_local! {
    static SCRATCH: std::cell::RefCell<Scratch> = std::cell::RefCell::new(Scratch::default());
}

/// One (sequence `b`, head `h`) pair: the stages of [`Stage`], block by block; `bf16`: the products in bfloat16
/// ([`Products::Bf16`], checked supported by the caller).
#[allow(clippy::too_many_arguments)]
fn head(isa: Isa, bf16: bool, [q, k, v]: [&Operand<'_>; 3], shape: Shape, b: usize, h: usize,
        next: Option<(usize, usize)>, scale: f32, mask: &[f32], out: &OutRows) {
    SCRATCH.with_borrow_mut(|s| {
        if bf16 {
            bf16::pack_kv(k, v, shape, b, h, s);
        } else {
            pack_kv(isa, k, v, shape, b, h, s);
        }
        for i0 in (0..shape.seq).step_by(QUERY_BLOCK) {
            let m = QUERY_BLOCK.min(shape.seq - i0);
            if let Some((nb, nh)) = next {
                prefetch_rows([q, k, v], shape, nb, nh, i0..i0 + m);
                out.prefetch(shape, nb, nh, i0..i0 + m);
            }
            if bf16 {
                bf16::scores(q, shape, b, h, i0, m, scale, s);
                softmax(isa, m, shape.seq, mask, s);
                bf16::context(m, shape, s);
            } else {
                scores(isa, q, shape, b, h, i0, m, scale, s);
                softmax(isa, m, shape.seq, mask, s);
                context(isa, m, shape, s);
            }
            write(shape, b, h, i0, m, s, out);
        }
    })
}

/// The stages whose products run in bfloat16 ([`Products::Bf16`]); called only where [`Products::bf16_on`].
mod bf16 {
    use super::{row, Operand, Scratch, Shape, KEY_PANEL, QUERY_BLOCK};
    #[cfg(target_arch = "x86_64")]
    use super::x86;

    /// Stage 1 in bfloat16: this head's keys as pairs, transposed into panels of pairs, and `V` as pairs of rows.
    pub(super) fn pack_kv(k: &Operand<'_>, v: &Operand<'_>, shape: Shape, b: usize, h: usize, s: &mut Scratch) {
        let (seq, d) = (shape.seq, shape.head_dim);
        let dh = d.div_ceil(2);
        s.k2.resize(seq * dh, 0);
        s.kt2.resize(seq.div_ceil(KEY_PANEL) * dh * KEY_PANEL, 0);
        s.v2.resize(seq.div_ceil(2) * d, 0);
        #[cfg(target_arch = "x86_64")]
        // SAFETY: AVX-512 with AVX512_BF16 (`Products::bf16_on`); every row read is inside its operand
        // (`check_operand`), every write inside the buffers sized above.
        unsafe {
            for j in 0..seq {
                x86::to_bf16_pairs(k.data[row(k, shape, b, h, j)..][..d].as_ptr(), d, s.k2[j * dh..].as_mut_ptr());
            }
            x86::transpose(s.k2.as_ptr().cast(), dh, seq, dh, s.kt2.as_mut_ptr().cast());
            for p in 0..seq.div_ceil(2) {
                let x0 = v.data[row(v, shape, b, h, 2 * p)..][..d].as_ptr();
                let x1 = (2 * p + 1 < seq).then(|| v.data[row(v, shape, b, h, 2 * p + 1)..][..d].as_ptr());
                x86::interleave_bf16(x0, x1, d, s.v2[p * d..].as_mut_ptr());
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        unreachable!("bfloat16 products run on x86-64 only ({k:?} {v:?} {b} {h})");
    }

    /// Stage 2 in bfloat16: the query block as pairs, then its scores against each panel of `Kᵀ`.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn scores(q: &Operand<'_>, shape: Shape, b: usize, h: usize, i0: usize, m: usize, scale: f32,
                         s: &mut Scratch) {
        let (seq, d) = (shape.seq, shape.head_dim);
        let dh = d.div_ceil(2);
        s.scores.resize(QUERY_BLOCK.min(seq) * seq, 0.0);
        s.q2.resize(QUERY_BLOCK.min(seq) * dh, 0);
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as in `pack_kv`; the panels hold `dh` rows of `KEY_PANEL` pairs, the scores `m` rows of `seq`.
        unsafe {
            for r in 0..m {
                x86::to_bf16_pairs(q.data[row(q, shape, b, h, i0 + r)..][..d].as_ptr(), d, s.q2[r * dh..].as_mut_ptr());
            }
            for (p, panel) in s.kt2.chunks_exact(dh * KEY_PANEL).enumerate() {
                let (j, n) = (p * KEY_PANEL, KEY_PANEL.min(seq - p * KEY_PANEL));
                x86::matmul_bf16(s.q2.as_ptr(), dh, panel.as_ptr(), KEY_PANEL, m, dh, n, scale,
                                 s.scores[j..].as_mut_ptr(), seq);
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        unreachable!("bfloat16 products run on x86-64 only ({q:?} {b} {h} {i0} {m} {scale})");
    }

    /// Stage 4 in bfloat16: the block's probabilities as pairs, times `V`'s pairs of rows.
    pub(super) fn context(m: usize, shape: Shape, s: &mut Scratch) {
        let (seq, d) = (shape.seq, shape.head_dim);
        let sh = seq.div_ceil(2);
        s.ctx.resize(QUERY_BLOCK * d, 0.0);
        s.p2.resize(QUERY_BLOCK * sh, 0);
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as in `pack_kv`; `m` rows of `seq` probabilities, `sh` pairs of `V` rows of `d` values.
        unsafe {
            for r in 0..m {
                x86::to_bf16_pairs(s.scores[r * seq..][..seq].as_ptr(), seq, s.p2[r * sh..].as_mut_ptr());
            }
            x86::matmul_bf16(s.p2.as_ptr(), sh, s.v2.as_ptr(), d, m, sh, d, 1.0, s.ctx.as_mut_ptr(), d);
        }
        #[cfg(not(target_arch = "x86_64"))]
        unreachable!("bfloat16 products run on x86-64 only ({m} {seq} {d})");
    }
}

/// Asks for rows `rows` of pair (`b`, `h`)'s Q, K and V to be brought into L2 (one prefetch per 64-byte line).
/// Why: each row is a few lines at the start of a 4 KiB page of its own (the projection rows are `row_stride`
/// apart), which the hardware prefetchers do not cross, so a task that loads its rows on demand waits on each
/// one; [`head`] asks for its next pair's rows (and output rows) a block at a time while its products run.
/// Measured at BERT-base's shape on one thread (A/B in one process, 40 interleaved rounds, thread CPU time): the
/// input rows 4 % faster, the output rows 3-5 % more.
fn prefetch_rows(ops: [&Operand<'_>; 3], shape: Shape, b: usize, h: usize, rows: std::ops::Range<usize>) {
    #[cfg(target_arch = "x86_64")]
    for op in ops {
        for t in rows.clone() {
            let at = row(op, shape, b, h, t);
            for line in (0..shape.head_dim).step_by(16).chain([shape.head_dim - 1]) {
                // SAFETY: a prefetch does not access memory architecturally; the address is inside `op.data`.
                unsafe {
                    use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T1};
                    _mm_prefetch::<_MM_HINT_T1>(op.data.as_ptr().add(at + line).cast());
                }
            }
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (ops, shape, b, h, rows);
}

/// Row `t` of sequence `b`'s head `h` in `op`: where its `head_dim` values start.
fn row(op: &Operand<'_>, shape: Shape, b: usize, h: usize, t: usize) -> usize {
    op.offset + (b * shape.seq + t) * op.row_stride + h * shape.head_dim
}

/// Stage 1: `Kᵀ` and a contiguous copy of `V` into the scratch buffers.
fn pack_kv(isa: Isa, k: &Operand<'_>, v: &Operand<'_>, shape: Shape, b: usize, h: usize, s: &mut Scratch) {
    let (seq, d) = (shape.seq, shape.head_dim);
    s.kt.resize(seq.div_ceil(KEY_PANEL) * d * KEY_PANEL, 0.0);
    s.v.resize(seq * d, 0.0);
    for j in 0..seq {
        let at = row(v, shape, b, h, j);
        s.v[j * d..(j + 1) * d].copy_from_slice(&v.data[at..at + d]);
    }
    let k0 = row(k, shape, b, h, 0);
    transpose(isa, &k.data[k0..k0 + (seq - 1) * k.row_stride + d], k.row_stride, seq, d, &mut s.kt);
}

/// Stage 2: the block's scores, `scale · Q[i0 .. i0 + m] Kᵀ`.
#[allow(clippy::too_many_arguments)]
fn scores(isa: Isa, q: &Operand<'_>, shape: Shape, b: usize, h: usize, i0: usize, m: usize, scale: f32,
          s: &mut Scratch) {
    let (seq, d) = (shape.seq, shape.head_dim);
    s.scores.resize(QUERY_BLOCK.min(seq) * seq, 0.0);
    s.q.resize(QUERY_BLOCK.min(seq) * d, 0.0);
    for r in 0..m {
        let at = row(q, shape, b, h, i0 + r);
        s.q[r * d..(r + 1) * d].copy_from_slice(&q.data[at..at + d]);
    }
    for (p, panel) in s.kt.chunks_exact(d * KEY_PANEL).enumerate() {
        let (j, n) = (p * KEY_PANEL, KEY_PANEL.min(seq - p * KEY_PANEL));
        matmul(isa, &s.q, d, panel, KEY_PANEL, m, d, n, scale, &mut s.scores[j..], seq);
    }
}

/// Stage 3: each score row, plus the mask, into unnormalised probabilities `e^(x - max)`, and `1 / sum` of each.
fn softmax(isa: Isa, m: usize, seq: usize, mask: &[f32], s: &mut Scratch) {
    s.inv.resize(QUERY_BLOCK, 0.0);
    softmax_rows(isa, &mut s.scores[..m * seq], seq, mask, &mut s.inv[..m]);
}

/// Stage 4: the block's context before normalisation, `P V`.
fn context(isa: Isa, m: usize, shape: Shape, s: &mut Scratch) {
    let (seq, d) = (shape.seq, shape.head_dim);
    s.ctx.resize(QUERY_BLOCK * d, 0.0);
    matmul(isa, &s.scores[..m * seq], seq, &s.v, d, m, seq, d, 1.0, &mut s.ctx, d);
}

/// Stage 5: each context row times its `1 / sum` into the output rows.
fn write(shape: Shape, b: usize, h: usize, i0: usize, m: usize, s: &Scratch, out: &OutRows) {
    let d = shape.head_dim;
    for (r, c) in s.ctx[..m * d].chunks_exact(d).enumerate() {
        out.write_scaled((b * shape.seq + i0 + r) * shape.hidden() + h * d, c, s.inv[r]);
    }
}

/// `c[m × n] = alpha · a[m × kk] · b[kk × n]` (row-major with strides `lda`, `ldb`, `ldc`) in register tiles,
/// summing in the order of `kk`.
#[allow(clippy::too_many_arguments)]
fn matmul(isa: Isa, a: &[f32], lda: usize, b: &[f32], ldb: usize, m: usize, kk: usize, n: usize, alpha: f32,
          c: &mut [f32], ldc: usize) {
    assert!(
        (m - 1) * lda + kk <= a.len() && (kk - 1) * ldb + n <= b.len() && (m - 1) * ldc + n <= c.len(),
        "attention matmul operands out of bounds"
    );
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx512 {
        // SAFETY: the CPU has AVX-512 (`cpu::active` only selects supported ISAs); bounds checked above.
        return unsafe { x86::matmul(a.as_ptr(), lda, b.as_ptr(), ldb, m, kk, n, alpha, c.as_mut_ptr(), ldc) };
    }
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx2 {
        // SAFETY: the CPU has AVX2 and FMA (`cpu::active` only selects supported ISAs); bounds checked above.
        return unsafe { avx2::matmul(a.as_ptr(), lda, b.as_ptr(), ldb, m, kk, n, alpha, c.as_mut_ptr(), ldc) };
    }
    let mut i = 0;
    while i + TILE_ROWS <= m {
        rows4(isa, &a[i * lda..], lda, b, ldb, kk, n, alpha, &mut c[i * ldc..], ldc);
        i += TILE_ROWS;
    }
    for i in i..m {
        rows1(isa, &a[i * lda..], lda, b, ldb, kk, n, alpha, &mut c[i * ldc..], ldc);
    }
}

/// `out = xᵀ` in panels of [`KEY_PANEL`] columns: `x` holds `rows` rows of `cols` values, `ldx` apart; `out` is
/// `[rows / KEY_PANEL, cols, KEY_PANEL]`, the last panel padded (its padding is left as it was).
fn transpose(isa: Isa, x: &[f32], ldx: usize, rows: usize, cols: usize, out: &mut [f32]) {
    assert!(
        (rows - 1) * ldx + cols <= x.len() && rows.div_ceil(KEY_PANEL) * KEY_PANEL * cols <= out.len(),
        "attention transpose out of bounds"
    );
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx512 {
        // SAFETY: as in `matmul`.
        return unsafe { x86::transpose(x.as_ptr(), ldx, rows, cols, out.as_mut_ptr()) };
    }
    transpose_portable(isa, x, ldx, rows, cols, out)
}

/// In place, for each of the `inv.len()` rows of `seq` values in `rows`: `row = e^(row + mask - max)` (`mask`
/// empty: none), and its `1 / sum(row)` into `inv`. AVX-512 and AVX2 run [`SOFTMAX_ROWS`] rows at a time
/// ([`x86::softmax_rows`], [`avx2::softmax_rows`]; a row's bits do not depend on the grouping), the portable path
/// one row at a time.
fn softmax_rows(isa: Isa, rows: &mut [f32], seq: usize, mask: &[f32], inv: &mut [f32]) {
    assert!(rows.len() == inv.len() * seq, "attention softmax: {} values for {} rows of {seq}", rows.len(), inv.len());
    assert!(mask.is_empty() || mask.len() >= seq, "attention mask shorter than the row");
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx512 || isa == Isa::Avx2 {
        let mut groups = inv.chunks_exact_mut(SOFTMAX_ROWS);
        let mut at = 0;
        /// `R` rows from `p` on the active vector path.
        ///
        /// # Safety
        /// The CPU has `isa` (AVX-512 or AVX2 with FMA); `p` holds `R` rows of `seq`, and `mask` is empty or `seq`
        /// long.
        unsafe fn group<const R: usize>(isa: Isa, p: *mut f32, seq: usize, mask: &[f32]) -> [f32; R] {
            // SAFETY: the caller's contract.
            unsafe {
                if isa == Isa::Avx512 {
                    x86::softmax_rows::<R>(p, seq, seq, mask)
                } else {
                    avx2::softmax_rows::<R>(p, seq, seq, mask)
                }
            }
        }
        for g in groups.by_ref() {
            // SAFETY: the CPU has the ISA's features (`cpu::active` only selects supported ISAs); the group's rows
            // are inside `rows` (checked above), and so is the mask.
            g.copy_from_slice(&unsafe { group::<SOFTMAX_ROWS>(isa, rows[at..].as_mut_ptr(), seq, mask) });
            at += SOFTMAX_ROWS * seq;
        }
        for i in groups.into_remainder() {
            // SAFETY: as above, one row.
            *i = unsafe { group::<1>(isa, rows[at..].as_mut_ptr(), seq, mask) }[0];
            at += seq;
        }
        return;
    }
    for (r, i) in rows.chunks_exact_mut(seq).zip(inv) {
        *i = softmax_portable(isa, r, mask);
    }
}

/// Score rows per step of the AVX-512 and AVX2 softmax ([`softmax_rows`]).
const SOFTMAX_ROWS: usize = 4;

#[cfg(test)]
mod tests {
    use super::*;

    /// Uniform values in `[-width / 2, width / 2)` from a linear congruential generator seeded with `seed`.
    fn uniform(mut seed: u64, width: f32) -> impl FnMut() -> f32 {
        move || {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((seed >> 33) as f32 / (1u64 << 31) as f32 - 0.5) * width
        }
    }

    /// The AVX2 products ([`avx2::matmul`]) give the portable path's bits (the scalar ISA: `fmaf` in the order of
    /// `kk`, then `× alpha`), over row counts that leave every tile height (1 to 13 rows), column counts around
    /// the 8-lane vectors and the 16-column tile (masked tails), sums of 1 to 128 terms, strides wider than the
    /// operands, and they write nothing outside `c`'s `m × n` values.
    #[test]
    fn avx2_products_equal_the_portable_products_bit_for_bit() {
        if !cpu::supported().contains(&Isa::Avx2) {
            return; // the AVX2 path is never selected here
        }
        let mut next = uniform(5, 1.0);
        for kk in [1usize, 63, 64, 65, 128] {
            for n in [1usize, 7, 8, 9, 15, 16, 17, 31, 33, 64] {
                for m in [1usize, 2, 5, 6, 7, 11, 12, 13] {
                    let (lda, ldb, ldc) = (kk + 3, n + 5, n + 2);
                    let a: Vec<f32> = (0..m * lda).map(|_| next()).collect();
                    let b: Vec<f32> = (0..kk * ldb).map(|_| next()).collect();
                    let alpha = if kk % 2 == 0 { 0.125 } else { 0.3 };
                    let mut want = vec![f32::NAN; m * ldc];
                    let mut got = want.clone();
                    matmul(Isa::Scalar, &a, lda, &b, ldb, m, kk, n, alpha, &mut want, ldc);
                    matmul(Isa::Avx2, &a, lda, &b, ldb, m, kk, n, alpha, &mut got, ldc);
                    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                    assert_eq!(bits(&got), bits(&want), "m {m}, kk {kk}, n {n}");
                    for (i, row) in got.chunks_exact(ldc).enumerate() {
                        assert!(row[..n].iter().all(|x| x.is_finite()), "m {m}, kk {kk}, n {n}: row {i} unwritten");
                        assert!(row[n..].iter().all(|x| x.is_nan()), "m {m}, kk {kk}, n {n}: row {i} past column n");
                    }
                }
            }
        }
    }

    /// The AVX2 softmax ([`avx2::softmax_rows`], a group of rows and single rows) gives the portable path's bits
    /// (the scalar ISA's rows, 16 lanes and `fmaf`): probabilities and `1 / sum`, rows shorter than, equal to and
    /// longer than the 16-value step, scores across the exponential's range (down past its clamp at -87.3), with and without a padding mask (a
    /// dropped key is -3.4e38 or -inf), and a NaN score that makes its row NaN.
    #[test]
    fn avx2_softmax_equals_the_portable_softmax_bit_for_bit() {
        if !cpu::supported().contains(&Isa::Avx2) {
            return; // the AVX2 path is never selected here
        }
        let mut next = uniform(7, 200.0);
        for seq in [1usize, 7, 15, 16, 17, 31, 32, 128, 130] {
            let mask: Vec<f32> = (0..seq).map(|j| [0.0, f32::MIN, 0.0, f32::NEG_INFINITY, -1.5][j % 5]).collect();
            for with_mask in [false, true] {
                let mask = if with_mask { &mask[..] } else { &[][..] };
                let m = SOFTMAX_ROWS + 2; // a group and a remainder
                let mut x: Vec<f32> = (0..m * seq).map(|_| next()).collect();
                x[seq + seq / 2] = f32::NAN;
                let (mut got, mut want) = (x.clone(), x);
                let (mut inv_got, mut inv_want) = (vec![0.0f32; m], vec![0.0f32; m]);
                softmax_rows(Isa::Avx2, &mut got, seq, mask, &mut inv_got);
                softmax_rows(Isa::Scalar, &mut want, seq, mask, &mut inv_want);
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                let what = format!("seq {seq}, mask {with_mask}");
                assert_eq!(bits(&got), bits(&want), "{what}: probabilities");
                assert_eq!(bits(&inv_got), bits(&inv_want), "{what}: 1 / sum");
                for (r, i) in inv_got.iter().enumerate() {
                    assert_eq!(i.is_nan(), r == 1, "{what}: NaN only in its row");
                }
            }
        }
    }

    /// The AVX-512 softmax gives each row the same bits whether it runs in a group of [`SOFTMAX_ROWS`] or alone:
    /// blocks of 1 to 9 rows (groups and a remainder), rows shorter than, equal to and longer than one vector,
    /// with and without a padding mask (a dropped key is -3.4e38), and a NaN score that must stay in its own row.
    #[test]
    fn grouped_softmax_rows_equal_rows_one_at_a_time() {
        if !cpu::supported().contains(&Isa::Avx512) {
            return; // AVX2's grouping is checked against the portable rows (`avx2_softmax_equals_...`)
        }
        let mut next = uniform(11, 30.0);
        for seq in [1usize, 15, 16, 17, 128, 130] {
            let mask: Vec<f32> = (0..seq).map(|j| if j % 5 == 3 { f32::MIN } else { 0.0 }).collect();
            for m in 1..=9 {
                for with_mask in [false, true] {
                    let mask = if with_mask { &mask[..] } else { &[][..] };
                    let mut x: Vec<f32> = (0..m * seq).map(|_| next()).collect();
                    if m > 2 {
                        x[seq + seq / 2] = f32::NAN;
                    }
                    let (mut grouped, mut alone) = (x.clone(), x);
                    let (mut inv_grouped, mut inv_alone) = (vec![0.0f32; m], vec![0.0f32; m]);
                    softmax_rows(Isa::Avx512, &mut grouped, seq, mask, &mut inv_grouped);
                    for (r, i) in alone.chunks_exact_mut(seq).zip(&mut inv_alone) {
                        // SAFETY: AVX-512 is supported (checked above); one row of `seq` values, the mask as long.
                        *i = unsafe { x86::softmax_rows::<1>(r.as_mut_ptr(), seq, seq, mask) }[0];
                    }
                    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                    let what = format!("seq {seq}, {m} rows, mask {with_mask}");
                    assert_eq!(bits(&grouped), bits(&alone), "{what}: probabilities");
                    assert_eq!(bits(&inv_grouped), bits(&inv_alone), "{what}: 1 / sum");
                    for (r, row) in grouped.chunks_exact(seq).enumerate() {
                        assert_eq!(row.iter().any(|v| v.is_nan()), m > 2 && r == 1, "{what}: NaN only in its row");
                    }
                }
            }
        }
    }
}
