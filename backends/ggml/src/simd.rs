//! Loops of plain Rust compiled for the CPU's vector width.
//!
//! The crate is compiled for the target's baseline (on x86-64: SSE2, 4 lanes, no FMA), so a
//! loop that LLVM vectorizes runs at that width. [`vectorized`] runs a [`Kernel`] inside a
//! function compiled for the best instruction set the CPU has (the `pulp` crate detects it at
//! run time: AVX2 + FMA on x86-64), into which the kernel's `#[inline(always)]` code is
//! inlined and vectorized at that width: 8 lanes instead of 4. (A closure would not do: it is
//! not inlined there, and stays compiled for the baseline.)

/// Work for [`vectorized`]. `run`, and everything it calls that should vectorize, must be
/// `#[inline(always)]`.
pub(crate) trait Kernel {
    type Output;
    fn run(self) -> Self::Output;
}

struct Dispatch<K>(K);

impl<K: Kernel> pulp::WithSimd for Dispatch<K> {
    type Output = K::Output;

    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, _: S) -> K::Output {
        self.0.run()
    }
}

/// `k.run()`, compiled for this CPU's best instruction set (see the module docs).
pub(crate) fn vectorized<K: Kernel>(k: K) -> K::Output {
    pulp::Arch::new().dispatch(Dispatch(k))
}
