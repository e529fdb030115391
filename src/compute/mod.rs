//! The compute layer: CPU kernels (f32, with int8 and bf16 products) that know nothing of
//! models. The model families ([`crate::models`]) call into it; it never calls back.
//!
//! Why hand-written: measured (docs/performance.md), candle's composed element-wise ops cost
//! as much as the matrix products at BERT shapes (`gelu_erf` runs single-threaded
//! through libm, LayerNorm takes five passes, softmax and the mask three, every head split and
//! merge copies a transpose), its element-wise thread pool spins on the cores the GEMM needs,
//! and the `gemm` crate packs the weight operand again on every call. No maintained crate
//! offers fused transformer kernels on plain slices, so this layer does.
//!
//! What may import what (each line may use the ones above it):
//!
//! | module | what |
//! |---|---|
//! | [`view`] | matrix views over slices, bounds-checked when made |
//! | [`isa`], [`cache`] | which instruction set runs (the best detected, or chosen once); `dispatch!` for element-wise passes; the cache sizes read from the machine |
//! | [`math`], [`dropout`] | element-wise math (exp, erf, tanh, GELU, ReLU); dropout masks |
//! | [`norm`], [`softmax`] | LayerNorm and the attention softmax, forward and backward |
//! | [`dense`], [`packed`] | the products: on weights as loaded (the `gemm` crate) and on weights packed once (own AVX-512/AVX2/portable kernels) |
//! | [`int8`], [`bf16`], `split` | the products at low precision on weights prepared once: int8 (AVX-512 VNNI, AVX-VNNI, AVX2, portable) and bf16 (AVX512_BF16, portable); how the prepared products split their work over threads |
//! | [`attention`] | multi-head attention for inference and training |
//! | [`ops`] | the kernels as candle custom ops with their backward passes |
//!
//! Unsafe code is confined to the products' register kernels, the attention's per-head
//! output blocks and the dispatch of target features; every `unsafe fn` states its contract
//! under `# Safety` and every block says why it holds (`SAFETY:`). No safe public function
//! can reach memory out of bounds whatever its arguments: views are checked when made, and
//! every kernel checks its operands' shapes against them.

#[macro_use]
pub mod isa;
pub(crate) mod attention;
pub mod bf16;
pub mod cache;
pub mod dense;
pub(crate) mod dropout;
pub mod int8;
pub(crate) mod math;
pub(crate) mod norm;
pub(crate) mod ops;
pub mod optim;
pub(crate) mod overrides;
pub mod packed;
pub(crate) mod softmax;
pub(crate) mod split;
pub(crate) mod view;

pub use isa::Isa;
pub use view::{MatMut, MatRef};

/// The precisions this CPU runs faster than f32 on the tier in force, after f32 itself: int8
/// on either x86 tier (`vpdpbusd` or AVX2's byte products), bf16 where the AVX512_BF16 kernel
/// runs (what `run` measures when no `--dtype` is given).
pub fn fast_precisions() -> Vec<crate::device::Precision> {
    use crate::device::Precision;
    let mut all = vec![Precision::F32];
    if int8::Int8Kernel::current().fast() {
        all.push(Precision::Int8);
    }
    if bf16::Bf16Kernel::current().fast() {
        all.push(Precision::Bf16);
    }
    all
}

/// Below this many elements an element-wise pass runs on the calling thread: forking costs
/// more than the work.
pub(crate) const PAR_MIN_ELEMS: usize = 1 << 15;

#[cfg(test)]
pub(crate) mod testing {
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    /// `n` values uniform in [-2, 2), from `seed`.
    pub fn random(n: usize, seed: u64) -> Vec<f32> {
        let mut rng = StdRng::seed_from_u64(seed);
        (0..n).map(|_| rng.random_range(-2.0f32..2.0)).collect()
    }
}
