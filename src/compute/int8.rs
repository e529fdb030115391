//! int8 products with dynamic quantization: `x W^T + b` with the weight quantized once when an
//! inference model is prepared ([`QuantizedWeight`]: symmetric int8, one scale per output
//! channel) and the activations quantized per row as they arrive ([`QuantizedRows`]:
//! asymmetric uint8, one scale and zero point per row), multiplied with exact int32 sums and
//! turned back into f32 with the two scales.
//!
//! The scheme is ONNX Runtime's `quantize_dynamic` (uint8 activations with a zero point, int8
//! symmetric per-channel weights; `DynamicQuantizeLinear`'s rounding: half to even, then
//! saturate) and PyTorch's dynamic quantization, with one change: ONNX Runtime and PyTorch
//! take one activation scale per tensor, here each row gets its own. A row's outputs then
//! depend on that row alone, not on the rows batched with it (as with the fp32 product, a
//! window's logits do not depend on its batch), and a row of small values is not quantized on
//! the range of a row of large ones. It costs one min/max pass per row, which the per-tensor
//! scale needs too.
//!
//! Arithmetic, per output `(r, o)` with `a` the uint8 row (zero point `z_r`, scale `s_r`) and
//! `w` the int8 column (scale `s_o`, `Σ_i w_oi = c_o`):
//! `y = float(Σ_i a_ri w_oi - z_r c_o) * (s_r * s_o) + b_o`, the sum in int32 (exact: at most
//! 255 * 127 per term), one conversion, one product and one sum in f32. Every kernel computes
//! exactly this, so every tier gives the same bits (tested).
//!
//! Layout: the weight is cut into panels of [`PANEL`] output columns; a panel holds its inputs
//! four at a time, 64 bytes per four inputs (`[output][input % 4]`), the layout `vpdpbusd`
//! takes: one load gives 16 outputs' weights for four inputs, and one broadcast gives a row's
//! four activations. Inputs are padded to a multiple of four with zero weights.
//!
//! Kernels: AVX-512 VNNI (`vpdpbusd`, 64 multiply-adds an instruction) where the CPU has it;
//! on the AVX2 tier AVX-VNNI (the same instruction on 256-bit registers) where the CPU has it,
//! else AVX2's byte and word products (`vpmaddubsw`, `vpmaddwd`) kept exact by a shift of the
//! activations (see `avx2_tiles::tile_maddubs`); the same sums in portable Rust anywhere.

use rayon::prelude::*;

use super::isa::Isa;
use super::overrides::EnvOverride;
use super::packed::{Epilogue, PANEL};
use super::split::{check_product, for_each_block, over_panels, rows_per_block, Block};
use super::view::{MatMut, MatRef, SendPtr};

/// Inputs per 32-bit lane of a panel row (what `vpdpbusd` sums in one lane).
const QUAD: usize = 4;

/// Rows of a register tile (the AVX-512 kernel's; the portable one takes any).
const MR: usize = 12;

/// Panels per register tile: 12 rows x 2 panels is 24 accumulators of the 32 registers.
const NP: usize = 2;

/// Four inputs of a panel's 16 outputs: `[output][input % 4]`, 64-byte aligned for one load.
#[repr(C, align(64))]
#[derive(Clone, Copy, Debug)]
struct QuadRow([i8; PANEL * QUAD]);

impl Default for QuadRow {
    fn default() -> Self {
        Self([0; PANEL * QUAD])
    }
}

/// The variable that forces an int8 kernel ([`Int8Kernel::forced`]).
pub const KERNEL_ENV: &str = "BERTBENCH_INT8_KERNEL";

static FORCED_KERNEL: EnvOverride<Int8Kernel> = EnvOverride::new(KERNEL_ENV, Int8Kernel::by_id);

/// Which int8 kernel runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Int8Kernel {
    /// AVX-512 with VNNI (`vpdpbusd` on 512-bit registers).
    Vnni512,
    /// AVX-VNNI: the same instruction, VEX-encoded on 256-bit registers (Intel since Alder
    /// Lake, AMD since Zen 5): what an AVX2 tier has where the CPU offers it.
    AvxVnni,
    /// AVX2 without VNNI: `vpmaddubsw` and `vpmaddwd` on 256-bit registers, exact (Zen 3 and
    /// older, Intel before Alder Lake).
    Avx2,
    /// The portable sums, no target features.
    Portable,
}

impl Int8Kernel {
    /// The kernel for a tier: `vpdpbusd` where the tier's registers have it (AVX-512 VNNI on
    /// the AVX-512 tier, AVX-VNNI on the AVX2 tier), else AVX2's byte products on an x86
    /// tier, the portable sums on the portable one.
    pub fn for_isa(isa: Isa) -> Self {
        match isa {
            Isa::Avx512 if has_vnni512() => Self::Vnni512,
            Isa::Avx512 | Isa::Avx2 if has_avx_vnni() => Self::AvxVnni,
            Isa::Avx512 | Isa::Avx2 => Self::Avx2,
            Isa::Portable => Self::Portable,
        }
    }

    /// The kernel this process runs: its tier's, unless `BERTBENCH_INT8_KERNEL` forces one the
    /// tier allows ([`Int8Kernel::forced`]; a forced kernel the tier does not allow is refused
    /// before anything runs, by `isa::use_isa`).
    pub fn current() -> Self {
        static CURRENT: std::sync::OnceLock<Int8Kernel> = std::sync::OnceLock::new();
        *CURRENT.get_or_init(|| {
            let isa = Isa::current();
            match Self::forced() {
                Ok(Some(k)) if k.allowed_on(isa) => *k,
                _ => Self::for_isa(isa),
            }
        })
    }

    /// Whether tier `isa` may run this kernel: the tier's own registers and no wider ones, on
    /// this CPU (the AVX2 tier may run AVX-VNNI, AVX2 or portable; the AVX-512 tier any).
    pub fn allowed_on(self, isa: Isa) -> bool {
        let within = match isa {
            Isa::Avx512 => true,
            Isa::Avx2 => self != Self::Vnni512,
            Isa::Portable => self == Self::Portable,
        };
        within && Self::available().contains(&self)
    }

    /// The kernel `BERTBENCH_INT8_KERNEL` forces on every int8 product of this process (read
    /// once; for measuring a kernel a CPU would not pick, as the AVX2 one on a CPU with VNNI):
    /// `None` when unset; an error naming the variable, the value and the choices otherwise.
    pub fn forced() -> &'static Result<Option<Self>, String> {
        FORCED_KERNEL.get()
    }

    /// A kernel by its id, or the ids there are.
    fn by_id(id: &str) -> Result<Self, String> {
        Self::ALL.into_iter().find(|k| k.id() == id).ok_or_else(|| {
            let ids: Vec<_> = Self::ALL.iter().map(|k| k.id()).collect();
            format!("one of {} (or unset)", ids.join(", "))
        })
    }

    /// The kernel in force by [`Int8Kernel::name`], and `forced by BERTBENCH_INT8_KERNEL` when
    /// it is (what the environment file records).
    pub fn described() -> String {
        let kernel = Self::current();
        match Self::forced() {
            Ok(Some(k)) if *k == kernel => format!("{} (forced by {KERNEL_ENV})", kernel.name()),
            _ => kernel.name().to_string(),
        }
    }

    /// The ids of the kernels tier `isa` may run here, best first, comma-separated.
    pub fn allowed_names(isa: Isa) -> String {
        Self::ALL
            .into_iter()
            .filter(|k| k.allowed_on(isa))
            .map(Self::id)
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Every kernel, best first.
    const ALL: [Self; 4] = [Self::Vnni512, Self::AvxVnni, Self::Avx2, Self::Portable];

    /// The kernel's short name, as `BERTBENCH_INT8_KERNEL` spells it.
    pub fn id(self) -> &'static str {
        match self {
            Self::Vnni512 => "avx512-vnni",
            Self::AvxVnni => "avx-vnni",
            Self::Avx2 => "avx2",
            Self::Portable => "portable",
        }
    }

    /// Every kernel this CPU can run, best first (tests run them all).
    /// Detected once: every product checks its kernel against it.
    pub fn available() -> &'static [Self] {
        static AVAILABLE: std::sync::OnceLock<Vec<Int8Kernel>> = std::sync::OnceLock::new();
        AVAILABLE.get_or_init(|| {
            let avx2 = Isa::available().contains(&Isa::Avx2);
            [
                (Self::Vnni512, avx2 && has_vnni512()),
                (Self::AvxVnni, avx2 && has_avx_vnni()),
                (Self::Avx2, avx2),
                (Self::Portable, true),
            ]
            .into_iter()
            .filter_map(|(k, ok)| ok.then_some(k))
            .collect()
        })
    }

    /// Whether the kernel is faster than the f32 product of its tier: the `vpdpbusd` ones and
    /// the AVX2 one (measured: docs/precision.md); the portable sums are not.
    pub fn fast(self) -> bool {
        self != Self::Portable
    }

    /// The kernel's name, as the environment file records it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Vnni512 => "avx512-vnni",
            Self::AvxVnni => "avx-vnni",
            Self::Avx2 => "avx2 (vpmaddubsw)",
            Self::Portable => "portable",
        }
    }
}

