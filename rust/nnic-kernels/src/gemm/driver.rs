//! The blocked driver (BLIS-like): output blocks of `mc × nc` on the kernel pool (or, for a product whose rows
//! form one block, per-thread column lanes: see `lanes`), K slices of [`KC`],
//! 32-column weight panels, row panels of activations, the micro-kernel of the [`Path`] on each tile, and a
//! caller-given `finish` (the epilogue) once per block while it is in cache. Also the exact `i32`
//! products [`matmul_i8`] / [`int8_matmul`], whose epilogue only undoes the activation shift.
use super::act_pack;
use super::epilogue::{epilogue_int, TileEpilogue};
use super::lanes::Lanes;
use super::panels::{self, PackedA, PackedB, NR};
use super::par;
use super::micro::{MR_AVX2, MR_TALL, MR_VNNI};
use super::path::{isa_of, micro_kernel, Avx2Tile, Path};
use crate::error::{KernelError, Result};
use crate::pool;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// K values per K slice (multiple of 4). The 32-column weight micro-panel of a slice (up to 128 KiB) lives
/// in L2, not L1: the tile reads 128 bytes of it per 24 `vpdpbusd` (about 10 bytes a cycle, a fraction of
/// what L2 delivers, and its stream prefetch hides the latency), while longer slices write the accumulator
/// tiles back to the output less often and stream A and B in fewer, longer runs. Measured against 768 (24 KiB,
/// L1-resident), interleaved in one process, one thread, two runs: 1.05× at 128×4096×4096, 1.03–1.06× at
/// 512×4096×4096, 1.02–1.04× at 1024×3072×768, 1.09–1.16× at 2048×4096×4096 (0.99–1.01× at K = 768, where both
/// are one slice). A slice of the largest row block (16 panels of 12 rows) still fits L2 (768 KiB of 2 MiB).
pub const KC: usize = 4096;
/// Row panels per output block (8 × 12 rows) and columns per block (8 panels): measured best on Sapphire /
/// Emerald Rapids class cores with 2 threads (see `NNIC_GEMM_BLOCKING`).
const MC_PANELS: usize = 8;
const NC: usize = 8 * NR;
/// Blocks of at most this many row panels stream whole weight panels (no K slices): the weights come from
/// L3/DRAM and are reused by few rows, so long sequential reads beat L1 blocking.
const SMALL_M_PANELS: usize = 2;

/// The K slice for a core with `l2` bytes of L2 (0: unknown): [`KC`] where a slice of a usual row block
/// ([`MC_PANELS`] panels of `mr` rows) and two weight micro-panels (the one in use and the prefetched next) fit
/// in L2, else the longest multiple of 256 that fits (at least 512). Both parts measured so far keep [`KC`]:
/// the Intel one (2 MiB of L2) and AMD Zen 4 (1 MiB: 4096 × 160 bytes = 640 KiB), where 3072 (the slice that
/// would keep even the doubled block and both micro-panels in three quarters of L2) measured the same as 4096
/// (thread CPU time, one thread, 128 / 512 × 4096 × 4096 and 256 × 4096 × 11008, under load: within ±5 %, no
/// direction). Cores with 512 KiB (Zen 2/3) get 3072, with 256 KiB 1536.
fn kc_for_l2(l2: usize, mr: usize) -> usize {
    if l2 == 0 {
        return KC;
    }
    let bytes_per_k = MC_PANELS * mr + 2 * NR;
    (l2 / bytes_per_k / 256 * 256).clamp(512, KC)
}

