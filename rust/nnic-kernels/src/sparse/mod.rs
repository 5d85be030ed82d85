//! Sparse × dense products for Linear layers: `out[m, r] = sa_m · s_r · Σ_k W[r, k] · x[m, k] + bias[r]`, summed
//! over the stored entries of `W` only.
//!
//! A [`SparseLinear`] holds one index layout ([`Index`]) and one value type ([`Values`]):
//! - [`Index::Csr`] ([`csr`]): rows of u16 column indices (K ≤ 65 536), built from a row-major bitmask, the
//!   storage form (K·N/8 bytes plus the values), so that an unstructured (Level) mask of any density works;
//! - [`Index::Nm`] ([`nm`]): N:M, at most N stored values in every group of M consecutive inputs (M ≤ 16), each
//!   with its 4-bit position in the group, two per byte: 2:4 costs half a byte of index per stored value.
//! - values are f32, or i8 codes with one scale per output row `s_r` (int8 weights).
//!
//! Activations: f32 as they are (`sa_m = 1`), or quantized on the fly exactly as the int8 GEMM does
//! ([`crate::gemm::ActQuant`]): the kernels then sum integer-valued floats `c · (q - z)`, which is exact while
//! the partial sums stay below 2^24, and scale once in the epilogue, so the result equals the dense int8 GEMM's
//! up to float rounding of the epilogue.
//!
//! Kernels: for fewer than [`GEMV_MAX_M`] input rows, one gather-and-FMA dot product per output row ([`gemv`];
//! AVX-512 and AVX2 gathers, or portable code, from [`crate::cpu::active`]); for more, `x` is transposed into
//! tiles of W batch columns and every stored value adds `v · xᵀ[k, tile]` to a W-wide accumulator that stays
//! in registers ([`spmm`]); int8 values with int8 activations instead run integer dot products over the
//! nonzero K-quads of each row (`vpdpbusd` with AVX-512 VNNI, portable code on the scalar ISA; [`quad`]), exact
//! like the dense int8 GEMM. Work is split over output rows, balanced by stored values, on the GEMM's task
//! runner ([`crate::gemm::par`]: PyTorch's OpenMP team when present, else the kernel pool).
//!
//! An element-wise [`Activation`] (GELU, ReLU) can follow the bias ([`SparseLinear::linear_act`]): each task
//! applies it to the outputs it has just written, while they are in L1, so a transformer MLP's activation costs
//! no pass over the output and no torch call of its own.
//!
//! Non-finite activations give what the dense product of the zero-filled weight gives: a NaN in `x[m]` makes
//! row `m` of the output NaN, and an infinity at input `k` makes NaN every output that does not store `k`
//! (`0 · inf = NaN`); activation quantization rejects them, as the int8 GEMM does.
pub mod act;
mod choose;
pub mod csr;
mod gemv;
pub mod nm;
mod quad;
mod spmm;

pub use choose::{bitmask_break_even, set_bitmask_break_even};
use crate::error::{KernelError, Result};
use crate::gemm::{ActQuant, Activation};
use crate::{cpu, pool};

/// Batches with fewer rows than this run the gather kernels row by row; larger ones the tiled kernels.
pub const GEMV_MAX_M: usize = 4;
/// Stored values × rows below which a product runs on the calling thread.
pub(crate) const PAR_MIN_WORK: usize = 1 << 16;

/// The stored values.
#[derive(Clone, Debug, PartialEq)]
pub enum Values {
    F32(Vec<f32>),
    /// int8 codes; the matching per-row scales live in [`SparseLinear::scale`].
    I8(Vec<i8>),
}

