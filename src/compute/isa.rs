//! Which instruction set the kernels run with: the best the CPU has, or a tier chosen once per
//! process ([`Isa::select`], the `--isa` flag), and the `dispatch!` macro that compiles an
//! element-wise body twice (plain and AVX2+FMA) and picks one per call.

use std::sync::OnceLock;

use anyhow::Result;
use serde::{Deserialize, Serialize};

/// Runs `body` with the AVX2+FMA target features when the CPU has them: the same source,
/// compiled twice, chosen per call (the check is a cached load). The body's closure must be
/// inlined into the target-feature function: compiled on its own it has no FMA, and every
/// `mul_add` in it becomes a call to the software `fmaf` (measured: a SqueezeBERT forward at
/// 384 tokens three times slower), hence `#[inline(always)]`.
///
/// `dispatch!(M => body)` also names, as the type `M`, how the body computes `a * b + c`
/// ([`MulAdd`]): [`Fused`] in the AVX2+FMA build, [`Plain`] in the other. A body that calls
/// `M::mul_add` rather than `f32::mul_add` thus gets one instruction where the CPU has one and
/// a multiply and an add where it has none, never a call per element that keeps the loop from
/// vectorising.
macro_rules! dispatch {
    ($m:ident => $body:expr) => {{
        #[cfg(target_arch = "x86_64")]
        {
            /// Runs `f` compiled with AVX2 and FMA enabled.
            ///
            /// # Safety
            /// The CPU must have AVX2 and FMA.
            #[target_feature(enable = "avx2,fma")]
            unsafe fn wide<R>(f: impl FnOnce() -> R) -> R {
                f()
            }
            if $crate::compute::isa::Isa::current().has_avx2() {
                #[allow(dead_code)]
                type $m = $crate::compute::isa::Fused;
                // SAFETY: `has_avx2` is true only for tiers this CPU was detected to run,
                // and both need AVX2 and FMA (see `Isa::detect_all`).
                unsafe {
                    wide(
                        #[inline(always)]
                        || $body,
                    )
                }
            } else {
                #[allow(dead_code)]
                type $m = $crate::compute::isa::Plain;
                $body
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            #[allow(dead_code)]
            type $m = $crate::compute::isa::Plain;
            $body
        }
    }};
    ($body:expr) => {
        dispatch!(_Unused => $body)
    };
}

/// How an element-wise body computes `a * b + c`, chosen by [`dispatch!`] for the build it
/// runs in (a type, so the choice is made when the body is compiled, not per element).
pub trait MulAdd {
    fn mul_add(a: f32, b: f32, c: f32) -> f32;
}

/// One fused multiply-add, rounded once: a single instruction where the code is compiled with
/// FMA (the AVX2+FMA build; every ARMv8 core).
pub enum Fused {}

impl MulAdd for Fused {
    #[inline(always)]
    fn mul_add(a: f32, b: f32, c: f32) -> f32 {
        a.mul_add(b, c)
    }
}

/// A multiply, then an add, rounded twice (within an ulp or so of [`Fused`]; the tests hold
/// both forms to the same error bounds).
pub enum Unfused {}

impl MulAdd for Unfused {
    #[inline(always)]
    fn mul_add(a: f32, b: f32, c: f32) -> f32 {
        a * b + c
    }
}

/// The form of the build without target features: fused where the target's baseline has the
/// instruction (aarch64; x86-64 built with `-C target-feature=+fma`), else unfused. On an
/// x86-64 CPU without FMA (the `portable` tier there) `f32::mul_add` is a call to the software
/// `fmaf`, correctly rounded but a call per element, which dominated the portable tier's
/// forward and kept GELU from vectorising (docs/performance.md, "Measurements behind the code").
#[cfg(any(target_arch = "aarch64", target_feature = "fma"))]
pub type Plain = Fused;
/// See the other definition.
#[cfg(not(any(target_arch = "aarch64", target_feature = "fma")))]
pub type Plain = Unfused;

/// The instruction sets the kernels are written for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Isa {
    Avx512,
    Avx2,
    Portable,
}