/// Whether the CPU has AVX-VNNI (the VEX-encoded `vpdpbusd`).
fn has_avx_vnni() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        is_x86_feature_detected!("avxvnni")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Whether the CPU has AVX-512 VNNI (and the byte/word instructions its epilogue uses).
fn has_vnni512() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("avx512vnni")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// A weight quantized for [`int8_linear`]: `groups` independent `n x k` blocks (a grouped 1x1
/// convolution; 1 for a linear layer), each int8 with one scale per output, in panels of
/// [`PANEL`] outputs (the last zero-padded).
#[derive(Clone, Debug)]
pub struct QuantizedWeight {
    quads: Vec<QuadRow>,
    /// `groups * n` scales: the weight is `q * scale`.
    scales: Vec<f32>,
    /// `groups * n` sums of each output's quantized weights (for the zero point).
    sums: Vec<i32>,
    n: usize,
    k: usize,
    groups: usize,
}

impl QuantizedWeight {
    /// Quantizes `w`, `groups * n` rows of `k` (the Hub's `[out, in]` layout, groups one after
    /// another), each output symmetric on its own largest magnitude: `q = round(w / s)` in
    /// -127..=127 with `s = max|w| / 127` (half to even; an all-zero output gets `s = 1`).
    /// Panics unless `w` holds `groups * n * k` values, all finite.
    pub fn quantize(w: &[f32], groups: usize, n: usize, k: usize) -> Self {
        assert_eq!(w.len(), groups * n * k, "weight of {groups} x {n} x {k}");
        assert!(
            w.iter().all(|v| v.is_finite()),
            "weight has a non-finite value"
        );
        let (panels, kq) = (n.div_ceil(PANEL), k.div_ceil(QUAD));
        let mut quads = vec![QuadRow::default(); groups * panels * kq];
        let mut scales = Vec::with_capacity(groups * n);
        let mut sums = Vec::with_capacity(groups * n);
        for g in 0..groups {
            for o in 0..n {
                let row = &w[(g * n + o) * k..][..k];
                let scale = symmetric_scale(row);
                let (p, c) = (o / PANEL, o % PANEL);
                let panel = &mut quads[(g * panels + p) * kq..][..kq];
                let mut sum = 0i32;
                for (i, v) in row.iter().enumerate() {
                    let q = symmetric(*v, scale);
                    panel[i / QUAD].0[c * QUAD + i % QUAD] = q;
                    sum += i32::from(q);
                }
                scales.push(scale);
                sums.push(sum);
            }
        }
        Self {
            quads,
            scales,
            sums,
            n,
            k,
            groups,
        }
    }

    /// The quantized weight as floats again (`q * scale`), in the Hub's layout: what the
    /// product multiplies by.
    pub fn dequantize(&self) -> Vec<f32> {
        let (n, k) = (self.n, self.k);
        let mut w = vec![0f32; self.groups * n * k];
        for g in 0..self.groups {
            for o in 0..n {
                let scale = self.scales[g * n + o];
                for (i, v) in w[(g * n + o) * k..][..k].iter_mut().enumerate() {
                    *v = f32::from(self.q(g, o, i)) * scale;
                }
            }
        }
        w
    }

    /// The quantized value of output `o`, input `i` of group `g`.
    pub fn q(&self, g: usize, o: usize, i: usize) -> i8 {
        let (p, c) = (o / PANEL, o % PANEL);
        self.quads[(g * self.panels() + p) * self.kq() + i / QUAD].0[c * QUAD + i % QUAD]
    }

    /// The scale of output `o` of group `g`.
    pub fn scale(&self, g: usize, o: usize) -> f32 {
        self.scales[g * self.n + o]
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

    /// Bytes this weight holds (values, scales and sums).
    pub fn bytes(&self) -> usize {
        self.quads.len() * std::mem::size_of::<QuadRow>() + self.scales.len() * 8
    }

    fn panels(&self) -> usize {
        self.n.div_ceil(PANEL)
    }

    fn kq(&self) -> usize {
        self.k.div_ceil(QUAD)
    }

    /// Panel `p` of group `g` and every one after it (a tile reading two panels takes its
    /// pointer from this slice).
    fn panels_from(&self, g: usize, p: usize) -> &[QuadRow] {
        &self.quads[(g * self.panels() + p) * self.kq()..]
    }
}

/// The scale of a row quantized symmetric on its own largest magnitude: `max|v| / 127`, or 1
/// for an all-zero row.
fn symmetric_scale(row: &[f32]) -> f32 {
    let max = row.iter().fold(0f32, |m, v| m.max(v.abs()));
    if max > 0.0 {
        max / 127.0
    } else {
        1.0
    }
}

/// `v` quantized symmetric at `scale`: `round(v / s)` (half to even) in -127..=127.
fn symmetric(v: f32, scale: f32) -> i8 {
    (v / scale).round_ties_even().clamp(-127.0, 127.0) as i8
}

/// An embedding table quantized for int8 inference: each row symmetric int8 on its own
/// largest magnitude (the weights' rule: [`QuantizedWeight::quantize`]), one scale per row,
/// in rows as loaded. A lookup gathers rows back to f32 (`q * s`): the table takes a quarter
/// of the f32 one's memory (BERT-base's word embeddings: 23 MB for 94 MB), and what follows
/// the lookup (the sum of the embeddings, LayerNorm) stays f32. (ONNX Runtime's dynamic
/// quantization quantizes the embeddings' gathers of some graphs, DistilBERT's, and leaves
/// the fused `EmbedLayerNormalization` of BERT's in f32.)
#[derive(Clone, Debug)]
pub struct QuantizedTable {
    q: Vec<i8>,
    scales: Vec<f32>,
    k: usize,
}

impl QuantizedTable {
    /// Quantizes `t`, `rows` rows of `k` values. Panics unless `t` holds `rows * k` values,
    /// all finite.
    pub fn quantize(t: &[f32], rows: usize, k: usize) -> Self {
        assert_eq!(t.len(), rows * k, "table of {rows} x {k}");
        assert!(
            t.iter().all(|v| v.is_finite()),
            "table has a non-finite value"
        );
        let mut q = Vec::with_capacity(rows * k);
        let mut scales = Vec::with_capacity(rows);
        for row in t.chunks_exact(k.max(1)).take(rows) {
            let scale = symmetric_scale(row);
            q.extend(row.iter().map(|&v| symmetric(v, scale)));
            scales.push(scale);
        }
        Self { q, scales, k }
    }

    pub fn rows(&self) -> usize {
        self.scales.len()
    }

    /// Values per row.
    pub fn k(&self) -> usize {
        self.k
    }

    /// Bytes this table holds (values and scales).
    pub fn bytes(&self) -> usize {
        self.q.len() + self.scales.len() * 4
    }

    /// The quantized table as floats again, in rows.
    pub fn dequantize(&self) -> Vec<f32> {
        let ids: Vec<u32> = (0..self.rows() as u32).collect();
        let mut out = vec![0f32; self.q.len()];
        self.gather(&ids, &mut out)
            .expect("every row of the table is inside it");
        out
    }

