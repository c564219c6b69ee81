//! ggml buffers backed by one wgpu storage buffer each.
//!
//! A device buffer has no host address, so every buffer reports the same made-up base address
//! to ggml and tensors are found by their offset from it; `data` pointers of these tensors are
//! never dereferenced on the host.

use std::ffi::c_void;
use std::sync::Arc;

use graft_ggml_sys as sys;

use crate::ffi::{guard, record};
use crate::gpu::Gpu;

/// The base address every buffer reports (not null, and recognisable in a debugger).
pub(crate) const BASE: usize = 0x1000;

/// The context of one ggml buffer.
pub(crate) struct Buf {
    pub gpu: Arc<Gpu>,
    pub buffer: wgpu::Buffer,
}

/// Where a tensor is bound: a window of its buffer starting at an offset the device accepts,
/// and the tensor's byte offset inside that window.
pub(crate) struct Binding<'a> {
    pub buffer: &'a wgpu::Buffer,
    pub offset: u64,
    pub size: u64,
    pub offset_in_binding: u32,
}

/// The buffer interface, one table shared by every buffer.
pub(crate) const IFACE: sys::ggml_backend_buffer_i = sys::ggml_backend_buffer_i {
    free_buffer: Some(free_buffer),
    get_base: Some(get_base),
    init_tensor: None,
    memset_tensor: Some(memset_tensor),
    set_tensor: Some(set_tensor),
    get_tensor: Some(get_tensor),
    set_tensor_2d: None,
    get_tensor_2d: None,
    cpy_tensor: None,
    clear: Some(clear),
    reset: None,
};

/// Makes a ggml buffer of `size` bytes on `gpu`.
///
/// # Safety
/// `buft` must be this backend's buffer type.
pub(crate) unsafe fn alloc(
    gpu: Arc<Gpu>,
    buft: sys::ggml_backend_buffer_type_t,
    size: usize,
) -> Result<sys::ggml_backend_buffer_t, String> {
    let bytes = (size.max(4) as u64).next_multiple_of(4);
    if bytes > gpu.limits.max_buffer_size {
        return Err(format!(
            "a buffer of {size} bytes is larger than the device allows ({})",
            gpu.limits.max_buffer_size
        ));
    }
    let scope = gpu.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
    let buffer = gpu.device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("graft-wgpu tensors"),
        size: bytes,
        usage: wgpu::BufferUsages::STORAGE
            | wgpu::BufferUsages::COPY_SRC
            | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    if let Some(e) = pollster::block_on(scope.pop()) {
        return Err(format!("allocating {size} bytes: {e}"));
    }
    let ctx = Box::into_raw(Box::new(Buf { gpu, buffer }));
    // SAFETY: buft is ours; ggml owns the returned buffer and calls free_buffer once.
    let p = unsafe { sys::ggml_backend_buffer_init(buft, IFACE, ctx.cast(), size) };
    if p.is_null() {
        // SAFETY: ctx came from Box::into_raw above and was not handed over.
        drop(unsafe { Box::from_raw(ctx) });
        return Err("ggml_backend_buffer_init failed".into());
    }
    Ok(p)
}

/// The context of `buffer` when it is one of ours.
///
/// # Safety
/// `buffer` must be null or a valid ggml buffer.
unsafe fn ours<'a>(buffer: sys::ggml_backend_buffer_t) -> Option<&'a Buf> {
    // SAFETY: valid or null per the contract.
    let b = unsafe { buffer.as_ref() }?;
    if !crate::ffi::is_ours(b.buft) {
        return None;
    }
    // SAFETY: our buffers' context is a live Buf until free_buffer.
    unsafe { (b.context as *const Buf).as_ref() }
}

/// The buffer and byte offset of `t`.
///
/// # Safety
/// `t` must be a valid tensor.
unsafe fn locate<'a>(t: *const sys::ggml_tensor) -> Result<(&'a Buf, u64), String> {
    // SAFETY: valid per the contract; a view shares its source's buffer.
    let t = unsafe { &*t };
    let buffer = if t.buffer.is_null() && !t.view_src.is_null() {
        // SAFETY: view_src of a valid tensor is valid.
        unsafe { (*t.view_src).buffer }
    } else {
        t.buffer
    };
    // SAFETY: a valid tensor's buffer is null or valid.
    let buf = unsafe { ours(buffer) }.ok_or_else(|| {
        format!(
            "tensor {} is not in a wgpu buffer",
            // SAFETY: the name is a NUL-terminated array inside the tensor.
            unsafe { std::ffi::CStr::from_ptr(t.name.as_ptr()) }.to_string_lossy()
        )
    })?;
    let offset = (t.data as usize)
        .checked_sub(BASE)
        .ok_or("tensor has no place in its buffer")?;
    Ok((buf, offset as u64))
}