/// The AVX2 path's K slice: its 32-column weight micro-panel (32 KiB) stays in L1 while each of the row block's 2-row
/// panels re-reads it, where the VNNI tile's 12-row panels read theirs from L2.
const KC_AVX2: usize = 1024;
/// The AVX2 path's row panels per block: the [`MC_PANELS`] × [`MR_VNNI`] = 96 rows of the VNNI blocking, in its
/// 2-row panels (so up to 96 rows share each weight micro-panel; up to twice that form one block, see [`drive`]).
/// Measured with both (process CPU time, one thread, 4096 × 4096, four alternated process pairs on the Zen 3 machine,
/// load 1.9-2.1): M = 128 40.4-43.4 GMAC/s against 33.9-38.8 with the VNNI blocking (K slices of 3072 there, 8
/// panels = 16 rows a block); M = 16 within the noise (26-40 both).
const MC_PANELS_AVX2: usize = MC_PANELS * MR_VNNI / MR_AVX2;

/// Block sizes `(kc, mc_panels, nc)` for `path`: the K slice from this core's L2 ([`kc_for_l2`]), `MC_PANELS` and
/// `NC`, or on AVX2 [`KC_AVX2`], [`MC_PANELS_AVX2`] and `NC`, unless the environment variable
/// `NNIC_GEMM_BLOCKING="kc,mc_panels,nc"` (a tuning aid, every path) says otherwise.
fn blocking(path: Path) -> (usize, usize, usize) {
    match (path, env_blocking()) {
        (_, Some(b)) => b,
        (Path::Avx2, None) => (KC_AVX2, MC_PANELS_AVX2, NC),
        (_, None) => (kc_for_l2(crate::cache::sizes().l2, MR_VNNI), MC_PANELS, NC),
    }
}

/// `NNIC_GEMM_BLOCKING`, parsed once (see [`blocking`]).
fn env_blocking() -> Option<(usize, usize, usize)> {
    static B: std::sync::OnceLock<Option<(usize, usize, usize)>> = std::sync::OnceLock::new();
    *B.get_or_init(|| {
        let parse = || -> Option<(usize, usize, usize)> {
            let v = std::env::var("NNIC_GEMM_BLOCKING").ok()?;
            let p: Vec<usize> = v.split(',').map(|t| t.trim().parse().ok()).collect::<Option<_>>()?;
            match p[..] {
                [kc, mc, nc] if kc >= 4 && kc % 4 == 0 && mc >= 1 && nc >= NR && nc % NR == 0 => Some((kc, mc, nc)),
                _ => None,
            }
        };
        parse()
    })
}

/// Whether one-row-block products run on column lanes ([`set_column_lanes`]).
static LANES: AtomicBool = AtomicBool::new(true);

/// Turns the column lanes on (the default) or off (the product of a single row block then runs as the planned
/// column blocks taken from a shared counter, as before them). Both give the same bits. A measurement aid, as
/// [`super::set_tall_tile`] is: two-thread wall times on this shared machine drift between processes, so the two
/// are compared in the same rounds of one process; and the tests compare their results.
pub fn set_column_lanes(on: bool) {
    LANES.store(on, Ordering::Relaxed);
}

/// Whether the last blocks of a block-planned product run as single column panels ([`set_tail_pieces`]).
static TAIL_PIECES: AtomicBool = AtomicBool::new(true);

/// Turns the tail pieces on (the default) or off (every planned block stays one task, as before them). Both give the
/// same bits. A measurement aid, as [`set_column_lanes`] is: the two are timed in the same rounds of one process.
pub fn set_tail_pieces(on: bool) {
    TAIL_PIECES.store(on, Ordering::Relaxed);
}

/// Planned blocks per thread at the end of a product that run as single 32-column panels instead.
const TAIL_BLOCKS_PER_THREAD: usize = 2;

