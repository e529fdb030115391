//! The linear layers' product, `x W^T + b`, on weights packed once when an inference model is
//! prepared ([`PackedWeight`]), with AVX-512 and AVX2 register kernels picked at run time.
//!
//! Why hand-written: the `gemm` crate packs the weight operand again on every call (1-3% of a
//! forward at large shapes, and most of the time at short inputs, where the product is bound by
//! reading the weights), and on stable Rust it has no AVX-512 kernel, while ONNX Runtime's MLAS
//! packs weights once and has one. `cargo run --release --example kernels` times this product
//! against the `gemm` crate's on the machine at hand (the numbers: docs/performance.md,
//! "The fast CPU kernels").
//!
//! Layout: the `n x k` weight is cut into panels of [`PANEL`] output columns; a panel holds its
//! `k x 16` block row by row (64-byte aligned), so the kernel reads 16 consecutive outputs'
//! weights for one input with one load, and streams every weight exactly once per block of
//! rows, in order. The activations are read in place (packing them cost 11% of a BERT-base
//! forward at 8x128 and bought nothing measurable). Blocking: `mc` rows at a time (their
//! activations stay in L2 while every panel of the thread's columns passes over them), `kc`
//! inputs at a time, both sized from the machine's L2 cache ([`Blocking`]); the output
//! columns are split over the compute threads.

use rayon::prelude::*;

use super::cache::CacheSizes;
use super::isa::Isa;
use super::overrides::EnvOverride;
use super::view::{MatMut, MatRef, SendPtr};

/// Output columns per weight panel: one AVX-512 vector, two AVX2 vectors.
pub const PANEL: usize = 16;
/// Rows and inputs per block of a product (see [`Blocking::rule`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Blocking {
    /// Activation rows per block, a multiple of the kernel's tile height.
    pub mc: usize,
    /// Inputs per block.
    pub kc: usize,
}

/// The variable that fixes the blocking for tuning runs: `MC,KC` (both at least 1).
pub const BLOCKING_ENV: &str = "BERTBENCH_BLOCKING";

static FORCED_BLOCKING: EnvOverride<Blocking> = EnvOverride::new(BLOCKING_ENV, Blocking::parse);

impl Blocking {
    /// The blocking a product with `k` inputs uses on this machine with `isa`: `BERTBENCH_BLOCKING`
    /// when set (read once; for tuning runs), else [`Blocking::rule`] on the detected caches.
    /// Under Miri, which interprets every step, blocks of a few rows and inputs let small tests
    /// cross every block edge.
    ///
    /// A malformed variable is not used here (a product cannot fail); commands refuse it
    /// before they compute ([`Blocking::forced`], checked by `compute::isa::use_isa`).
    pub fn for_product(k: usize, isa: Isa) -> Self {
        if cfg!(miri) {
            return Self { mc: 12, kc: 16 };
        }
        match Self::forced() {
            Ok(Some(forced)) => *forced,
            _ => Self::rule(k, &CacheSizes::detect(), isa, rayon::current_num_threads()),
        }
    }

    /// The blocking `BERTBENCH_BLOCKING` fixes for every product of this process (read once):
    /// `None` when it is unset, an error naming the variable and what it holds when it is not
    /// `MC,KC` with both at least 1.
    /// Borrowed, not copied: every product asks.
    pub fn forced() -> &'static Result<Option<Self>, String> {
        FORCED_BLOCKING.get()
    }

    /// `MC,KC` (spaces allowed around each), both at least 1.
    fn parse(text: &str) -> Result<Self, String> {
        text.split_once(',')
            .and_then(|(mc, kc)| {
                let (mc, kc) = (mc.trim().parse().ok()?, kc.trim().parse().ok()?);
                (mc >= 1 && kc >= 1).then_some(Blocking { mc, kc })
            })
            .ok_or_else(|| {
                "MC,KC (activation rows and inputs per block of a product, both at least 1, \
                 e.g. 84,768); unset it to size the blocks from the caches"
                    .to_string()
            })
    }

    /// The rule: the block of activations a thread re-reads for every weight panel of its
    /// columns (`mc` rows of `kc` inputs) fills at most half of the L2 cache the thread has
    /// (all of it, or its share where `threads` compute threads may share one: SMT siblings,
    /// see [`CacheSizes::l2_per_thread`]), leaving the other half to the panels streaming past
    /// it and the outputs. The inputs are split into as few
    /// equal blocks as keep room for at least 48 rows (four AVX-512 tiles; each extra block
    /// re-reads and re-writes the outputs once), and `mc` is then as many whole tiles as fit.
    ///
    /// With a 1 MiB L2 this gives one block of inputs for every BERT-family product up to
    /// 2,730 inputs, and 168 rows at 768 inputs; with 512 KiB, 84 rows at 768 inputs, and the
    /// 3,072-input product in three blocks of 1,024 by 60 rows (tested below; what the blocks
    /// measured: docs/performance.md). Two threads sharing a 1.25 MiB L2 (an SMT core) get
    /// the blocks of a 640 KiB one each.
    pub fn rule(k: usize, caches: &CacheSizes, isa: Isa, threads: usize) -> Self {
        let mr = isa.tile_rows();
        let budget = caches.l2_per_thread(threads) / 2 / std::mem::size_of::<f32>();
        let kc_max = (budget / 48).max(PANEL);
        let blocks = k.max(1).div_ceil(kc_max);
        let kc = k.max(1).div_ceil(blocks);
        let mc = (budget / kc / mr * mr).max(mr);
        Self { mc, kc }
    }
}

/// The row stride to give a buffer of activations with `cols` columns that a product will read:
/// `cols`, plus one cache line where `cols` is a multiple of 512 floats (2 KiB). At such a
/// stride the rows a register tile reads together (12) fall into one or two of the L1 cache's
/// 64 sets and evict each other; one line more spreads them over 12 sets (what it bought, timed
/// with `examples/kernels`: docs/performance.md, "Measurements behind the code").
pub fn activation_stride(cols: usize) -> usize {
    if cols > 0 && cols.is_multiple_of(512) {
        cols + PANEL
    } else {
        cols
    }
}

/// Rows of the portable kernel's tile (as many as the AVX-512 kernel's).
const MR_MAX: usize = 12;

/// One 64-byte row of a panel: the weights of 16 outputs for one input.
#[repr(C, align(64))]
#[derive(Clone, Copy, Debug, Default)]
struct PanelRow([f32; PANEL]);

