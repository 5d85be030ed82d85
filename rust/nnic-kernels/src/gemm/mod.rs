//! int8 GEMM: exact `i32 = s8 · s8` products (like `torch._int_mm`) and a prepacked dynamic-quantization
//! linear layer `f32 = quant(x) · W_s8ᵀ` with a fused dequantization epilogue; and an int4-weight path
//! ([`int4`]).
//!
//! Structure (BLIS-like): weights are packed once ([`PackedB`]), activations per call into row panels;
//! the output is split into blocks of `mc × nc` that run on the kernel pool; inside a block, K runs in
//! slices of [`KC`] (the partial sums live in the output buffer itself), then panels of 32 columns (the
//! weight micro-panel stays in L1) and row panels (the activation block stays in L2); the micro-kernel
//! keeps an `mr × 32` tile in registers. The epilogue runs once per block, while it is in cache.
//!
//! The code path ([`Path`]) follows the kernel-wide ISA switch ([`crate::cpu::active`]): `avx512` uses
//! VNNI when the CPU has it (else the AVX2 kernel), `avx2` the AVX2 kernel, `scalar` the portable one.
pub mod conv;
pub mod int4;
mod kernels;
mod pack;
pub mod par;
mod quantize;

pub use pack::{PackedB, MAX_K, NR};
pub use quantize::{qparams as act_qparams, ActQuant};

use crate::cpu::{self, Isa};
use crate::error::{KernelError, Result};
use crate::pool;
use kernels::{MR_AVX2, MR_SCALAR, MR_VNNI};
use pack::PackedA;

/// K values per K slice (multiple of 4): the 32-column weight micro-panel of a slice is 24 KiB (L1: 48 KiB).
pub const KC: usize = 768;
/// Row panels per output block (8 × 12 rows) and columns per block (8 panels): measured best on Sapphire /
/// Emerald Rapids class cores with 2 threads (see `NNIC_GEMM_BLOCKING`).
const MC_PANELS: usize = 8;
const NC: usize = 8 * NR;
/// Blocks of at most this many row panels stream whole weight panels (no K slices): the weights come from
/// L3/DRAM and are reused by few rows, so long sequential reads beat L1 blocking.
const SMALL_M_PANELS: usize = 2;
/// Block sizes `(kc, mc_panels, nc)`: `KC`, `MC_PANELS` and `NC` unless the environment variable
/// `NNIC_GEMM_BLOCKING="kc,mc_panels,nc"` (a tuning aid) says otherwise.
fn blocking() -> (usize, usize, usize) {
    static B: std::sync::OnceLock<(usize, usize, usize)> = std::sync::OnceLock::new();
    *B.get_or_init(|| {
        let parse = || -> Option<(usize, usize, usize)> {
            let v = std::env::var("NNIC_GEMM_BLOCKING").ok()?;
            let p: Vec<usize> = v.split(',').map(|t| t.trim().parse().ok()).collect::<Option<_>>()?;
            match p[..] {
                [kc, mc, nc] if kc >= 4 && kc % 4 == 0 && mc >= 1 && nc >= NR && nc % NR == 0 => Some((kc, mc, nc)),
                _ => None,
            }
        };
        parse().unwrap_or((KC, MC_PANELS, NC))
    })
}

/// Problems with fewer multiply-adds run on the calling thread.
const PAR_MIN_OPS: usize = 1 << 21;

/// A micro-kernel family.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Path {
    /// Portable Rust.
    Scalar,
    /// AVX2 `vpmaddwd` (exact).
    Avx2,
    /// AVX-512 VNNI `vpdpbusd`.
    Vnni,
}

impl Path {
    pub const ALL: [Path; 3] = [Path::Scalar, Path::Avx2, Path::Vnni];

    /// The path used for the kernel-wide ISA `isa`.
    pub fn for_isa(isa: Isa) -> Path {
        match isa {
            Isa::Avx512 if has_vnni() => Path::Vnni,
            Isa::Avx512 | Isa::Avx2 => Path::Avx2,
            Isa::Scalar => Path::Scalar,
        }
    }

    /// The path of the active ISA.
    pub fn active() -> Path {
        Path::for_isa(cpu::active())
    }