    /// Writes row `ids[i]` as floats to `out[i * k..(i + 1) * k]`, or returns the first id
    /// that is not a row of the table (`out` then partly written). Panics unless `out`
    /// holds `ids.len() * k` values.
    pub fn gather(&self, ids: &[u32], out: &mut [f32]) -> Result<(), u32> {
        let k = self.k;
        assert_eq!(out.len(), ids.len() * k, "output of {} x {k}", ids.len());
        if k == 0 {
            return ids
                .iter()
                .find(|&&id| id as usize >= self.rows())
                .map_or(Ok(()), |&id| Err(id));
        }
        for (&id, dst) in ids.iter().zip(out.chunks_exact_mut(k)) {
            let (Some(&scale), Some(src)) = (
                self.scales.get(id as usize),
                self.q.get(id as usize * k..(id as usize + 1) * k),
            ) else {
                return Err(id);
            };
            for (d, &v) in dst.iter_mut().zip(src) {
                *d = f32::from(v) * scale;
            }
        }
        Ok(())
    }
}

/// Activations quantized per row for [`int8_linear`]: uint8 with a zero point, each row on its
/// own range (which always includes 0, so 0 is exact): `s = (max - min) / 255`,
/// `z = round(-min / s)`, `q = clamp(round(x / s) + z, 0, 255)`, rounding half to even.
/// A row's `groups` blocks of `k` columns are stored one after another, each padded with
/// zeros to a multiple of four. A buffer: [`Self::quantize`] reuses its memory.
#[derive(Clone, Debug, Default)]
pub struct QuantizedRows {
    data: Vec<u8>,
    scales: Vec<f32>,
    zeros: Vec<i32>,
    rows: usize,
    k: usize,
    groups: usize,
}

impl QuantizedRows {
    /// Nothing quantized yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Quantizes the row-major `x`, whose columns are `groups` blocks of `x.cols() / groups`
    /// inputs, using up to `threads` threads. Panics unless `groups` divides the columns and
    /// every value is finite.
    pub fn quantize(&mut self, x: MatRef, groups: usize, threads: usize) {
        assert!(x.is_row_major(), "row-major activations");
        assert!(
            groups >= 1 && x.cols().is_multiple_of(groups),
            "{} columns in {groups} groups",
            x.cols()
        );
        let (rows, k) = (x.rows(), x.cols() / groups);
        let stride = groups * k.div_ceil(QUAD) * QUAD;
        (self.rows, self.k, self.groups) = (rows, k, groups);
        self.data.resize(rows * stride, 0);
        self.scales.resize(rows, 0.0);
        self.zeros.resize(rows, 0);
        if rows == 0 || stride == 0 {
            return;
        }
        let work = |(r, ((q, scale), zero)): (usize, ((&mut [u8], &mut f32), &mut i32))| {
            let src = &x.data()[r * x.stride()..][..x.cols()];
            (*scale, *zero) = quantize_row(src, q, groups, k);
        };
        if threads > 1 && rows * x.cols() >= super::PAR_MIN_ELEMS {
            self.data
                .par_chunks_exact_mut(stride)
                .zip(self.scales.par_iter_mut())
                .zip(self.zeros.par_iter_mut())
                .enumerate()
                .for_each(work);
        } else {
            self.data
                .chunks_exact_mut(stride)
                .zip(self.scales.iter_mut())
                .zip(self.zeros.iter_mut())
                .enumerate()
                .for_each(work);
        }
    }

    /// Rows quantized.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Inputs per group.
    pub fn k(&self) -> usize {
        self.k
    }

    pub fn groups(&self) -> usize {
        self.groups
    }

    /// Row `r`'s scale and zero point.
    pub fn params(&self, r: usize) -> (f32, i32) {
        (self.scales[r], self.zeros[r])
    }

    /// Row `r`'s quantized value at input `i` of group `g`.
    pub fn q(&self, r: usize, g: usize, i: usize) -> u8 {
        self.data[r * self.stride() + g * self.kp() + i]
    }

    /// Inputs per group, padded to whole quads.
    fn kp(&self) -> usize {
        self.k.div_ceil(QUAD) * QUAD
    }

    fn stride(&self) -> usize {
        self.groups * self.kp()
    }
}

/// Quantizes one row (`groups` blocks of `k`) into `out` (`groups` blocks of `k` padded to
/// quads); returns its scale and zero point.
fn quantize_row(src: &[f32], out: &mut [u8], groups: usize, k: usize) -> (f32, i32) {
    #[cfg(target_arch = "x86_64")]
    let (lo, hi) = if Isa::current().has_avx2() {
        // SAFETY: both x86 tiers run only where AVX2 and FMA are (`Isa::detect_all`).
        unsafe { avx2::range(src) }
    } else {
        range(src)
    };
    #[cfg(not(target_arch = "x86_64"))]
    let (lo, hi) = range(src);
    assert!(lo.is_finite() && hi.is_finite(), "activation is not finite");
    let scale = if hi > lo { (hi - lo) / 255.0 } else { 1.0 };
    let zero = (-lo / scale).round_ties_even().clamp(0.0, 255.0);
    let kp = k.div_ceil(QUAD) * QUAD;
    for g in 0..groups {
        let (dst, from) = (&mut out[g * kp..][..kp], &src[g * k..][..k]);
        #[cfg(target_arch = "x86_64")]
        let done = if Isa::current().has_avx2() {
            // SAFETY: as above.
            unsafe { avx2::quantize(from, &mut dst[..k], scale, zero) }
        } else {
            0
        };
        #[cfg(not(target_arch = "x86_64"))]
        let done = 0;
        for (d, &f) in dst[done..k].iter_mut().zip(&from[done..]) {
            *d = quantize(f, scale, zero);
        }
        dst[k..].fill(0);
    }
    (scale, zero as i32)
}

/// The smallest and largest of `src` and 0.
fn range(src: &[f32]) -> (f32, f32) {
    src.iter().fold((0f32, 0f32), |(lo, hi), &v| {
        (if v < lo { v } else { lo }, if v > hi { v } else { hi })
    })
}

/// One value quantized: `clamp(round(v / scale) + zero, 0, 255)`, half to even.
#[inline(always)]
fn quantize(v: f32, scale: f32, zero: f32) -> u8 {
    ((v / scale).round_ties_even() + zero).clamp(0.0, 255.0) as u8
}

/// `out = act(x W^T + bias)` for every group `g` (inputs of block `g` of `x` times group `g` of
/// `w` into columns `g*n..` of `out`), split over `threads` (1: on the calling thread).
pub fn int8_linear(
    x: &QuantizedRows,
    w: &QuantizedWeight,
    bias: Option<&[f32]>,
    act: Option<Epilogue>,
    out: MatMut,
    threads: usize,
) {
    int8_linear_with(Int8Kernel::current(), x, w, bias, act, out, threads)
}

/// [`int8_linear`] with a chosen kernel (which must be one of [`Int8Kernel::available`]).
pub fn int8_linear_with(
    kernel: Int8Kernel,
    x: &QuantizedRows,
    w: &QuantizedWeight,
    bias: Option<&[f32]>,
    act: Option<Epilogue>,
    mut out: MatMut,
    threads: usize,
) {
    assert!(
        Int8Kernel::available().contains(&kernel),
        "{kernel:?} kernel on this CPU"
    );
    let (m, n, k, groups) = (x.rows, w.n, w.k, w.groups);
    if !check_product(m, (x.groups, x.k), (groups, n, k), &out, bias) {
        return;
    }
    let out_ptr = SendPtr(out.as_mut_ptr());
    let out_stride = out.stride();
    // Rows per block: a block's activations stay in L2 (see `rows_per_block`).
    let mc = rows_per_block(x.kp(), MR, threads);
    over_panels(
        groups,
        w.panels(),
        NP,
        threads,
        m * n * k * groups,
        |g, p0, p1| {
            let job = Job {
                kernel,
                x,
                w,
                g,
                bias: bias.map(|b| &b[g * n..(g + 1) * n]),
                act,
                // `m > 0` and `n > 0` here, so column g*n of row 0 is inside the output, which
                // was checked as m x (groups*n) at `out_stride`.
                out: out_ptr.get().wrapping_add(g * n),
                out_stride,
                mc,
            };
            // SAFETY: `out` (checked above, exclusively borrowed) holds m rows of this group's
            // n columns from `job.out` at `out_stride`, and this item alone writes the columns of
            // panels p0..p1 (`over_panels` splits the panels of a group without overlap).
            unsafe { job.run(p0, p1) };
        },
    );
}

/// One thread's share of a product: panels `p0..p1` of group `g`, all rows.
struct Job<'a> {
    kernel: Int8Kernel,
    x: &'a QuantizedRows,
    w: &'a QuantizedWeight,
    g: usize,
    /// The group's `w.n` biases.
    bias: Option<&'a [f32]>,
    act: Option<Epilogue>,
    /// Element (0, 0) of the group's output columns.
    out: *mut f32,
    out_stride: usize,
    /// Rows per block.
    mc: usize,
}

