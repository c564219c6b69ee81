//! ggml's backend interfaces (`ggml-backend-impl.h`) implemented over wgpu: the registry, one
//! device per wgpu adapter, its buffer type, and backend streams that compute graphs.
//!
//! Every entry point catches panics and turns failures into ggml's failure values (null, false,
//! `GGML_STATUS_FAILED`); the message is kept for [`crate::last_error`].

use std::ffi::{c_char, c_void, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Mutex, OnceLock};

use graft_ggml_sys as sys;

use crate::buffer;
use crate::gpu::Gpu;
use crate::graph;

static LAST_ERROR: Mutex<Option<String>> = Mutex::new(None);

/// Keeps `e` for [`crate::last_error`].
pub(crate) fn record(e: String) {
    if let Ok(mut slot) = LAST_ERROR.lock() {
        *slot = Some(e);
    }
}

pub(crate) fn take_error() -> Option<String> {
    LAST_ERROR.lock().ok().and_then(|mut s| s.take())
}

/// Runs `f`, turning a panic into `default`: no panic may cross into C.
pub(crate) fn guard<T>(default: T, f: impl FnOnce() -> T) -> T {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|_| {
        record("graft-wgpu panicked".into());
        default
    })
}

/// One ggml device: a wgpu adapter, its device made on first use, and its buffer type.
pub(crate) struct Dev {
    adapter: wgpu::Adapter,
    name: CString,
    description: CString,
    kind: sys::ggml_backend_dev_type,
    gpu: OnceLock<Result<Arc<Gpu>, String>>,
    buft: *mut sys::ggml_backend_buffer_type,
}

impl Dev {
    fn gpu(&self) -> Result<Arc<Gpu>, String> {
        self.gpu
            .get_or_init(|| Gpu::new(&self.adapter).map(Arc::new))
            .clone()
    }
}

/// The registry and its devices, made once and never freed (ggml keeps pointers to them).
struct Registry {
    devices: Vec<*mut sys::ggml_backend_device>,
}

// SAFETY: the registry is immutable after construction; the pointers it holds are to leaked,
// never-freed ggml structs whose contexts are Sync (wgpu objects, OnceLock).
unsafe impl Send for Registry {}
// SAFETY: as above.
unsafe impl Sync for Registry {}

static REGISTRY: OnceLock<Registry> = OnceLock::new();

const NAME: &std::ffi::CStr = c"WGPU";

/// Enumerates the adapters and registers the backend with ggml, once. Returns the device count.
pub(crate) fn register() -> usize {
    let r = REGISTRY.get_or_init(|| {
        let devices_ctx = adapters();
        let reg = Box::into_raw(Box::new(sys::ggml_backend_reg {
            api_version: sys::GGML_BACKEND_API_VERSION as i32,
            iface: REG_IFACE,
            context: std::ptr::null_mut(),
        }));
        let mut devices = Vec::new();
        for (i, (adapter, info)) in devices_ctx.into_iter().enumerate() {
            let kind = match info.device_type {
                wgpu::DeviceType::DiscreteGpu => sys::GGML_BACKEND_DEVICE_TYPE_GPU,
                _ => sys::GGML_BACKEND_DEVICE_TYPE_IGPU,
            };
            let description = format!(
                "{} ({:?}, {})",
                info.name,
                info.backend,
                match info.device_type {
                    wgpu::DeviceType::Cpu => "software",
                    wgpu::DeviceType::DiscreteGpu => "discrete",
                    wgpu::DeviceType::IntegratedGpu => "integrated",
                    wgpu::DeviceType::VirtualGpu => "virtual",
                    wgpu::DeviceType::Other => "other",
                }
            );
            let dev = Box::into_raw(Box::new(Dev {
                adapter,
                name: CString::new(format!("WGPU{i}")).unwrap_or_default(),
                description: CString::new(description.replace('\0', "")).unwrap_or_default(),
                kind,
                gpu: OnceLock::new(),
                buft: std::ptr::null_mut(),
            }));
            let device = Box::into_raw(Box::new(sys::ggml_backend_device {
                iface: DEV_IFACE,
                reg,
                context: dev.cast(),
            }));
            let buft = Box::into_raw(Box::new(sys::ggml_backend_buffer_type {
                iface: BUFT_IFACE,
                device,
                context: dev.cast(),
            }));
            // SAFETY: dev was just leaked and is not shared yet.
            unsafe { (*dev).buft = buft };
            devices.push(device);
        }
        // ggml asks for the devices while registering (before this closure returns), so the
        // registry's context holds them, not only REGISTRY.
        let list: &'static Vec<*mut sys::ggml_backend_device> =
            Box::leak(Box::new(devices.clone()));
        // SAFETY: reg was just leaked and is not shared yet.
        unsafe { (*reg).context = (list as *const Vec<_>).cast_mut().cast() };
        // SAFETY: reg is a complete, never-freed registry whose devices are filled in above.
        unsafe { sys::ggml_backend_register(reg) };
        Registry { devices }
    });
    r.devices.len()
}