/// The tasks of a block-planned product: `blocks` in order, with the last [`TAIL_BLOCKS_PER_THREAD`] per thread cut
/// into single column panels (`nr` columns) when they reuse each weight panel over more than `small_rows` rows and
/// there are more blocks than that tail. Why: a thread that another process deschedules while it holds a block
/// holds it until it runs again, and at the end the other threads have nothing left to take: the caller waited for
/// it at the join (2048 × 4096², beside other processes' load: 0.6-6 ms of a 250 ms call, 2026-12-02). A panel of
/// the last blocks is ~1/8 of a block (96 rows × 32 columns × 4096: ~55 µs on a Zen 4 core), so the threads
/// still on their cores take the tail's panels while the held one waits, and quiet, the threads finish within one
/// panel of each other instead of one block. Blocks of few rows (which stream each weight panel once) and short
/// plans are left whole: their blocks are a few µs to begin with.
fn tail_pieces(blocks: &[Block], threads: usize, small_rows: usize, nr: usize) -> Vec<Block> {
    let tail = TAIL_BLOCKS_PER_THREAD * threads;
    let split = threads > 1 && blocks.len() > tail;
    let cut = if split { blocks.len() - tail } else { blocks.len() };
    let mut out = blocks[..cut].to_vec();
    for &b in &blocks[cut..] {
        if b.i1 - b.i0 <= small_rows {
            out.push(b);
            continue;
        }
        out.extend((b.j0..b.j1).step_by(nr).map(|j0| Block { j0, j1: (j0 + nr).min(b.j1), ..b }));
    }
    out
}

/// Whether the planned `blocks` of an `m`-row product (row panels of `mr`, `kp` padded K, K slices of `kc`) run on
/// column lanes (see `lanes`) instead: when they are one row block of more than [`SMALL_M_PANELS`] row panels (the
/// blocks that reuse each weight panel from L2) and K is one slice. At 2 threads that is 29-192 rows at N ≥ 897 on the
/// VNNI path ([`plan`] splits rows when there are fewer than 4 column blocks of 128 or more per thread).
fn on_lanes(blocks: &[Block], m: usize, mr: usize, kp: usize, kc: usize) -> bool {
    blocks.first().is_some_and(|b| b.i1 == m) && m > SMALL_M_PANELS * mr && kp <= kc
}

/// Problems with fewer multiply-adds run on the calling thread.
const PAR_MIN_OPS: usize = 1 << 21;

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
    mc = mc.min(panels::round_up(m, mr));
    nc = nc.min(panels::round_up(n, NR));
    let want = 4 * threads;
    while count(mc, nc) < want && nc > 4 * NR {
        nc = panels::round_up(nc / 2, NR);
    }
    while count(mc, nc) < want && mc > 2 * mr {
        mc = panels::round_up(mc / 2, mr);
    }
    let mut out = Vec::new();
    for i0 in (0..m).step_by(mc) {
        for j0 in (0..n).step_by(nc) {
            out.push(Block { i0, i1: (i0 + mc).min(m), j0, j1: (j0 + nc).min(n) });
        }
    }
    out
}

/// Sets its flag when dropped: a row panel counts as packed even when its packing panicked, so that no task waits
/// for it forever (the panic is raised on the caller when the region ends).
struct SetOnDrop<'a>(&'a AtomicBool);

impl Drop for SetOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Release);
    }
}

/// Waits until every flag is set: each one is a row panel that another thread has taken and is packing (a few
/// microseconds), so it spins briefly, then yields the core (that thread may be waiting for it).
fn wait_packed(flags: &[AtomicBool]) {
    for f in flags {
        let mut spins = 0u32;
        while !f.load(Ordering::Acquire) {
            if spins < 1 << 12 {
                std::hint::spin_loop();
                spins += 1;
            } else {
                std::thread::yield_now();
            }
        }
    }
}

/// Work that [`drive`] runs in the GEMM's own parallel region besides the products: each is a fork and a join less
/// than a region of its own before or after it, and a thread that runs out of one kind of task goes on to the next.
#[derive(Clone, Copy, Default)]
pub(super) struct Hooks<'a> {
    /// `a` is not packed yet: `pack(p)` fills its row panel `p` (and whatever `finish` and `epi` read of the
    /// panel's rows). The panels are the region's first tasks, each block waiting for its own row panels (taken
    /// in order, they are all taken before the first block is, so a wait is only for a panel that another thread
    /// is packing).
    pub pack: Option<&'a (dyn Fn(usize) + Sync)>,
    /// `rows_done(i0, i1, c)` runs once per row block `[i0, i1)`, on the thread that finished its last column
    /// block (finished: `finish` or `epi` applied), while those rows are in cache: the layer's own row-wise
    /// ending (a residual LayerNorm).
    pub rows_done: Option<&'a (dyn Fn(usize, usize, *mut i32) + Sync)>,
}