impl Job<'_> {
    /// Computes the output columns of panels `p0..p1` for every row.
    ///
    /// # Safety
    /// `kernel` must be available; `x` and `w` agree in groups and inputs and `x` has at least
    /// one row; `p0 < p1 <= w.panels()`; `out` must be valid for writes of `x.rows` rows of
    /// the columns `p0 * PANEL .. min(p1 * PANEL, w.n)` at `out_stride`, which no one else
    /// accesses meanwhile.
    unsafe fn run(&self, p0: usize, p1: usize) {
        let (m, n, g) = (self.x.rows, self.w.n, self.g);
        let (kq, stride, kp) = (self.w.kq(), self.x.stride(), self.x.kp());
        let out = (self.out, self.out_stride);
        let tile = |Block {
                        ic,
                        rows,
                        p,
                        col0,
                        cols,
                        ..
                    }| {
            let o0 = g * n + col0;
            let tile = QTile {
                // Rows ic.. of group g's inputs: inside the buffer (ic < m, g < groups).
                a: &self.x.data[ic * stride + g * kp..],
                lda: stride,
                b: self.w.panels_from(g, p),
                kq,
                row_scales: &self.x.scales[ic..ic + rows],
                row_zeros: &self.x.zeros[ic..ic + rows],
                col_scales: &self.w.scales[o0..o0 + cols],
                col_sums: &self.w.sums[o0..o0 + cols],
                bias: self.bias.map(|b| &b[col0..col0 + cols]),
                // SAFETY: row ic, column col0 is inside the output the caller guarantees
                // (ic < m, col0 < n).
                c: unsafe { self.out.add(ic * self.out_stride + col0) },
                ldc: self.out_stride,
                rows,
                cols,
            };
            // The tile's invariant holds: `a` has `rows` rows of kq quads at `lda` (from
            // g * kp; kq quads fit in kp), `b` the block's panels, the row and column slices
            // `rows` and `cols` values, `c` rows x cols at `ldc` (caller); 1 <= cols <= 32.
            // SAFETY: as above; the kernel is available (caller).
            unsafe { tile.run(self.kernel) };
        };
        // SAFETY: m > 0 and p0 < p1 <= panels (caller); `out` holds this job's m rows of
        // those columns, which no one else accesses (caller), and `tile` writes every block.
        unsafe { for_each_block(m, self.mc, n, (p0, p1), NP, self.act, out, tile) };
    }
}

/// A block of `rows x cols` outputs at `c` (row stride `ldc`) from `rows` quantized activation
/// rows in `a` (`lda` bytes apart, `kq` quads each) and the panels in `b` (`kq` quads each,
/// one after another).
///
/// The tile's invariant, which every `unsafe fn` taking one relies on: `a` holds at least
/// `(rows - 1) * lda + 4 * kq` bytes; `b` holds `cols.div_ceil(PANEL)` panels of `kq` quads;
/// `row_scales`/`row_zeros` have `rows` values and `col_scales`/`col_sums` (and `bias`, when
/// given) `cols`; `c` is writable for `rows` rows of `cols` values at `ldc`, accessed by no
/// one else; `1 <= cols <= NP * PANEL`.
struct QTile<'a> {
    a: &'a [u8],
    lda: usize,
    b: &'a [QuadRow],
    kq: usize,
    row_scales: &'a [f32],
    row_zeros: &'a [i32],
    col_scales: &'a [f32],
    col_sums: &'a [i32],
    bias: Option<&'a [f32]>,
    c: *mut f32,
    ldc: usize,
    rows: usize,
    cols: usize,
}

impl QTile<'_> {
    /// # Safety
    /// The tile's invariant (see [`QTile`]); `kernel` is available on this CPU.
    unsafe fn run(&self, kernel: Int8Kernel) {
        match kernel {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: AVX-512 VNNI is available (caller); the tile's invariant holds.
            Int8Kernel::Vnni512 => unsafe { vnni::rows(self) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: AVX-VNNI and AVX2 are available (caller); the tile's invariant holds.
            Int8Kernel::AvxVnni => unsafe { avx2_tiles::rows_vnni(self) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: the Avx2 kernel is available only where AVX2 is; the tile's invariant.
            Int8Kernel::Avx2 => unsafe { avx2_tiles::rows_maddubs(self) },
            // SAFETY: the tile's invariant.
            _ => unsafe { self.portable() },
        }
    }

    /// The sums in plain Rust, one output row and panel at a time: the reference the register
    /// kernels are tested against (the same arithmetic, so the same bits).
    ///
    /// # Safety
    /// The tile's invariant.
    #[inline(always)]
    unsafe fn portable(&self) {
        for r in 0..self.rows {
            let a = &self.a[r * self.lda..][..self.kq * QUAD];
            for j in 0..self.cols.div_ceil(PANEL) {
                let b = &self.b[j * self.kq..][..self.kq];
                let mut acc = [0i32; PANEL];
                for (quad, w) in a.chunks_exact(QUAD).zip(b) {
                    for (o, v) in acc.iter_mut().enumerate() {
                        let ws = &w.0[o * QUAD..][..QUAD];
                        *v += quad
                            .iter()
                            .zip(ws)
                            .map(|(&x, &y)| i32::from(x) * i32::from(y))
                            .sum::<i32>();
                    }
                }
                let cols = PANEL.min(self.cols - j * PANEL);
                for (o, v) in acc.iter().enumerate().take(cols) {
                    let col = j * PANEL + o;
                    let y = self.finish(r, col, *v);
                    // SAFETY: r < rows, col < cols: an output of this tile (invariant).
                    unsafe { *self.c.add(r * self.ldc + col) = y };
                }
            }
        }
    }

    /// Output `(r, col)` from its int32 sum: the scheme's one formula (see the module).
    #[inline(always)]
    fn finish(&self, r: usize, col: usize, acc: i32) -> f32 {
        let v = (acc - self.row_zeros[r] * self.col_sums[col]) as f32;
        let y = v * (self.row_scales[r] * self.col_scales[col]);
        match self.bias {
            Some(b) => y + b[col],
            None => y,
        }
    }
}

/// The activations' quantization with AVX2: the compiler kept both passes scalar (a select per
/// value for the range, a conversion and an insert per byte), and they cost as much as the
/// product they feed.
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    /// [`super::range`], eight lanes at a time.
    ///
    /// # Safety
    /// The CPU must have AVX2.
    #[target_feature(enable = "avx2")]
    pub unsafe fn range(src: &[f32]) -> (f32, f32) {
        let (mut lo, mut hi) = (_mm256_setzero_ps(), _mm256_setzero_ps());
        let chunks = src.chunks_exact(8);
        let (tail_lo, tail_hi) = super::range(chunks.remainder());
        for c in chunks {
            // SAFETY: the chunk holds 8 values.
            let v = unsafe { _mm256_loadu_ps(c.as_ptr()) };
            // `min(v, lo)` is `v < lo ? v : lo`: a NaN is passed over, as in `super::range`.
            lo = _mm256_min_ps(v, lo);
            hi = _mm256_max_ps(v, hi);
        }
        let (mut l, mut h) = ([0f32; 8], [0f32; 8]);
        // SAFETY: both arrays hold 8 values.
        unsafe {
            _mm256_storeu_ps(l.as_mut_ptr(), lo);
            _mm256_storeu_ps(h.as_mut_ptr(), hi);
        }
        let lo = l.iter().fold(tail_lo, |m, &v| if v < m { v } else { m });
        let hi = h.iter().fold(tail_hi, |m, &v| if v > m { v } else { m });
        (lo, hi)
    }

    /// [`super::quantize`] on the first `src.len() / 32 * 32` values into `dst` (as long as
    /// `src`), 32 at a time, with the same operations (a correctly rounded division, rounding
    /// half to even), so the same bytes; returns how many it did.
    ///
    /// # Safety
    /// The CPU must have AVX2.
    #[target_feature(enable = "avx2")]
    pub unsafe fn quantize(src: &[f32], dst: &mut [u8], scale: f32, zero: f32) -> usize {
        assert_eq!(src.len(), dst.len());
        let (s, z) = (_mm256_set1_ps(scale), _mm256_set1_ps(zero));
        let (lo, hi) = (_mm256_setzero_ps(), _mm256_set1_ps(255.0));
        // packs/packus interleave the two 128-bit lanes: this puts the bytes back in order.
        let order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
        let n = src.len() / 32 * 32;
        for (d, c) in dst[..n].chunks_exact_mut(32).zip(src[..n].chunks_exact(32)) {
            let q: [__m256i; 4] = std::array::from_fn(|i| {
                // SAFETY: the chunk holds 32 values; these are 8i..8i+8.
                let v = unsafe { _mm256_loadu_ps(c.as_ptr().add(8 * i)) };
                let r = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
                    _mm256_div_ps(v, s),
                );
                let r = _mm256_min_ps(_mm256_max_ps(_mm256_add_ps(r, z), lo), hi);
                _mm256_cvttps_epi32(r)
            });
            let words = [
                _mm256_packs_epi32(q[0], q[1]),
                _mm256_packs_epi32(q[2], q[3]),
            ];
            let bytes = _mm256_permutevar8x32_epi32(_mm256_packus_epi16(words[0], words[1]), order);
            // SAFETY: the chunk of `dst` holds 32 bytes.
            unsafe { _mm256_storeu_si256(d.as_mut_ptr().cast(), bytes) };
        }
        n
    }
}

