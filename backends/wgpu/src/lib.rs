//! A ggml backend written in Rust over wgpu.
//!
//! [`register`] adds a `WGPU` backend to ggml's registry with one device per Vulkan, Metal or
//! DX12 adapter wgpu finds. From then on it is a ggml backend like CUDA or Metal: ggml's
//! allocators place tensors in its buffers, `ggml_backend_sched` asks `supports_op` which
//! nodes it can take, and `graph_compute` encodes those nodes as WGSL compute dispatches, one
//! submission per graph.
//!
//! What runs here:
//! - element-wise ADD, SUB, MUL, DIV (with broadcasting), SCALE, CPY/DUP/CONT between F32 and
//!   F16, SWIGLU, ACC (DiaBlo's block products added into a layer's output);
//! - RMS_NORM, SOFT_MAX (scale and mask, no ALiBi or sinks), ARGMAX;
//! - MUL_MAT with F32, F16, Q4_0, Q4_1 or Q8_0 weights and F32 activations;
//! - GET_ROWS from the same formats, SET_ROWS into F32 or F16 (the KV cache);
//! - ROPE, normal and NeoX, with YaRN and frequency factors;
//! - the view ops (VIEW, RESHAPE, PERMUTE, TRANSPOSE), which need no work.
//!
//! Anything else is declined in `supports_op`, so the scheduler runs it on the CPU.

mod buffer;
mod ffi;
mod gpu;
mod graph;
mod shaders;

use graft_ggml_sys as sys;

// The interface tables were written for this version of ggml's backend interface: a newer
// ggml with other fields fails here, at build time, rather than calling the wrong pointer.
const _: () = assert!(sys::GGML_BACKEND_API_VERSION == 3);
const P: usize = std::mem::size_of::<usize>();
const _: () = assert!(std::mem::size_of::<sys::ggml_backend_reg_i>() == 4 * P);
const _: () = assert!(std::mem::size_of::<sys::ggml_backend_device_i>() == 15 * P);
const _: () = assert!(std::mem::size_of::<sys::ggml_backend_buffer_type_i>() == 8 * P);
const _: () = assert!(std::mem::size_of::<sys::ggml_backend_buffer_i>() == 11 * P);
const _: () = assert!(std::mem::size_of::<sys::ggml_backend_i>() == 16 * P);
const _: () = assert!(std::mem::size_of::<sys::ggml_backend>() == 19 * P);
const _: () = assert!(std::mem::size_of::<sys::ggml_backend_buffer>() == 15 * P);

/// Registers the backend with ggml's registry (once; later calls only count) and returns how
/// many devices it has. With no usable adapter the backend is registered without devices.
/// `GRAFT_WGPU=0` in the environment skips registration.
pub fn register() -> usize {
    if std::env::var("GRAFT_WGPU").is_ok_and(|v| v == "0") {
        return 0;
    }
    ffi::register()
}

/// Whether [`register`] has run (and enumerated the adapters, loading the Vulkan drivers).
pub fn is_registered() -> bool {
    ffi::is_registered()
}

/// How matrix-vector products (MUL_MAT with one activation column: decoding) are computed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MatVec {
    /// Cooperative on hardware GPUs, one invocation per output on software renderers.
    Auto,
    /// One workgroup per output: its threads split the row and sum in workgroup memory.
    Cooperative,
    /// One invocation per output, reading the whole row (no barriers).
    PerOutput,
}

static MATVEC: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(0);

/// Chooses the matrix-vector kernel for the graphs computed from now on (all devices). `Auto`
/// is the default; the others exist to compare and test both kernels on one device.
pub fn set_matvec(m: MatVec) {
    MATVEC.store(m as u8, std::sync::atomic::Ordering::Relaxed);
}

pub(crate) fn matvec() -> MatVec {
    match MATVEC.load(std::sync::atomic::Ordering::Relaxed) {
        1 => MatVec::Cooperative,
        2 => MatVec::PerOutput,
        _ => MatVec::Auto,
    }
}

static UPLOADED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Bytes written from the host into this backend's buffers so far, on every device (weights,
/// adapters, graph inputs and the scheduler's copies): what tests count to see that switching
/// adapters never uploads the base model again.
pub fn bytes_uploaded() -> u64 {
    UPLOADED.load(std::sync::atomic::Ordering::Relaxed)
}

/// The last failure of a call ggml made into this backend (a failed allocation, transfer or
/// graph), taken: a second call returns `None`.
pub fn last_error() -> Option<String> {
    ffi::take_error()
}

/// Whether registered device `name` (`WGPU0`, ...) is a software implementation, such as Mesa's
/// lavapipe; `None` for an unknown name.
pub fn is_software(name: &str) -> Option<bool> {
    ffi::is_software(name)
}