    pub fn name(self) -> &'static str {
        match self {
            Path::Scalar => "scalar",
            Path::Avx2 => "avx2",
            Path::Vnni => "avx512vnni",
        }
    }

    /// Parses a path name or an ISA name (`"avx512"` means VNNI when present).
    pub fn parse(name: &str) -> Result<Path> {
        let n = name.trim().to_ascii_lowercase();
        if let Some(p) = Path::ALL.into_iter().find(|p| p.name() == n) {
            return Ok(p);
        }
        if n == "vnni" {
            return Ok(Path::Vnni);
        }
        Isa::parse(&n).map(Path::for_isa).map_err(|_| KernelError::Invalid {
            what: format!("unknown GEMM path {name:?}: expected one of scalar, avx2, avx512, avx512vnni"),
        })
    }

    pub fn is_supported(self) -> bool {
        match self {
            Path::Scalar => true,
            Path::Avx2 => Isa::Avx2.is_supported(),
            Path::Vnni => Isa::Avx512.is_supported() && has_vnni(),
        }
    }

    fn check(self) -> Result<()> {
        if self.is_supported() {
            Ok(())
        } else {
            Err(KernelError::Invalid { what: format!("GEMM path {:?} is not supported by this CPU", self.name()) })
        }
    }

    pub(crate) fn mr(self) -> usize {
        match self {
            Path::Scalar => MR_SCALAR,
            Path::Avx2 => MR_AVX2,
            Path::Vnni => MR_VNNI,
        }
    }
}

