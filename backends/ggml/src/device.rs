//! The devices ggml's backend registry knows, and the choice of backend graphs run on.
//!
//! Which backends exist is decided when graft is built and when it runs: graft's own wgpu
//! backend (cargo feature `wgpu`, on by default) registers itself here, and ggml's CUDA, Metal
//! and Vulkan backends come with the cargo features of graft-ggml-sys or as libraries loaded at
//! run time ([`crate::dynamic`]). The registry lists each with its devices and their memory.
//! [`select_device`] turns a `--backend` choice into the device inference graphs run on;
//! choosing a backend that is absent names the backends this build has and where graft looked
//! for its library.

use std::ffi::CStr;
use std::fmt;
use std::str::FromStr;

use crate::sys;
use crate::{Error, Result};

/// What kind of device a ggml device is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceType {
    /// The host CPU.
    Cpu,
    /// A discrete GPU.
    Gpu,
    /// A GPU sharing the host's memory.
    IntegratedGpu,
    /// An accelerator used beside the CPU (BLAS, AMX, ...).
    Accelerator,
    /// Anything else ggml reports.
    Other,
}

impl DeviceType {
    /// Lower-case name (`cpu`, `gpu`, `igpu`, `accel`, `other`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Cpu => "cpu",
            Self::Gpu => "gpu",
            Self::IntegratedGpu => "igpu",
            Self::Accelerator => "accel",
            Self::Other => "other",
        }
    }
}

/// One device of ggml's backend registry.
#[derive(Clone, Debug)]
pub struct Device {
    /// The backend it belongs to, as graft names it (`cpu`, `cuda`, `metal`, `vulkan`, ...).
    pub backend: String,
    /// ggml's name of the device (`CPU`, `CUDA0`, ...).
    pub name: String,
    /// ggml's description (the CPU model, the GPU's name).
    pub description: String,
    /// Its kind.
    pub kind: DeviceType,
    /// Free memory in bytes, as the device reports it.
    pub memory_free: usize,
    /// Total memory in bytes.
    pub memory_total: usize,
}

pub(crate) fn c_str(p: *const std::os::raw::c_char) -> String {
    if p.is_null() {
        return String::new();
    }
    // SAFETY: ggml returns NUL-terminated strings that live as long as the registry.
    unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
}

/// Adds graft's own backends to ggml's registry (once).
pub(crate) fn register_backends() {
    crate::log::install();
    #[cfg(feature = "wgpu")]
    graft_wgpu::register();
}

/// The registry's device named `name`.
pub(crate) fn find(name: &str) -> Option<sys::ggml_backend_dev_t> {
    register_backends();
    let c = std::ffi::CString::new(name).ok()?;
    // SAFETY: a NUL-terminated name; the registry outlives the returned device.
    let dev = unsafe { sys::ggml_backend_dev_by_name(c.as_ptr()) };
    (!dev.is_null()).then_some(dev)
}

/// Every device ggml's registry has, in registry order (GPUs first, the CPU last), graft's wgpu
/// devices and those of backend libraries found at run time included.
pub fn devices() -> Vec<Device> {
    register_backends();
    crate::dynamic::load_backend_modules();
    registered_devices()
}

