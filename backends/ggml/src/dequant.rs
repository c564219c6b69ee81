//! Weight rows dequantized for the training GEMMs (`mulmat.rs`, `outprod.rs`).
//!
//! A training step dequantizes every weight twice (forward product, input gradient): 5 % of
//! a LoRA step on SmolLM2 Q4_1 in ggml's `to_float`, which ggml compiles for the baseline
//! instruction set. For Q4_1 and Q8_0 on x86-64, [`Dequant::row`] computes the same values
//! with the same arithmetic (`q·d + m`, `q·d`: one rounding per operation, no fused
//! multiply-add, as ggml's C there) in loops compiled for the CPU's vector width
//! ([`crate::simd::vectorized`]); other types and architectures go to ggml's `to_float`. The
//! unit test checks the values bit for bit against ggml's.

use half::f16;

use crate::sys;

/// ggml's `to_float` for one type.
type ToFloat = unsafe extern "C" fn(*const std::os::raw::c_void, *mut f32, i64);

/// Dequantizes rows of one weight type.
#[derive(Clone, Copy)]
pub(crate) struct Dequant {
    ty: sys::ggml_type,
    to_float: ToFloat,
}

/// Bytes and values of a Q4_1 block: f16 scale `d`, f16 minimum `m`, 16 bytes of nibbles
/// (value `j` in the low nibble of byte `j`, value `j + 16` in its high nibble).
const Q4_1: (usize, usize) = (20, 32);
/// Bytes and values of a Q8_0 block: f16 scale `d`, 32 signed bytes.
const Q8_0: (usize, usize) = (34, 32);

impl Dequant {
    /// The dequantizer of `ty`; `None` if ggml has no `to_float` for it.
    pub(crate) fn new(ty: sys::ggml_type) -> Option<Self> {
        // SAFETY: the traits table has an entry for every type id ggml made a tensor of.
        let to_float = unsafe { (*sys::ggml_get_type_traits(ty)).to_float }?;
        Some(Self { ty, to_float })
    }

    /// Dequantizes the `k` values at `src` into `dst`.
    ///
    /// # Safety
    /// `src` points to `k` values of this type (whole blocks), `dst` to room for `k` f32s, and
    /// nothing writes either while this runs.
    pub(crate) unsafe fn row(&self, src: *const u8, dst: *mut f32, k: usize) {
        // x86-64 only: there ggml's `to_float` is compiled for the baseline instruction set,
        // without fused multiply-adds, which this code reproduces bit for bit. Where FMA is
        // baseline (aarch64) the C compiler may fuse `q·d + m`; ggml's own function runs there.
        let block = match self.ty {
            sys::GGML_TYPE_Q4_1 if cfg!(target_arch = "x86_64") => Some(Q4_1),
            sys::GGML_TYPE_Q8_0 if cfg!(target_arch = "x86_64") => Some(Q8_0),
            _ => None,
        };
        match block {
            Some((bytes, values)) if k.is_multiple_of(values) => {
                // SAFETY: the caller's promise: k / values whole blocks at src, k f32s at dst.
                let (src, dst) = unsafe {
                    (
                        std::slice::from_raw_parts(src, k / values * bytes),
                        std::slice::from_raw_parts_mut(dst, k),
                    )
                };
                crate::simd::vectorized(Blocks {
                    q4_1: self.ty == sys::GGML_TYPE_Q4_1,
                    src,
                    dst,
                });
            }
            // SAFETY: as above, in ggml's terms.
            _ => unsafe { (self.to_float)(src.cast(), dst, k as i64) },
        }
    }
}

/// Whole Q4_1 or Q8_0 blocks to f32, at the CPU's vector width.
struct Blocks<'a> {
    q4_1: bool,
    src: &'a [u8],
    dst: &'a mut [f32],
}

impl crate::simd::Kernel for Blocks<'_> {
    type Output = ();

    #[inline(always)]
    fn run(self) {
        if self.q4_1 {
            q4_1(self.src, self.dst)
        } else {
            q8_0(self.src, self.dst)
        }
    }
}

/// Q4_1 blocks to f32: `q·d + m`.
#[inline(always)]
fn q4_1(src: &[u8], dst: &mut [f32]) {
    for (b, y) in src.chunks_exact(Q4_1.0).zip(dst.chunks_exact_mut(Q4_1.1)) {
        let d = f16::from_le_bytes([b[0], b[1]]).to_f32();
        let m = f16::from_le_bytes([b[2], b[3]]).to_f32();
        let qs: &[u8; 16] = b[4..20]
            .try_into()
            .expect("a Q4_1 block has 16 bytes of nibbles");
        let mut v = [0f32; 32];
        for j in 0..16 {
            v[j] = f32::from(qs[j] & 0x0F) * d + m;
            v[j + 16] = f32::from(qs[j] >> 4) * d + m;
        }
        y.copy_from_slice(&v);
    }
}

/// Q8_0 blocks to f32: `q·d`.
#[inline(always)]
fn q8_0(src: &[u8], dst: &mut [f32]) {
    for (b, y) in src.chunks_exact(Q8_0.0).zip(dst.chunks_exact_mut(Q8_0.1)) {
        let d = f16::from_le_bytes([b[0], b[1]]).to_f32();
        let qs: &[u8; 32] = b[2..34].try_into().expect("a Q8_0 block has 32 bytes");
        let mut v = [0f32; 32];
        for j in 0..32 {
            v[j] = f32::from(qs[j] as i8) * d;
        }
        y.copy_from_slice(&v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Random blocks (scales over the whole finite f16 range, subnormals included, every
    /// nibble and byte value) give ggml's `to_float` values bit for bit (x86-64, the one
    /// architecture where the Rust path runs).
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn rows_match_ggml_to_float_bit_for_bit() {
        let mut s = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = move || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            s
        };
        for (ty, (bytes, values)) in [(sys::GGML_TYPE_Q4_1, Q4_1), (sys::GGML_TYPE_Q8_0, Q8_0)] {
            let blocks = 4096;
            let mut src = vec![0u8; blocks * bytes];
            for (i, b) in src.chunks_exact_mut(bytes).enumerate() {
                for v in b.iter_mut() {
                    *v = next() as u8;
                }
                // finite f16 scales (exponent below 31), some subnormal, some tiny or huge
                let scales = if ty == sys::GGML_TYPE_Q4_1 { 2 } else { 1 };
                for c in 0..scales {
                    let mut h = next() as u16 & 0xFBFF;
                    if i % 7 == 0 {
                        h &= 0x83FF; // subnormal
                    }
                    b[2 * c..2 * c + 2].copy_from_slice(&h.to_le_bytes());
                }
            }
            let k = blocks * values;
            let dq = Dequant::new(ty).unwrap();
            let (mut ours, mut theirs) = (vec![0f32; k], vec![0f32; k]);
            // SAFETY: k values of ty at src, k floats in each output.
            unsafe {
                dq.row(src.as_ptr(), ours.as_mut_ptr(), k);
                (dq.to_float)(src.as_ptr().cast(), theirs.as_mut_ptr(), k as i64);
            }
            for (i, (a, b)) in ours.iter().zip(&theirs).enumerate() {
                assert_eq!(a.to_bits(), b.to_bits(), "type {ty} value {i}: {a} vs {b}");
            }
        }
    }
}
