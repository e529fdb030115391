//! bf16 products: `x W^T + b` with the weight rounded to bf16 once when an inference model is
//! prepared ([`Bf16Weight`]) and the activations rounded to bf16 per product ([`Bf16Rows`]),
//! multiplied with f32 accumulation: what PyTorch's CPU autocast to bf16 does for a linear
//! layer. Everything else of the model stays f32.
//!
//! Arithmetic: bf16 values (8-bit significands, rounded to nearest even from f32) multiplied
//! exactly (a product of two fits in an f32) and summed in f32, two inputs per step.
//!
//! Layout: panels of [`PANEL`] output columns, two inputs per 64-byte row (`[output][input %
//! 2]`), the layout `vdpbf16ps` reads: one load gives 16 outputs' weights for two inputs, one
//! broadcast a row's two activations. Inputs are padded to an even count with zeros.
//!
//! Kernels: AVX512_BF16 (`vdpbf16ps`, 32 multiply-adds an instruction: twice `vfmadd231ps`'s)
//! where the CPU has it (Zen 4, Zen 5, Intel Cooper Lake and Sapphire Rapids on); elsewhere the
//! same sums in portable Rust, which is slower than the f32 product: commands refuse bf16 on
//! such a CPU ([`Bf16Kernel::fast`]) rather than run it slower than f32.

use rayon::prelude::*;

use super::isa::Isa;
use super::packed::{Epilogue, PANEL};
use super::split::{check_product, for_each_block, over_panels, rows_per_block, Block};
use super::view::{MatMut, MatRef, SendPtr};

/// Inputs per 32-bit lane of a panel row (what `vdpbf16ps` sums in one lane).
const PAIR: usize = 2;

/// Rows of the AVX-512 register tile.
const MR: usize = 12;

/// Panels per register tile: 12 rows x 2 panels is 24 accumulators of the 32 registers.
const NP: usize = 2;

/// Two inputs of a panel's 16 outputs, bf16 bits: `[output][input % 2]`, 64-byte aligned.
#[repr(C, align(64))]
#[derive(Clone, Copy, Debug)]
struct PairRow([u16; PANEL * PAIR]);

impl Default for PairRow {
    fn default() -> Self {
        Self([0; PANEL * PAIR])
    }
}

/// f32 to bf16 bits, rounded to nearest even ([`half::bf16`]'s rule).
#[inline(always)]
fn to_bf16(v: f32) -> u16 {
    half::bf16::from_f32(v).to_bits()
}

/// bf16 bits to f32 (exact).
#[inline(always)]
fn from_bf16(b: u16) -> f32 {
    f32::from_bits(u32::from(b) << 16)
}

/// Which bf16 kernel runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Bf16Kernel {
    /// AVX512_BF16: `vdpbf16ps` on 512-bit registers.
    Avx512Bf16,
    /// The sums in portable Rust (slower than the f32 product).
    Portable,
}

impl Bf16Kernel {
    /// The kernel for a tier: AVX512_BF16 on the AVX-512 tier where the CPU has it.
    pub fn for_isa(isa: Isa) -> Self {
        match isa {
            Isa::Avx512 if has_avx512_bf16() => Self::Avx512Bf16,
            _ => Self::Portable,
        }
    }

    /// The kernel this process runs (its tier's).
    pub fn current() -> Self {
        Self::for_isa(Isa::current())
    }

    /// Every kernel this CPU can run, best first (tests run them all).
    /// Detected once: every product checks its kernel against it.
    pub fn available() -> &'static [Self] {
        static AVAILABLE: std::sync::OnceLock<Vec<Bf16Kernel>> = std::sync::OnceLock::new();
        AVAILABLE.get_or_init(|| {
            let fast = Isa::available().contains(&Isa::Avx512) && has_avx512_bf16();
            [(Self::Avx512Bf16, fast), (Self::Portable, true)]
                .into_iter()
                .filter_map(|(k, ok)| ok.then_some(k))
                .collect()
        })
    }

    /// Whether the kernel is faster than the f32 product (commands refuse bf16 otherwise).
    pub fn fast(self) -> bool {
        self == Self::Avx512Bf16
    }

    /// The kernel's name, as the environment file records it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Avx512Bf16 => "avx512-bf16",
            Self::Portable => "portable",
        }
    }
}

