//! Element-wise math, written branch-free over plain slices so the compiler vectorises it:
//! the exponential, erf and tanh the activations need, GELU (both forms) and ReLU, and GELU's
//! backward. Each pass has an AVX2+FMA build picked at run time (`dispatch!`).

use rayon::prelude::*;

use super::isa::MulAdd;
use super::PAR_MIN_ELEMS;

/// `e^x` for `x <= 0` (softmax after subtracting the maximum, and `e^{-x^2}`), branch-free so
/// it vectorises: Cody-Waite range reduction `x = n ln2 + r`, a degree-7 Taylor polynomial on
/// `|r| <= ln2/2` (truncation error < 1e-8 relative), and `2^n` built in the exponent bits.
/// Below -87.3 (where `2^n` would leave the normal range) it returns exactly 0, as the
/// softmax of a masked position should be. `M`: how `a * b + c` is computed ([`MulAdd`]).
#[inline(always)]
pub fn exp_nonpositive<M: MulAdd>(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    // ln 2 split so that n * LN2_HI is exact for |n| < 2^9.
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    // 1.5 * 2^23: adding it rounds to an integer held in the low mantissa bits.
    const ROUND: f32 = 12_582_912.0;
    const LOW: f32 = -87.3;
    let xc = x.clamp(LOW, 0.0);
    let t = M::mul_add(xc, LOG2E, ROUND);
    let n = t - ROUND;
    let n_int = t.to_bits().wrapping_sub(ROUND.to_bits()) as i32;
    let r = M::mul_add(-n, LN2_LO, M::mul_add(-n, LN2_HI, xc));
    let p = [
        1.0 / 720.0,
        1.0 / 120.0,
        1.0 / 24.0,
        1.0 / 6.0,
        0.5,
        1.0,
        1.0,
    ]
    .iter()
    .fold(1.0 / 5040.0, |acc: f32, &c| M::mul_add(acc, r, c));
    let scale = f32::from_bits(((n_int + 127) as u32) << 23);
    let y = p * scale;
    if x < LOW {
        0.0
    } else {
        y
    }
}

/// `erf(x)` as the rational function `x P(x^2) / Q(x^2)` on `|x| <= 3.8` (erf(3.8) is
/// 1 - 7.7e-8; beyond, `x` is clamped): 11 fused multiply-adds and one division, branch-free,
/// so GELU vectorises at a few instructions per value. (It replaced a series + exponential
/// form that took ~45 operations and made GELU 9% of a SqueezeBERT forward.) The coefficients
/// come from `scripts/fit_erf.py` (a minimax fit); the tests measure < 3.5e-7 absolute error
/// against libm in f32, which is the rounding of the evaluation, not of the fit.
#[inline(always)]
pub fn erf<M: MulAdd>(x: f32) -> f32 {
    const X_MAX: f32 = 3.8;
    const P: [f32; 7] = [
        1.1283789,
        0.19514577,
        0.049965892,
        0.0035319563,
        0.00014062815,
        -2.019959e-06,
        2.1241272e-08,
    ];
    const Q: [f32; 5] = [1.0, 0.5062735, 0.11305153, 0.013973817, 0.00092429935];
    let x = x.clamp(-X_MAX, X_MAX);
    let t = x * x;
    let num = P[..6]
        .iter()
        .rev()
        .fold(P[6], |acc, &c| M::mul_add(acc, t, c));
    let den = Q[..4]
        .iter()
        .rev()
        .fold(Q[4], |acc, &c| M::mul_add(acc, t, c));
    x * num / den
}

/// `tanh(x)` through `e^{-2|x|}` (so only the non-positive exponential is needed).
#[inline(always)]
pub fn tanh<M: MulAdd>(x: f32) -> f32 {
    let e = exp_nonpositive::<M>(-2.0 * x.abs());
    ((1.0 - e) / (1.0 + e)).copysign(x)
}