impl Values {
    pub fn len(&self) -> usize {
        match self {
            Values::F32(v) => v.len(),
            Values::I8(v) => v.len(),
        }
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    fn elem_bytes(&self) -> usize {
        match self {
            Values::F32(_) => 4,
            Values::I8(_) => 1,
        }
    }
    fn get(&self, j: usize) -> f32 {
        match self {
            Values::F32(v) => v[j],
            Values::I8(v) => v[j] as f32,
        }
    }
}

/// Where the stored values sit.
#[derive(Clone, Debug, PartialEq)]
pub enum Index {
    /// Row `r` stores columns `cols[row_ptr[r]..row_ptr[r + 1]]` (ascending), also given by the row's
    /// `ceil(k / 8)` bytes of the bitmask `bits`.
    Csr { row_ptr: Vec<usize>, cols: Vec<u16>, bits: Vec<u8> },
    /// `n` slots in every group of `m` inputs; slot `j` of a row is at column `(j / n) · m + idx(j)`, with
    /// `idx(j)` the low (even `j`) or high (odd `j`) nibble of byte `j / 2` of the row's index bytes.
    Nm { n: usize, m: usize, idx: Vec<u8> },
}

/// A sparse `[rows, k]` weight ready for [`SparseLinear::linear`].
#[derive(Clone, Debug)]
pub struct SparseLinear {
    rows: usize,
    k: usize,
    index: Index,
    values: Values,
    /// One scale per row for int8 values; empty for f32 values.
    scale: Vec<f32>,
    /// N:M only: every slot's absolute column, decoded on the first batched product (2 bytes per slot), so
    /// that the tiled kernels read columns as they do for CSR.
    nm_cols: std::sync::OnceLock<Vec<u16>>,
    /// int8 values only: every row's sum of codes, for integer dot products with uncentred activation codes.
    code_sums: std::sync::OnceLock<Vec<i32>>,
    /// int8 values in CSR only: the nonzero K-quads of every row, built on the first batched product with int8
    /// activations where [`quad`] runs (not saved: the bitmask and codes are the storage form).
    quads: std::sync::OnceLock<Option<quad::Quads>>,
}

impl PartialEq for SparseLinear {
    fn eq(&self, o: &Self) -> bool {
        (self.rows, self.k, &self.index, &self.values, &self.scale) == (o.rows, o.k, &o.index, &o.values, &o.scale)
    }
}

/// One row's stored entries: columns (or their N:M encoding) and value range.
pub(crate) enum RowCols<'a> {
    Csr(&'a [u16]),
    Nm { n: usize, m: usize, idx: &'a [u8] },
}

impl SparseLinear {
    pub(crate) fn new(rows: usize, k: usize, index: Index, values: Values, scale: Vec<f32>) -> Result<SparseLinear> {
        match (&values, scale.len()) {
            (Values::F32(_), 0) => {}
            (Values::F32(_), s) => {
                return Err(KernelError::Mismatch { what: format!("float32 values take no scale, got {s} values") })
            }
            (Values::I8(_), s) if s != rows => {
                return Err(KernelError::Mismatch {
                    what: format!("int8 values need one scale per output row ({rows}), got {s}"),
                })
            }
            (Values::I8(_), _) => {}
        }
        for (c, &s) in scale.iter().enumerate() {
            if !(s.is_finite() && s > 0.0) {
                return Err(KernelError::BadScale { channel: Some(c), value: s });
            }
        }
        if let Values::F32(v) = &values {
            if let Some(i) = crate::simd::first_nan(v) {
                return Err(KernelError::Nan { arg: "values", tensor: None, index: i });
            }
        }
        Ok(SparseLinear { rows, k, index, values, scale, nm_cols: Default::default(), code_sums: Default::default(), quads: Default::default() })
    }

    pub fn out_features(&self) -> usize {
        self.rows
    }
    pub fn in_features(&self) -> usize {
        self.k
    }
    pub fn index(&self) -> &Index {
        &self.index
    }
    pub fn values(&self) -> &Values {
        &self.values
    }
    pub fn scale(&self) -> &[f32] {
        &self.scale
    }
    /// Stored values (N:M padding slots included).
    pub fn nnz(&self) -> usize {
        self.values.len()
    }
    /// Bytes held: values, indices, bitmask, row pointers, scales.
    pub fn nbytes(&self) -> usize {
        let index = match &self.index {
            Index::Csr { row_ptr, cols, bits } => row_ptr.len() * std::mem::size_of::<usize>() + cols.len() * 2 + bits.len(),
            Index::Nm { idx, .. } => idx.len(),
        };
        self.values.len() * self.values.elem_bytes() + index + self.scale.len() * 4
    }

    /// Evicts everything a product reads (values, index, scales, the derived N:M columns and quads) from the CPU
    /// caches ([`crate::cache::flush`]): for timing the layer as a large model's forward meets it.
    pub fn flush_caches(&self) {
        use crate::cache::{bytes_of, flush};
        match &self.values {
            Values::F32(v) => flush(bytes_of(v)),
            Values::I8(v) => flush(bytes_of(v)),
        }
        match &self.index {
            Index::Csr { row_ptr, cols, bits } => {
                flush(bytes_of(row_ptr));
                flush(bytes_of(cols));
                flush(bits);
            }
            Index::Nm { idx, .. } => flush(idx),
        }
        flush(bytes_of(&self.scale));
        if let Some(c) = self.nm_cols.get() {
            flush(bytes_of(c));
        }
        if let Some(s) = self.code_sums.get() {
            flush(bytes_of(s));
        }
        if let Some(Some(q)) = self.quads.get() {
            q.flush_caches();
        }
    }

    /// Whether batch-1 products with int8 activations run integer dot products from the bitmask (AVX-512 with
    /// VNNI and VBMI2, int8 values): `k / 8` bytes of bitmask against 2 bytes per stored code for the gathers, so
    /// from density 1/16.
    pub(crate) fn gemv_uses_vnni(&self, isa: cpu::Isa) -> bool {
        matches!((&self.index, &self.values), (Index::Csr { .. }, Values::I8(_)))
            && isa == cpu::Isa::Avx512
            && cpu::has_vnni_vbmi2()
            && 16 * self.nnz() >= self.rows * self.k
    }

    /// The kernel that batch-1 products run on the active ISA: `"vnni"` (int8 codes from the bitmask, with int8
    /// activations), `"bitmask"` (values expanded under the bitmask), `"gather"` (CSR column indices) or `"n:m"`.
    pub fn gemv_kernel(&self, int8_activations: bool) -> &'static str {
        let isa = cpu::active();
        match &self.index {
            Index::Nm { .. } => "n:m",
            Index::Csr { .. } if int8_activations && self.gemv_uses_vnni(isa) => "vnni",
            Index::Csr { .. } if self.gemv_uses_bitmask(isa) => "bitmask",
            Index::Csr { .. } => "gather",
        }
    }

    /// Bytes a batch-1 product reads from the weight on the active ISA (int8 values: with int8 activations):
    /// values and their index (bitmask, or column indices and row pointers, or nibbles) and scales.
    pub fn stream_bytes(&self) -> usize {
        let isa = cpu::active();
        let index = match &self.index {
            Index::Csr { bits, .. } if self.gemv_uses_bitmask(isa) || self.gemv_uses_vnni(isa) => bits.len(),
            Index::Csr { row_ptr, cols, .. } => row_ptr.len() * std::mem::size_of::<usize>() + cols.len() * 2,
            Index::Nm { idx, .. } => idx.len(),
        };
        self.values.len() * self.values.elem_bytes() + index + self.scale.len() * 4
    }

    /// Row `r`'s bytes of the bitmask (CSR only).
    pub(crate) fn row_bits(&self, r: usize) -> &[u8] {
        match &self.index {
            Index::Csr { bits, .. } => {
                let stride = self.k.div_ceil(8);
                &bits[r * stride..(r + 1) * stride]
            }
            Index::Nm { .. } => &[],
        }
    }

    /// Every row's sum of int8 codes (empty for f32 values), computed once.
    pub(crate) fn code_sums(&self) -> &[i32] {
        self.code_sums.get_or_init(|| match &self.values {
            Values::F32(_) => Vec::new(),
            Values::I8(v) => (0..self.rows).map(|r| v[self.row(r).0].iter().map(|&c| c as i32).sum()).collect(),
        })
    }

    /// The K-quads that a batched product of `m` rows with int8 activations runs on `isa` (int8 values in CSR,
    /// `m ≥ GEMV_MAX_M`, see [`quad::applies`]), built once; `None` where the float tiled kernels run.
    fn quads_for(&self, isa: cpu::Isa, m: usize) -> Option<&quad::Quads> {
        if m < GEMV_MAX_M || !quad::applies(isa) || !matches!(self.values, Values::I8(_)) {
            return None;
        }
        self.quads.get_or_init(|| quad::Quads::of(self)).as_ref()
    }

    /// The kernel that batched products (`m ≥ GEMV_MAX_M`) run on the active ISA: `"quad"` (int8 values with int8
    /// activations: integer dot products over nonzero K-quads) or `"tiled"` (float tiles).
    pub fn batched_kernel(&self, int8_activations: bool) -> &'static str {
        let quads = int8_activations
            && matches!((&self.index, &self.values), (Index::Csr { .. }, Values::I8(_)))
            && quad::applies(cpu::active());
        if quads { "quad" } else { "tiled" }
    }

