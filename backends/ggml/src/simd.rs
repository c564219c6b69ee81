//! Loops of plain Rust compiled for the CPU's vector width.
//!
//! The crate is compiled for the target's baseline (on x86-64: SSE2, 4 lanes, no FMA), so a
//! loop that LLVM vectorizes runs at that width. [`vectorized`] runs a closure inside a
//! function compiled for the best instruction set the CPU has (the `pulp` crate detects it at
//! run time: AVX2 + FMA on x86-64), where `#[inline(always)]` code inlined into it vectorizes
//! at that width: 8 lanes instead of 4 for the attention softmax's exponentials.

/// `f()`, compiled for this CPU's best instruction set (see the module docs). Everything `f`
/// calls that should vectorize must be `#[inline(always)]`.
#[inline(always)]
pub(crate) fn vectorized<R>(f: impl FnOnce() -> R) -> R {
    pulp::Arch::new().dispatch(f)
}