/// A weight packed for [`packed_linear`]: `groups` independent `n x k` blocks (a grouped 1x1
/// convolution; 1 for a linear layer), each in panels of [`PANEL`] output columns, the last
/// panel zero-padded.
#[derive(Clone, Debug)]
pub struct PackedWeight {
    rows: Vec<PanelRow>,
    n: usize,
    k: usize,
    groups: usize,
}

impl PackedWeight {
    /// Packs `w`, `groups * n` rows of `k` (the Hub's `[out, in]` layout, groups one after
    /// another as a grouped convolution stores them).
    pub fn pack(w: &[f32], groups: usize, n: usize, k: usize) -> Self {
        assert_eq!(w.len(), groups * n * k, "weight of {groups} x {n} x {k}");
        let mut packed = Self::empty();
        packed.resize(groups, n, k);
        for g in 0..groups {
            packed.fill(g, MatRef::new(&w[g * n * k..(g + 1) * n * k], n, k, k));
        }
        packed
    }

    /// Nothing packed yet (a buffer for [`Self::repack`]).
    pub fn empty() -> Self {
        Self {
            rows: Vec::new(),
            n: 0,
            k: 0,
            groups: 1,
        }
    }

    /// Packs the view `w` (`n` output rows of `k` inputs, any strides: a transposed view
    /// packs the transpose) as one group, reusing this buffer's memory: the attention packs
    /// each head's keys and values this way.
    pub fn repack(&mut self, w: MatRef) {
        self.resize(1, w.rows(), w.cols());
        self.fill(0, w);
    }

    /// Sizes the buffer for `groups` blocks of `n x k`; the contents are left for
    /// [`Self::fill`], which writes every value (padding included), so a repack per attention
    /// head clears nothing.
    fn resize(&mut self, groups: usize, n: usize, k: usize) {
        (self.groups, self.n, self.k) = (groups, n, k);
        self.rows
            .resize(groups * n.div_ceil(PANEL) * k, PanelRow::default());
    }

    /// Packs `w` (`n x k`) as group `g`, the last panel's missing columns as zeros.
    fn fill(&mut self, g: usize, w: MatRef) {
        let (n, k, panels) = (self.n, self.k, self.panels());
        for p in 0..panels {
            let dst = &mut self.rows[(g * panels + p) * k..][..k];
            let cols = PANEL.min(n - p * PANEL);
            if w.stride() == 1 && k > 0 {
                // The panel's outputs are adjacent: each panel row is one contiguous run (a
                // transposed row-major view: the attention's values).
                let src = &w.data()[p * PANEL..];
                for (i, row) in dst.iter_mut().enumerate() {
                    let run = &src[i * w.col_stride()..];
                    if cols == PANEL {
                        // A fixed-size copy: one vector move, not a call to memmove.
                        row.0.copy_from_slice(&run[..PANEL]);
                    } else {
                        row.0[..cols].copy_from_slice(&run[..cols]);
                        row.0[cols..].fill(0.0);
                    }
                }
            } else {
                // Full panels of a row-major view (weights as loaded, the attention's keys):
                // 16x16 blocks transposed in registers, the inputs past the last whole block
                // by the loop below.
                #[cfg(target_arch = "x86_64")]
                let from = if cols == PANEL && w.col_stride() == 1 && Isa::current() == Isa::Avx512
                {
                    let src = &w.data()[p * PANEL * w.stride()..];
                    // SAFETY: AVX-512 is available; the view was bounds-checked for its
                    // 16 rows from here, `w.stride` apart, of `k` values each.
                    unsafe { avx512::transpose_panel(dst, src, w.stride()) };
                    k / PANEL * PANEL
                } else {
                    0
                };
                #[cfg(not(target_arch = "x86_64"))]
                let from = 0;
                // A transpose, one output's inputs at a time (contiguous for a row-major
                // view).
                for c in 0..cols {
                    let src = &w.data()[(p * PANEL + c) * w.stride() + from * w.col_stride()..];
                    let inputs = src.iter().step_by(w.col_stride().max(1));
                    for (row, v) in dst[from..].iter_mut().zip(inputs) {
                        row.0[c] = *v;
                    }
                }
                for row in dst.iter_mut() {
                    row.0[cols..].fill(0.0);
                }
            }
        }
    }

    /// The weight in the Hub's layout again: `groups * n` rows of `k`.
    pub fn unpack(&self) -> Vec<f32> {
        let (n, k) = (self.n, self.k);
        let mut w = vec![0f32; self.groups * n * k];
        for g in 0..self.groups {
            for o in 0..n {
                let (p, c) = (o / PANEL, o % PANEL);
                let panel = self.panel(g, p);
                for (i, v) in w[(g * n + o) * k..][..k].iter_mut().enumerate() {
                    *v = panel[i].0[c];
                }
            }
        }
        w
    }

    /// Output columns per group.
    pub fn n(&self) -> usize {
        self.n
    }

    /// Inputs per group.
    pub fn k(&self) -> usize {
        self.k
    }

    pub fn groups(&self) -> usize {
        self.groups
    }

    fn panels(&self) -> usize {
        self.n.div_ceil(PANEL)
    }

    fn panel(&self, g: usize, p: usize) -> &[PanelRow] {
        &self.panels_from(g, p)[..self.k]
    }

    /// Panel `p` of group `g` and every one after it: the slice a tile reading several
    /// panels takes its pointer from (one taken from a single panel's slice may not reach
    /// the next).
    fn panels_from(&self, g: usize, p: usize) -> &[PanelRow] {
        &self.rows[(g * self.panels() + p) * self.k..]
    }
}

/// An element-wise function applied to finished outputs (an activation), fused into the
/// product: each block of rows is passed while it is still in L2.
pub type Epilogue = fn(&mut [f32]);

/// `out = act(x W^T + bias)` for every group `g`: columns `g*k..` of `x` times group `g` of `w`
/// into columns `g*n..` of `out`, split over `threads` (1: on the calling thread).
pub fn packed_linear(
    x: MatRef,
    w: &PackedWeight,
    bias: Option<&[f32]>,
    act: Option<Epilogue>,
    out: MatMut,
    threads: usize,
) {
    packed_linear_with(Isa::current(), x, w, bias, act, out, threads)
}