/// Whether [`register`] has run.
pub(crate) fn is_registered() -> bool {
    REGISTRY.get().is_some()
}

/// Whether the adapter of ggml device `name` is a software rasterizer (lavapipe, WARP).
pub(crate) fn is_software(name: &str) -> Option<bool> {
    let r = REGISTRY.get()?;
    r.devices.iter().find_map(|&d| {
        // SAFETY: registered devices live forever; their context is a Dev.
        let dev = unsafe { &*((*d).context as *const Dev) };
        (dev.name.to_str() == Ok(name))
            .then(|| dev.adapter.get_info().device_type == wgpu::DeviceType::Cpu)
    })
}

/// Whether `buft` is the buffer type of one of our devices.
pub(crate) fn is_ours(buft: sys::ggml_backend_buffer_type_t) -> bool {
    REGISTRY.get().is_some_and(|r| {
        r.devices.iter().any(|&d| {
            // SAFETY: registered devices live forever; their context is a Dev.
            unsafe { dev((*d).context) }.buft == buft
        })
    })
}

/// Vulkan, Metal and DX12 adapters that can run compute shaders.
fn adapters() -> Vec<(wgpu::Adapter, wgpu::AdapterInfo)> {
    let instance = wgpu::Instance::new(wgpu::InstanceDescriptor {
        backends: wgpu::Backends::VULKAN | wgpu::Backends::METAL | wgpu::Backends::DX12,
        ..wgpu::InstanceDescriptor::new_without_display_handle()
    });
    pollster::block_on(instance.enumerate_adapters(wgpu::Backends::all()))
        .into_iter()
        .filter(|a| {
            a.get_downlevel_capabilities()
                .flags
                .contains(wgpu::DownlevelFlags::COMPUTE_SHADERS)
        })
        .map(|a| {
            let info = a.get_info();
            (a, info)
        })
        .collect()
}

/// The Dev behind a device, buffer type or backend.
///
/// # Safety
/// `ctx` must be the context pointer of one of our devices or buffer types.
unsafe fn dev<'a>(ctx: *mut c_void) -> &'a Dev {
    // SAFETY: per the contract; Devs are never freed.
    unsafe { &*(ctx as *const Dev) }
}

// ---- registry ----

const REG_IFACE: sys::ggml_backend_reg_i = sys::ggml_backend_reg_i {
    get_name: Some(reg_get_name),
    get_device_count: Some(reg_device_count),
    get_device: Some(reg_get_device),
    get_proc_address: None,
};

unsafe extern "C" fn reg_get_name(_reg: sys::ggml_backend_reg_t) -> *const c_char {
    NAME.as_ptr()
}

/// The devices of our registry.
///
/// # Safety
/// `reg` must be our registry.
unsafe fn reg_devices<'a>(reg: sys::ggml_backend_reg_t) -> &'a [*mut sys::ggml_backend_device] {
    // SAFETY: our registry's context is a leaked Vec of its devices.
    unsafe { &*((*reg).context as *const Vec<*mut sys::ggml_backend_device>) }
}

unsafe extern "C" fn reg_device_count(reg: sys::ggml_backend_reg_t) -> usize {
    // SAFETY: ggml passes our registry.
    unsafe { reg_devices(reg) }.len()
}