/// `C[m, n] = A · B` in wrapping i32 into `c` (row stride `n`), then `finish(block, c)` on each block; or, with
/// `epi` on the VNNI path, for blocks whose tiles see all of K at once (every block when K ≤ [`KC`]), the tiles
/// apply `epi` to their registers and store f32 (the same bits as `finish` would give: see [`TileEpilogue`]) and
/// `finish` is not called for those blocks.
///
/// `hooks` (see [`Hooks`]) put more of the layer's work in the same parallel region.
pub(super) fn drive(
    path: Path,
    m: usize,
    a: &PackedA,
    b: &PackedB,
    c: &mut [i32],
    finish: &(dyn Fn(Block, *mut i32) + Sync),
    epi: Option<&TileEpilogue>,
    hooks: Hooks,
) {
    let Hooks { pack, rows_done } = hooks;
    let n = b.n();
    let kp = b.kp();
    debug_assert_eq!(c.len(), m * n);
    let mr = a.mr;
    if m == 0 || n == 0 {
        if let Some(pack) = pack {
            (0..m.div_ceil(mr)).for_each(pack);
        }
        return;
    }
    let out = OutPtr(c.as_mut_ptr());
    let serial = m * n * kp < PAR_MIN_OPS || pool::num_threads() == 1;
    let threads = if serial { 1 } else { pool::num_threads() };
    let (kc_max, mc_panels, nc) = blocking(path);
    // Up to twice the usual block height, all rows form one block: each weight panel is then read once from
    // L3/DRAM instead of once per row block (M = 128 at K = N = 4096: 15 % faster when the weights are not
    // cached), and the activation block still fits L2.
    let panels_m = m.div_ceil(mr);
    let mc_panels = if panels_m <= 2 * mc_panels { panels_m } else { mc_panels };
    let blocks = plan(m, n, mr, threads, mr * mc_panels, nc);
    // The tiles of one weight micro-panel (column panel `j0`, K slice from `k0` of `kg` groups) with every row
    // panel of the block; `next`: the micro-panel multiplied after this one and its k groups (null and 0: none),
    // prefetched as [`micro_kernel`] says; `stream` as it says.
    let epi = epi.filter(|_| path == Path::Vnni);
    let panel_tiles = |blk: Block, j0: usize, k0: usize, kg: usize, next: (*const i8, usize), stream: bool, fused: bool| {
        #[allow(clippy::redundant_locals)] // captures the Sync wrapper, not its raw pointer field
        let out = out;
        let acc = k0 > 0;
        let nr = (blk.j1 - j0).min(NR);
        let bp = b.panel_ptr(j0 / NR, k0 / 4);
        let avx2 = if a.narrow {
            Avx2Tile::Narrow
        } else if b.min_free() {
            Avx2Tile::Sign(b.colsum()[j0..].as_ptr())
        } else {
            Avx2Tile::Widen
        };
        // The next weight micro-panel's prefetch into L2: on VNNI by the first row panel's tile, all of it; on AVX2
        // shared out over the row panels, `share` k groups each (a 2-row tile alone would ask for the whole 32 KiB in
        // the time of one tile). M = 16 × 4096², reduce_range, ratio to `quantize_dynamic` in alternated processes
        // (one and two threads, three pairs each, load 0.9-2): median 1.04 against 0.95 without any; M = 128 1.22 / 1.35
        // against 1.20 / 1.31.
        let (next, next_kg) = next;
        let share = next_kg.div_ceil((blk.i1 - blk.i0).div_ceil(mr));
        for i0 in (blk.i0..blk.i1).step_by(mr) {
            let rows = (blk.i1 - i0).min(mr);
            let p = (i0 - blk.i0) / mr;
            let (next, next_groups) = if next.is_null() {
                (next, 0)
            } else if path == Path::Avx2 {
                let from = (p * share).min(next_kg);
                (next.wrapping_add(from * 128), share.min(next_kg - from))
            } else {
                (next, if p == 0 { next_kg } else { 0 })
            };
            let ap = a.panel_ptr_rows(i0 / mr, k0 / 4);
            let at = epi.filter(|_| fused).map(|e| e.at(i0, j0));
            let at = at.as_ref();
            // SAFETY: the block is inside the output; the tile holds `rows` rows of 32.
            unsafe {
                let cp = out.0.add(i0 * n + j0);
                if nr == NR {
                    micro_kernel(path, rows, kg, ap, bp, cp, n, acc, next, next_groups, stream, at, avx2);
                } else {
                    // A partial column panel: the tile writes 32 columns into this buffer (made here, not zeroed
                    // for every full panel: with the tall tile's 28 rows it is 3.5 KiB).
                    let mut tile = [0i32; MR_TALL * NR];
                    if acc {
                        for r in 0..rows {
                            std::ptr::copy_nonoverlapping(cp.add(r * n), tile.as_mut_ptr().add(r * NR), nr);
                        }
                    }
                    micro_kernel(path, rows, kg, ap, bp, tile.as_mut_ptr(), NR, acc, next, next_groups, stream, at, avx2);
                    for r in 0..rows {
                        std::ptr::copy_nonoverlapping(tile.as_ptr().add(r * NR), cp.add(r * n), nr);
                    }
                }
            }
        }
    };
    let run = |blk: Block| {
        #[allow(clippy::redundant_locals)] // captures the Sync wrapper, not its raw pointer field
        let out = out;
        let small = blk.i1 - blk.i0 <= SMALL_M_PANELS * mr;
        // The tiles finish the block themselves when each sees the whole of K.
        let fused = epi.is_some() && (small || kp <= kc_max);
        if small {
            // Few row panels: little reuse of a weight micro-panel, so no K slices: the weights stream once,
            // sequentially, panel after panel, and the output is written once. (K slices of 512-2048 that keep
            // a slice in L1 for the second row panel at M = 16 measured no better than whole panels.)
            for j0 in (blk.j0..blk.j1).step_by(NR) {
                panel_tiles(blk, j0, 0, kp / 4, (std::ptr::null(), 0), true, fused);
            }
        } else {
            for k0 in (0..kp).step_by(kc_max) {
                let kg = (kp - k0).min(kc_max) / 4;
                let k1 = k0 + kg * 4;
                for j0 in (blk.j0..blk.j1).step_by(NR) {
                    // The weight micro-panel multiplied next, prefetched into L2 (see `panel_tiles`) while this
                    // one is reused from cache: the next column panel's in this K slice, after the last column
                    // panel the block's first one in the next K slice (M = 16 × 4096², AVX2: 1.01-1.04× against
                    // none there; on VNNI, where only K beyond one slice of up to 4096 has a next slice, not
                    // measured), after the last slice none.
                    let next = if j0 + NR < blk.j1 {
                        (b.panel_ptr(j0 / NR + 1, k0 / 4), kg)
                    } else if k1 < kp {
                        (b.panel_ptr(blk.j0 / NR, k1 / 4), (kp - k1).min(kc_max) / 4)
                    } else {
                        (std::ptr::null(), 0)
                    };
                    panel_tiles(blk, j0, k0, kg, next, false, fused);
                }
            }
        }
        if !fused {
            finish(blk, out.0);
        }
    };
    let packs = if pack.is_some() { panels_m } else { 0 };
    let packed: Vec<AtomicBool> = (0..packs).map(|_| AtomicBool::new(false)).collect();
    let lanes = (LANES.load(Ordering::Relaxed) && on_lanes(&blocks, m, mr, kp, kc_max))
        .then(|| Lanes::new(n.div_ceil(NR), threads));
    let blocks = if lanes.is_none() && TAIL_PIECES.load(Ordering::Relaxed) {
        tail_pieces(&blocks, threads, SMALL_M_PANELS * mr, NR)
    } else {
        blocks
    };
    // Blocks are planned row block by row block, each row block with the same columns; the row block of each
    // task, and the units (blocks or tail pieces, or a lane's panels) per row block, counted down to the one that
    // runs `rows_done`.
    let row_block: Vec<usize> = match rows_done {
        Some(_) => blocks
            .iter()
            .scan((0, 0), |(rb, i0), b| {
                if b.i0 != *i0 {
                    (*rb, *i0) = (*rb + 1, b.i0);
                }
                Some(*rb)
            })
            .collect(),
        None => Vec::new(),
    };
    let left: Vec<AtomicUsize> = match (rows_done, &lanes) {
        (Some(_), Some(_)) => vec![AtomicUsize::new(n.div_ceil(NR))],
        (Some(_), None) => {
            let mut units = vec![0; row_block.last().map_or(0, |&rb| rb + 1)];
            row_block.iter().for_each(|&rb| units[rb] += 1);
            units.into_iter().map(AtomicUsize::new).collect()
        }
        (None, _) => Vec::new(),
    };
    let unit_done = |row_block: usize, blk: Block| {
        if let Some(rows_done) = rows_done {
            #[allow(clippy::redundant_locals)] // captures the Sync wrapper, not its raw pointer field
            let out = out;
            // AcqRel: the thread that finishes a row block last sees the other units' outputs.
            if left[row_block].fetch_sub(1, Ordering::AcqRel) == 1 {
                rows_done(blk.i0, blk.i1, out.0);
            }
        }
    };
    let task = |i: usize| match pack {
        Some(pack) if i < packs => {
            let _done = SetOnDrop(&packed[i]);
            pack(i);
        }
        _ => match &lanes {
            Some(lanes) => {
                if packs > 0 {
                    wait_packed(&packed);
                }
                #[allow(clippy::redundant_locals)] // captures the Sync wrapper, not its raw pointer field
                let out = out;
                // As `run` does for a block of one K slice, one panel at a time; the next panel of the lane is
                // prefetched while this one is multiplied.
                let fused = epi.is_some();
                lanes.run(i - packs, &mut |p, more| {
                    let j0 = p * NR;
                    let blk = Block { i0: 0, i1: m, j0, j1: (j0 + NR).min(n) };
                    let next = if more { (b.panel_ptr(p + 1, 0), kp / 4) } else { (std::ptr::null(), 0) };
                    panel_tiles(blk, j0, 0, kp / 4, next, false, fused);
                    if !fused {
                        finish(blk, out.0);
                    }
                    unit_done(0, blk);
                });
            }
            None => {
                let blk = blocks[i - packs];
                if packs > 0 {
                    wait_packed(&packed[blk.i0 / mr..blk.i1.div_ceil(mr)]);
                }
                run(blk);
                if rows_done.is_some() {
                    unit_done(row_block[i - packs], blk);
                }
            }
        },
    };
    let work = par::Work { key: class_key(path, m, n, kp, threads, hooks), units: (m * n * kp) as f64 };
    par::for_each_routed(packs + lanes.as_ref().map_or(blocks.len(), Lanes::len), threads, work, &task);
}