#[cfg(target_arch = "x86_64")]
mod vnni {
    use super::super::split::rows_of_tiles;
    use super::{QTile, PANEL, QUAD};
    use std::arch::x86_64::*;

    /// How many quads ahead of use the block's first tile prefetches its panels: 4 KiB a
    /// panel.
    const PREFETCH_QUADS: usize = 64;

    /// A block of rows: tiles of 12, then one of the rest, each over one or two panels.
    ///
    /// # Safety
    /// AVX-512F, BW and VNNI available; the tile's invariant.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub unsafe fn rows(t: &QTile) {
        rows_of_tiles!(t, tile)
    }

    /// Rows `r0..r0 + R` x `P` panels: `R * P` accumulators of 16 int32 lanes, `P` weight
    /// loads and `R` broadcasts of four activations per four inputs, then the scheme's
    /// epilogue in the same order of operations as the portable tile.
    ///
    /// # Safety
    /// AVX-512F, BW and VNNI available; the tile's invariant; `r0 + R <= rows`;
    /// `(P - 1) * 16 < cols <= P * 16`.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    unsafe fn tile<const R: usize, const P: usize>(t: &QTile, r0: usize) {
        debug_assert!(r0 + R <= t.rows && t.cols > (P - 1) * PANEL && t.cols <= P * PANEL);
        let masks: [__mmask16; P] = std::array::from_fn(|j| {
            let cols = t.cols.saturating_sub(j * PANEL).min(PANEL);
            ((1u32 << cols) - 1) as __mmask16
        });
        // SAFETY: row r0 + r < rows starts inside `a` (invariant: the last row's kq quads end
        // inside it).
        let rows: [*const u8; R] =
            std::array::from_fn(|r| unsafe { t.a.as_ptr().add((r0 + r) * t.lda) });
        let b = t.b.as_ptr().cast::<i8>();
        // The block's first tile reads the panels from memory: it asks for each panel's quads
        // ahead of use. The second asks for the panels after its own into L2, so the next
        // pair's first tile finds them there; the later ones find theirs in L1 or L2.
        // SAFETY: `rows` hold kq quads each, `b` P panels of kq quads (the tile's invariant).
        let acc = unsafe {
            match r0 {
                0 => sums::<R, P, FIRST>(rows, b, t.kq),
                12 => sums::<R, P, SECOND>(rows, b, t.kq),
                _ => sums::<R, P, LATER>(rows, b, t.kq),
            }
        };
        // The columns' sums, scales and biases: each slice holds `cols` values, panel j's
        // start j * 16 < cols in, and mask j enables only those.
        let sums: [__m512i; P] = std::array::from_fn(|j| {
            // SAFETY: as above.
            unsafe { _mm512_maskz_loadu_epi32(masks[j], t.col_sums.as_ptr().add(j * PANEL)) }
        });
        let scales: [__m512; P] = std::array::from_fn(|j| {
            // SAFETY: as above.
            unsafe { _mm512_maskz_loadu_ps(masks[j], t.col_scales.as_ptr().add(j * PANEL)) }
        });
        let bias: Option<[__m512; P]> = t.bias.map(|b| {
            std::array::from_fn(|j| {
                // SAFETY: as above.
                unsafe { _mm512_maskz_loadu_ps(masks[j], b.as_ptr().add(j * PANEL)) }
            })
        });
        for (r, row) in acc.iter().enumerate() {
            let zero = _mm512_set1_epi32(t.row_zeros[r0 + r]);
            let scale = _mm512_set1_ps(t.row_scales[r0 + r]);
            for (j, v) in row.iter().enumerate() {
                let v = _mm512_sub_epi32(*v, _mm512_mullo_epi32(zero, sums[j]));
                let y = _mm512_mul_ps(_mm512_cvtepi32_ps(v), _mm512_mul_ps(scale, scales[j]));
                let y = match &bias {
                    Some(b) => _mm512_add_ps(y, b[j]),
                    None => y,
                };
                // SAFETY: row r0 + r < rows; panel j's columns hold at least one output of
                // the tile, and the mask enables only those.
                unsafe {
                    _mm512_mask_storeu_ps(t.c.add((r0 + r) * t.ldc + j * PANEL), masks[j], y)
                };
            }
        }
    }
    /// Which prefetch a tile's sums do (see [`tile`]).
    const FIRST: u8 = 0;
    const SECOND: u8 = 1;
    const LATER: u8 = 2;

    /// The int32 sums of `R` rows by `P` panels of `kq` quads, with the prefetch `PF` asks
    /// for. Its own function, over a loop with no branch in it: with the prefetches' branches
    /// in the tile's loop, LLVM kept the accumulators in a stack array, stored back after
    /// every `vpdpbusd` (a third of the speed).
    ///
    /// # Safety
    /// AVX-512F, BW and VNNI available; each of `rows` holds `kq` quads; `b` holds `P`
    /// panels of `kq` aligned 64-byte quads, one after another.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    unsafe fn sums<const R: usize, const P: usize, const PF: u8>(
        rows: [*const u8; R],
        b: *const i8,
        kq: usize,
    ) -> [[__m512i; P]; R] {
        let panel_bytes = kq * PANEL * QUAD;
        let mut acc = [[_mm512_setzero_si512(); P]; R];
        for q in 0..kq {
            for j in 0..P {
                // A prefetch reads nothing and may name any address: `wrapping_add` forms it
                // without claiming it is in bounds.
                match PF {
                    FIRST => _mm_prefetch::<_MM_HINT_T0>(
                        b.wrapping_add(j * panel_bytes + (q + PREFETCH_QUADS) * 64),
                    ),
                    SECOND => {
                        _mm_prefetch::<_MM_HINT_T1>(b.wrapping_add((P + j) * panel_bytes + q * 64))
                    }
                    _ => {}
                }
            }
            let bv: [__m512i; P] = std::array::from_fn(|j| {
                // SAFETY: panel j < P holds kq aligned 64-byte quads; this is quad q < kq.
                unsafe { _mm512_load_si512(b.add(j * panel_bytes + q * 64).cast()) }
            });
            for (row, a) in acc.iter_mut().zip(&rows) {
                // SAFETY: each row holds kq quads of 4 bytes; this is quad q < kq.
                let four = unsafe { a.add(q * QUAD).cast::<i32>().read_unaligned() };
                let av = _mm512_set1_epi32(four);
                for j in 0..P {
                    row[j] = _mm512_dpbusd_epi32(row[j], av, bv[j]);
                }
            }
        }
        acc
    }
}

/// The AVX2-register kernels: AVX-VNNI's `vpdpbusd` where the CPU has it, else the same exact
/// sums from AVX2's byte and word products (`vpmaddubsw`, `vpmaddwd`). Both run tiles of up
/// to six rows by one panel (AVX2 has 16 registers) and share the epilogue.
#[cfg(target_arch = "x86_64")]
mod avx2_tiles {
    use super::{QTile, PANEL, QUAD};
    use std::arch::x86_64::*;