unsafe extern "C" fn reg_get_device(
    reg: sys::ggml_backend_reg_t,
    index: usize,
) -> sys::ggml_backend_dev_t {
    // SAFETY: ggml passes our registry.
    unsafe { reg_devices(reg) }
        .get(index)
        .copied()
        .unwrap_or(std::ptr::null_mut())
}

// ---- device ----

const DEV_IFACE: sys::ggml_backend_device_i = sys::ggml_backend_device_i {
    get_name: Some(dev_get_name),
    get_description: Some(dev_get_description),
    get_memory: Some(dev_get_memory),
    get_type: Some(dev_get_type),
    get_props: Some(dev_get_props),
    init_backend: Some(dev_init_backend),
    get_buffer_type: Some(dev_get_buffer_type),
    get_host_buffer_type: None,
    buffer_from_host_ptr: None,
    supports_op: Some(dev_supports_op),
    supports_buft: Some(dev_supports_buft),
    offload_op: None,
    event_new: None,
    event_free: None,
    event_synchronize: None,
};

unsafe extern "C" fn dev_get_name(d: sys::ggml_backend_dev_t) -> *const c_char {
    // SAFETY: ggml passes one of our devices.
    unsafe { dev((*d).context) }.name.as_ptr()
}

unsafe extern "C" fn dev_get_description(d: sys::ggml_backend_dev_t) -> *const c_char {
    // SAFETY: ggml passes one of our devices.
    unsafe { dev((*d).context) }.description.as_ptr()
}

unsafe extern "C" fn dev_get_memory(
    _d: sys::ggml_backend_dev_t,
    free: *mut usize,
    total: *mut usize,
) {
    // wgpu does not report device memory; 0 says "not reported", as ggml's interface allows.
    // SAFETY: ggml passes writable out-pointers.
    unsafe {
        *free = 0;
        *total = 0;
    }
}

unsafe extern "C" fn dev_get_type(d: sys::ggml_backend_dev_t) -> sys::ggml_backend_dev_type {
    // SAFETY: ggml passes one of our devices.
    unsafe { dev((*d).context) }.kind
}

unsafe extern "C" fn dev_get_props(
    d: sys::ggml_backend_dev_t,
    props: *mut sys::ggml_backend_dev_props,
) {
    // SAFETY: ggml passes one of our devices and a writable props struct.
    let (dv, props) = unsafe { (dev((*d).context), &mut *props) };
    props.name = dv.name.as_ptr();
    props.description = dv.description.as_ptr();
    props.memory_free = 0;
    props.memory_total = 0;
    props.type_ = dv.kind;
    props.device_id = std::ptr::null();
    props.caps = sys::ggml_backend_dev_caps::default();
}

static GUID: sys::ggml_guid = *b"graft-wgpu-back!";

/// The stream: graphs computed on the device, one submission each.
struct Stream {
    gpu: Arc<Gpu>,
}

const BACKEND_IFACE: sys::ggml_backend_i = sys::ggml_backend_i {
    get_name: Some(backend_get_name),
    free: Some(backend_free),
    set_tensor_async: None,
    get_tensor_async: None,
    set_tensor_2d_async: None,
    get_tensor_2d_async: None,
    cpy_tensor_async: None,
    synchronize: None,
    graph_plan_create: None,
    graph_plan_free: None,
    graph_plan_update: None,
    graph_plan_compute: None,
    graph_compute: Some(backend_graph_compute),
    event_record: None,
    event_wait: None,
    graph_optimize: None,
};

unsafe extern "C" fn dev_init_backend(
    d: sys::ggml_backend_dev_t,
    _params: *const c_char,
) -> sys::ggml_backend_t {
    guard(std::ptr::null_mut(), || {
        // SAFETY: ggml passes one of our devices.
        let dv = unsafe { dev((*d).context) };
        match dv.gpu() {
            Ok(gpu) => {
                let ctx = Box::into_raw(Box::new(Stream { gpu }));
                Box::into_raw(Box::new(sys::ggml_backend {
                    guid: std::ptr::addr_of!(GUID) as *mut _,
                    iface: BACKEND_IFACE,
                    device: d,
                    context: ctx.cast(),
                }))
            }
            Err(e) => {
                record(e);
                std::ptr::null_mut()
            }
        }
    })
}