/// Where `t` is bound, its window aligned down to `align`.
///
/// # Safety
/// `t` must be a valid tensor.
pub(crate) unsafe fn binding<'a>(
    t: *const sys::ggml_tensor,
    align: u64,
) -> Result<Binding<'a>, String> {
    // SAFETY: valid per the contract.
    let (buf, offset) = unsafe { locate(t) }?;
    // SAFETY: as above.
    let span = unsafe { sys::ggml_nbytes(t) } as u64;
    let total = buf.buffer.size();
    if offset + span > total {
        return Err("tensor lies outside its buffer".into());
    }
    let start = offset / align * align;
    let size = (offset - start + span)
        .next_multiple_of(4)
        .min(total - start);
    Ok(Binding {
        buffer: &buf.buffer,
        offset: start,
        size: size.max(4),
        offset_in_binding: (offset - start) as u32,
    })
}

unsafe extern "C" fn free_buffer(buffer: sys::ggml_backend_buffer_t) {
    guard((), || {
        // SAFETY: ggml calls this once, on one of our buffers.
        let ctx = unsafe { (*buffer).context } as *mut Buf;
        // SAFETY: made by Box::into_raw in `alloc`.
        drop(unsafe { Box::from_raw(ctx) });
    })
}

unsafe extern "C" fn get_base(_buffer: sys::ggml_backend_buffer_t) -> *mut c_void {
    BASE as *mut c_void
}

/// Runs a transfer on the tensor's bytes `offset..offset + len`, recording a failure.
fn transfer(
    t: *const sys::ggml_tensor,
    offset: usize,
    f: impl FnOnce(&Buf, u64) -> Result<(), String>,
) {
    guard((), || {
        // SAFETY: ggml passes a valid tensor of this buffer.
        let r = unsafe { locate(t) }.and_then(|(buf, at)| f(buf, at + offset as u64));
        if let Err(e) = r {
            record(e);
        }
    })
}

unsafe extern "C" fn memset_tensor(
    _buffer: sys::ggml_backend_buffer_t,
    t: *mut sys::ggml_tensor,
    value: u8,
    offset: usize,
    size: usize,
) {
    transfer(t, offset, |buf, at| {
        buf.gpu.write(&buf.buffer, at, &vec![value; size])
    })
}

unsafe extern "C" fn set_tensor(
    _buffer: sys::ggml_backend_buffer_t,
    t: *mut sys::ggml_tensor,
    data: *const c_void,
    offset: usize,
    size: usize,
) {
    transfer(t, offset, |buf, at| {
        // SAFETY: ggml passes `size` readable bytes at `data`.
        let src = unsafe { std::slice::from_raw_parts(data.cast::<u8>(), size) };
        buf.gpu.write(&buf.buffer, at, src)
    })
}

unsafe extern "C" fn get_tensor(
    _buffer: sys::ggml_backend_buffer_t,
    t: *const sys::ggml_tensor,
    data: *mut c_void,
    offset: usize,
    size: usize,
) {
    transfer(t, offset, |buf, at| {
        // SAFETY: ggml passes `size` writable bytes at `data`.
        let out = unsafe { std::slice::from_raw_parts_mut(data.cast::<u8>(), size) };
        buf.gpu.read(&buf.buffer, at, out)
    })
}

unsafe extern "C" fn clear(buffer: sys::ggml_backend_buffer_t, value: u8) {
    guard((), || {
        // SAFETY: ggml passes one of our buffers.
        let Some(buf) = (unsafe { ours(buffer) }) else {
            return;
        };
        if value == 0 {
            let mut enc = buf.gpu.device.create_command_encoder(&Default::default());
            enc.clear_buffer(&buf.buffer, 0, None);
            buf.gpu.queue.submit([enc.finish()]);
        } else {
            let bytes = vec![value; buf.buffer.size() as usize];
            buf.gpu.queue.write_buffer(&buf.buffer, 0, &bytes);
        }
    })
}