/// An element-wise function, generic in how it multiplies and adds so that [`dispatch!`] can
/// compile it for each build.
trait Unary: Copy + Sync {
    fn apply<M: MulAdd>(self, v: f32) -> f32;
}

/// Applies `f` to every element, split over the compute threads when large.
fn map_inplace(x: &mut [f32], f: impl Unary) {
    let run = |c: &mut [f32]| dispatch!(M => c.iter_mut().for_each(|v| *v = f.apply::<M>(*v)));
    if x.len() < PAR_MIN_ELEMS {
        run(x);
    } else {
        x.par_chunks_mut(PAR_MIN_ELEMS / 4).for_each(run);
    }
}

#[derive(Clone, Copy)]
struct GeluErf;

impl Unary for GeluErf {
    #[inline(always)]
    fn apply<M: MulAdd>(self, v: f32) -> f32 {
        let half = 0.5 * v;
        M::mul_add(half, erf::<M>(v * std::f32::consts::FRAC_1_SQRT_2), half)
    }
}

#[derive(Clone, Copy)]
struct GeluTanh;

impl Unary for GeluTanh {
    #[inline(always)]
    fn apply<M: MulAdd>(self, v: f32) -> f32 {
        const C: f32 = 0.797_884_6; // sqrt(2/pi)
        0.5 * v * (1.0 + tanh::<M>(C * (v + 0.044_715 * v * v * v)))
    }
}

#[derive(Clone, Copy)]
struct Relu;

impl Unary for Relu {
    #[inline(always)]
    fn apply<M: MulAdd>(self, v: f32) -> f32 {
        v.max(0.0)
    }
}

/// Exact GELU, `x/2 (1 + erf(x/sqrt 2))`: Hugging Face's `"gelu"`.
pub fn gelu_erf(x: &mut [f32]) {
    map_inplace(x, GeluErf);
}

/// The tanh approximation of GELU: `"gelu_new"` / `"gelu_pytorch_tanh"`.
pub fn gelu_tanh(x: &mut [f32]) {
    map_inplace(x, GeluTanh);
}

pub fn relu(x: &mut [f32]) {
    map_inplace(x, Relu);
}