/// The shape class of a product for [`par::for_each_routed`]: the path, the rows rounded up to a power of two
/// (a layer called with a varying number of tokens shares its costs per multiply-add between neighbouring
/// counts), N, padded K, the threads and which hooks run in the region (FNV-1a over them).
fn class_key(path: Path, m: usize, n: usize, kp: usize, threads: usize, hooks: Hooks) -> u64 {
    let parts = [
        path as u64,
        m.next_power_of_two() as u64,
        n as u64,
        kp as u64,
        threads as u64,
        hooks.pack.is_some() as u64 | (hooks.rows_done.is_some() as u64) << 1,
    ];
    parts.iter().fold(0xcbf2_9ce4_8422_2325, |h, &v| (h ^ v).wrapping_mul(0x0000_0100_0000_01b3))
}

pub(super) fn check_out<T>(what: &str, got: &[T], want: usize) -> Result<()> {
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
    let pa = act_pack::pack_s8(path, a, m, k, b.kp());
    let colsum = b.colsum();
    let finish = |blk: Block, c: *mut i32| {
        for i in blk.i0..blk.i1 {
            // SAFETY: row `i` of the block is inside the output and owned by this task.
            let row = unsafe { std::slice::from_raw_parts_mut(c.add(i * n + blk.j0), blk.j1 - blk.j0) };
            epilogue_int(isa_of(path), row, &colsum[blk.j0..blk.j1], 128);
        }
    };
    drive(path, m, &pa, b, out, &finish, None, Hooks::default());
    act_pack::release(pa);
    Ok(())
}