    /// The absolute column of every N:M slot (empty for CSR), decoded once.
    pub(crate) fn nm_columns(&self) -> &[u16] {
        self.nm_cols.get_or_init(|| match &self.index {
            Index::Csr { .. } => Vec::new(),
            Index::Nm { n, m, .. } => {
                let mut all = Vec::with_capacity(self.nnz());
                let mut row = Vec::new();
                for r in 0..self.rows {
                    let (range, cols) = self.row(r);
                    if let RowCols::Nm { idx, .. } = cols {
                        nm::decode_row(*n, *m, idx, &mut row, range.len());
                        all.extend_from_slice(&row);
                    }
                }
                all
            }
        })
    }

    /// Position of row `r`'s first stored value (`r == rows`: the number of stored values).
    fn value_start(&self, r: usize) -> usize {
        match &self.index {
            Index::Csr { row_ptr, .. } => row_ptr[r],
            Index::Nm { n, m, .. } => r * (self.k / m * n),
        }
    }

    /// Stored-value range of row `r` and its columns.
    pub(crate) fn row(&self, r: usize) -> (std::ops::Range<usize>, RowCols<'_>) {
        match &self.index {
            Index::Csr { row_ptr, cols, .. } => {
                let range = row_ptr[r]..row_ptr[r + 1];
                (range.clone(), RowCols::Csr(&cols[range]))
            }
            Index::Nm { n, m, idx } => {
                let len = self.k / m * n;
                let bytes = len.div_ceil(2);
                (r * len..(r + 1) * len, RowCols::Nm { n: *n, m: *m, idx: &idx[r * bytes..(r + 1) * bytes] })
            }
        }
    }