/// The devices registered so far: ggml's own backends (registered statically), and graft's wgpu
/// devices only once something asked for them. Enumerating wgpu adapters loads every installed
/// Vulkan driver (Mesa's lavapipe maps LLVM: +45 MB of resident memory), which a run on the CPU
/// or an `auto` choice (which never takes wgpu) must not pay.
fn registered_devices() -> Vec<Device> {
    crate::log::install();
    // SAFETY: the registry is initialised on first use and never freed.
    let n = unsafe { sys::ggml_backend_dev_count() };
    (0..n)
        .filter_map(|i| {
            // SAFETY: i < count.
            let dev = unsafe { sys::ggml_backend_dev_get(i) };
            if dev.is_null() {
                return None;
            }
            let (mut free, mut total) = (0usize, 0usize);
            // SAFETY: a valid device from the registry; the out-pointers are live locals.
            let (name, description, kind, reg) = unsafe {
                sys::ggml_backend_dev_memory(dev, &mut free, &mut total);
                (
                    c_str(sys::ggml_backend_dev_name(dev)),
                    c_str(sys::ggml_backend_dev_description(dev)),
                    sys::ggml_backend_dev_type(dev),
                    sys::ggml_backend_dev_backend_reg(dev),
                )
            };
            let reg_name = if reg.is_null() {
                String::new()
            } else {
                // SAFETY: a valid registry entry.
                c_str(unsafe { sys::ggml_backend_reg_name(reg) })
            };
            let kind = match kind {
                sys::GGML_BACKEND_DEVICE_TYPE_CPU => DeviceType::Cpu,
                sys::GGML_BACKEND_DEVICE_TYPE_GPU => DeviceType::Gpu,
                sys::GGML_BACKEND_DEVICE_TYPE_IGPU => DeviceType::IntegratedGpu,
                sys::GGML_BACKEND_DEVICE_TYPE_ACCEL => DeviceType::Accelerator,
                _ => DeviceType::Other,
            };
            Some(Device {
                backend: reg_name.to_ascii_lowercase(),
                name,
                description,
                kind,
                memory_free: free,
                memory_total: total,
            })
        })
        .collect()
}

/// The backend graphs run on, as chosen on the command line or in a session's options.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum BackendChoice {
    /// The best device present: a hardware GPU of ggml's CUDA, Metal or Vulkan backends, else
    /// the CPU (see [`select_device`]).
    #[default]
    Auto,
    /// ggml's CPU backend.
    Cpu,
    /// graft's wgpu backend.
    Wgpu,
    /// ggml's CUDA backend.
    Cuda,
    /// ggml's Metal backend.
    Metal,
    /// ggml's Vulkan backend.
    Vulkan,
}

impl BackendChoice {
    /// Every choice, in the order `--backend` lists them.
    pub const ALL: [BackendChoice; 6] = [
        Self::Auto,
        Self::Cpu,
        Self::Wgpu,
        Self::Cuda,
        Self::Metal,
        Self::Vulkan,
    ];

    /// The name on the command line (`auto`, `cpu`, `wgpu`, `cuda`, `metal`, `vulkan`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Cpu => "cpu",
            Self::Wgpu => "wgpu",
            Self::Cuda => "cuda",
            Self::Metal => "metal",
            Self::Vulkan => "vulkan",
        }
    }
}

impl fmt::Display for BackendChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for BackendChoice {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let want = s.trim().to_ascii_lowercase();
        Self::ALL
            .into_iter()
            .find(|c| c.as_str() == want)
            .ok_or_else(|| {
                let names: Vec<&str> = Self::ALL.iter().map(|c| c.as_str()).collect();
                format!("unknown backend '{s}' (one of: {})", names.join(", "))
            })
    }
}

/// The backend names this build has devices for (`cpu`, and `cuda`, `vulkan`, ... when built in).
pub fn available_backends() -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for d in devices() {
        if !names.contains(&d.backend) {
            names.push(d.backend);
        }
    }
    names
}

/// The error for backend `name` having no device: the backends this build has, and why.
fn unavailable(name: &str) -> Error {
    Error::BackendUnavailable {
        wanted: name.to_string(),
        available: available_backends().join(", "),
        note: crate::dynamic::absence_note(name),
    }
}

impl Device {
    /// Whether this is a real GPU worth choosing automatically (not a software renderer such
    /// as Mesa's lavapipe, which proves the path but is slower than the CPU backend).
    pub fn is_hardware_gpu(&self) -> bool {
        if !matches!(self.kind, DeviceType::Gpu | DeviceType::IntegratedGpu) {
            return false;
        }
        #[cfg(feature = "wgpu")]
        if self.backend == "wgpu" {
            return graft_wgpu::is_software(&self.name) == Some(false);
        }
        // ggml's Vulkan backend calls every device it shows a GPU; it hides CPU
        // implementations unless GGML_VK_VISIBLE_DEVICES names them, and then only the name
        // tells.
        !is_software_renderer(&self.description)
    }
}