/// Exact `out = a[m, k] · b[k, n]` for row-major `b` (packs `b`, then [`matmul_i8`]).
pub fn int8_matmul(path: Path, a: &[i8], m: usize, k: usize, b: &[i8], n: usize, out: &mut [i32]) -> Result<()> {
    panels::check_dims(m, k, n)?;
    check_out("a", a, m * k)?;
    #[cfg(target_arch = "x86_64")]
    if path == Path::Vnni && m <= super::unpacked::MAX_ROWS {
        path.check()?;
        check_out("b", b, k * n)?;
        check_out("out", out, m * n)?;
        // SAFETY: the CPU has AVX-512F/BW and VNNI (the path is supported); the sizes and K are checked above.
        unsafe { super::unpacked::matmul(a, m, k, b, n, out) };
        return Ok(());
    }
    // The calling thread's last packed B, whose buffer the next call of the same size packs into (see
    // `PackedB::from_kn_reusing`); kept only up to `KEEP_PACKED_B` bytes, so a one-off huge product leaves nothing.
    thread_local! {
        static LAST_B: std::cell::RefCell<Option<PackedB>> = const { std::cell::RefCell::new(None) };
    }
    const KEEP_PACKED_B: usize = 64 << 20;
    let last = LAST_B.with(|c| c.borrow_mut().take());
    let pb = match last {
        Some(old) => PackedB::from_kn_reusing(old, b, k, n)?,
        None => PackedB::from_kn(b, k, n)?,
    };
    let done = matmul_i8(path, a, m, &pb, out);
    if pb.nbytes() <= KEEP_PACKED_B {
        LAST_B.with(|c| *c.borrow_mut() = Some(pb));
    }
    done
}

