//! ggml backends loaded at run time from shared libraries.
//!
//! graft links ggml statically with the CPU backend (and whatever GPU backends its cargo
//! features add). ggml can also build a backend as a loadable module (`GGML_BACKEND_DL`):
//! `libggml-cuda.so`, `libggml-vulkan.so`, ... `scripts/ggml_backend.sh` builds one from the
//! pinned ggml sources, so that one graft binary, built without a CUDA toolkit, runs on an NVIDIA
//! GPU when the library sits beside it.
//!
//! A module is looked for, by ggml's file name (`libggml-<name>.so`, `.dylib` on macOS,
//! `ggml-<name>.dll` on Windows), in the directories of `GRAFT_BACKEND_DIR` (a path list) and
//! then in the running executable's directory. Discovery happens once, and only when something
//! asks for devices other than the CPU (`graft devices`, `--backend auto|cuda|vulkan|metal`):
//! a `--backend cpu` run never opens a GPU driver.
//!
//! A module links ggml's base library. On Linux the graft binary exports its own copy of ggml's
//! symbols (runtime/build.rs), so a module's calls into ggml bind to the copy graft runs;
//! elsewhere (an app embedding the bindings), the module's own `libggml-base` serves them, which
//! works because the two sides share only plain structs and interface tables.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use crate::device::c_str;
use crate::sys;
use crate::{Error, Result};

/// The ggml backends graft may load from a module: the GPU backends `--backend` names, and
/// ggml's BLAS backend (an accelerator beside the CPU, which scripts/test.sh loads to test the
/// mechanism on machines without a GPU).
pub const LOADABLE_BACKENDS: [&str; 4] = ["cuda", "vulkan", "metal", "blas"];

/// The environment variable naming extra directories to look for backend modules in.
pub const BACKEND_DIR_VAR: &str = "GRAFT_BACKEND_DIR";

/// What happened to one loadable backend when graft looked for its module.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModuleLoad {
    /// The backend (`cuda`, `vulkan`, `metal`).
    pub backend: String,
    /// The module file found, if any.
    pub path: Option<PathBuf>,
    /// Why a module that was found did not load (`None` when it loaded or none was found).
    pub error: Option<String>,
}

impl ModuleLoad {
    /// Whether the backend's module was found and registered.
    pub fn loaded(&self) -> bool {
        self.path.is_some() && self.error.is_none()
    }
}

/// ggml's file name of backend `name`'s module on this platform (`libggml-cuda.so`).
pub fn module_file_name(name: &str) -> String {
    format!(
        "{}ggml-{name}{}",
        std::env::consts::DLL_PREFIX,
        std::env::consts::DLL_SUFFIX
    )
}

/// The directories searched for backend modules, in order: `GRAFT_BACKEND_DIR`'s, then the
/// running executable's.
pub fn module_search_dirs() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os(BACKEND_DIR_VAR)
        .map(|v| std::env::split_paths(&v).collect())
        .unwrap_or_default();
    if let Some(dir) = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(Path::to_path_buf))
    {
        dirs.push(dir);
    }
    dirs.retain(|d| !d.as_os_str().is_empty());
    dirs
}

/// The names (lower case) of the backends ggml's registry holds.
pub(crate) fn registered_backends() -> Vec<String> {
    crate::log::install();
    // SAFETY: the registry is initialised on first use and never freed.
    let n = unsafe { sys::ggml_backend_reg_count() };
    (0..n)
        .map(|i| {
            // SAFETY: i < count; names are static strings of the registry.
            c_str(unsafe { sys::ggml_backend_reg_name(sys::ggml_backend_reg_get(i)) })
                .to_ascii_lowercase()
        })
        .collect()
}