/// Whether a device description names a software implementation of a GPU API.
fn is_software_renderer(description: &str) -> bool {
    let d = description.to_ascii_lowercase();
    ["llvmpipe", "lavapipe", "softpipe", "swiftshader"]
        .iter()
        .any(|s| d.contains(s))
}

/// Backends `auto` may choose, best first: ggml's own GPU backends. graft's wgpu backend is
/// left out until its kernels have run on hardware GPUs (only Mesa's lavapipe so far): on a
/// laptop's integrated GPU it could be slower than the CPU, and `auto` must never make the
/// default path slower. `--backend wgpu` chooses it.
const AUTO_ORDER: [&str; 3] = ["cuda", "metal", "vulkan"];

/// The device inference graphs run on for `choice`: `None` for the CPU backend, or a device of
/// the registry. `auto` takes the first hardware GPU of [`AUTO_ORDER`] and the CPU when there is
/// none; a named backend takes its first device, and a backend without one is an error naming
/// the backends this build has.
pub fn select_device(choice: BackendChoice) -> Result<Option<Device>> {
    match choice {
        BackendChoice::Cpu => Ok(None),
        BackendChoice::Auto => {
            crate::dynamic::load_backend_modules();
            let devs = registered_devices();
            for backend in AUTO_ORDER {
                if let Some(d) = devs
                    .iter()
                    .find(|d| d.backend == backend && d.is_hardware_gpu())
                {
                    return Ok(Some(d.clone()));
                }
            }
            Ok(None)
        }
        other => {
            let name = other.as_str();
            devices()
                .iter()
                .find(|d| d.backend == name)
                .cloned()
                .map(Some)
                .ok_or_else(|| unavailable(name))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cpu_is_listed_with_its_memory() {
        let devs = devices();
        let cpu = devs
            .iter()
            .find(|d| d.kind == DeviceType::Cpu)
            .expect("a CPU device");
        assert_eq!(cpu.backend, "cpu");
        assert!(cpu.memory_total > 0, "{cpu:?}");
        assert!(available_backends().contains(&"cpu".to_string()));
    }

    #[test]
    fn software_renderers_are_not_chosen_automatically() {
        let dev = |backend: &str, description: &str| Device {
            backend: backend.into(),
            name: "Vulkan0".into(),
            description: description.into(),
            kind: DeviceType::Gpu,
            memory_free: 0,
            memory_total: 0,
        };
        assert!(!dev("vulkan", "llvmpipe (LLVM 15.0.6, 256 bits)").is_hardware_gpu());
        assert!(!dev("vulkan", "SwiftShader Device").is_hardware_gpu());
        assert!(dev("vulkan", "NVIDIA H200").is_hardware_gpu());
        assert!(dev("cuda", "NVIDIA H200").is_hardware_gpu());
    }

    #[test]
    fn choices_parse_and_absent_backends_are_named() {
        for c in BackendChoice::ALL {
            assert_eq!(c.as_str().parse::<BackendChoice>(), Ok(c));
        }
        assert_eq!("CUDA".parse::<BackendChoice>(), Ok(BackendChoice::Cuda));
        let e = "tpu".parse::<BackendChoice>().unwrap_err();
        assert!(e.contains("tpu") && e.contains("vulkan"), "{e}");
        assert!(select_device(BackendChoice::Cpu).unwrap().is_none());
        // This crate's tests build ggml without CUDA.
        let msg = select_device(BackendChoice::Cuda).unwrap_err().to_string();
        assert!(msg.contains("cuda") && msg.contains("available: "), "{msg}");
        // A software renderer is never chosen automatically.
        if let Some(d) = select_device(BackendChoice::Auto).unwrap() {
            assert!(d.is_hardware_gpu(), "{d:?}");
        }
    }
}