#[cfg(test)]
mod tests {
    use super::*;

    /// M = 128 at 4096 outputs runs on lanes at 1-3 threads; not with few columns (the plan splits the rows), two row
    /// panels or fewer (streamed blocks), more rows than a block, or K beyond one slice.
    #[test]
    fn lanes_take_one_row_block_of_reused_panels_within_one_k_slice() {
        let lanes = |m: usize, n: usize, threads: usize, kp: usize| {
            // As `drive` plans: all rows in one block up to twice the usual height.
            let panels_m = m.div_ceil(MR_VNNI);
            let mc = MR_VNNI * if panels_m <= 2 * MC_PANELS { panels_m } else { MC_PANELS };
            on_lanes(&plan(m, n, MR_VNNI, threads, mc, NC), m, MR_VNNI, kp, KC)
        };
        for threads in 1..=3 {
            assert!(lanes(128, 4096, threads, 4096));
            assert!(!lanes(128, 4096, threads, 4100));
            assert!(!lanes(24, 4096, threads, 4096));
        }
        assert!(lanes(29, 1000, 2, 64) && lanes(192, 897, 2, 64));
        assert!(!lanes(128, 896, 2, 64) && !lanes(128, 200, 1, 64));
        assert!(!lanes(200, 4096, 2, 64));
    }

