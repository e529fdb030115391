//! Which instruction set the kernels run with: detected once per process, and the
//! `dispatch!` macro that compiles an element-wise body twice (plain and AVX2+FMA) and picks
//! one per call.

use std::sync::OnceLock;

/// Runs `body` with the AVX2+FMA target features when the CPU has them: the same source,
/// compiled twice, chosen per call (the check is a cached load). The body's closure must be
/// inlined into the target-feature function: compiled on its own it has no FMA, and every
/// `mul_add` in it becomes a call to the software `fmaf` (measured: a SqueezeBERT forward at
/// 384 tokens three times slower), hence `#[inline(always)]`. On a CPU without FMA the plain
/// body runs, and `mul_add` is that software call: slow, but exact.
macro_rules! dispatch {
    ($body:expr) => {{
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
            if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                // SAFETY: the features were just detected on this CPU.
                unsafe {
                    wide(
                        #[inline(always)]
                        || $body,
                    )
                }
            } else {
                $body
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            $body
        }
    }};
}

/// The instruction sets the kernels are written for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Isa {
    Avx512,
    Avx2,
    Portable,
}

impl Isa {
    /// The best this CPU has.
    pub fn detect() -> Self {
        Self::available()[0]
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
            if is_x86_feature_detected!("avx512f") {
                isas.push(Self::Avx512);
            }
            if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                isas.push(Self::Avx2);
            }
        }
        isas.push(Self::Portable);
        isas
    }

    /// Panels per register tile.
    pub(crate) fn np(self) -> usize {
        match self {
            Self::Avx512 => 2,
            _ => 1,
        }
    }
}