    /// Whether row `r` stores column `c`.
    fn stores(&self, r: usize, c: usize) -> bool {
        match self.row(r).1 {
            RowCols::Csr(cols) => cols.binary_search(&(c as u16)).is_ok(),
            RowCols::Nm { n, m, idx } => {
                let g = c / m;
                (g * n..(g + 1) * n).any(|j| nm::nibble(idx, j) as usize == c % m)
            }
        }
    }

    /// The dense `[rows, k]` weight (int8 codes times their scales), for checks and references.
    pub fn to_dense(&self) -> Vec<f32> {
        let mut w = vec![0f32; self.rows * self.k];
        for r in 0..self.rows {
            let s = self.scale.get(r).copied().unwrap_or(1.0);
            let (range, cols) = self.row(r);
            for (j, vi) in range.enumerate() {
                let c = match &cols {
                    RowCols::Csr(cs) => cs[j] as usize,
                    RowCols::Nm { n, m, idx } => (j / n) * m + nm::nibble(idx, j) as usize,
                };
                w[r * self.k + c] += self.values.get(vi) * s;
            }
        }
        w
    }

    /// `out[m, rows] = act(x)[m, k] · Wᵀ (· scales) + bias`, see the module doc.
    pub fn linear(&self, x: &[f32], m: usize, bias: Option<&[f32]>, act: Option<ActQuant>, out: &mut [f32]) -> Result<()> {
        self.linear_act(x, m, bias, act, Activation::Identity, out)
    }