/// Written by its `--isa` name (`avx512`, `avx2`, `portable`), as the result files record it.
impl Serialize for Isa {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

impl<'de> Deserialize<'de> for Isa {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let name = String::deserialize(d)?;
        Isa::from_name(&name).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "kernel tier {name:?}: expected avx512, avx2 or portable"
            ))
        })
    }
}

/// The tier this process runs, fixed by the first [`Isa::select`] or [`Isa::current`].
static SELECTED: OnceLock<Isa> = OnceLock::new();

impl Isa {
    /// The tier the kernels run with: the one [`Isa::select`] chose, else the best this CPU
    /// has (fixed from then on).
    pub fn current() -> Self {
        *SELECTED.get_or_init(Self::best)
    }

    /// The best this CPU has.
    pub fn best() -> Self {
        Self::available()[0]
    }

    /// Chooses the tier for the rest of the process, before any kernel runs: refused when the
    /// CPU lacks it, or when another tier already runs (kernels picked it). Choosing the tier
    /// already in force is fine.
    pub fn select(isa: Isa) -> Result<Isa, String> {
        if !Self::available().contains(&isa) {
            return Err(format!(
                "this CPU cannot run the {} kernels (it can run: {})",
                isa.name(),
                Self::available_names()
            ));
        }
        let set = *SELECTED.get_or_init(|| isa);
        if set != isa {
            return Err(format!(
                "this process already runs the {} kernels; {} cannot be chosen now (the tier is \
                 fixed before the first computation)",
                set.name(),
                isa.name()
            ));
        }
        Ok(set)
    }

    /// The names of [`Isa::available`], best first, comma-separated.
    pub fn available_names() -> String {
        Self::available()
            .iter()
            .map(|i| i.name())
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Every kernel this CPU can run, best first (tests run them all); detected once.
    pub fn available() -> &'static [Self] {
        static AVAILABLE: OnceLock<Vec<Isa>> = OnceLock::new();
        AVAILABLE.get_or_init(Self::detect_all)
    }

    fn detect_all() -> Vec<Self> {
        let mut isas = Vec::new();
        #[cfg(target_arch = "x86_64")]
        {
            let avx2 = is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma");
            // The AVX-512 tier's element-wise passes are the AVX2+FMA ones.
            if avx2 && is_x86_feature_detected!("avx512f") {
                isas.push(Self::Avx512);
            }
            if avx2 {
                isas.push(Self::Avx2);
            }
        }
        isas.push(Self::Portable);
        isas
    }

    /// Whether this tier runs the AVX2+FMA element-wise passes (both x86 tiers do).
    pub fn has_avx2(self) -> bool {
        matches!(self, Self::Avx512 | Self::Avx2)
    }

    /// Whether inference multiplies on the packed product ([`super::packed`], this tier's
    /// register kernel). The portable tier does not: its encoder keeps the weights as loaded
    /// and multiplies on the `gemm` crate (NEON, AVX and scalar kernels, maintained and tested
    /// upstream), whose kernels beat the packed product's plain-Rust tile, which exists to check
    /// the register kernels. The one place this choice is made: the model's packing, the
    /// attention's per-head products and `peak` all ask here.
    pub fn packs_weights(self) -> bool {
        self != Self::Portable
    }

    /// The tier's name, as `--isa` spells it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Avx512 => "avx512",
            Self::Avx2 => "avx2",
            Self::Portable => "portable",
        }
    }

    /// A tier by its `--isa` name.
    pub fn from_name(name: &str) -> Option<Self> {
        [Self::Avx512, Self::Avx2, Self::Portable]
            .into_iter()
            .find(|i| i.name() == name)
    }

    /// Rows per register tile of the packed product's kernel.
    pub fn tile_rows(self) -> usize {
        match self {
            Self::Avx2 => 6,
            _ => 12,
        }
    }

    /// Panels per register tile.
    pub(crate) fn np(self) -> usize {
        match self {
            Self::Avx512 => 2,
            _ => 1,
        }
    }
}

/// Which CPU kernels to run (`--isa`, or the `BERTBENCH_ISA` variable).
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum IsaChoice {
    /// The best tier this CPU has.
    #[default]
    Auto,
    /// AVX-512F register kernels (x86-64).
    Avx512,
    /// AVX2+FMA register kernels (x86-64): what most x86 machines run.
    Avx2,
    /// The `gemm` crate's products (its own NEON/AVX/SSE kernels) and compiler-vectorised
    /// element-wise passes, for any CPU (Arm, old x86).
    Portable,
}

