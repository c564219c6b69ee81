//! ggml's CPU weight repacking (the `CPU_REPACK` extra buffer type of its CPU backend).
//!
//! A weight allocated in a `CPU_REPACK` buffer is rearranged when it is written (Q4_0 into
//! interleaved 8-row blocks on AVX2 CPUs, 4-row blocks on Arm with dot-product instructions,
//! Q4_K and IQ4_NL likewise), and the CPU backend then runs every `mul_mat` that reads it with
//! kernels that produce several output rows per pass over the activations. llama.cpp puts its
//! weights there by default (`use_extra_bufts`); on an AVX2 CPU a Q4_0 model decodes about 10 %
//! and prefills about 20 % faster that way. graft maps the file and reads weights in place, so a
//! repacked copy is made only when asked for ([`CpuRepack`]), for the weights it applies to.
//!
//! The repacked bytes are ggml's private layout: only ggml's CPU kernels may read them (no
//! dequantization, no GPU upload, no training graph; `read_bytes` refuses). Their results are
//! not the plain kernels': the same quantized products, blocked and summed another way (and
//! for prompts instead of tinyBLAS), so logits move as they do between CPUs (SmolLM2 Q4_0: up
//! to 0.8 on a 15-token prompt).

use std::ffi::CStr;
use std::ptr::NonNull;

use crate::backend::Buffer;
use crate::context::Context;
use crate::error::{Error, Result};
use crate::sys;
use crate::Type;

/// ggml's `CPU_REPACK` buffer type, when this build of ggml has it.
#[derive(Clone, Copy, Debug)]
pub struct CpuRepack {
    buft: NonNull<sys::ggml_backend_buffer_type>,
    cpu: NonNull<sys::ggml_backend_device>,
}

// SAFETY: both pointers are to ggml's static, immutable CPU device and buffer-type structs.
unsafe impl Send for CpuRepack {}
// SAFETY: as above.
unsafe impl Sync for CpuRepack {}

impl CpuRepack {
    /// The `CPU_REPACK` buffer type among the CPU device's extra buffer types; `None` when ggml
    /// was built without it. (Other extra types, such as AMX, are not used.)
    pub fn get() -> Option<Self> {
        crate::log::install();
        const NAME: &CStr = c"ggml_backend_dev_get_extra_bufts";
        // SAFETY: ggml's registry is initialised on first use; the CPU device, its registry
        // and the extra-buffer-type list (NULL-terminated) are static for the program's life.
        unsafe {
            let cpu = NonNull::new(sys::ggml_backend_dev_by_type(
                sys::GGML_BACKEND_DEVICE_TYPE_CPU,
            ))?;
            let reg = sys::ggml_backend_dev_backend_reg(cpu.as_ptr());
            let f = sys::ggml_backend_reg_get_proc_address(reg, NAME.as_ptr());
            if f.is_null() {
                return None;
            }
            let get: sys::ggml_backend_dev_get_extra_bufts_t = std::mem::transmute(f);
            let mut p = get?(cpu.as_ptr());
            while !p.is_null() && !(*p).is_null() {
                let name = CStr::from_ptr(sys::ggml_backend_buft_name(*p));
                if name.to_bytes() == b"CPU_REPACK" {
                    return Some(Self {
                        buft: NonNull::new(*p)?,
                        cpu,
                    });
                }
                p = p.add(1);
            }
            None
        }
    }

    /// Whether a 2-D weight of `ty` with `ne` (`[k, rows]`) is repacked on this CPU, so that a
    /// `mul_mat` reading it runs ggml's repacked kernels. Asks the CPU device, as llama.cpp
    /// does: a `mul_mat` over a weight placed in an empty buffer of this type.
    pub fn supports(&self, ty: Type, ne: [i64; 2]) -> bool {
        let Ok(ctx) = Context::new(3, 0) else {
            return false;
        };
        let w = ctx.new_tensor(ty, &ne);
        let x = ctx.new_tensor(Type::F32, &[ne[0], 1]);
        let op = ctx.mul_mat(w, x);
        // SAFETY: an empty (size 0) buffer of this type is ggml's dummy buffer; it is set as
        // the weight's buffer only for the duration of the query, which reads the tensors'
        // metadata, and freed after it. Nothing is allocated in it.
        unsafe {
            let dummy = sys::ggml_backend_buft_alloc_buffer(self.buft.as_ptr(), 0);
            if dummy.is_null() {
                return false;
            }
            (*w.raw()).buffer = dummy;
            let ok = sys::ggml_backend_dev_supports_op(self.cpu.as_ptr(), op.raw());
            (*w.raw()).buffer = std::ptr::null_mut();
            sys::ggml_backend_buffer_free(dummy);
            ok
        }
    }