/// [`packed_linear`] with a chosen kernel (which must be one of [`Isa::available`]).
pub fn packed_linear_with(
    isa: Isa,
    x: MatRef,
    w: &PackedWeight,
    bias: Option<&[f32]>,
    act: Option<Epilogue>,
    mut out: MatMut,
    threads: usize,
) {
    assert!(
        Isa::available().contains(&isa),
        "{isa:?} kernel on this CPU"
    );
    let (m, n, k, groups) = (x.rows(), w.n, w.k, w.groups);
    assert_eq!(
        x.cols(),
        groups * k,
        "activations have {} columns",
        x.cols()
    );
    assert!(x.is_row_major(), "row-major activations");
    assert_eq!((out.rows(), out.cols()), (m, groups * n), "output shape");
    if let Some(b) = bias {
        assert_eq!(b.len(), groups * n, "bias length");
    }
    if m == 0 || n == 0 {
        return;
    }
    // Work items: (group, run of panels) per thread; every item writes its own columns.
    let np = isa.np();
    let tiles = w.panels().div_ceil(np);
    let flops = m * n * k * groups;
    let threads = if flops < 1 << 17 { 1 } else { threads.max(1) };
    let per_group = threads.div_ceil(groups).min(tiles).max(1);
    let out_ptr = SendPtr(out.as_mut_ptr());
    let out_stride = out.stride();
    let run = |item: usize| {
        let (g, part) = (item / per_group, item % per_group);
        let chunk = tiles.div_ceil(per_group);
        let (t0, t1) = (part * chunk, ((part + 1) * chunk).min(tiles));
        if t0 >= t1 {
            return;
        }
        let p0 = t0 * np;
        let p1 = (t1 * np).min(w.panels());
        let job = Job {
            isa,
            x: x.columns(g * k, k),
            w,
            g,
            bias: bias.map(|b| &b[g * n..(g + 1) * n]),
            act,
            // `m > 0` and `n > 0` here, so column g*n of row 0 is inside the output, which
            // was checked as m x (groups*n) at `out_stride`.
            out: out_ptr.get().wrapping_add(g * n),
            out_stride,
        };
        // SAFETY: `out` (checked above, exclusively borrowed) holds m rows of this group's
        // n columns from `job.out` at `out_stride`, and this item alone writes the columns of
        // panels p0..p1 (items split the panels of a group without overlap).
        unsafe { job.run(p0, p1) };
    };
    let items = groups * per_group;
    if threads == 1 {
        (0..items).for_each(run);
    } else {
        (0..items).into_par_iter().for_each(run);
    }
}

/// `out = x W^T` on the calling thread into `out` (row stride `out_stride`), with the best
/// kernel: for tasks that are already one of many in parallel (attention heads), which write
/// disjoint blocks of one buffer.
///
/// # Safety
/// `out` must be valid for writes of `x.rows()` rows of `w.n()` values at `out_stride`, and no
/// one else may access them meanwhile.
pub unsafe fn packed_linear_serial_raw(
    x: MatRef,
    w: &PackedWeight,
    out: *mut f32,
    out_stride: usize,
) {
    let isa = Isa::current();
    assert!(
        w.groups == 1 && x.cols() == w.k && x.is_row_major(),
        "operands"
    );
    assert!(x.rows() <= 1 || w.n <= out_stride, "output rows overlap");
    if x.rows() == 0 || w.n == 0 {
        return;
    }
    let job = Job {
        isa,
        x,
        w,
        g: 0,
        bias: None,
        act: None,
        out,
        out_stride,
    };
    // SAFETY: the caller guarantees the x.rows() x n output at `out`, exclusively.
    unsafe { job.run(0, w.panels()) };
}

/// One thread's share of a product: panels `p0..p1` of group `g`.
struct Job<'a> {
    isa: Isa,
    /// Row-major, `w.k` columns.
    x: MatRef<'a>,
    w: &'a PackedWeight,
    g: usize,
    /// The group's `w.n` biases.
    bias: Option<&'a [f32]>,
    act: Option<Epilogue>,
    /// Element (0, 0) of the group's output columns.
    out: *mut f32,
    out_stride: usize,
}

impl Job<'_> {
    /// Computes the output columns of panels `p0..p1` for every row.
    ///
    /// # Safety
    /// `isa` must be available; `x` row-major with `w.k` columns and at least one row;
    /// `p0 < p1 <= w.panels()`; `out` must be valid for writes of `x.rows()` rows of the
    /// columns `p0 * PANEL .. min(p1 * PANEL, w.n)` at `out_stride`, which no one else
    /// accesses meanwhile.
    unsafe fn run(&self, p0: usize, p1: usize) {
        let (m, k, n) = (self.x.rows(), self.w.k, self.w.n);
        let np = self.isa.np();
        let Blocking {
            mc: mc_max,
            kc: kc_max,
        } = Blocking::for_product(k, self.isa);
        let mut pc = 0;
        while pc < k {
            let kc = kc_max.min(k - pc);
            let accumulate = pc > 0;
            let act = if pc + kc == k { self.act } else { None };
            let mut ic = 0;
            while ic < m {
                let mc = mc_max.min(m - ic);
                let rows = self.x.rows_range(ic, mc).columns(pc, kc);
                let mut p = p0;
                while p < p1 {
                    let nps = np.min(p1 - p);
                    let col0 = p * PANEL;
                    let cols = (nps * PANEL).min(n - col0);
                    let bias = if accumulate {
                        None
                    } else {
                        self.bias.map(|b| &b[col0..col0 + cols])
                    };
                    let block = Tile {
                        a: rows.data().as_ptr(),
                        lda: self.x.stride(),
                        // The first of `nps` panels, from input `pc`.
                        b: self.w.panels_from(self.g, p)[pc..].as_ptr().cast::<f32>(),
                        b_panel_stride: self.w.k * PANEL,
                        kc,
                        // SAFETY: row ic, column col0 is inside the output the caller
                        // guarantees (ic < m, col0 < n).
                        c: unsafe { self.out.add(ic * self.out_stride + col0) },
                        ldc: self.out_stride,
                        rows: mc,
                        cols,
                        accumulate,
                        bias,
                    };
                    // The tile's invariant: `a` starts a checked view of mc rows of kc values
                    // at `lda`; the group holds panels p..p+nps (nps <= p1 - p) of `k` rows,
                    // `b_panel_stride` apart, so `kc` rows from `pc` exist in each; `c` covers
                    // mc x cols at `ldc` (caller); the bias has `cols` values.
                    // SAFETY: the invariant above holds and `isa` is available (caller).
                    unsafe { block.run(self.isa, nps) };
                    p += nps;
                }
                // The activation on this block's finished rows of the job's columns, while
                // they are in L2 (per tile, the calls cost more than the work).
                if let Some(act) = act {
                    let (c0, c1) = (p0 * PANEL, (p1 * PANEL).min(n));
                    for r in ic..ic + mc {
                        // SAFETY: row r, columns c0..c1 are this job's own outputs (caller's
                        // guarantee), written above and not aliased meanwhile.
                        act(unsafe {
                            std::slice::from_raw_parts_mut(
                                self.out.add(r * self.out_stride + c0),
                                c1 - c0,
                            )
                        });
                    }
                }
                ic += mc;
            }
            pc += kc;
        }
    }
}