    /// [`linear`](Self::linear) followed by `activation` on every output (`gelu(act(x) · Wᵀ + bias)`).
    pub fn linear_act(
        &self,
        x: &[f32],
        m: usize,
        bias: Option<&[f32]>,
        act: Option<ActQuant>,
        activation: Activation,
        out: &mut [f32],
    ) -> Result<()> {
        if x.len() != m * self.k {
            return Err(KernelError::Mismatch { what: format!("x has {} elements, expected {m} x {}", x.len(), self.k) });
        }
        if out.len() != m * self.rows {
            return Err(KernelError::Mismatch {
                what: format!("out has {} elements, expected {m} x {}", out.len(), self.rows),
            });
        }
        if let Some(b) = bias {
            if b.len() != self.rows {
                return Err(KernelError::Mismatch {
                    what: format!("bias has {} elements, expected {} (out_features)", b.len(), self.rows),
                });
            }
        }
        if m == 0 || self.rows == 0 {
            return Ok(());
        }
        let isa = cpu::active();
        let threads = if self.nnz() * m < PAR_MIN_WORK { 1 } else { pool::num_threads() };
        let quant = act.map(|a| act::fake_quant(x, m, self.k, a, threads)).transpose()?;
        #[cfg(target_arch = "x86_64")]
        if let Some(q) = quant.as_ref().filter(|_| m < GEMV_MAX_M && self.gemv_uses_vnni(isa)) {
            let epi = Epilogue { scale: &self.scale, row_scale: Some(&q.scale), bias, activation, isa };
            gemv::run_vnni(self, &q.q, &q.zero, m, &epi, out, threads);
            return Ok(());
        }
        if let (Some(q), Some(quads)) = (quant.as_ref(), self.quads_for(isa, m)) {
            let epi = Epilogue { scale: &self.scale, row_scale: Some(&q.scale), bias, activation, isa };
            quad::run(isa, self, quads, &q.q, &q.zero, m, &epi, out, threads);
            return Ok(());
        }
        let centred = quant.as_ref().map(|q| q.centred(self.k));
        let (xs, row_scale) = match (&quant, &centred) {
            (Some(q), Some(c)) => (&c[..], Some(&q.scale[..])),
            _ => (x, None),
        };
        let epi = Epilogue { scale: &self.scale, row_scale, bias, activation, isa };
        if m < GEMV_MAX_M {
            gemv::run(isa, self, xs, m, &epi, out, threads);
        } else {
            spmm::run(isa, self, xs, m, &epi, out, threads);
        }
        if quant.is_none() {
            self.fix_non_finite(x, m, bias, out); // NaN stays NaN through the activation
        }
        Ok(())
    }