    /// A block of rows for `$tile`: per panel, tiles of `$r` rows, then one of the rest.
    macro_rules! panels_of_tiles {
        ($t:ident, $tile:ident, $r:literal) => {{
            for j in 0..$t.cols.div_ceil(PANEL) {
                let mut r0 = 0;
                while $t.rows - r0 >= $r {
                    // SAFETY: rows r0..r0 + R are the tile's; panel j has columns.
                    unsafe { $tile::<$r>($t, r0, j) };
                    r0 += $r;
                }
                // SAFETY: as above, for the rows left (fewer than R).
                unsafe {
                    match $t.rows - r0 {
                        0 => {}
                        1 => $tile::<1>($t, r0, j),
                        2 => $tile::<2>($t, r0, j),
                        3 => $tile::<3>($t, r0, j),
                        4 => $tile::<4>($t, r0, j),
                        _ => $tile::<5>($t, r0, j),
                    }
                }
            }
        }};
    }

    /// A block of rows on AVX-VNNI.
    ///
    /// # Safety
    /// AVX2 and AVX-VNNI available; the tile's invariant.
    #[target_feature(enable = "avx2,avxvnni")]
    pub unsafe fn rows_vnni(t: &QTile) {
        panels_of_tiles!(t, tile_vnni, 6)
    }

    /// A block of rows on AVX2 alone.
    ///
    /// # Safety
    /// AVX2 available; the tile's invariant.
    #[target_feature(enable = "avx2")]
    pub unsafe fn rows_maddubs(t: &QTile) {
        panels_of_tiles!(t, tile_maddubs, 4)
    }

    /// Row `r`'s pointer and panel `j`'s weights of a tile starting at row `r0`.
    ///
    /// # Safety
    /// The tile's invariant; `r0 + R <= rows`; `j * 16 < cols`.
    #[inline(always)]
    unsafe fn operands<const R: usize>(
        t: &QTile,
        r0: usize,
        j: usize,
    ) -> ([*const u8; R], *const i8) {
        // SAFETY: row r0 + r < rows starts inside `a` (invariant).
        let rows = std::array::from_fn(|r| unsafe { t.a.as_ptr().add((r0 + r) * t.lda) });
        // SAFETY: panel j of the tile's panels (j * 16 < cols) holds kq quads.
        let b = unsafe { t.b.as_ptr().add(j * t.kq) }.cast::<i8>();
        (rows, b)
    }

    /// How many quads ahead of use a panel's first tile prefetches it (as the 512-bit
    /// kernel's, [`super::vnni`]).
    const PREFETCH_QUADS: usize = 64;

    /// Asks for quad `q + PREFETCH_QUADS` of panel `b` (a panel's first tile reads it from
    /// memory; the later ones find it in L1 or L2). A prefetch reads nothing and may name any
    /// address: `wrapping_add` forms it without claiming it is in bounds.
    #[inline(always)]
    fn prefetch(b: *const i8, q: usize) {
        // SAFETY: a prefetch has no effect on memory and cannot fault; SSE is part of x86-64.
        unsafe { _mm_prefetch::<_MM_HINT_T0>(b.wrapping_add((q + PREFETCH_QUADS) * 64)) };
    }

    /// Quad `q` of panel `b`: two halves of eight outputs' four inputs.
    ///
    /// # Safety
    /// `b` is a panel of at least `q + 1` aligned 64-byte quads.
    #[inline(always)]
    unsafe fn weights(b: *const i8, q: usize) -> [__m256i; 2] {
        // SAFETY: the caller's guarantee.
        unsafe {
            let p = b.add(q * 64);
            [
                _mm256_load_si256(p.cast()),
                _mm256_load_si256(p.add(32).cast()),
            ]
        }
    }

    /// Rows `r0..r0 + R` of panel `j` on `vpdpbusd`: `2R` accumulators of 8 int32 lanes
    /// (outputs 0-7 and 8-15), two weight loads and `R` broadcasts per four inputs.
    ///
    /// # Safety
    /// AVX2 and AVX-VNNI available; the tile's invariant; `r0 + R <= rows`; `j * 16 < cols`.
    #[target_feature(enable = "avx2,avxvnni")]
    unsafe fn tile_vnni<const R: usize>(t: &QTile, r0: usize, j: usize) {
        debug_assert!(r0 + R <= t.rows && j * PANEL < t.cols);
        // SAFETY: the caller's guarantee.
        let (rows, b) = unsafe { operands::<R>(t, r0, j) };
        let mut acc = [[_mm256_setzero_si256(); 2]; R];
        for q in 0..t.kq {
            if r0 == 0 {
                prefetch(b, q);
            }
            // SAFETY: quad q < kq of the panel.
            let bv = unsafe { weights(b, q) };
            for (row, a) in acc.iter_mut().zip(&rows) {
                // SAFETY: each row holds kq quads of 4 bytes; this is quad q < kq.
                let four = unsafe { a.add(q * QUAD).cast::<i32>().read_unaligned() };
                let av = _mm256_set1_epi32(four);
                row[0] = _mm256_dpbusd_avx_epi32(row[0], av, bv[0]);
                row[1] = _mm256_dpbusd_avx_epi32(row[1], av, bv[1]);
            }
        }
        // SAFETY: the caller's guarantee; the sums are the activations' own.
        unsafe { store::<R>(t, r0, j, &acc, 0) };
    }

    /// Rows `r0..r0 + R` of panel `j` on AVX2's byte products, exact: `vpmaddubsw` multiplies
    /// unsigned by signed bytes and adds pairs into int16, which would saturate on uint8
    /// activations (255 x 127 x 2 > 32767). So each activation is shifted to `a - 128` (a
    /// signed byte; an XOR of its top bit) and the product is taken as `|a - 128|` (at most
    /// 128, unsigned) by the weight with `a - 128`'s sign (`vpsignb`; a weight is never -128,
    /// so its negation fits): a pair adds up to at most 2 x 128 x 127 = 32512, and `vpmaddwd`
    /// by ones adds the pairs of four inputs into int32 lanes, as `vpdpbusd` does. The sums
    /// are then `Σ (a - 128) w`, which the epilogue turns into `Σ a w` with the column sums
    /// (`+ 128 c_o`): the same int32 values as every other kernel, so the same bits.
    ///
    /// # Safety
    /// AVX2 available; the tile's invariant; `r0 + R <= rows`; `j * 16 < cols`.
    #[target_feature(enable = "avx2")]
    unsafe fn tile_maddubs<const R: usize>(t: &QTile, r0: usize, j: usize) {
        debug_assert!(r0 + R <= t.rows && j * PANEL < t.cols);
        // SAFETY: the caller's guarantee.
        let (rows, b) = unsafe { operands::<R>(t, r0, j) };
        let (top, ones) = (_mm256_set1_epi8(-128), _mm256_set1_epi16(1));
        let mut acc = [[_mm256_setzero_si256(); 2]; R];
        // One step of four inputs for every row, from each row's shifted activations and their
        // magnitudes (four bytes each, broadcast).
        let step =
            |acc: &mut [[__m256i; 2]; R], bv: [__m256i; 2], shifted: [i32; R], mag: [i32; R]| {
                for ((row, s), m) in acc.iter_mut().zip(shifted).zip(mag) {
                    let (s, m) = (_mm256_set1_epi32(s), _mm256_set1_epi32(m));
                    for (acc, w) in row.iter_mut().zip(&bv) {
                        let pairs = _mm256_maddubs_epi16(m, _mm256_sign_epi8(*w, s));
                        *acc = _mm256_add_epi32(*acc, _mm256_madd_epi16(pairs, ones));
                    }
                }
            };
        // Eight quads at a time, each row's shift and magnitude are taken once for all eight
        // (one XOR and one absolute value per 32 bytes instead of per 4) and kept in L1 for
        // the broadcasts.
        let chunks = t.kq / 8;
        for c in 0..chunks {
            let mut shifted = [[0i32; 8]; R];
            let mut mag = [[0i32; 8]; R];
            for (r, a) in rows.iter().enumerate() {
                // SAFETY: each row holds kq quads of 4 bytes; these are quads 8c..8c + 8 <= kq.
                let v = unsafe { _mm256_loadu_si256(a.add(c * 32).cast()) };
                let v = _mm256_xor_si256(v, top);
                // SAFETY: both arrays hold 8 values (32 bytes).
                unsafe {
                    _mm256_storeu_si256(shifted[r].as_mut_ptr().cast(), v);
                    _mm256_storeu_si256(mag[r].as_mut_ptr().cast(), _mm256_abs_epi8(v));
                }
            }
            for i in 0..8 {
                if r0 == 0 {
                    prefetch(b, 8 * c + i);
                }
                // SAFETY: quad 8c + i < kq of the panel.
                let bv = unsafe { weights(b, 8 * c + i) };
                step(
                    &mut acc,
                    bv,
                    std::array::from_fn(|r| shifted[r][i]),
                    std::array::from_fn(|r| mag[r][i]),
                );
            }
        }
        for q in chunks * 8..t.kq {
            // SAFETY: quad q < kq of the panel.
            let bv = unsafe { weights(b, q) };
            let shifted: [i32; R] = std::array::from_fn(|r| {
                // SAFETY: each row holds kq quads of 4 bytes; this is quad q < kq.
                unsafe {
                    rows[r].add(q * QUAD).cast::<i32>().read_unaligned()
                        ^ i32::from_ne_bytes([0x80; 4])
                }
            });
            let mag = shifted
                .map(|s| i32::from_ne_bytes(s.to_ne_bytes().map(|b| (b as i8).unsigned_abs())));
            step(&mut acc, bv, shifted, mag);
        }
        // SAFETY: the caller's guarantee; the sums are of the activations less 128.
        unsafe { store::<R>(t, r0, j, &acc, 128) };
    }