    /// The tail pieces: the last two planned blocks per thread become single 32-column panels that cover them
    /// exactly, in order, and everything before them stays; blocks of few rows, one thread and plans no longer than
    /// the tail stay whole.
    #[test]
    fn the_last_blocks_per_thread_run_as_single_panels_covering_them_exactly() {
        let cells = |bs: &[Block]| -> Vec<(usize, usize)> {
            let mut c: Vec<(usize, usize)> =
                bs.iter().flat_map(|b| (b.i0..b.i1).flat_map(move |i| (b.j0..b.j1).map(move |j| (i, j)))).collect();
            c.sort_unstable();
            c
        };
        let small = SMALL_M_PANELS * MR_VNNI;
        for (m, n, threads) in [(2048, 4096, 2), (1024, 768, 2), (1000, 1000, 3), (300, 70, 2), (2048, 4096, 4)] {
            let blocks = plan(m, n, MR_VNNI, threads, MR_VNNI * MC_PANELS, NC);
            let tasks = tail_pieces(&blocks, threads, small, NR);
            let cut = blocks.len() - 2 * threads;
            assert_eq!(cells(&tasks), cells(&blocks), "{m}x{n}: the pieces cover the blocks once");
            let corners = |b: &Block| (b.i0, b.i1, b.j0, b.j1);
            assert!(tasks[..cut].iter().zip(&blocks[..cut]).all(|(t, b)| corners(t) == corners(b)));
            let tail = &tasks[cut..];
            let pieces = |b: &Block| if b.i1 - b.i0 > small { b.j1.div_ceil(NR) - b.j0 / NR } else { 1 };
            let split = blocks[cut..].iter().map(pieces);
            assert_eq!(tail.len(), split.sum::<usize>(), "{m}x{n}");
            assert!(tail.iter().all(|t| t.j1 - t.j0 <= NR || t.i1 - t.i0 <= small));
            assert!(tail.windows(2).all(|w| (w[0].i0, w[0].j0) < (w[1].i0, w[1].j0)), "in order");
        }
        // 2048 x 4096 at 2 threads: 352 blocks, the last 4 (96 or 32 rows x 256 columns) in 8 panels each
        let blocks = plan(2048, 4096, MR_VNNI, 2, MR_VNNI * MC_PANELS, NC);
        assert_eq!((blocks.len(), tail_pieces(&blocks, 2, small, NR).len()), (352, 348 + 32));
        // whole: one thread, a plan no longer than the tail, blocks of two row panels or fewer
        let few: Vec<Block> = (0..5).map(|r| Block { i0: 96 * r, i1: 96 * (r + 1), j0: 0, j1: 256 }).collect();
        assert_eq!(tail_pieces(&few[..4], 2, small, NR).len(), 4);
        assert_eq!(tail_pieces(&few, 2, small, NR).len(), 1 + 4 * 8);
        assert_eq!(tail_pieces(&blocks, 1, small, NR).len(), blocks.len());
        let thin = plan(24, 4096, MR_VNNI, 2, MR_VNNI * MC_PANELS, NC);
        assert_eq!(tail_pieces(&thin, 2, small, NR).len(), thin.len());
    }

    /// The K slice follows the L2: 2 MiB (Intel) and 1 MiB (Zen 4) keep `KC`, 512 KiB gets 3072, an unknown L2
    /// falls back to `KC`, and a tiny one is bounded below.
    #[test]
    fn the_k_slice_shrinks_with_the_l2_from_kc_to_a_floor() {
        assert_eq!(kc_for_l2(2 << 20, MR_VNNI), KC);
        assert_eq!(kc_for_l2(1 << 20, MR_VNNI), KC);
        assert_eq!(kc_for_l2(512 << 10, MR_VNNI), 3072);
        assert_eq!(kc_for_l2(256 << 10, MR_VNNI), 1536);
        assert_eq!(kc_for_l2(0, MR_VNNI), KC);
        assert_eq!(kc_for_l2(64 << 10, MR_VNNI), 512);
        let kc = kc_for_l2(crate::cache::sizes().l2, MR_VNNI);
        assert!(kc % 256 == 0 && (512..=KC).contains(&kc));
    }
}