    /// Gives rows of `x` with NaN/inf what the dense product gives (see the module doc); a cold path.
    fn fix_non_finite(&self, x: &[f32], m: usize, bias: Option<&[f32]>, out: &mut [f32]) {
        let _ = bias; // a NaN stays NaN whatever the bias
        for i in 0..m {
            let row = &x[i * self.k..(i + 1) * self.k];
            if row.iter().all(|v| v.is_finite()) {
                continue;
            }
            let o = &mut out[i * self.rows..(i + 1) * self.rows];
            if row.iter().any(|v| v.is_nan()) {
                o.fill(f32::NAN);
                continue;
            }
            let infs: Vec<usize> = (0..self.k).filter(|&c| row[c].is_infinite()).collect();
            for (r, v) in o.iter_mut().enumerate() {
                if infs.iter().any(|&c| !self.stores(r, c)) {
                    *v = f32::NAN;
                }
            }
        }
    }
}

/// The scaling applied to each output: `acc · row_scale[m] · scale[r] + bias[r]`, then `activation` (applied by
/// [`Epilogue::activate`] to a run of finished outputs: a vectorized loop, not a scalar call per output).
pub(crate) struct Epilogue<'a> {
    pub scale: &'a [f32],
    pub row_scale: Option<&'a [f32]>,
    pub bias: Option<&'a [f32]>,
    pub activation: Activation,
    pub isa: cpu::Isa,
}

impl Epilogue<'_> {
    #[inline(always)]
    pub fn apply(&self, acc: f32, m: usize, r: usize) -> f32 {
        let mut s = acc;
        if let Some(rs) = self.row_scale {
            s *= rs[m] * self.scale.get(r).copied().unwrap_or(1.0);
        } else if let Some(&sc) = self.scale.get(r) {
            s *= sc;
        }
        match self.bias {
            Some(b) => s + b[r],
            None => s,
        }
    }

    /// [`apply`](Self::apply) to output row `r` of batch rows `m0..m0 + acc.len()`, in place (a loop that
    /// vectorizes: the batched int8 kernels finish a column of outputs at a time).
    #[inline]
    pub fn apply_col(&self, acc: &mut [f32], m0: usize, r: usize) {
        apply_col_mv(self.isa, acc, self.row_scale.map(|rs| &rs[m0..m0 + acc.len()]), self.scale.get(r).copied(), self.bias.map(|b| b[r]));
    }

    /// Applies the activation to `len` finished outputs from `p` (one batch row's run of output rows).
    ///
    /// # Safety
    /// `p..p + len` must be initialized outputs that no other thread reads or writes meanwhile.
    #[inline]
    pub unsafe fn activate(&self, p: *mut f32, len: usize) {
        if self.activation != Activation::Identity {
            // SAFETY: the caller's contract.
            activate_mv(self.isa, unsafe { std::slice::from_raw_parts_mut(p, len) }, self.activation);
        }
    }
}

#[inline(always)]
fn apply_col_body(acc: &mut [f32], row_scale: Option<&[f32]>, scale: Option<f32>, bias: Option<f32>) {
    // the same operations in the same order as `Epilogue::apply`
    match (row_scale, scale) {
        (Some(rs), sc) => acc.iter_mut().zip(rs).for_each(|(a, &r)| *a *= r * sc.unwrap_or(1.0)),
        (None, Some(sc)) => acc.iter_mut().for_each(|a| *a *= sc),
        (None, None) => {}
    }
    if let Some(b) = bias {
        acc.iter_mut().for_each(|a| *a += b);
    }
}
crate::simd::multiversion!(fn apply_col_mv(acc: &mut [f32], row_scale: Option<&[f32]>, scale: Option<f32>, bias: Option<f32>) = apply_col_body;);

#[inline(always)]
fn activate_body(out: &mut [f32], activation: Activation) {
    match activation {
        Activation::Identity => {}
        Activation::Relu => out.iter_mut().for_each(|v| *v = crate::gemm::relu(*v)),
        Activation::Gelu => out.iter_mut().for_each(|v| *v = crate::gemm::gelu(*v)),
    }
}
crate::simd::multiversion!(fn activate_mv(out: &mut [f32], activation: Activation) = activate_body;);