/// `dx = dy * act'(x)` for the GELU forms, in place over `dy`.
pub fn gelu_backward(x: &[f32], dy: &mut [f32], tanh_form: bool) {
    assert_eq!(x.len(), dy.len());
    const INV_SQRT_2PI: f32 = 0.398_942_3;
    const C: f32 = 0.797_884_6; // sqrt(2/pi)
    let run = |(x, dy): (&[f32], &mut [f32])| {
        dispatch!(M => {
            for (g, v) in dy.iter_mut().zip(x) {
                let v = *v;
                let d = if tanh_form {
                    let t = tanh::<M>(C * (v + 0.044_715 * v * v * v));
                    0.5 * (1.0 + t) + 0.5 * v * (1.0 - t * t) * C * (1.0 + 0.134_145 * v * v)
                } else {
                    0.5 * (1.0 + erf::<M>(v * std::f32::consts::FRAC_1_SQRT_2))
                        + v * INV_SQRT_2PI * exp_nonpositive::<M>(-0.5 * v * v)
                };
                *g *= d;
            }
        })
    };
    if x.len() < PAR_MIN_ELEMS {
        run((x, dy));
    } else {
        x.par_chunks(PAR_MIN_ELEMS / 4)
            .zip(dy.par_chunks_mut(PAR_MIN_ELEMS / 4))
            .for_each(run);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compute::testing::random;

    use crate::compute::isa::{Fused, Unfused};

    /// Both ways of multiplying and adding ([`MulAdd`]) are held to the same bounds: the
    /// AVX2+FMA build runs the fused one, a CPU without FMA the unfused one.
    fn exp_worst<M: MulAdd>() -> f64 {
        let mut worst = 0f64;
        // Miri interprets every operation: a coarser grid there.
        let n = if cfg!(miri) { 500 } else { 200_000 };
        for i in 0..=n {
            let x = -87.0f32 * i as f32 / n as f32;
            let got = exp_nonpositive::<M>(x) as f64;
            let want = (x as f64).exp();
            worst = worst.max((got - want).abs() / want);
        }
        assert_eq!(exp_nonpositive::<M>(0.0), 1.0);
        assert_eq!(exp_nonpositive::<M>(-100.0), 0.0);
        assert_eq!(exp_nonpositive::<M>(f32::MIN), 0.0);
        assert_eq!(exp_nonpositive::<M>(f32::NEG_INFINITY), 0.0);
        worst
    }

    #[test]
    fn exp_matches_libm() {
        for (form, worst) in [
            ("fused", exp_worst::<Fused>()),
            ("unfused", exp_worst::<Unfused>()),
        ] {
            assert!(worst < 4e-7, "{form}: max relative error {worst}");
        }
    }

    fn erf_tanh_worst<M: MulAdd>() -> (f64, f64) {
        let (mut erf_err, mut tanh_err) = (0f64, 0f64);
        let step = if cfg!(miri) { 401 } else { 1 };
        for i in (-100_000..=100_000).step_by(step) {
            let x = i as f32 / 10_000.0;
            erf_err = erf_err.max((erf::<M>(x) as f64 - libm::erf(x as f64)).abs());
            tanh_err = tanh_err.max((tanh::<M>(x) as f64 - (x as f64).tanh()).abs());
        }
        assert_eq!(erf::<M>(0.0), 0.0);
        (erf_err, tanh_err)
    }

    #[test]
    fn erf_and_tanh_match_libm() {
        for (form, (erf_err, tanh_err)) in [
            ("fused", erf_tanh_worst::<Fused>()),
            ("unfused", erf_tanh_worst::<Unfused>()),
        ] {
            assert!(erf_err < 3.5e-7, "{form}: erf max abs error {erf_err}");
            assert!(tanh_err < 3e-7, "{form}: tanh max abs error {tanh_err}");
        }
    }

    #[test]
    fn gelu_forms_match_their_definitions() {
        for form in ["erf", "tanh"] {
            let mut x = random(if cfg!(miri) { 300 } else { 100_000 }, 1);
            let orig = x.clone();
            if form == "erf" {
                gelu_erf(&mut x);
            } else {
                gelu_tanh(&mut x);
            }
            for (g, v) in x.iter().zip(&orig) {
                let v = *v as f64;
                let want = if form == "erf" {
                    0.5 * v * (1.0 + libm::erf(v / 2f64.sqrt()))
                } else {
                    let c = (2.0 / std::f64::consts::PI).sqrt();
                    0.5 * v * (1.0 + (c * (v + 0.044715 * v * v * v)).tanh())
                };
                assert!(
                    (*g as f64 - want).abs() < 1e-6,
                    "{form} gelu({v}) = {g}, want {want}"
                );
            }
        }
        // Both builds' bodies, whichever this CPU dispatches to.
        for v in random(if cfg!(miri) { 50 } else { 10_000 }, 2) {
            let erf_form = 0.5 * v as f64 * (1.0 + libm::erf(v as f64 / 2f64.sqrt()));
            for got in [GeluErf.apply::<Fused>(v), GeluErf.apply::<Unfused>(v)] {
                assert!((got as f64 - erf_form).abs() < 1e-6, "gelu({v}) = {got}");
            }
            let (f, u) = (GeluTanh.apply::<Fused>(v), GeluTanh.apply::<Unfused>(v));
            assert!(
                (f - u).abs() < 1e-6,
                "tanh gelu({v}): fused {f}, unfused {u}"
            );
        }
        let mut x = vec![-1.0, 0.0, 2.5];
        relu(&mut x);
        assert_eq!(x, vec![0.0, 0.0, 2.5]);
    }
}
