//! ggml's own log lines (allocator failures, backend notices) routed through one callback, so
//! they reach stderr only at the verbosity the application asks for. Without this, ggml prints
//! raw lines before the typed error the caller reports.

use std::ffi::{c_char, c_void, CStr};
use std::io::Write;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, Once};

use crate::sys;

/// How much of ggml's logging is printed on stderr.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum LogLevel {
    /// Nothing (the default: failures surface as [`crate::Error`]s).
    Off,
    /// Errors.
    Error,
    /// Errors and warnings.
    Warn,
    /// Also information.
    Info,
    /// Everything, debug lines included.
    Debug,
}

impl LogLevel {
    fn from_ggml(level: sys::ggml_log_level) -> Option<LogLevel> {
        match level {
            sys::GGML_LOG_LEVEL_ERROR => Some(LogLevel::Error),
            sys::GGML_LOG_LEVEL_WARN => Some(LogLevel::Warn),
            sys::GGML_LOG_LEVEL_INFO => Some(LogLevel::Info),
            sys::GGML_LOG_LEVEL_DEBUG => Some(LogLevel::Debug),
            _ => None,
        }
    }
}

static THRESHOLD: AtomicU32 = AtomicU32::new(LogLevel::Off as u32);
/// The level of the last line, for `GGML_LOG_LEVEL_CONT` continuations.
static LAST: AtomicU32 = AtomicU32::new(LogLevel::Info as u32);
static INSTALL: Once = Once::new();
/// The last error ggml logged (with its continuation lines), whatever the threshold, so that a
/// failure ggml reports only in its log (a backend library that does not load) can be named in
/// the typed error.
static LAST_ERROR: Mutex<String> = Mutex::new(String::new());

/// Sets how much of ggml's logging reaches stderr (process-wide).
pub fn set_log_level(level: LogLevel) {
    THRESHOLD.store(level as u32, Ordering::Relaxed);
    install();
}

/// Installs the callback once; called before the first context or backend is made.
pub(crate) fn install() {
    INSTALL.call_once(|| {
        // SAFETY: `callback` is a plain function valid for the whole program; no user data.
        unsafe { sys::ggml_log_set(Some(callback), std::ptr::null_mut()) };
    });
}

extern "C" fn callback(level: sys::ggml_log_level, text: *const c_char, _user: *mut c_void) {
    let new_line = LogLevel::from_ggml(level);
    let level = match new_line {
        Some(l) => {
            LAST.store(l as u32, Ordering::Relaxed);
            l as u32
        }
        None => LAST.load(Ordering::Relaxed),
    };
    if text.is_null() {
        return;
    }
    // SAFETY: ggml passes a NUL-terminated string that lives for the duration of the call.
    let text = unsafe { CStr::from_ptr(text) };
    if level == LogLevel::Error as u32 {
        if let Ok(mut last) = LAST_ERROR.lock() {
            if new_line.is_some() {
                last.clear();
            }
            last.push_str(&text.to_string_lossy());
        }
    }
    if level > THRESHOLD.load(Ordering::Relaxed) {
        return;
    }
    let _ = std::io::stderr().write_all(text.to_bytes());
}

/// Takes the last error line ggml logged since the previous call (trimmed), if any.
pub(crate) fn take_last_error() -> Option<String> {
    let mut last = LAST_ERROR.lock().ok()?;
    let line = last.trim().to_string();
    last.clear();
    (!line.is_empty()).then_some(line)
}