/// Tasks per thread of a parallel product: claimed dynamically, so a thread that starts late (woken, or kept off
/// its core by another process) takes fewer, and the last task bounds the tail imbalance.
const TASKS_PER_THREAD: usize = 8;

/// Splits rows `0..rows` into up to [`TASKS_PER_THREAD`]` · threads` contiguous ranges of similar work (stored
/// values + 16 per row), each boundary found by binary search on the cumulative work (the row pointers), so the
/// split costs well under a microsecond. (It was a scan over every row on the calling thread before the helpers
/// started: 20-30 µs of a two-thread 4096-row product that takes 250 µs.)
pub(crate) fn row_chunks(w: &SparseLinear, threads: usize) -> Vec<(usize, usize)> {
    let rows = w.rows;
    let tasks = (threads * TASKS_PER_THREAD).clamp(1, rows.max(1));
    if threads <= 1 || tasks == 1 {
        return vec![(0, rows)];
    }
    // work before row r: its first stored value's position plus 16 per row (monotone in r)
    let before = |r: usize| w.value_start(r) + 16 * r;
    let total = before(rows);
    let mut out = Vec::with_capacity(tasks);
    let mut start = 0;
    for t in 1..=tasks {
        if start == rows {
            break;
        }
        // the first row end e > start whose work before it reaches this task's share
        let target = total * t / tasks;
        let (mut lo, mut hi) = (start + 1, rows);
        while lo < hi {
            let mid = (lo + hi) / 2;
            if before(mid) >= target {
                hi = mid;
            } else {
                lo = mid + 1;
            }
        }
        let end = if t == tasks { rows } else { lo };
        out.push((start, end));
        start = end;
    }
    out
}

/// Output pointer shared by tasks that write disjoint elements.
#[derive(Copy, Clone)]
pub(crate) struct OutPtr(pub *mut f32);
// SAFETY: every task writes its own rows of the output.
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `rows × k` CSR weight whose row `r` stores `len(r)` values.
    fn skewed(rows: usize, k: usize, len: impl Fn(usize) -> usize) -> SparseLinear {
        let stride = k.div_ceil(8);
        let mut bits = vec![0u8; rows * stride];
        let mut n = 0;
        for r in 0..rows {
            for c in 0..len(r).min(k) {
                bits[r * stride + c / 8] |= 1 << (c % 8);
                n += 1;
            }
        }
        csr::from_bitmask(rows, k, &bits, Values::F32(vec![1.0; n]), vec![]).unwrap()
    }

    #[test]
    fn row_chunks_cover_every_row_once_with_balanced_work() {
        let cases = [
            skewed(4096, 512, |r| if r < 100 { 512 } else { r % 7 }), // a few heavy rows first
            skewed(1000, 64, |r| (r * 37) % 65),
            skewed(3, 8, |_| 8),                                     // fewer rows than tasks
            skewed(40, 16, |_| 0),                                   // nothing stored: the per-row cost splits
        ];
        for w in &cases {
            for threads in [1, 2, 3, 16] {
                let chunks = row_chunks(w, threads);
                assert_eq!(chunks.first().unwrap().0, 0);
                assert_eq!(chunks.last().unwrap().1, w.rows);
                assert!(chunks.windows(2).all(|p| p[0].1 == p[1].0), "contiguous: {chunks:?}");
                assert!(chunks.iter().all(|c| c.0 < c.1), "non-empty: {chunks:?}");
                assert!(chunks.len() <= (threads * TASKS_PER_THREAD).max(1));
                let work = |(a, b): (usize, usize)| w.value_start(b) - w.value_start(a) + 16 * (b - a);
                let heaviest_row = (0..w.rows).map(|r| work((r, r + 1))).max().unwrap();
                let share = work((0, w.rows)).div_ceil(chunks.len().max(1));
                for &c in &chunks {
                    assert!(work(c) <= share + heaviest_row, "chunk {c:?}: {} > {share} + {heaviest_row}", work(c));
                }
            }
        }
    }
}