fn has_vnni() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512vnni")
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// Runs the micro-kernel of `path` for a panel of `mr` rows (≤ `path.mr()`).
///
/// # Safety
/// Pointers as in [`kernels::scalar`]; `path` is supported.
#[inline]
#[allow(clippy::too_many_arguments)]
unsafe fn micro(path: Path, mr: usize, kg: usize, a: *const u8, b: *const i8, c: *mut i32, ldc: usize, acc: bool) {
    #[cfg(target_arch = "x86_64")]
    {
        use kernels::x86::*;
        // SAFETY: caller's contract.
        unsafe {
            macro_rules! pick {
                ($f:ident; $($n:literal)*) => {
                    match mr { $($n => $f::<$n>(kg, a, b, c, ldc, acc),)* _ => unreachable!() }
                };
            }
            match path {
                Path::Vnni => match mr {
                    1 => vnni_small::<1>(kg, a, b, c, ldc, acc),
                    2 => vnni_small::<2>(kg, a, b, c, ldc, acc),
                    _ => pick!(vnni; 3 4 5 6 7 8 9 10 11 12),
                },
                Path::Avx2 => pick!(avx2; 1 2 3 4),
                Path::Scalar => kernels::scalar(mr, kg, a, b, c, ldc, acc),
            }
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    // SAFETY: caller's contract.
    unsafe {
        let _ = path;
        kernels::scalar(mr, kg, a, b, c, ldc, acc)
    }
}

/// Raw output pointer shared by the block tasks (each writes a disjoint block).
#[derive(Copy, Clone)]
struct OutPtr(*mut i32);
// SAFETY: tasks write disjoint blocks.
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

/// An output block `[i0, i1) × [j0, j1)`.
#[derive(Copy, Clone, Debug)]
pub(crate) struct Block {
    pub i0: usize,
    pub i1: usize,
    pub j0: usize,
    pub j1: usize,
}

/// Splits `m × n` into blocks: at most `mc` rows (multiple of `mr`) × `nc` columns (multiple of 32), made
/// smaller until there are about 4 blocks per thread.
pub(crate) fn plan(m: usize, n: usize, mr: usize, threads: usize, mut mc: usize, mut nc: usize) -> Vec<Block> {
    let count = |mc: usize, nc: usize| m.div_ceil(mc) * n.div_ceil(nc);
    mc = mc.min(pack::round_up(m, mr));
    nc = nc.min(pack::round_up(n, NR));
    let want = 4 * threads;
    while count(mc, nc) < want && nc > 4 * NR {
        nc = pack::round_up(nc / 2, NR);
    }
    while count(mc, nc) < want && mc > 2 * mr {
        mc = pack::round_up(mc / 2, mr);
    }
    let mut out = Vec::new();
    for i0 in (0..m).step_by(mc) {
        for j0 in (0..n).step_by(nc) {
            out.push(Block { i0, i1: (i0 + mc).min(m), j0, j1: (j0 + nc).min(n) });
        }
    }
    out
}

/// `C[m, n] = A · B` in wrapping i32 into `c` (row stride `n`), then `finish(block, c)` on each block.
fn drive(path: Path, m: usize, a: &PackedA, b: &PackedB, c: &mut [i32], finish: &(dyn Fn(Block, *mut i32) + Sync)) {
    let n = b.n();
    let kp = b.kp();
    debug_assert_eq!(c.len(), m * n);
    if m == 0 || n == 0 {
        return;
    }
    let mr = a.mr;
    let out = OutPtr(c.as_mut_ptr());
    let serial = m * n * kp < PAR_MIN_OPS || pool::num_threads() == 1;
    let threads = if serial { 1 } else { pool::num_threads() };
    let (kc_max, mc_panels, nc) = blocking();
    let blocks = plan(m, n, mr, threads, mr * mc_panels, nc);
    let run = |blk: Block| {
        #[allow(clippy::redundant_locals)] // captures the Sync wrapper, not its raw pointer field
        let out = out;
        let mut tile = [0i32; MR_VNNI * NR];
        // Few row panels: little reuse of a weight micro-panel across row panels, so no K slices either (the
        // weights stream sequentially, and the output is written once).
        let kc = if blk.i1 - blk.i0 <= SMALL_M_PANELS * mr { kp } else { kc_max };
        for k0 in (0..kp).step_by(kc) {
            let kg = (kp - k0).min(kc) / 4;
            let acc = k0 > 0;
            for j0 in (blk.j0..blk.j1).step_by(NR) {
                let nr = (blk.j1 - j0).min(NR);
                let bp = b.panel_ptr(j0 / NR, k0 / 4);
                for i0 in (blk.i0..blk.i1).step_by(mr) {
                    let rows = (blk.i1 - i0).min(mr);
                    let ap = a.panel_ptr_rows(i0 / mr, k0 / 4);
                    // SAFETY: the block is inside the output; the tile holds `rows` rows of 32.
                    unsafe {
                        let cp = out.0.add(i0 * n + j0);
                        if nr == NR {
                            micro(path, rows, kg, ap, bp, cp, n, acc);
                        } else {
                            if acc {
                                for r in 0..rows {
                                    std::ptr::copy_nonoverlapping(cp.add(r * n), tile.as_mut_ptr().add(r * NR), nr);
                                }
                            }
                            micro(path, rows, kg, ap, bp, tile.as_mut_ptr(), NR, acc);
                            for r in 0..rows {
                                std::ptr::copy_nonoverlapping(tile.as_ptr().add(r * NR), cp.add(r * n), nr);
                            }
                        }
                    }
                }
            }
        }
        finish(blk, out.0);
    };
    par::for_each(blocks.len(), threads, &|i| run(blocks[i]));
}

fn check_out<T>(what: &str, got: &[T], want: usize) -> Result<()> {
    if got.len() != want {
        return Err(KernelError::Mismatch { what: format!("{what} has {} elements, expected {want}", got.len()) });
    }
    Ok(())
}

/// Exact `out[m, n] = a[m, k] · b` (i32), with `b` prepacked ([`PackedB::from_kn`]).
pub fn matmul_i8(path: Path, a: &[i8], m: usize, b: &PackedB, out: &mut [i32]) -> Result<()> {
    path.check()?;
    let (k, n) = (b.k(), b.n());
    check_out("a", a, m * k)?;
    check_out("out", out, m * n)?;
    let pa = quantize::pack_s8(path, a, m, k, b.kp());
    let colsum = b.colsum();
    let finish = |blk: Block, c: *mut i32| {
        for i in blk.i0..blk.i1 {
            // SAFETY: row `i` of the block is inside the output and owned by this task.
            let row = unsafe { std::slice::from_raw_parts_mut(c.add(i * n + blk.j0), blk.j1 - blk.j0) };
            epilogue_int(path, row, &colsum[blk.j0..blk.j1], 128);
        }
    };
    drive(path, m, &pa, b, out, &finish);
    quantize::release(pa);
    Ok(())
}

/// Exact `out = a[m, k] · b[k, n]` for row-major `b` (packs `b`, then [`matmul_i8`]).
pub fn int8_matmul(path: Path, a: &[i8], m: usize, k: usize, b: &[i8], n: usize, out: &mut [i32]) -> Result<()> {
    pack::check_dims(m, k, n)?;
    check_out("a", a, m * k)?;
    let pb = PackedB::from_kn(b, k, n)?;
    matmul_i8(path, a, m, &pb, out)
}

#[inline(always)]
fn epilogue_int_body(row: &mut [i32], colsum: &[i32], zero: i32) {
    for (v, &s) in row.iter_mut().zip(colsum) {
        *v = v.wrapping_sub(zero.wrapping_mul(s));
    }
}
crate::simd::multiversion!(fn epilogue_int_mv(row: &mut [i32], colsum: &[i32], zero: i32) = epilogue_int_body;);

fn epilogue_int(path: Path, row: &mut [i32], colsum: &[i32], zero: i32) {
    epilogue_int_mv(isa_of(path), row, colsum, zero)
}

/// Prepacked weights of a linear layer: s8 codes `w[n, k]`, per-tensor or per-output-channel scales, and
/// optional zero points (affine weights); `w ≈ (q - zero_point) * scale`.
#[derive(Clone, Debug, PartialEq)]
pub struct PackedLinear {
    b: PackedB,
    /// One scale per (padded) output channel.
    scale: Vec<f32>,
    /// One zero point per (padded) output channel, or empty when all are 0.
    zero: Vec<i32>,
    per_channel: bool,
}

impl PackedLinear {
    /// Packs `w` (row-major `[n, k]`, s8) with `scale` (1 or `n` values, finite and > 0) and `zero_point`
    /// (empty, 1 or `n` values in [-128, 127]).
    pub fn new(w: &[i8], n: usize, k: usize, scale: &[f32], zero_point: &[i32]) -> Result<PackedLinear> {
        let b = PackedB::from_nk(w, n, k)?;
        let np = pack::round_up(n.max(1), NR);
        let per_channel = scale.len() != 1;
        if scale.len() != 1 && scale.len() != n {
            return Err(KernelError::Mismatch {
                what: format!("scale needs 1 or {n} (output channels) values, got {}", scale.len()),
            });
        }
        if !zero_point.is_empty() && zero_point.len() != 1 && zero_point.len() != n {
            return Err(KernelError::Mismatch {
                what: format!("zero_point needs 0, 1 or {n} (output channels) values, got {}", zero_point.len()),
            });
        }
        for (c, &s) in scale.iter().enumerate() {
            if !(s.is_finite() && s > 0.0) {
                return Err(KernelError::BadScale { channel: per_channel.then_some(c), value: s });
            }
        }
        for (c, &z) in zero_point.iter().enumerate() {
            if !(-128..=127).contains(&z) {
                return Err(KernelError::BadZeroPoint {
                    channel: (zero_point.len() > 1).then_some(c),
                    value: z,
                    qmin: -128,
                    qmax: 127,
                });
            }
        }
        let expand = |v: &[f32]| (0..np).map(|j| if j < n { v[if v.len() == 1 { 0 } else { j }] } else { 0.0 }).collect();
        let zero = if zero_point.iter().all(|&z| z == 0) {
            Vec::new()
        } else {
            (0..np).map(|j| if j < n { zero_point[if zero_point.len() == 1 { 0 } else { j }] } else { 0 }).collect()
        };
        Ok(PackedLinear { b, scale: expand(scale), zero, per_channel })
    }

    pub fn in_features(&self) -> usize {
        self.b.k()
    }
    pub fn out_features(&self) -> usize {
        self.b.n()
    }
    pub fn packed(&self) -> &PackedB {
        &self.b
    }
    /// Per-channel scales (`n` values) or the per-tensor one.
    pub fn scale(&self) -> Vec<f32> {
        if self.per_channel { self.scale[..self.b.n()].to_vec() } else { vec![self.scale[0]] }
    }
    /// Zero points (`n` values, or empty when all are 0).
    pub fn zero_point(&self) -> Vec<i32> {
        if self.zero.is_empty() { Vec::new() } else { self.zero[..self.b.n()].to_vec() }
    }
    /// The s8 codes `[n, k]`.
    pub fn weight(&self) -> Vec<i8> {
        self.b.to_nk()
    }
    /// Bytes held.
    pub fn nbytes(&self) -> usize {
        self.b.nbytes() + 4 * (self.scale.len() + self.zero.len())
    }
}

/// `out[m, n] = dequant(quant(x) · qᵀ) + bias` for `x[m, k]` (f32), with activations quantized on the fly
/// as `act` says. Exact in the integer part: `out = sa_i · sw_j · sum_k (qa - za_i)(qw - zw_j) + bias_j`.
pub fn int8_linear(
    path: Path,
    x: &[f32],
    m: usize,
    w: &PackedLinear,
    bias: Option<&[f32]>,
    act: ActQuant,
    out: &mut [f32],
) -> Result<()> {
    path.check()?;
    let k = w.b.k();
    check_out("x", x, m * k)?;
    check_linear(m, w, bias, act, out)?;
    let pa = quantize::pack_f32(path, path.mr(), x, m, k, w.b.kp(), act, !w.zero.is_empty())?;
    finish_linear(path, m, pa, w, bias, out);
    Ok(())
}

/// Output, bias, activation and exact-accumulation checks of the float paths.
pub(crate) fn check_linear(m: usize, w: &PackedLinear, bias: Option<&[f32]>, act: ActQuant, out: &[f32]) -> Result<()> {
    let (k, n) = (w.b.k(), w.b.n());
    check_out("out", out, m * n)?;
    if let Some(b) = bias {
        check_out("bias", b, n)?;
    }
    act.check()?;
    let amax: i64 = if act.is_symmetric() { 128 } else { 255 };
    let wmax: i64 = if w.zero.is_empty() { 128 } else { 255 };
    if amax * wmax * k as i64 > i32::MAX as i64 {
        return Err(KernelError::Invalid {
            what: format!(
                "K = {k} is too large for exact int32 accumulation with {} activations{}: need K <= {}; use symmetric \
                 activation quantization",
                if amax == 128 { "symmetric" } else { "asymmetric" },
                if wmax == 255 { " and weight zero points" } else { "" },
                i32::MAX as i64 / (amax * wmax)
            ),
        });
    }
    Ok(())
}

/// The GEMM and float epilogue of packed activations `pa` (`m` rows) with `w`, into `out[m, n]`.
pub(crate) fn finish_linear(path: Path, m: usize, pa: PackedA, w: &PackedLinear, bias: Option<&[f32]>, out: &mut [f32]) {
    let (k, n) = (w.b.k(), w.b.n());
    let colsum = w.b.colsum();
    let kk = k as i32;
    // SAFETY (below): an f32 and an i32 have the same size and alignment; the buffer holds i32 partial sums
    // until the epilogue turns each block into f32.
    let c: &mut [i32] = unsafe { std::slice::from_raw_parts_mut(out.as_mut_ptr() as *mut i32, out.len()) };
    let finish = |blk: Block, c: *mut i32| {
        let cols = blk.j0..blk.j1;
        for i in blk.i0..blk.i1 {
            // SAFETY: row `i` of the block belongs to this task.
            let row = unsafe { std::slice::from_raw_parts_mut(c.add(i * n + blk.j0), blk.j1 - blk.j0) };
            let za = pa.zero[i];
            let r = kk.wrapping_mul(za).wrapping_sub(pa.rowsum[i]);
            let zw = if w.zero.is_empty() { None } else { Some(&w.zero[cols.clone()]) };
            epilogue_f32(
                path,
                row,
                &colsum[cols.clone()],
                za,
                zw,
                r,
                pa.scale[i],
                &w.scale[cols.clone()],
                bias.map(|b| &b[cols.clone()]),
            );
        }
    };
    drive(path, m, &pa, &w.b, c, &finish);
    quantize::release(pa);
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn epilogue_f32_body(
    row: &mut [i32],
    colsum: &[i32],
    za: i32,
    zw: Option<&[i32]>,
    r: i32,
    sa: f32,
    sw: &[f32],
    bias: Option<&[f32]>,
) {
    let n = row.len();
    let (colsum, sw) = (&colsum[..n], &sw[..n]);
    if let Some(zw) = zw {
        let zw = &zw[..n];
        for j in 0..n {
            row[j] = row[j].wrapping_add(zw[j].wrapping_mul(r));
        }
    }
    match bias {
        Some(b) => {
            let b = &b[..n];
            for j in 0..n {
                let v = row[j].wrapping_sub(za.wrapping_mul(colsum[j])) as f32 * (sa * sw[j]) + b[j];
                row[j] = v.to_bits() as i32;
            }
        }
        None => {
            for j in 0..n {
                let v = row[j].wrapping_sub(za.wrapping_mul(colsum[j])) as f32 * (sa * sw[j]);
                row[j] = v.to_bits() as i32;
            }
        }
    }
}
crate::simd::multiversion!(fn epilogue_f32_mv(
    row: &mut [i32], colsum: &[i32], za: i32, zw: Option<&[i32]>, r: i32, sa: f32, sw: &[f32], bias: Option<&[f32]>
) = epilogue_f32_body;);

#[allow(clippy::too_many_arguments)]
fn epilogue_f32(
    path: Path,
    row: &mut [i32],
    colsum: &[i32],
    za: i32,
    zw: Option<&[i32]>,
    r: i32,
    sa: f32,
    sw: &[f32],
    bias: Option<&[f32]>,
) {
    epilogue_f32_mv(isa_of(path), row, colsum, za, zw, r, sa, sw, bias)
}

pub(crate) fn isa_of(path: Path) -> Isa {
    match path {
        Path::Vnni => Isa::Avx512,
        Path::Avx2 => Isa::Avx2,
        Path::Scalar => Isa::Scalar,
    }
}