/// One register tile: `rows x cols` outputs at `c` (row stride `ldc`) from `rows` activation
/// rows at `a` (row stride `lda`, `kc` values each, read in place: each value is broadcast
/// once per tile, so packing them would cost more than it saves) and `np` weight panels from
/// `b` (`kc` rows of 16 each, panels `b_panel_stride` apart). Adds to the output
/// (`accumulate`: a later block of inputs), or starts from the bias or zero.
///
/// The tile's invariant, which every `unsafe fn` taking one relies on: `a` is readable for
/// `rows` rows of `kc` values at `lda`; `b` is readable and 64-byte aligned for `kc` rows of
/// [`PANEL`] values in each of the panels the kernel reads; `c` is writable (and readable
/// when `accumulate`) for `rows` rows of `cols` values at `ldc`, accessed by no one else;
/// `bias`, when given, holds `cols` values; `1 <= cols <= np * PANEL`.
#[derive(Clone, Copy)]
struct Tile<'a> {
    a: *const f32,
    lda: usize,
    b: *const f32,
    b_panel_stride: usize,
    kc: usize,
    c: *mut f32,
    ldc: usize,
    rows: usize,
    cols: usize,
    accumulate: bool,
    bias: Option<&'a [f32]>,
}

impl Tile<'_> {
    /// Runs a block of any number of rows as register tiles of the kernel's `MR` rows and
    /// one of the rest; the row loop is inside each kernel's own function (a loop over calls
    /// from here measured 5% of a SqueezeBERT forward in this loop's overhead).
    ///
    /// # Safety
    /// The tile's invariant (see [`Tile`]) with `np` panels; `isa` must be available on this
    /// CPU.
    unsafe fn run(&self, isa: Isa, np: usize) {
        match isa {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: AVX-512 is available (caller); the tile's invariant holds for `np`.
            Isa::Avx512 => unsafe {
                if np == 2 {
                    avx512::rows::<2>(self)
                } else {
                    avx512::rows::<1>(self)
                }
            },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: AVX2 and FMA are available (caller); one panel per tile.
            Isa::Avx2 => unsafe { avx2::rows(self) },
            _ => {
                // One panel at a time: the tier's own `np` is 1, but any count the invariant
                // allows is computed in full.
                for j in 0..np.min(self.cols.div_ceil(PANEL)) {
                    // SAFETY: panel j < np is readable `b_panel_stride` floats on, and its
                    // outputs (and bias values) start j * PANEL < cols columns in.
                    let panel = unsafe { self.panel(j) };
                    for r0 in (0..self.rows).step_by(MR_MAX) {
                        // SAFETY: r0 + rows <= self.rows, so the sub-tile keeps the
                        // invariant; it has at most MR_MAX rows, as `portable` needs.
                        unsafe { panel.sub(r0, MR_MAX.min(self.rows - r0)).portable() };
                    }
                }
            }
        }
    }

    /// Rows `r0..r0 + rows` of this block.
    ///
    /// # Safety
    /// `r0 + rows` must not exceed `self.rows` (and `r0 < self.rows`, unless `rows` is 0 and
    /// `r0 == self.rows`).
    #[inline(always)]
    unsafe fn sub(&self, r0: usize, rows: usize) -> Self {
        Tile {
            // SAFETY: row r0 is inside the tile (or one past its last row, for an empty
            // sub-tile, whose pointers are never read).
            a: unsafe { self.a.add(r0 * self.lda) },
            // SAFETY: as for `a`.
            c: unsafe { self.c.add(r0 * self.ldc) },
            rows,
            ..*self
        }
    }

    /// Panel `j`'s columns of this tile, as a one-panel tile.
    ///
    /// # Safety
    /// The tile's invariant with more than `j` panels, and `j * PANEL < cols`.
    #[inline(always)]
    unsafe fn panel(&self, j: usize) -> Self {
        Tile {
            // SAFETY: panel j is one of the tile's panels.
            b: unsafe { self.b.add(j * self.b_panel_stride) },
            // SAFETY: column j * PANEL < cols is an output of every row.
            c: unsafe { self.c.add(j * PANEL) },
            cols: PANEL.min(self.cols - j * PANEL),
            bias: self.bias.map(|b| &b[j * PANEL..]),
            ..*self
        }
    }

    /// The same tile in plain Rust (any CPU; the tests compare the kernels against it).
    ///
    /// # Safety
    /// The tile's invariant with one panel, and at most [`MR_MAX`] rows.
    #[inline(never)]
    unsafe fn portable(&self) {
        let mut acc = [[0f32; PANEL]; MR_MAX];
        for (r, row) in acc.iter_mut().enumerate().take(self.rows) {
            for (c, v) in row.iter_mut().enumerate().take(self.cols) {
                // SAFETY: r < rows, c < cols.
                *v = unsafe { self.start(r, c) };
            }
        }
        for p in 0..self.kc {
            // SAFETY: the panel holds `kc` rows of PANEL values from `b`.
            let b = unsafe { std::slice::from_raw_parts(self.b.add(p * PANEL), PANEL) };
            for (r, row) in acc.iter_mut().enumerate().take(self.rows) {
                // SAFETY: row r < rows of `a` holds kc values.
                let a = unsafe { *self.a.add(r * self.lda + p) };
                for (v, w) in row.iter_mut().zip(b) {
                    *v += a * w;
                }
            }
        }
        for (r, row) in acc.iter().enumerate().take(self.rows) {
            for (c, v) in row.iter().enumerate().take(self.cols) {
                // SAFETY: r < rows, c < cols: an output of this tile.
                unsafe { *self.c.add(r * self.ldc + c) = *v };
            }
        }
    }

    /// The starting value of output `(r, c)`.
    ///
    /// # Safety
    /// The tile's invariant; `r < rows`, `c < cols`.
    #[inline(always)]
    unsafe fn start(&self, r: usize, c: usize) -> f32 {
        if self.accumulate {
            // SAFETY: (r, c) is an output of this tile, readable when accumulating.
            unsafe { *self.c.add(r * self.ldc + c) }
        } else {
            self.bias.map_or(0.0, |b| b[c])
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{PanelRow, Tile, PANEL};
    use std::arch::x86_64::*;

    /// Packs the whole 16x16 blocks of a full panel from 16 rows `stride` apart: each block
    /// transposed in registers (two rounds of unpacks, two of 128-bit lane shuffles), about
    /// three times faster than element by element. Inputs past `dst.len() / 16 * 16` are left
    /// to the caller. Panics unless `src` holds 16 rows of `dst.len()` values, `stride` apart.
    ///
    /// # Safety
    /// The CPU must have AVX-512F.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn transpose_panel(dst: &mut [PanelRow], src: &[f32], stride: usize) {
        let k = dst.len();
        assert!(
            k == 0
                || (PANEL - 1)
                    .checked_mul(stride)
                    .and_then(|r| r.checked_add(k))
                    .is_some_and(|need| src.len() >= need)
        );
        for j0 in (0..k / PANEL * PANEL).step_by(PANEL) {
            let r: [__m512; PANEL] = std::array::from_fn(|i| {
                // SAFETY: row i < 16 holds k >= j0 + 16 values from i * stride (checked).
                unsafe { _mm512_loadu_ps(src.as_ptr().add(i * stride + j0)) }
            });
            // Pairs of rows interleaved by element, then by pairs of elements: u[4g + q] holds
            // inputs q, q+4, q+8, q+12 (one per 128-bit lane) of rows 4g..4g+4.
            let t: [__m512; PANEL] = std::array::from_fn(|i| {
                let (a, b) = (r[i / 2 * 2], r[i / 2 * 2 + 1]);
                if i % 2 == 0 {
                    _mm512_unpacklo_ps(a, b)
                } else {
                    _mm512_unpackhi_ps(a, b)
                }
            });
            let u: [__m512; PANEL] = std::array::from_fn(|i| {
                let (g, q) = (i / 4, i % 4);
                let (a, b) = (
                    _mm512_castps_pd(t[4 * g + q / 2]),
                    _mm512_castps_pd(t[4 * g + 2 + q / 2]),
                );
                _mm512_castpd_ps(if q % 2 == 0 {
                    _mm512_unpacklo_pd(a, b)
                } else {
                    _mm512_unpackhi_pd(a, b)
                })
            });
            for q in 0..4 {
                // Lanes of rows 0-3 and 4-7, and of rows 8-11 and 12-15, for inputs q, q+8
                // (even lanes) and q+4, q+12 (odd lanes); then the four row groups together.
                let v0 = _mm512_shuffle_f32x4::<0x88>(u[q], u[4 + q]);
                let v1 = _mm512_shuffle_f32x4::<0xdd>(u[q], u[4 + q]);
                let v2 = _mm512_shuffle_f32x4::<0x88>(u[8 + q], u[12 + q]);
                let v3 = _mm512_shuffle_f32x4::<0xdd>(u[8 + q], u[12 + q]);
                for (i, v) in [
                    (q, _mm512_shuffle_f32x4::<0x88>(v0, v2)),
                    (q + 8, _mm512_shuffle_f32x4::<0xdd>(v0, v2)),
                    (q + 4, _mm512_shuffle_f32x4::<0x88>(v1, v3)),
                    (q + 12, _mm512_shuffle_f32x4::<0xdd>(v1, v3)),
                ] {
                    // SAFETY: j0 + i < k: a 64-byte aligned row of `dst`.
                    unsafe { _mm512_store_ps(dst[j0 + i].0.as_mut_ptr(), v) };
                }
            }
        }
    }

    /// A block of rows: tiles of 12, then one of the rest.
    ///
    /// # Safety
    /// AVX-512F available; the tile's invariant with `NP` panels (`cols > (NP - 1) * 16`).
    #[target_feature(enable = "avx512f")]
    pub unsafe fn rows<const NP: usize>(t: &Tile) {
        let mut r0 = 0;
        while t.rows - r0 >= 12 {
            // SAFETY: r0 + 12 <= rows; the sub-tile keeps the invariant.
            unsafe { tile::<12, NP>(&t.sub(r0, 12)) };
            r0 += 12;
        }
        // SAFETY: r0 <= rows.
        let rest = unsafe { t.sub(r0, t.rows - r0) };
        // SAFETY: `rest` keeps the invariant and has `rest.rows` rows.
        unsafe {
            match rest.rows {
                0 => {}
                1 => tile::<1, NP>(&rest),
                2 => tile::<2, NP>(&rest),
                3 => tile::<3, NP>(&rest),
                4 => tile::<4, NP>(&rest),
                5 => tile::<5, NP>(&rest),
                6 => tile::<6, NP>(&rest),
                7 => tile::<7, NP>(&rest),
                8 => tile::<8, NP>(&rest),
                9 => tile::<9, NP>(&rest),
                10 => tile::<10, NP>(&rest),
                _ => tile::<11, NP>(&rest),
            }
        }
    }

    /// `R` rows x `NP` panels: `R * NP` accumulators of 16 lanes (at most 24 of the 32
    /// registers), two weight loads and `R` broadcasts per input.
    ///
    /// # Safety
    /// AVX-512F available; the tile's invariant with exactly `R` rows and `NP` panels
    /// (`cols > (NP - 1) * 16`, so every panel has at least one column).
    #[target_feature(enable = "avx512f")]
    pub unsafe fn tile<const R: usize, const NP: usize>(t: &Tile) {
        debug_assert!(t.rows == R && t.cols > (NP - 1) * PANEL && t.cols <= NP * PANEL);
        let masks: [__mmask16; NP] = std::array::from_fn(|j| {
            let cols = t.cols.saturating_sub(j * PANEL).min(PANEL);
            ((1u32 << cols) - 1) as __mmask16
        });
        let mut acc = [[_mm512_setzero_ps(); NP]; R];
        if let (false, Some(bias)) = (t.accumulate, t.bias) {
            for j in 0..NP {
                // SAFETY: the bias has `cols` values; the mask enables panel j's among them.
                let b = unsafe { _mm512_maskz_loadu_ps(masks[j], bias.as_ptr().add(j * PANEL)) };
                for row in acc.iter_mut() {
                    row[j] = b;
                }
            }
        }
        // The output lines are read (when accumulating) and written once, at the end: fetch
        // them for writing now, so the final loads and stores do not stall on them (measured
        // 1-5% of a forward at 1x128; a block of inputs after the first finds its outputs in
        // L2 or beyond, and adding them after the loop hides that wait). A prefetch
        // reads nothing and may name any address; `wrapping_add` forms it without a claim
        // that it is in bounds.
        for r in 0..R {
            for j in 0..NP {
                _mm_prefetch::<_MM_HINT_ET0>(t.c.wrapping_add(r * t.ldc + j * PANEL) as *const i8);
            }
        }
        for p in 0..t.kc {
            let bv: [__m512; NP] = std::array::from_fn(|j| {
                // SAFETY: panel j holds kc rows of 16 aligned values; this is row p < kc.
                unsafe { _mm512_load_ps(t.b.add(j * t.b_panel_stride + p * PANEL)) }
            });
            for (r, row) in acc.iter_mut().enumerate() {
                // SAFETY: row r < R of `a` holds kc values; this is value p < kc.
                let av = _mm512_set1_ps(unsafe { *t.a.add(r * t.lda + p) });
                for j in 0..NP {
                    row[j] = _mm512_fmadd_ps(av, bv[j], row[j]);
                }
            }
        }
        for (r, row) in acc.iter().enumerate() {
            for (j, v) in row.iter().enumerate() {
                // SAFETY: row r < R; panel j's columns j*16.. hold at least one output of the
                // tile (readable when accumulating) and the mask enables only those.
                let c = unsafe { t.c.add(r * t.ldc + j * PANEL) };
                let v = if t.accumulate {
                    // SAFETY: as above.
                    _mm512_add_ps(*v, unsafe { _mm512_maskz_loadu_ps(masks[j], c) })
                } else {
                    *v
                };
                // SAFETY: as above.
                unsafe { _mm512_mask_storeu_ps(c, masks[j], v) };
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{Tile, PANEL};
    use std::arch::x86_64::*;

    /// How many inputs ahead of use the block's first tile prefetches its weight panel's rows:
    /// 4 KiB, 64 lines in flight, about what covers a memory latency at the rate the tile
    /// consumes them (one line per ~6 cycles). 64 timed faster than 16 and 128 under
    /// `--isa avx2` (docs/performance.md, "The AVX2 tier, forced on the Zen 4").
    const PREFETCH_INPUTS: usize = 64;

    /// Lane masks for `maskload`/`maskstore`: `MASKS[8 - n..]` enables the first `n` lanes.
    const MASKS: [i32; 16] = [-1, -1, -1, -1, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0];

    /// A block of rows: tiles of 6, then one of the rest.
    ///
    /// # Safety
    /// AVX2 and FMA available; the tile's invariant with one panel.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn rows(t: &Tile) {
        // Only the block's first tile reads the weight panel from memory (the later ones find
        // it in L2): that one prefetches it.
        let mut r0 = 0;
        while t.rows - r0 >= 6 {
            // SAFETY: r0 + 6 <= rows; the sub-tile keeps the invariant.
            unsafe {
                if r0 == 0 {
                    tile::<6, true>(&t.sub(r0, 6))
                } else {
                    tile::<6, false>(&t.sub(r0, 6))
                }
            };
            r0 += 6;
        }
        // SAFETY: r0 <= rows.
        let rest = unsafe { t.sub(r0, t.rows - r0) };
        let first = r0 == 0;
        // SAFETY: `rest` keeps the invariant and has `rest.rows` rows.
        unsafe {
            match (rest.rows, first) {
                (0, _) => {}
                (1, true) => tile::<1, true>(&rest),
                (1, false) => tile::<1, false>(&rest),
                (2, true) => tile::<2, true>(&rest),
                (2, false) => tile::<2, false>(&rest),
                (3, true) => tile::<3, true>(&rest),
                (3, false) => tile::<3, false>(&rest),
                (4, true) => tile::<4, true>(&rest),
                (4, false) => tile::<4, false>(&rest),
                (_, true) => tile::<5, true>(&rest),
                (_, false) => tile::<5, false>(&rest),
            }
        }
    }

    /// `R` rows x one panel (two 8-lane halves): up to 12 accumulators, two weight loads and
    /// `R` broadcasts per input. A half with no column of the tile (`cols <= 8`) is neither
    /// loaded nor stored, so no pointer past the tile's outputs is ever formed.
    ///
    /// `PREFETCH`: ask for the weight panel's rows ahead of use (the block's first tile).
    ///
    /// # Safety
    /// AVX2 and FMA available; the tile's invariant with exactly `R` rows and one panel.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn tile<const R: usize, const PREFETCH: bool>(t: &Tile) {
        debug_assert!(t.rows == R && t.cols >= 1 && t.cols <= PANEL);
        let halves = if t.cols > 8 { 2 } else { 1 };
        let masks: [__m256i; 2] = std::array::from_fn(|h| {
            let lanes = t.cols.saturating_sub(h * 8).min(8);
            // SAFETY: MASKS[8 - lanes..] has at least 8 values (lanes <= 8).
            unsafe { _mm256_loadu_si256(MASKS[8 - lanes..].as_ptr() as *const __m256i) }
        });
        let mut acc = [[_mm256_setzero_ps(); 2]; R];
        if let (false, Some(bias)) = (t.accumulate, t.bias) {
            for h in 0..halves {
                // SAFETY: the bias has `cols` values; half h < halves starts inside them and
                // the mask enables only those.
                let b = unsafe { _mm256_maskload_ps(bias.as_ptr().add(h * 8), masks[h]) };
                for row in acc.iter_mut() {
                    row[h] = b;
                }
            }
        }
        // The outputs are read (when accumulating) and written only after the loop: fetch
        // their lines now, so neither waits on them (a prefetch reads nothing and may name
        // any address: `wrapping_add` forms it without claiming it is in bounds).
        for r in 0..R {
            let row = t.c.wrapping_add(r * t.ldc);
            _mm_prefetch::<_MM_HINT_ET0>(row as *const i8);
            _mm_prefetch::<_MM_HINT_ET0>(row.wrapping_add(PANEL - 1) as *const i8);
        }
        // One pointer per activation row, so each broadcast is one instruction (row + 4p):
        // computing the rows' addresses from `lda` inside the loop cost a third more
        // instructions than the loads and multiply-adds, and at two 256-bit multiply-adds
        // per cycle the loop is bound by how fast instructions issue.
        // SAFETY: row r < R of the tile starts inside `a`.
        let rows: [*const f32; R] = std::array::from_fn(|r| unsafe { t.a.add(r * t.lda) });
        // One input: two weight loads, R broadcasts, 2R multiply-adds.
        macro_rules! step {
            ($p:expr) => {{
                let p = $p;
                // SAFETY: the panel holds kc rows of 16 aligned values; this is row p < kc.
                let bv = unsafe {
                    let b = t.b.add(p * PANEL);
                    [_mm256_load_ps(b), _mm256_load_ps(b.add(8))]
                };
                for (row, a) in acc.iter_mut().zip(&rows) {
                    // SAFETY: each row of `a` holds kc values; this is value p < kc.
                    let av = unsafe { _mm256_broadcast_ss(&*a.add(p)) };
                    row[0] = _mm256_fmadd_ps(av, bv[0], row[0]);
                    row[1] = _mm256_fmadd_ps(av, bv[1], row[1]);
                }
            }};
        }
        // Four inputs per iteration: the loop's own counting is paid once per four.
        let mut p = 0;
        while p + 4 <= t.kc {
            // The weight panel is one stream, and the block's first tile waits on memory for
            // it: ask for its lines ahead of use (a prefetch reads nothing and may name any
            // address: `wrapping_add` forms it without claiming it is in bounds).
            if PREFETCH {
                for ahead in 0..4 {
                    _mm_prefetch::<_MM_HINT_T0>(
                        t.b.wrapping_add((p + ahead + PREFETCH_INPUTS) * PANEL) as *const i8,
                    );
                }
            }
            step!(p);
            step!(p + 1);
            step!(p + 2);
            step!(p + 3);
            p += 4;
        }
        while p < t.kc {
            step!(p);
            p += 1;
        }
        // A masked store is microcoded on AMD CPUs, many times the cost of a plain one, and a
        // tile of a short product (SqueezeBERT's 192 inputs per group, attention's heads)
        // paid twelve: full panels store plainly (docs/performance.md, "Measurements behind the code").
        // Accumulating, the outputs are added after the loop, not loaded before it: a block
        // of inputs after the first finds them in L2 or beyond, and the loop hides the wait.
        if t.cols == PANEL {
            for (r, row) in acc.iter().enumerate() {
                for (h, v) in row.iter().enumerate() {
                    // SAFETY: row r < R; the panel's 16 columns are all outputs of the tile,
                    // readable when accumulating.
                    let c = unsafe { t.c.add(r * t.ldc + h * 8) };
                    let v = if t.accumulate {
                        // SAFETY: as above.
                        _mm256_add_ps(*v, unsafe { _mm256_loadu_ps(c) })
                    } else {
                        *v
                    };
                    // SAFETY: as above.
                    unsafe { _mm256_storeu_ps(c, v) };
                }
            }
        } else {
            for (r, row) in acc.iter().enumerate() {
                for (h, v) in row.iter().enumerate().take(halves) {
                    // SAFETY: row r < R; half h < halves starts at an output of the tile and
                    // the mask enables only the tile's outputs (readable when accumulating).
                    let c = unsafe { t.c.add(r * t.ldc + h * 8) };
                    let v = if t.accumulate {
                        // SAFETY: as above.
                        _mm256_add_ps(*v, unsafe { _mm256_maskload_ps(c, masks[h]) })
                    } else {
                        *v
                    };
                    // SAFETY: as above.
                    unsafe { _mm256_maskstore_ps(c, masks[h], v) };
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn square(x: &mut [f32]) {
        x.iter_mut().for_each(|v| *v *= *v);
    }

    fn values(n: usize, seed: u32) -> Vec<f32> {
        (0..n)
            .map(|i| ((i as u32).wrapping_mul(2_654_435_761).wrapping_add(seed) >> 8) as f32)
            .map(|v| v / (1u32 << 24) as f32 - 0.5)
            .collect()
    }

    /// Every kernel, every edge (partial row tiles, partial and odd panel counts, several row
    /// and input blocks, groups, strided activations, no bias) against an f64 reference.
    #[test]
    fn repack_reads_transposed_and_strided_views_into_a_used_buffer() {
        // A used buffer (larger, NaN) is overwritten entirely, padding included.
        let mut packed = PackedWeight::pack(&[f32::NAN; 40 * 50], 1, 40, 50);
        let (rows, cols, stride) = (21, 19, 30);
        let data = values(rows * stride, 4);
        let view = MatRef::new(&data, rows, cols, stride);
        let dense = |n: usize, k: usize, at: &dyn Fn(usize, usize) -> f32| {
            (0..n * k).map(|i| at(i / k, i % k)).collect::<Vec<_>>()
        };
        // Row-major with a row stride (weights, keys): a transpose into panels.
        packed.repack(view);
        assert_eq!(
            packed.unpack(),
            dense(rows, cols, &|o, i| data[o * stride + i])
        );
        let finite = |p: &PackedWeight| p.rows.iter().all(|r| r.0.iter().all(|v| v.is_finite()));
        assert!(finite(&packed));
        // Transposed (values): contiguous runs.
        packed.repack(view.t());
        assert_eq!(
            packed.unpack(),
            dense(cols, rows, &|o, i| data[i * stride + o])
        );
        let pad = cols.div_ceil(PANEL) * PANEL - cols;
        let last = &packed.rows[(cols / PANEL) * rows..];
        assert!(last
            .iter()
            .all(|r| r.0[PANEL - pad..] == [0.0; PANEL][..pad]));
        assert!(finite(&packed));
    }

    /// The plain tile given two panels (as AVX-512's tiles are) computes both, the second
    /// partial, from the bias and then accumulating: the fallback is not limited to its own
    /// panel count.
    #[test]
    fn portable_tile_computes_every_panel_it_is_given() {
        let (rows, k, n) = (5, 9, PANEL + 4);
        let (x, w, bias) = (values(rows * k, 5), values(n * k, 6), values(n, 7));
        let packed = PackedWeight::pack(&w, 1, n, k);
        let mut out = vec![f32::NAN; rows * n];
        for accumulate in [false, true] {
            let tile = Tile {
                a: x.as_ptr(),
                lda: k,
                b: packed.panels_from(0, 0).as_ptr().cast::<f32>(),
                b_panel_stride: k * PANEL,
                kc: k,
                c: out.as_mut_ptr(),
                ldc: n,
                rows,
                cols: n,
                accumulate,
                bias: (!accumulate).then_some(&bias[..]),
            };
            // SAFETY: `x` holds rows x k at k; the weight's two panels of k rows are
            // `k * PANEL` floats apart; `out` holds rows x n at n; the bias n values.
            unsafe { tile.run(Isa::Portable, 2) };
        }
        for r in 0..rows {
            for o in 0..n {
                let dot: f64 = (0..k)
                    .map(|i| x[r * k + i] as f64 * w[o * k + i] as f64)
                    .sum();
                let want = bias[o] as f64 + 2.0 * dot;
                let got = out[r * n + o] as f64;
                assert!((got - want).abs() < 1e-5, "({r},{o}) {got} vs {want}");
            }
        }
    }

    /// `BERTBENCH_BLOCKING`'s values: `MC,KC` (spaces allowed), or an error naming the variable.
    #[test]
    fn a_forced_blocking_is_parsed_or_refused_by_name() {
        use std::ffi::OsStr;
        let parse = |v: &str| FORCED_BLOCKING.parse_value(Some(OsStr::new(v)));
        assert_eq!(FORCED_BLOCKING.parse_value(None), Ok(None));
        assert_eq!(parse("84,768"), Ok(Some(Blocking { mc: 84, kc: 768 })));
        assert_eq!(
            parse(" 60 , 1024 "),
            Ok(Some(Blocking { mc: 60, kc: 1024 }))
        );
        for bad in [
            "", "84", "84,", "0,768", "84,0", "84,768,1", "-1,768", "a,b", "84;768",
        ] {
            let e = parse(bad).unwrap_err();
            assert!(e.starts_with(&format!("{BLOCKING_ENV}=")), "{bad:?}: {e}");
            assert!(e.contains("expected MC,KC"), "{bad:?}: {e}");
        }
    }

    /// The rule on the two machines of this project's kind, and its invariants on others.
    #[test]
    fn blocking_follows_the_l2_cache() {
        let caches = |l2_kib: usize| CacheSizes {
            l1d: 32 << 10,
            l2: l2_kib << 10,
            l2_shared_by: 1,
            l3: Some(32 << 20),
            detected: true,
        };
        let b = |k, l2, isa| Blocking::rule(k, &caches(l2), isa, 2);
        // Zen 4, 1 MiB L2, AVX-512 (tiles of 12 rows).
        assert_eq!(b(768, 1024, Isa::Avx512), Blocking { mc: 168, kc: 768 });
        assert_eq!(b(3072, 1024, Isa::Avx512), Blocking { mc: 84, kc: 1536 });
        // Zen 3, 512 KiB L2, AVX2 (tiles of 6 rows).
        assert_eq!(b(768, 512, Isa::Avx2), Blocking { mc: 84, kc: 768 });
        assert_eq!(b(3072, 512, Isa::Avx2), Blocking { mc: 60, kc: 1024 });
        // An L2 two threads share is sized as half of it for each, as long as two compute
        // threads run: 1 MiB shared by an SMT pair gives the blocks of 512 KiB to each.
        let shared = CacheSizes {
            l2_shared_by: 2,
            ..caches(1024)
        };
        assert_eq!(
            Blocking::rule(768, &shared, Isa::Avx2, 2),
            b(768, 512, Isa::Avx2)
        );
        assert_eq!(
            Blocking::rule(768, &shared, Isa::Avx2, 1),
            b(768, 1024, Isa::Avx2)
        );
        for l2 in [128, 256, 512, 1024, 1280, 2048] {
            for isa in [Isa::Avx512, Isa::Avx2, Isa::Portable] {
                for k in [1, 16, 64, 768, 3072, 100_000] {
                    let Blocking { mc, kc } = b(k, l2, isa);
                    let mr = isa.tile_rows();
                    assert!(mc >= mr && mc % mr == 0 && kc >= 1 && kc <= k.max(1));
                    // Equal blocks of inputs cover k, the activations' block fits half of L2.
                    assert!(k.div_ceil(kc) * kc >= k);
                    assert!(
                        mc == mr || mc * kc * 4 <= (l2 << 10) / 2,
                        "{l2} {isa:?} {k}"
                    );
                }
            }
        }
    }

    #[test]
    fn packed_linear_matches_reference() {
        let full = [
            // (m, k, n, groups)
            (1, 8, 3, 1),
            (5, 17, 16, 1),
            (13, 40, 33, 1),
            (49, 300, 50, 1),
            (150, 520, 64, 1),
            (7, 24, 40, 4),
            (200, 64, 48, 3),
            // More inputs than one block: later blocks accumulate into the output.
            (14, 6000, 35, 1),
        ];
        // Under Miri (12 rows and 16 inputs per block): every edge at a few rows and
        // inputs: partial tiles and panels, several row and input blocks, groups.
        let small = [(1, 8, 3, 1), (5, 7, 16, 1), (13, 19, 17, 1), (3, 5, 7, 2)];
        let shapes: &[(usize, usize, usize, usize)] = if cfg!(miri) { &small } else { &full };
        for &isa in Isa::available() {
            for &(m, k, n, groups) in shapes {
                // Under Miri one thread: rayon's workers would be interpreted too, and the
                // split over threads is index arithmetic the native run covers.
                for threads in if cfg!(miri) { vec![1] } else { vec![1, 3] } {
                    for (with_bias, act) in [
                        (true, None),
                        (false, None),
                        (true, Some(square as Epilogue)),
                    ] {
                        let stride = groups * k + 3;
                        let x = values(m * stride, 1);
                        let w = values(groups * n * k, 2);
                        let bias = values(groups * n, 3);
                        let packed = PackedWeight::pack(&w, groups, n, k);
                        assert_eq!(packed.unpack(), w);
                        let mut out = vec![f32::NAN; m * groups * n];
                        packed_linear_with(
                            isa,
                            MatRef::new(&x, m, groups * k, stride),
                            &packed,
                            with_bias.then_some(&bias[..]),
                            act,
                            MatMut::new(&mut out, m, groups * n, groups * n),
                            threads,
                        );
                        for r in 0..m {
                            for g in 0..groups {
                                for o in 0..n {
                                    let mut want = if with_bias {
                                        bias[g * n + o] as f64
                                    } else {
                                        0.0
                                    };
                                    for i in 0..k {
                                        want += x[r * stride + g * k + i] as f64
                                            * w[(g * n + o) * k + i] as f64;
                                    }
                                    if act.is_some() {
                                        want *= want;
                                    }
                                    let got = out[r * groups * n + g * n + o] as f64;
                                    assert!(
                                        (got - want).abs() < 1e-4 * (1.0 + want.abs()),
                                        "{isa:?} {m}x{k}x{n}/{groups} t{threads}: ({r},{g},{o}) {got} vs {want}"
                                    );
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}