impl IsaChoice {
    /// The tier asked for; `None` for `auto`.
    pub fn isa(self) -> Option<Isa> {
        match self {
            Self::Auto => None,
            Self::Avx512 => Some(Isa::Avx512),
            Self::Avx2 => Some(Isa::Avx2),
            Self::Portable => Some(Isa::Portable),
        }
    }
}

/// Chooses the CPU kernels' tier for this process, once, and returns the tier in force: `auto`
/// takes the best this CPU has. A tier the CPU lacks is refused with what it can run instead,
/// and so is a tier other than the one already running (it is fixed before the first
/// computation). A malformed `BERTBENCH_BLOCKING` (the products' blocks, for tuning runs) is
/// refused here too, before anything is computed with blocks it did not ask for, and so is a
/// `BERTBENCH_INT8_KERNEL` that is malformed or names a kernel the tier cannot run.
pub fn use_isa(choice: IsaChoice) -> Result<Isa> {
    crate::runtime::init();
    if let Err(e) = super::packed::Blocking::forced() {
        return Err(crate::error::input(e.clone()));
    }
    if let Err(e) = super::int8::Int8Kernel::forced() {
        return Err(crate::error::input(e.clone()));
    }
    let isa =
        match choice.isa() {
            None => Ok(Isa::current()),
            Some(isa) if !Isa::available().contains(&isa) => Err(crate::error::unavailable(
                format!("--isa {}: {}", isa.name(), Isa::select(isa).unwrap_err()),
            )),
            Some(isa) => Isa::select(isa).map_err(|e| crate::error::input(format!("--isa: {e}"))),
        }?;
    if let Ok(Some(kernel)) = super::int8::Int8Kernel::forced() {
        if !kernel.allowed_on(isa) {
            return Err(crate::error::unavailable(format!(
                "{}={}: the {} tier cannot run that int8 kernel on this CPU (it can run: {})",
                super::int8::KERNEL_ENV,
                kernel.id(),
                isa.name(),
                super::int8::Int8Kernel::allowed_names(isa)
            )));
        }
    }
    Ok(isa)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `auto` is the tier in force; a named tier the CPU lacks is an input error naming it.
    #[test]
    #[cfg_attr(
        miri,
        ignore = "use_isa sets the allocator up (mallopt): a foreign call Miri cannot run"
    )]
    fn isa_choice_is_checked_against_the_cpu() {
        assert_eq!(use_isa(IsaChoice::Auto).unwrap(), Isa::current());
        for choice in [IsaChoice::Avx512, IsaChoice::Avx2] {
            let isa = choice.isa().unwrap();
            if !Isa::available().contains(&isa) {
                let e = use_isa(choice).unwrap_err();
                assert_eq!(crate::error::exit_code(&e), crate::error::EXIT_UNAVAILABLE);
                assert!(e.to_string().contains(isa.name()), "{e}");
            }
        }
    }

    #[test]
    fn names_round_trip_and_portable_is_always_there() {
        for isa in [Isa::Avx512, Isa::Avx2, Isa::Portable] {
            assert_eq!(Isa::from_name(isa.name()), Some(isa));
        }
        assert_eq!(Isa::from_name("sse"), None);
        assert_eq!(Isa::available().last(), Some(&Isa::Portable));
        assert_eq!(Isa::best(), Isa::available()[0]);
    }

    #[test]
    fn a_tier_the_cpu_lacks_is_refused_by_name() {
        if let Some(missing) = [Isa::Avx512, Isa::Avx2]
            .into_iter()
            .find(|i| !Isa::available().contains(i))
        {
            let err = Isa::select(missing).unwrap_err();
            assert!(
                err.contains(missing.name()) && err.contains("portable"),
                "{err}"
            );
        }
        // The tier in force can always be chosen again; another one cannot.
        let now = Isa::current();
        assert_eq!(Isa::select(now), Ok(now));
        if let Some(other) = Isa::available().iter().find(|&&i| i != now) {
            assert!(Isa::select(*other).unwrap_err().contains("already runs"));
        }
    }
}