/// Loads the backend module at `path` into ggml's registry and returns the backend's name
/// (lower case). A module whose backend is already registered is not loaded twice. The error
/// carries ggml's reason: a missing dependency (`libcudart.so.12`), no usable device, or a
/// module built from other ggml sources (API version).
pub fn load_backend(path: &Path) -> Result<String> {
    crate::log::install();
    let fail = |reason: String| Error::BackendLoad {
        path: path.display().to_string(),
        reason,
    };
    if !path.is_file() {
        return Err(fail("no such file".into()));
    }
    let c = std::ffi::CString::new(path.to_string_lossy().as_bytes())
        .map_err(|_| fail("the path contains a NUL byte".into()))?;
    let _ = crate::log::take_last_error();
    // SAFETY: a NUL-terminated path; ggml keeps the library open for the process's lifetime.
    let reg = unsafe { sys::ggml_backend_load(c.as_ptr()) };
    if reg.is_null() {
        return Err(fail(crate::log::take_last_error().unwrap_or_else(|| {
            "ggml declined it (no usable device on this system)".into()
        })));
    }
    // SAFETY: a registry entry ggml just registered; its name is a static string.
    Ok(c_str(unsafe { sys::ggml_backend_reg_name(reg) }).to_ascii_lowercase())
}

/// Looks once for the module of every loadable backend that is not compiled in, and loads
/// those found. Returns what happened to each.
pub fn load_backend_modules() -> &'static [ModuleLoad] {
    static LOADS: OnceLock<Vec<ModuleLoad>> = OnceLock::new();
    LOADS.get_or_init(|| {
        let compiled_in = registered_backends();
        let dirs = module_search_dirs();
        LOADABLE_BACKENDS
            .iter()
            .filter(|name| !compiled_in.iter().any(|b| b == *name))
            .map(|name| {
                let file = module_file_name(name);
                let path = dirs.iter().map(|d| d.join(&file)).find(|p| p.is_file());
                let error = path.as_deref().and_then(|p| match load_backend(p) {
                    Ok(_) => None,
                    Err(Error::BackendLoad { reason, .. }) => Some(reason),
                    Err(e) => Some(e.to_string()),
                });
                ModuleLoad {
                    backend: name.to_string(),
                    path,
                    error,
                }
            })
            .collect()
    })
}

/// Why backend `name` has no device, for the error that says so: its module was not found
/// (naming where graft looked), or was found and failed to load.
pub(crate) fn absence_note(name: &str) -> String {
    if !LOADABLE_BACKENDS.contains(&name) {
        return String::new();
    }
    match load_backend_modules().iter().find(|m| m.backend == name) {
        // Compiled in (or loaded by the application): present, but without a device.
        None => format!("; the {name} backend found no device"),
        Some(m) => match (&m.path, &m.error) {
            (Some(p), Some(e)) => format!("; {} did not load: {e}", p.display()),
            (Some(p), None) => format!("; {} loaded but found no device", p.display()),
            (None, _) => {
                let dirs: Vec<String> = module_search_dirs()
                    .iter()
                    .map(|d| d.display().to_string())
                    .collect();
                format!(
                    "; no {} in {} (set {BACKEND_DIR_VAR}, or build one with \
                     scripts/ggml_backend.sh {name})",
                    module_file_name(name),
                    dirs.join(", ")
                )
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_follow_ggml() {
        if cfg!(target_os = "linux") {
            assert_eq!(module_file_name("cuda"), "libggml-cuda.so");
        }
    }

    #[test]
    fn a_missing_or_foreign_file_is_a_clear_error() {
        let e = load_backend(Path::new("/nonexistent/libggml-cuda.so")).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("/nonexistent/libggml-cuda.so") && msg.contains("no such file"));
        // A file that is not a shared library: ggml's dlopen error comes back in the error.
        let dir = std::env::temp_dir().join(format!("graft-dl-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let fake = dir.join(module_file_name("cuda"));
        std::fs::write(&fake, b"not a library").unwrap();
        let msg = load_backend(&fake).unwrap_err().to_string();
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(msg.contains("did not load") && msg.len() > 60, "{msg}");
        assert!(!registered_backends().iter().any(|b| b == "cuda"));
    }
}