    /// The scheme's epilogue for rows `r0..r0 + R` of panel `j` from sums of the activations
    /// less `offset` (`Σ (a - offset) w`), in the same order of operations as the portable tile
    /// once the zero point's correction is exact: `v = sum - (z - offset) c_o`. Outputs past
    /// `cols` (computed on zero weights) are not stored.
    ///
    /// # Safety
    /// AVX2 available; the tile's invariant; `r0 + R <= rows`; `j * 16 < cols`.
    #[target_feature(enable = "avx2")]
    #[inline]
    unsafe fn store<const R: usize>(
        t: &QTile,
        r0: usize,
        j: usize,
        acc: &[[__m256i; 2]; R],
        offset: i32,
    ) {
        let cols = PANEL.min(t.cols - j * PANEL);
        let c0 = j * PANEL;
        let mut sums = [0i32; PANEL];
        let mut scales = [0f32; PANEL];
        let mut bias = [0f32; PANEL];
        sums[..cols].copy_from_slice(&t.col_sums[c0..c0 + cols]);
        scales[..cols].copy_from_slice(&t.col_scales[c0..c0 + cols]);
        if let Some(b) = t.bias {
            bias[..cols].copy_from_slice(&b[c0..c0 + cols]);
        }
        for (r, row) in acc.iter().enumerate() {
            let zero = _mm256_set1_epi32(t.row_zeros[r0 + r] - offset);
            let scale = _mm256_set1_ps(t.row_scales[r0 + r]);
            let mut y = [0f32; PANEL];
            for (h, v) in row.iter().enumerate() {
                // SAFETY: the arrays hold 16 values; half h is 8 of them.
                let (s, sc, bi) = unsafe {
                    (
                        _mm256_loadu_si256(sums.as_ptr().add(8 * h).cast()),
                        _mm256_loadu_ps(scales.as_ptr().add(8 * h)),
                        _mm256_loadu_ps(bias.as_ptr().add(8 * h)),
                    )
                };
                let v = _mm256_sub_epi32(*v, _mm256_mullo_epi32(zero, s));
                let out = _mm256_mul_ps(_mm256_cvtepi32_ps(v), _mm256_mul_ps(scale, sc));
                // Without a bias nothing is added, as in the portable tile.
                let out = if t.bias.is_some() {
                    _mm256_add_ps(out, bi)
                } else {
                    out
                };
                // SAFETY: `y` holds 16 values; half h is 8 of them.
                unsafe { _mm256_storeu_ps(y.as_mut_ptr().add(8 * h), out) };
            }
            // SAFETY: row r0 + r < rows; columns c0..c0 + cols are outputs of the tile.
            let out = unsafe { t.c.add((r0 + r) * t.ldc + c0) };
            for (c, v) in y.iter().enumerate().take(cols) {
                // SAFETY: as above, c < cols.
                unsafe { *out.add(c) = *v };
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

    /// The weight's quantization: symmetric per output, rounding half to even, within half a
    /// step of the weight; an all-zero output keeps zeros.
    #[test]
    fn weights_quantize_per_output_within_half_a_step() {
        let (n, k) = (19, 10);
        let mut w = values(n * k, 9);
        w[3 * k..4 * k].fill(0.0);
        // Output 5's largest magnitude is negative: it still maps to -127.
        w[5 * k + 2] = -3.0;
        let q = QuantizedWeight::quantize(&w, 1, n, k);
        let back = q.dequantize();
        for o in 0..n {
            let max = w[o * k..(o + 1) * k]
                .iter()
                .fold(0f32, |m, v| m.max(v.abs()));
            let s = q.scale(0, o);
            assert_eq!(s, if max > 0.0 { max / 127.0 } else { 1.0 });
            for i in 0..k {
                assert!((back[o * k + i] - w[o * k + i]).abs() <= s / 2.0 * 1.0001);
                assert!((-127..=127).contains(&q.q(0, o, i)));
            }
        }
        assert_eq!(q.q(0, 5, 2), -127);
        assert!((0..k).all(|i| q.q(0, 3, i) == 0));
        // Half to even: 2.5 steps -> 2, 3.5 -> 4.
        let q = QuantizedWeight::quantize(&[127.0, 2.5, 3.5, -2.5], 1, 1, 4);
        assert_eq!((q.q(0, 0, 1), q.q(0, 0, 2), q.q(0, 0, 3)), (2, 4, -2));
    }

    /// Rows quantize on their own range, zero exact, the ends at 0 and 255, padding zero.
    /// An embedding table: each row on its own scale, as a weight's outputs are (the same
    /// values, so the same rule); a lookup gives the rows' dequantized values in the order
    /// asked, repeats included, and an id past the table is returned, not read.
    #[test]
    fn tables_quantize_per_row_and_gather_the_rows_asked_for() {
        let (rows, k) = (7, 13);
        let mut t = values(rows * k, 4);
        t[2 * k..3 * k].fill(0.0);
        t[4 * k + 1] = -2.0;
        let table = QuantizedTable::quantize(&t, rows, k);
        let weight = QuantizedWeight::quantize(&t, 1, rows, k);
        assert_eq!((table.rows(), table.k()), (rows, k));
        assert_eq!(table.dequantize(), weight.dequantize());
        assert_eq!(table.bytes(), rows * k + rows * 4);
        let ids = [4u32, 0, 4, 6];
        let mut out = vec![f32::NAN; ids.len() * k];
        table.gather(&ids, &mut out).unwrap();
        let all = table.dequantize();
        for (i, &id) in ids.iter().enumerate() {
            let want = &all[id as usize * k..][..k];
            assert_eq!(&out[i * k..][..k], want);
            for (got, orig) in want.iter().zip(&t[id as usize * k..][..k]) {
                assert!((got - orig).abs() <= weight.scale(0, id as usize) / 2.0 * 1.0001);
            }
        }
        assert_eq!(all[4 * k + 1], -2.0);
        assert!(all[2 * k..3 * k].iter().all(|&v| v == 0.0));
        let mut out = vec![0f32; 2 * k];
        assert_eq!(table.gather(&[1, 7], &mut out), Err(7));
        assert_eq!(table.gather(&[u32::MAX, 0], &mut out), Err(u32::MAX));
    }

    #[test]
    fn rows_quantize_on_their_own_range() {
        let x = [
            -1.0, 0.5, 2.0, 0.0, 0.25, // min -1, max 2
            3.0, 3.0, 1.0, 2.0, 0.5, // all positive: the range starts at 0
            0.0, 0.0, 0.0, 0.0, 0.0, // all zero
        ];
        let mut q = QuantizedRows::new();
        q.quantize(MatRef::new(&x, 3, 5, 5), 1, 1);
        let (s, z) = q.params(0);
        assert_eq!(s, 3.0 / 255.0);
        assert_eq!(z, 85);
        assert_eq!((q.q(0, 0, 0), q.q(0, 0, 2), q.q(0, 0, 3)), (0, 255, 85));
        assert_eq!(q.params(1), (3.0 / 255.0, 0));
        assert_eq!(q.q(1, 0, 0), 255);
        assert_eq!(q.params(2), (1.0, 0));
        // Padding to a whole quad is zero.
        assert_eq!(q.data[5..8], [0, 0, 0]);
        for r in 0..2 {
            let (s, z) = q.params(r);
            for i in 0..5 {
                let back = (f32::from(q.q(r, 0, i)) - z as f32) * s;
                assert!((back - x[r * 5 + i]).abs() <= s / 2.0 * 1.0001);
            }
        }
        // Groups are padded each on its own; a reused buffer is overwritten.
        let y = values(2 * 6, 3);
        q.quantize(MatRef::new(&y, 2, 6, 6), 2, 1);
        assert_eq!((q.rows(), q.k(), q.groups()), (2, 3, 2));
        assert_eq!(q.data.len(), 2 * 8);
        assert_eq!(q.data[3], 0);
        assert_eq!(q.data[7], 0);
    }

    /// `BERTBENCH_INT8_KERNEL`: a kernel by its id, or an error naming the variable and the
    /// choices; a tier runs no kernel wider than its registers.
    #[test]
    fn a_forced_kernel_is_parsed_or_refused_by_name() {
        use std::ffi::OsStr;
        let parse = |v: &str| FORCED_KERNEL.parse_value(Some(OsStr::new(v)));
        assert_eq!(FORCED_KERNEL.parse_value(None), Ok(None));
        for k in Int8Kernel::ALL {
            assert_eq!(parse(k.id()), Ok(Some(k)));
        }
        for bad in ["", "vnni", "AVX2", "avx2,portable"] {
            let e = parse(bad).unwrap_err();
            assert!(e.starts_with(&format!("{KERNEL_ENV}=")), "{bad:?}: {e}");
            assert!(e.contains("avx512-vnni, avx-vnni, avx2, portable"), "{e}");
        }
        assert!(Int8Kernel::Portable.allowed_on(Isa::Portable));
        assert!(!Int8Kernel::Avx2.allowed_on(Isa::Portable));
        assert!(!Int8Kernel::Vnni512.allowed_on(Isa::Avx2));
        for isa in Isa::available() {
            // The tier's own kernel is always allowed; the names list it.
            let own = Int8Kernel::for_isa(*isa);
            assert!(own.allowed_on(*isa));
            assert!(Int8Kernel::allowed_names(*isa).contains(own.id()));
        }
    }

    /// Every kernel, every edge (partial row tiles, one and two panels, odd inputs, groups,
    /// strided activations, no bias, an epilogue, threads) against an f64 reference of the
    /// quantized arithmetic (exact int sums); every kernel gives the portable kernel's bits.
    #[test]
    fn int8_linear_matches_the_quantized_reference_on_every_kernel() {
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
            let qw = QuantizedWeight::quantize(&w, groups, n, k);
            let mut qx = QuantizedRows::new();
            qx.quantize(MatRef::new(&x, m, groups * k, stride), groups, 1);
            for (with_bias, act) in [
                (true, None),
                (false, None),
                (true, Some(square as Epilogue)),
            ] {
                let mut first: Option<Vec<f32>> = None;
                for &kernel in Int8Kernel::available() {
                    for threads in if cfg!(miri) { vec![1] } else { vec![1, 3] } {
                        let mut out = vec![f32::NAN; m * groups * n];
                        int8_linear_with(
                            kernel,
                            &qx,
                            &qw,
                            with_bias.then_some(&bias[..]),
                            act,
                            MatMut::new(&mut out, m, groups * n, groups * n),
                            threads,
                        );
                        for r in 0..m {
                            let (s, z) = qx.params(r);
                            for g in 0..groups {
                                for o in 0..n {
                                    let sum: i64 = (0..k)
                                        .map(|i| {
                                            (i64::from(qx.q(r, g, i)) - i64::from(z))
                                                * i64::from(qw.q(g, o, i))
                                        })
                                        .sum();
                                    let mut want =
                                        sum as f64 * f64::from(s) * f64::from(qw.scale(g, o));
                                    if with_bias {
                                        want += f64::from(bias[g * n + o]);
                                    }
                                    if act.is_some() {
                                        want *= want;
                                    }
                                    let got = f64::from(out[r * groups * n + g * n + o]);
                                    assert!(
                                        (got - want).abs() <= 1e-5 * (1.0 + want.abs()),
                                        "{kernel:?} {m}x{k}x{n}/{groups} t{threads}: ({r},{g},{o}) {got} vs {want}"
                                    );
                                }
                            }
                        }
                        match &first {
                            None => first = Some(out),
                            Some(f) => assert!(
                                f.iter().zip(&out).all(|(a, b)| a.to_bits() == b.to_bits()),
                                "{kernel:?} t{threads} differs from the first kernel's bits"
                            ),
                        }
                    }
                }
            }
        }
    }

    /// The worst case for 16-bit pair sums (`vpmaddubsw`): activations at both ends of their
    /// range (0 and 255) against weights of +-127, in every sign pattern of a pair: every
    /// kernel gives the exact int32 sums (no saturation), so the exact result.
    #[test]
    fn extreme_values_give_exact_sums_on_every_kernel() {
        let (m, k, n) = if cfg!(miri) { (2, 8, 3) } else { (9, 72, 20) };
        // Row r alternates its two ends in a pattern of its own; on the range 0..255 the scale
        // is 1 and the bytes are the values.
        let x: Vec<f32> = (0..m * k)
            .map(|i| if (i + i / k) % 3 == 0 { 0.0 } else { 255.0 })
            .collect();
        let w: Vec<f32> = (0..n * k)
            .map(|i| if (i / 2 + i / k) % 2 == 0 { 1.0 } else { -1.0 })
            .collect();
        let qw = QuantizedWeight::quantize(&w, 1, n, k);
        let mut qx = QuantizedRows::new();
        qx.quantize(MatRef::new(&x, m, k, k), 1, 1);
        assert!((0..m).all(|r| (0..k).all(|i| matches!(qx.q(r, 0, i), 0 | 255))));
        assert!((0..n).all(|o| (0..k).all(|i| qw.q(0, o, i).abs() == 127)));
        for &kernel in Int8Kernel::available() {
            let mut out = vec![0f32; m * n];
            int8_linear_with(
                kernel,
                &qx,
                &qw,
                None,
                None,
                MatMut::new(&mut out, m, n, n),
                1,
            );
            for r in 0..m {
                let (s, z) = qx.params(r);
                for o in 0..n {
                    let sum: i32 = (0..k)
                        .map(|i| i32::from(qx.q(r, 0, i)) * i32::from(qw.q(0, o, i)))
                        .sum::<i32>()
                        - z * (0..k).map(|i| i32::from(qw.q(0, o, i))).sum::<i32>();
                    let want = sum as f32 * (s * qw.scale(0, o));
                    assert_eq!(out[r * n + o], want, "{kernel:?} ({r},{o})");
                }
            }
        }
    }

    /// The quantized product is close to the float one: per-row activations and per-output
    /// weights lose well under 1% of a typical output's magnitude at BERT-like inputs.
    #[test]
    fn int8_linear_is_close_to_the_float_product() {
        let (m, k, n) = if cfg!(miri) {
            (3, 16, 5)
        } else {
            (24, 768, 40)
        };
        let x = values(m * k, 4);
        let w = values(n * k, 5);
        let qw = QuantizedWeight::quantize(&w, 1, n, k);
        let mut qx = QuantizedRows::new();
        qx.quantize(MatRef::new(&x, m, k, k), 1, 1);
        let mut out = vec![0f32; m * n];
        int8_linear(&qx, &qw, None, None, MatMut::new(&mut out, m, n, n), 1);
        let mut err = 0f64;
        let mut mag = 0f64;
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
        assert!(rel < 0.02, "relative RMS error {rel}");
    }

    /// A row's outputs do not depend on the other rows quantized with it.
    #[test]
    fn a_row_gives_the_same_bits_whatever_it_is_batched_with() {
        let (k, n) = (40, 20);
        let x = values(7 * k, 8);
        let w = values(n * k, 6);
        let qw = QuantizedWeight::quantize(&w, 1, n, k);
        let run = |rows: &[f32], m: usize| {
            let mut qx = QuantizedRows::new();
            qx.quantize(MatRef::new(rows, m, k, k), 1, 1);
            let mut out = vec![0f32; m * n];
            int8_linear(&qx, &qw, None, None, MatMut::new(&mut out, m, n, n), 1);
            out
        };
        let all = run(&x, 7);
        let alone = run(&x[3 * k..4 * k], 1);
        assert_eq!(&all[3 * n..4 * n], &alone[..]);
    }
}