/// Whether the CPU has AVX512_BF16.
fn has_avx512_bf16() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512bf16")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// A weight rounded to bf16 for [`bf16_linear`]: `groups` blocks of `n x k`, in panels.
#[derive(Clone, Debug)]
pub struct Bf16Weight {
    pairs: Vec<PairRow>,
    n: usize,
    k: usize,
    groups: usize,
}

impl Bf16Weight {
    /// Rounds `w` (`groups * n` rows of `k`, the Hub's `[out, in]` layout) to bf16. Panics
    /// unless `w` holds `groups * n * k` values.
    pub fn convert(w: &[f32], groups: usize, n: usize, k: usize) -> Self {
        assert_eq!(w.len(), groups * n * k, "weight of {groups} x {n} x {k}");
        let (panels, kp) = (n.div_ceil(PANEL), k.div_ceil(PAIR));
        let mut pairs = vec![PairRow::default(); groups * panels * kp];
        for g in 0..groups {
            for o in 0..n {
                let (p, c) = (o / PANEL, o % PANEL);
                let panel = &mut pairs[(g * panels + p) * kp..][..kp];
                for (i, v) in w[(g * n + o) * k..][..k].iter().enumerate() {
                    panel[i / PAIR].0[c * PAIR + i % PAIR] = to_bf16(*v);
                }
            }
        }
        Self {
            pairs,
            n,
            k,
            groups,
        }
    }

    /// The weight as f32 again (the bf16 values, exactly), in the Hub's layout.
    pub fn to_f32(&self) -> Vec<f32> {
        let (n, k) = (self.n, self.k);
        let mut w = vec![0f32; self.groups * n * k];
        for g in 0..self.groups {
            for o in 0..n {
                for (i, v) in w[(g * n + o) * k..][..k].iter_mut().enumerate() {
                    *v = self.value(g, o, i);
                }
            }
        }
        w
    }

    /// Output `o`, input `i` of group `g`, as f32.
    pub fn value(&self, g: usize, o: usize, i: usize) -> f32 {
        let (p, c) = (o / PANEL, o % PANEL);
        from_bf16(self.pairs[(g * self.panels() + p) * self.kp() + i / PAIR].0[c * PAIR + i % PAIR])
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

    /// Pairs of inputs per panel.
    fn kp(&self) -> usize {
        self.k.div_ceil(PAIR)
    }

    /// Panel `p` of group `g` and every one after it.
    fn panels_from(&self, g: usize, p: usize) -> &[PairRow] {
        &self.pairs[(g * self.panels() + p) * self.kp()..]
    }
}

/// Activations rounded to bf16 for [`bf16_linear`]: a row's `groups` blocks of `k` columns one
/// after another, each padded with a zero to an even count. A buffer: [`Self::convert`] reuses
/// its memory.
#[derive(Clone, Debug, Default)]
pub struct Bf16Rows {
    data: Vec<u16>,
    rows: usize,
    k: usize,
    groups: usize,
}

impl Bf16Rows {
    /// Nothing converted yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Rounds the row-major `x` (columns: `groups` blocks of `x.cols() / groups`) to bf16 with
    /// up to `threads` threads. Panics unless `groups` divides the columns.
    pub fn convert(&mut self, x: MatRef, groups: usize, threads: usize) {
        assert!(x.is_row_major(), "row-major activations");
        assert!(
            groups >= 1 && x.cols().is_multiple_of(groups),
            "{} columns in {groups} groups",
            x.cols()
        );
        let (rows, k) = (x.rows(), x.cols() / groups);
        let kp = k.div_ceil(PAIR) * PAIR;
        let stride = groups * kp;
        (self.rows, self.k, self.groups) = (rows, k, groups);
        self.data.resize(rows * stride, 0);
        if rows == 0 || stride == 0 {
            return;
        }
        let work = |(r, dst): (usize, &mut [u16])| {
            let src = &x.data()[r * x.stride()..][..x.cols()];
            for g in 0..groups {
                let (d, s) = (&mut dst[g * kp..][..kp], &src[g * k..][..k]);
                convert_row(s, &mut d[..k]);
                d[k..].fill(0);
            }
        };
        if threads > 1 && rows * x.cols() >= super::PAR_MIN_ELEMS {
            self.data
                .par_chunks_exact_mut(stride)
                .enumerate()
                .for_each(work);
        } else {
            self.data
                .chunks_exact_mut(stride)
                .enumerate()
                .for_each(work);
        }
    }