unsafe extern "C" fn dev_get_buffer_type(
    d: sys::ggml_backend_dev_t,
) -> sys::ggml_backend_buffer_type_t {
    // SAFETY: ggml passes one of our devices.
    unsafe { dev((*d).context) }.buft
}

unsafe extern "C" fn dev_supports_op(
    d: sys::ggml_backend_dev_t,
    op: *const sys::ggml_tensor,
) -> bool {
    guard(false, || {
        // SAFETY: ggml passes one of our devices.
        let dv = unsafe { dev((*d).context) };
        let max = dv.adapter.limits().max_storage_buffer_binding_size;
        // SAFETY: ggml passes a valid tensor with valid sources.
        unsafe { graph::supports(op, max) }
    })
}

unsafe extern "C" fn dev_supports_buft(
    d: sys::ggml_backend_dev_t,
    buft: sys::ggml_backend_buffer_type_t,
) -> bool {
    // SAFETY: ggml passes one of our devices.
    unsafe { dev((*d).context) }.buft == buft
}

// ---- buffer type ----

const BUFT_IFACE: sys::ggml_backend_buffer_type_i = sys::ggml_backend_buffer_type_i {
    get_name: Some(buft_get_name),
    alloc_buffer: Some(buft_alloc_buffer),
    alloc_buffer_n: None,
    get_alignment: Some(buft_get_alignment),
    get_max_size: Some(buft_get_max_size),
    get_alloc_size: None,
    get_alloc_size_n: None,
    is_host: None,
};

unsafe extern "C" fn buft_get_name(_b: sys::ggml_backend_buffer_type_t) -> *const c_char {
    NAME.as_ptr()
}

unsafe extern "C" fn buft_alloc_buffer(
    b: sys::ggml_backend_buffer_type_t,
    size: usize,
) -> sys::ggml_backend_buffer_t {
    guard(std::ptr::null_mut(), || {
        // SAFETY: ggml passes our buffer type.
        let dv = unsafe { dev((*b).context) };
        // SAFETY: b is our buffer type.
        match dv
            .gpu()
            .and_then(|gpu| unsafe { buffer::alloc(gpu, b, size) })
        {
            Ok(p) => p,
            Err(e) => {
                record(e);
                std::ptr::null_mut()
            }
        }
    })
}

unsafe extern "C" fn buft_get_alignment(b: sys::ggml_backend_buffer_type_t) -> usize {
    // SAFETY: ggml passes our buffer type.
    let dv = unsafe { dev((*b).context) };
    (dv.adapter.limits().min_storage_buffer_offset_alignment as usize).max(16)
}

unsafe extern "C" fn buft_get_max_size(b: sys::ggml_backend_buffer_type_t) -> usize {
    // SAFETY: ggml passes our buffer type.
    let dv = unsafe { dev((*b).context) };
    dv.adapter.limits().max_buffer_size as usize
}

// ---- backend ----

unsafe extern "C" fn backend_get_name(_b: sys::ggml_backend_t) -> *const c_char {
    NAME.as_ptr()
}

unsafe extern "C" fn backend_free(b: sys::ggml_backend_t) {
    guard((), || {
        // SAFETY: made by Box::into_raw in dev_init_backend; ggml frees it once.
        let backend = unsafe { Box::from_raw(b) };
        // SAFETY: its context is the Stream boxed with it.
        drop(unsafe { Box::from_raw(backend.context as *mut Stream) });
    })
}

unsafe extern "C" fn backend_graph_compute(
    b: sys::ggml_backend_t,
    graph: *mut sys::ggml_cgraph,
) -> sys::ggml_status {
    guard(sys::GGML_STATUS_FAILED, || {
        // SAFETY: our backend's context is a Stream.
        let stream = unsafe { &*((*b).context as *const Stream) };
        // SAFETY: ggml passes a graph allocated in buffers this device supports.
        match unsafe { graph::compute(&stream.gpu, graph) } {
            Ok(()) => sys::GGML_STATUS_SUCCESS,
            Err(e) => {
                record(e);
                sys::GGML_STATUS_FAILED
            }
        }
    })
}
