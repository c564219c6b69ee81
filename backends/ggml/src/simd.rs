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

/// The independent f32 lanes of this crate's partial sums, maxima and [`dot`]'s
/// accumulators, so that their loops vectorize: one AVX2 register, two SSE or NEON ones (16
/// were slower for the 9- and 24-long dot products of DiaBlo's blocks).
pub(crate) const LANES: usize = 8;

/// The dot product of two equally long slices, in [`LANES`] independent lanes that are then
/// summed pairwise: the summation order depends on the length only, so every CPU and every
/// vector width computes the same value. Products are rounded before they are added:
/// `f32::mul_add` would fuse them inside [`vectorized`], but wherever the compiler leaves code
/// outside the dispatched function (a closure it does not inline, for one) it is a libm call,
/// which made WeGeFT's decode update 20x slower when tried.
#[inline(always)]
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; LANES];
    let (ca, cb) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let (ta, tb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for i in 0..LANES {
            acc[i] += x[i] * y[i];
        }
    }
    for (i, (x, y)) in ta.iter().zip(tb).enumerate() {
        acc[i] += x * y;
    }
    let mut width = LANES;
    while width > 1 {
        width /= 2;
        for i in 0..width {
            acc[i] += acc[i + width];
        }
    }
    acc[0]
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Dot<'a>(&'a [f32], &'a [f32]);

    impl Kernel for Dot<'_> {
        type Output = f32;
        #[inline(always)]
        fn run(self) -> f32 {
            dot(self.0, self.1)
        }
    }

    #[test]
    fn dot_matches_a_plain_sum_and_is_the_same_dispatched() {
        for n in [0usize, 1, 7, 8, 9, 15, 16, 17, 31, 33, 576, 1537] {
            let a: Vec<f32> = (0..n).map(|i| (i as f32 * 0.37).sin()).collect();
            let b: Vec<f32> = (0..n).map(|i| (i as f32 * 0.11).cos()).collect();
            let want: f64 = a.iter().zip(&b).map(|(x, y)| *x as f64 * *y as f64).sum();
            let got = dot(&a, &b);
            assert!(
                (got as f64 - want).abs() < 1e-6 * (n as f64 + 1.0),
                "n={n}: {got} vs {want}"
            );
            // The same value at the CPU's vector width as at the baseline's.
            assert_eq!(vectorized(Dot(&a, &b)).to_bits(), got.to_bits(), "n={n}");
        }
    }
}