    /// Rows converted.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Row `r`'s value at input `i` of group `g`, as f32.
    pub fn value(&self, r: usize, g: usize, i: usize) -> f32 {
        from_bf16(self.data[r * self.stride() + g * self.kp() + i])
    }

    /// Inputs per group, padded to pairs.
    fn kp(&self) -> usize {
        self.k.div_ceil(PAIR) * PAIR
    }

    fn stride(&self) -> usize {
        self.groups * self.kp()
    }
}

/// Rounds `src` to bf16 into `dst` (as long).
fn convert_row(src: &[f32], dst: &mut [u16]) {
    #[cfg(target_arch = "x86_64")]
    let done = if Bf16Kernel::current() == Bf16Kernel::Avx512Bf16 {
        // SAFETY: that kernel runs only where AVX512_BF16 is.
        unsafe { avx512::convert(src, dst) }
    } else {
        0
    };
    #[cfg(not(target_arch = "x86_64"))]
    let done = 0;
    for (d, s) in dst[done..].iter_mut().zip(&src[done..]) {
        *d = to_bf16(*s);
    }
}

/// `out = act(x W^T + bias)` for every group (as [`super::int8::int8_linear`]), split over
/// `threads`.
pub fn bf16_linear(
    x: &Bf16Rows,
    w: &Bf16Weight,
    bias: Option<&[f32]>,
    act: Option<Epilogue>,
    out: MatMut,
    threads: usize,
) {
    bf16_linear_with(Bf16Kernel::current(), x, w, bias, act, out, threads)
}

/// [`bf16_linear`] with a chosen kernel (which must be one of [`Bf16Kernel::available`]).
pub fn bf16_linear_with(
    kernel: Bf16Kernel,
    x: &Bf16Rows,
    w: &Bf16Weight,
    bias: Option<&[f32]>,
    act: Option<Epilogue>,
    mut out: MatMut,
    threads: usize,
) {
    assert!(
        Bf16Kernel::available().contains(&kernel),
        "{kernel:?} kernel on this CPU"
    );
    let (m, n, k, groups) = (x.rows, w.n, w.k, w.groups);
    if !check_product(m, (x.groups, x.k), (groups, n, k), &out, bias) {
        return;
    }
    let out_ptr = SendPtr(out.as_mut_ptr());
    let out_stride = out.stride();
    // Rows per block: a block's activations stay in L2 (see `rows_per_block`).
    let mc = rows_per_block(2 * x.kp(), MR, threads);
    over_panels(
        groups,
        w.panels(),
        NP,
        threads,
        m * n * k * groups,
        |g, p0, p1| {
            let (kp, stride) = (w.kp(), x.stride());
            let bias = bias.map(|b| &b[g * n..(g + 1) * n]);
            // Column g*n of row 0 is inside the output (m > 0, n > 0; checked as m x groups*n).
            let c = out_ptr.get().wrapping_add(g * n);
            let tile = |Block {
                            ic,
                            rows,
                            p,
                            col0,
                            cols,
                            ..
                        }| {
                let tile = BTile {
                    a: &x.data[ic * stride + g * x.kp()..],
                    lda: stride,
                    b: w.panels_from(g, p),
                    kp,
                    bias: bias.map(|b| &b[col0..col0 + cols]),
                    // SAFETY: row ic, column col0 is inside the group's output (ic < m,
                    // col0 < n).
                    c: unsafe { c.add(ic * out_stride + col0) },
                    ldc: out_stride,
                    rows,
                    cols,
                };
                // The tile's invariant holds: `a` has `rows` rows of kp pairs at `lda` (from
                // g * kp), `b` the block's panels, and `c` rows x cols at `ldc` that only this
                // item writes (`over_panels` splits without overlap); 1 <= cols <= NP * 16.
                // SAFETY: as above; the kernel is available (checked above).
                unsafe { tile.run(kernel) };
            };
            // SAFETY: m > 0 and p0 < p1 <= panels (`over_panels`); the output holds the
            // group's m rows of these columns, which only this item accesses, and `tile`
            // writes every block.
            unsafe { for_each_block(m, mc, n, (p0, p1), NP, act, (c, out_stride), tile) };
        },
    );
}

/// A block of `rows x cols` outputs at `c` (row stride `ldc`) from `rows` bf16 activation rows
/// in `a` (`lda` values apart, `kp` pairs each) and the panels in `b` (`kp` pairs each).
///
/// The tile's invariant: `a` holds at least `(rows - 1) * lda + 2 * kp` values; `b` holds
/// `cols.div_ceil(PANEL)` panels of `kp` pairs; `bias`, when given, `cols` values; `c` is
/// writable for `rows` rows of `cols` values at `ldc`, accessed by no one else;
/// `1 <= cols <= NP * PANEL`.
struct BTile<'a> {
    a: &'a [u16],
    lda: usize,
    b: &'a [PairRow],
    kp: usize,
    bias: Option<&'a [f32]>,
    c: *mut f32,
    ldc: usize,
    rows: usize,
    cols: usize,
}

