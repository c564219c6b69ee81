//! Safe wrapper over ggml.
//!
//! Each C object is owned by a Rust type (`NonNull` + `Drop`): [`Context`] (tensor metadata
//! and graph nodes), [`Graph`], [`Backend`], [`Buffer`] and [`GraphAllocator`]. Tensors are
//! [`Tensor<'ctx>`] handles that cannot outlive the context that made them; a [`TensorId`] is a
//! lifetime-free handle that a long-lived owner (a model's weights) keeps and resolves against
//! its context. Every op is one short `unsafe` call with its SAFETY note.
//!
//! Shapes follow ggml: `ne[0]` is the contiguous dimension. `mul_mat(a, b)` takes
//! `a: [k, m]`, `b: [k, n]` and returns `[m, n]` (i.e. `b · aᵀ` in row-major terms).
#![warn(missing_docs)]

mod backend;
mod context;
mod dequant;
mod device;
mod dynamic;
mod error;
mod log;
mod lowrank;
mod mulmat;
mod ops;
mod outprod;
mod q4split;
mod repack;
mod sched;
mod simd;
mod softmax;
pub mod threads;
mod xent;

pub use backend::{Backend, BackendKind, Buffer, ComputeStats, GraphAllocator, HostMemory};
pub use context::{Context, FrozenContext, Graph, GraphId, Tensor, TensorId};
pub use device::{available_backends, devices, select_device, BackendChoice, Device, DeviceType};
pub use dynamic::{
    load_backend, load_backend_modules, module_file_name, module_search_dirs, ModuleLoad,
    BACKEND_DIR_VAR, LOADABLE_BACKENDS,
};
pub use error::{Error, Result};
pub use graft_ggml_sys as sys;
#[cfg(feature = "wgpu")]
pub use graft_wgpu;
pub use log::{set_log_level, LogLevel};
pub use lowrank::MAX_FUSED_MACS;
pub use ops::RopeParams;
pub use q4split::{split_q4_1_row, BLOCK as Q4_BLOCK};
pub use repack::CpuRepack;
pub use sched::Scheduler;

/// A ggml tensor element type, by its numeric id in `enum ggml_type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Type(pub u32);

impl Type {
    /// 32-bit float.
    pub const F32: Type = Type(sys::GGML_TYPE_F32);
    /// 16-bit IEEE float.
    pub const F16: Type = Type(sys::GGML_TYPE_F16);
    /// bfloat16.
    pub const BF16: Type = Type(sys::GGML_TYPE_BF16);
    /// 32-bit signed integer.
    pub const I32: Type = Type(sys::GGML_TYPE_I32);
    /// 64-bit signed integer.
    pub const I64: Type = Type(sys::GGML_TYPE_I64);
    /// 8-bit block quantization.
    pub const Q8_0: Type = Type(sys::GGML_TYPE_Q8_0);
    /// 4-bit block quantization with a scale (`d·(q − 8)`).
    pub const Q4_0: Type = Type(sys::GGML_TYPE_Q4_0);
    /// 4-bit block quantization with a scale and an offset (`d·q + m`).
    pub const Q4_1: Type = Type(sys::GGML_TYPE_Q4_1);

    /// The type's name as ggml spells it (`"q4_1"`).
    pub fn name(self) -> String {
        // SAFETY: ggml_type_name returns a static C string for every id < GGML_TYPE_COUNT,
        // and we check the range first.
        if self.0 >= sys::GGML_TYPE_COUNT {
            return format!("type#{}", self.0);
        }
        let p = unsafe { sys::ggml_type_name(self.0) };
        if p.is_null() {
            return format!("type#{}", self.0);
        }
        // SAFETY: non-null static NUL-terminated string from ggml.
        unsafe { std::ffi::CStr::from_ptr(p) }
            .to_string_lossy()
            .into_owned()
    }

    /// Bytes taken by `n` elements of this type in one row (`n` must be a multiple of the
    /// block size).
    pub fn row_size(self, n: i64) -> usize {
        // SAFETY: pure function of its arguments.
        unsafe { sys::ggml_row_size(self.0, n) }
    }

    /// Whether ggml's CPU backend can compute with this type (its traits are known).
    pub fn is_supported(self) -> bool {
        self.0 < sys::GGML_TYPE_COUNT && self.block_size() > 0
    }

    /// Elements per quantization block.
    pub fn block_size(self) -> i64 {
        // SAFETY: pure lookup in ggml's type-traits table; range checked by callers.
        unsafe { sys::ggml_blck_size(self.0) }
    }
}

/// Converts `n` elements of type `ty` stored in `bytes` to f32 (any type ggml can read).
pub fn dequantize(ty: Type, bytes: &[u8], n: usize) -> Result<Vec<f32>> {
    if !ty.is_supported() || n as i64 % ty.block_size() != 0 || ty.row_size(n as i64) != bytes.len()
    {
        return Err(Error::Shape(format!(
            "dequantize: {} bytes are not {n} elements of {}",
            bytes.len(),
            ty.name()
        )));
    }
    let mut out = vec![0f32; n];
    if ty == Type::F32 {
        for (o, c) in out.iter_mut().zip(bytes.chunks_exact(4)) {
            *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        }
        return Ok(out);
    }
    // SAFETY: the traits table has an entry for every valid type id (checked above).
    let traits = unsafe { &*sys::ggml_get_type_traits(ty.0) };
    let f = traits
        .to_float
        .ok_or_else(|| Error::Unsupported(format!("no conversion from {} to f32", ty.name())))?;
    // SAFETY: bytes holds exactly n elements of ty (checked above) and out has room for n f32s.
    unsafe { f(bytes.as_ptr().cast(), out.as_mut_ptr(), n as i64) };
    Ok(out)
}

/// Quantizes `src` (f32, `nrows * n_per_row` values) into `ty`, returning the bytes.
///
/// Types that need an importance matrix are refused.
pub fn quantize(ty: Type, src: &[f32], nrows: usize, n_per_row: usize) -> Result<Vec<u8>> {
    if nrows.checked_mul(n_per_row) != Some(src.len()) {
        return Err(Error::Shape(format!(
            "quantize: {} values is not {nrows} x {n_per_row}",
            src.len()
        )));
    }
    if ty.0 >= sys::GGML_TYPE_COUNT || n_per_row as i64 % ty.block_size().max(1) != 0 {
        return Err(Error::Shape(format!(
            "quantize: row of {n_per_row} is not a whole number of {} blocks",
            ty.name()
        )));
    }
    // SAFETY: pure query on a valid type id.
    if unsafe { sys::ggml_quantize_requires_imatrix(ty.0) } {
        return Err(Error::Unsupported(format!(
            "{} needs an importance matrix",
            ty.name()
        )));
    }
    let mut out = vec![0u8; ty.row_size(n_per_row as i64) * nrows];
    // SAFETY: src holds nrows*n_per_row f32s, out holds nrows rows of row_size bytes (checked
    // above); ggml_quantize_init is idempotent and thread-safe.
    unsafe {
        sys::ggml_quantize_init(ty.0);
        sys::ggml_quantize_chunk(
            ty.0,
            src.as_ptr(),
            out.as_mut_ptr().cast(),
            0,
            nrows as i64,
            n_per_row as i64,
            std::ptr::null(),
        );
    }
    Ok(out)
}