    /// Allocates every tensor of `ctx` (each one [`CpuRepack::supports`]) in one new buffer of
    /// this type, marked as holding weights. A tensor's bytes are repacked when written
    /// ([`crate::Tensor::write_bytes`], whole tensors only); they cannot be read back.
    pub fn alloc(&self, ctx: &Context) -> Result<Buffer> {
        // SAFETY: valid context and buffer type.
        let p =
            unsafe { sys::ggml_backend_alloc_ctx_tensors_from_buft(ctx.raw(), self.buft.as_ptr()) };
        let ptr = NonNull::new(p)
            .ok_or_else(|| Error::Alloc("CPU_REPACK buffer for the weights".into()))?;
        // SAFETY: a buffer just made.
        unsafe {
            sys::ggml_backend_buffer_set_usage(ptr.as_ptr(), sys::GGML_BACKEND_BUFFER_USAGE_WEIGHTS)
        };
        Ok(Buffer::from_raw(ptr))
    }

    /// Whether `t` lives in a buffer of this type with ggml's repacking set up for it (the
    /// kernels that read it are the repacked ones).
    pub fn holds(&self, t: crate::Tensor<'_>) -> bool {
        // SAFETY: reads the metadata of a valid tensor and, when it has one, of its buffer.
        unsafe {
            let t = &*t.raw();
            !t.buffer.is_null() && (*t.buffer).buft == self.buft.as_ptr() && !t.extra.is_null()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Backend;

    /// Q4_0 rows as ggml stores them: an f16 scale and 16 bytes of 4-bit values per 32.
    fn q4_0_rows(rows: usize, k: usize, seed: u32) -> Vec<u8> {
        let mut s = seed;
        let mut next = || {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            s
        };
        let mut out = Vec::new();
        for _ in 0..rows * k / 32 {
            let d = half::f16::from_f32(0.01 + (next() % 100) as f32 * 1e-3);
            out.extend_from_slice(&d.to_bits().to_le_bytes());
            out.extend((0..16).map(|_| next() as u8));
        }
        out
    }

    /// A repacked Q4_0 weight gives the plain weight's products (up to the order of the sums),
    /// for one activation column (decoding) and for several (a prompt).
    #[test]
    fn repacked_q4_0_products_match_the_plain_weight() {
        let Some(repack) = CpuRepack::get() else {
            return;
        };
        let (k, rows) = (256usize, 64usize);
        if !repack.supports(Type::Q4_0, [k as i64, rows as i64]) {
            eprintln!("this CPU has no repacked Q4_0 kernels; nothing to compare");
            return;
        }
        assert!(!repack.supports(Type::F32, [k as i64, rows as i64]));
        let bytes = q4_0_rows(rows, k, 7);
        let mut backend = Backend::cpu(2).unwrap();
        for n in [1usize, 5, 17] {
            let wctx = Context::new(2, 0).unwrap();
            let plain = wctx.new_tensor(Type::Q4_0, &[k as i64, rows as i64]);
            let _plain_buf = backend.alloc_ctx_tensors(&wctx).unwrap();
            plain.write_bytes(0, &bytes).unwrap();
            let rctx = Context::new(2, 0).unwrap();
            let packed = rctx.new_tensor(Type::Q4_0, &[k as i64, rows as i64]);
            let _packed_buf = repack.alloc(&rctx).unwrap();
            packed.write_bytes(0, &bytes).unwrap();
            assert!(repack.holds(packed) && !repack.holds(plain));
            let mut back = vec![0u8; bytes.len()];
            assert!(packed.read_bytes(0, &mut back).is_err());

            let gctx = Context::new(8, 8).unwrap();
            let x = gctx.new_tensor(Type::F32, &[k as i64, n as i64]);
            let a = gctx.mul_mat(plain, x);
            let b = gctx.mul_mat(packed, x);
            let mut gf = gctx.new_graph(8, false);
            gf.build_forward_expand(a);
            gf.build_forward_expand(b);
            let _inputs = backend.alloc_ctx_tensors(&gctx).unwrap();
            let xs: Vec<f32> = (0..k * n)
                .map(|i| ((i * 37 % 101) as f32 - 50.0) / 25.0)
                .collect();
            x.write_f32(0, &xs).unwrap();
            backend.compute(&gf).unwrap();
            let (a, b) = (a.to_vec_f32().unwrap(), b.to_vec_f32().unwrap());
            let scale = a.iter().fold(0f32, |m, v| m.max(v.abs()));
            let worst = a
                .iter()
                .zip(&b)
                .fold(0f32, |m, (p, q)| m.max((p - q).abs()));
            assert!(worst <= 1e-4 * scale.max(1.0), "n={n}: {worst} of {scale}");
            assert!(a.iter().any(|&v| v != 0.0));
        }
    }
}