impl BTile<'_> {
    /// # Safety
    /// The tile's invariant (see [`BTile`]); `kernel` is available on this CPU.
    unsafe fn run(&self, kernel: Bf16Kernel) {
        match kernel {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: AVX512_BF16 is available (caller); the tile's invariant holds.
            Bf16Kernel::Avx512Bf16 => unsafe { avx512::rows(self) },
            // SAFETY: the tile's invariant.
            _ => unsafe { self.portable() },
        }
    }

    /// The sums in plain Rust: each output's products added in input order, one at a time.
    ///
    /// # Safety
    /// The tile's invariant.
    unsafe fn portable(&self) {
        for r in 0..self.rows {
            let a = &self.a[r * self.lda..][..self.kp * PAIR];
            for j in 0..self.cols.div_ceil(PANEL) {
                let b = &self.b[j * self.kp..][..self.kp];
                let mut acc = [0f32; PANEL];
                for (pair, w) in a.chunks_exact(PAIR).zip(b) {
                    let (a0, a1) = (from_bf16(pair[0]), from_bf16(pair[1]));
                    for (o, v) in acc.iter_mut().enumerate() {
                        *v += a0 * from_bf16(w.0[o * PAIR]);
                        *v += a1 * from_bf16(w.0[o * PAIR + 1]);
                    }
                }
                let cols = PANEL.min(self.cols - j * PANEL);
                for (o, v) in acc.iter().enumerate().take(cols) {
                    let col = j * PANEL + o;
                    let y = match self.bias {
                        Some(b) => v + b[col],
                        None => *v,
                    };
                    // SAFETY: r < rows, col < cols: an output of this tile (invariant).
                    unsafe { *self.c.add(r * self.ldc + col) = y };
                }
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::super::split::rows_of_tiles;
    use super::{BTile, PAIR, PANEL};
    use std::arch::x86_64::*;

    /// Rounds the first `src.len() / 32 * 32` values of `src` to bf16 into `dst` (as long),
    /// 32 at a time (`vcvtne2ps2bf16`: round to nearest even, as [`super::to_bf16`] for
    /// finite values); returns how many it did.
    ///
    /// # Safety
    /// The CPU must have AVX512_BF16.
    #[target_feature(enable = "avx512f,avx512bf16")]
    pub unsafe fn convert(src: &[f32], dst: &mut [u16]) -> usize {
        assert_eq!(src.len(), dst.len());
        let n = src.len() / 32 * 32;
        for (d, s) in dst[..n].chunks_exact_mut(32).zip(src[..n].chunks_exact(32)) {
            // SAFETY: the chunk holds 32 values: two vectors of 16.
            let (lo, hi) = unsafe {
                (
                    _mm512_loadu_ps(s.as_ptr()),
                    _mm512_loadu_ps(s.as_ptr().add(16)),
                )
            };
            // The second operand fills the low half of the result.
            // SAFETY: 32 bf16 values are the same 64 bytes as a vector of integers.
            let v =
                unsafe { std::mem::transmute::<__m512bh, __m512i>(_mm512_cvtne2ps_pbh(hi, lo)) };
            // SAFETY: the chunk of `dst` holds 32 values (64 bytes).
            unsafe { _mm512_storeu_si512(d.as_mut_ptr().cast(), v) };
        }
        n
    }

    /// A block of rows: tiles of 12, then one of the rest, over one or two panels.
    ///
    /// # Safety
    /// AVX-512F and AVX512_BF16 available; the tile's invariant.
    #[target_feature(enable = "avx512f,avx512bf16")]
    pub unsafe fn rows(t: &BTile) {
        rows_of_tiles!(t, tile)
    }

    /// Rows `r0..r0 + R` x `P` panels: `R * P` accumulators of 16 f32 lanes, `P` weight loads
    /// and `R` broadcasts of two activations per two inputs.
    ///
    /// # Safety
    /// AVX-512F and AVX512_BF16 available; the tile's invariant; `r0 + R <= rows`;
    /// `(P - 1) * 16 < cols <= P * 16`.
    #[target_feature(enable = "avx512f,avx512bf16")]
    unsafe fn tile<const R: usize, const P: usize>(t: &BTile, r0: usize) {
        debug_assert!(r0 + R <= t.rows && t.cols > (P - 1) * PANEL && t.cols <= P * PANEL);
        let masks: [__mmask16; P] = std::array::from_fn(|j| {
            let cols = t.cols.saturating_sub(j * PANEL).min(PANEL);
            ((1u32 << cols) - 1) as __mmask16
        });
        // SAFETY: row r0 + r < rows starts inside `a` (invariant).
        let rows: [*const u16; R] =
            std::array::from_fn(|r| unsafe { t.a.as_ptr().add((r0 + r) * t.lda) });
        let b = t.b.as_ptr().cast::<u16>();
        let panel_values = t.kp * PANEL * PAIR;
        let mut acc = [[_mm512_setzero_ps(); P]; R];
        for q in 0..t.kp {
            let bv: [__m512bh; P] = std::array::from_fn(|j| {
                // SAFETY: panel j < P holds kp aligned 64-byte rows; this is row q < kp.
                let v = unsafe { _mm512_load_si512(b.add(j * panel_values + q * 32).cast()) };
                // SAFETY: a vector of 32 bf16 is the same 64 bytes.
                unsafe { std::mem::transmute::<__m512i, __m512bh>(v) }
            });
            for (row, a) in acc.iter_mut().zip(&rows) {
                // SAFETY: each row holds kp pairs; this is pair q < kp (4 bytes).
                let two = unsafe { a.add(q * PAIR).cast::<i32>().read_unaligned() };
                // SAFETY: as above, reinterpreting 64 bytes.
                let av =
                    unsafe { std::mem::transmute::<__m512i, __m512bh>(_mm512_set1_epi32(two)) };
                for j in 0..P {
                    row[j] = _mm512_dpbf16_ps(row[j], av, bv[j]);
                }
            }
        }
        let bias: Option<[__m512; P]> = t.bias.map(|b| {
            std::array::from_fn(|j| {
                // SAFETY: the bias holds `cols` values; panel j's start j * 16 < cols in,
                // and mask j enables only those.
                unsafe { _mm512_maskz_loadu_ps(masks[j], b.as_ptr().add(j * PANEL)) }
            })
        });
        for (r, row) in acc.iter().enumerate() {
            for (j, v) in row.iter().enumerate() {
                let y = match &bias {
                    Some(b) => _mm512_add_ps(*v, b[j]),
                    None => *v,
                };
                // SAFETY: row r0 + r < rows; panel j's columns hold at least one output of
                // the tile, and the mask enables only those.
                unsafe {
                    _mm512_mask_storeu_ps(t.c.add((r0 + r) * t.ldc + j * PANEL), masks[j], y)
                };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(n: usize, seed: u32) -> Vec<f32> {
        (0..n)
            .map(|i| ((i as u32).wrapping_mul(2_654_435_761).wrapping_add(seed) >> 8) as f32)
            .map(|v| v / (1u32 << 24) as f32 - 0.5)
            .collect()
    }

    fn square(x: &mut [f32]) {
        x.iter_mut().for_each(|v| *v *= *v);
    }

    /// Weights and activations round to nearest even (half's rule, which the vector
    /// conversion matches), pad with zeros, and come back exactly.
    #[test]
    fn values_round_to_bf16_and_back() {
        let w = [1.0, 1.0 + 1.0 / 256.0, 1.0 + 3.0 / 256.0, -2.5e-3, 3.0];
        let q = Bf16Weight::convert(&w, 1, 1, 5);
        // 1 + 2^-8 is halfway between 1 and 1 + 2^-7: to the even one, 1.
        assert_eq!(q.value(0, 0, 1), 1.0);
        assert_eq!(q.value(0, 0, 2), 1.0 + 4.0 / 256.0);
        assert_eq!(q.to_f32()[4], 3.0);
        let x = values(3 * 71, 2);
        let mut rows = Bf16Rows::new();
        rows.convert(MatRef::new(&x, 3, 71, 71), 1, 1);
        for r in 0..3 {
            for i in 0..71 {
                let v = x[r * 71 + i];
                assert_eq!(
                    rows.value(r, 0, i),
                    half::bf16::from_f32(v).to_f32(),
                    "{r} {i}"
                );
            }
        }
        assert_eq!(rows.data[71], 0, "padding");
    }

    /// Every kernel, every edge (partial row tiles, one and two panels, odd inputs, groups,
    /// strided activations, no bias, an epilogue, threads) against an f64 reference of the
    /// bf16 values' products.
    #[test]
    fn bf16_linear_matches_the_reference_on_every_kernel() {
        let full = [
            (1, 8, 3, 1),
            (5, 17, 16, 1),
            (13, 40, 33, 1),
            (49, 300, 50, 1),
            (150, 520, 64, 1),
            (7, 24, 40, 4),
            (30, 64, 48, 3),
            (3, 3072, 20, 1),
        ];
        let small = [(1, 8, 3, 1), (5, 7, 16, 1), (13, 19, 33, 1), (3, 5, 7, 2)];
        let shapes: &[(usize, usize, usize, usize)] = if cfg!(miri) { &small } else { &full };
        for &(m, k, n, groups) in shapes {
            let stride = groups * k + 3;
            let x = values(m * stride, 1);
            let w = values(groups * n * k, 2);
            let bias = values(groups * n, 3);
            let bw = Bf16Weight::convert(&w, groups, n, k);
            let mut bx = Bf16Rows::new();
            bx.convert(MatRef::new(&x, m, groups * k, stride), groups, 1);
            for (with_bias, act) in [
                (true, None),
                (false, None),
                (true, Some(square as Epilogue)),
            ] {
                for &kernel in Bf16Kernel::available() {
                    for threads in if cfg!(miri) { vec![1] } else { vec![1, 3] } {
                        let mut out = vec![f32::NAN; m * groups * n];
                        bf16_linear_with(
                            kernel,
                            &bx,
                            &bw,
                            with_bias.then_some(&bias[..]),
                            act,
                            MatMut::new(&mut out, m, groups * n, groups * n),
                            threads,
                        );
                        for r in 0..m {
                            for g in 0..groups {
                                for o in 0..n {
                                    let mut want: f64 = (0..k)
                                        .map(|i| {
                                            f64::from(bx.value(r, g, i))
                                                * f64::from(bw.value(g, o, i))
                                        })
                                        .sum();
                                    if with_bias {
                                        want += f64::from(bias[g * n + o]);
                                    }
                                    if act.is_some() {
                                        want *= want;
                                    }
                                    let got = f64::from(out[r * groups * n + g * n + o]);
                                    assert!(
                                        (got - want).abs() <= 1e-4 * (1.0 + want.abs()),
                                        "{kernel:?} {m}x{k}x{n}/{groups} t{threads}: ({r},{g},{o}) {got} vs {want}"
                                    );
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    /// The bf16 product is close to the f32 one: each value keeps 8 significant bits.
    #[test]
    fn bf16_linear_is_close_to_the_float_product() {
        let (m, k, n) = if cfg!(miri) {
            (3, 16, 5)
        } else {
            (24, 768, 40)
        };
        let x = values(m * k, 4);
        let w = values(n * k, 5);
        let bw = Bf16Weight::convert(&w, 1, n, k);
        let mut bx = Bf16Rows::new();
        bx.convert(MatRef::new(&x, m, k, k), 1, 1);
        let mut out = vec![0f32; m * n];
        bf16_linear(&bx, &bw, None, None, MatMut::new(&mut out, m, n, n), 1);
        let (mut err, mut mag) = (0f64, 0f64);
        for r in 0..m {
            for o in 0..n {
                let want: f64 = (0..k)
                    .map(|i| f64::from(x[r * k + i]) * f64::from(w[o * k + i]))
                    .sum();
                err += (f64::from(out[r * n + o]) - want).powi(2);
                mag += want.powi(2);
            }
        }
        let rel = (err / mag).sqrt();
        assert!(rel < 0.01, "relative RMS error {rel}");
    }
}
