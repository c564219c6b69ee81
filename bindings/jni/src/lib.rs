//! graft for the JVM and Android: a direct JNI path over the same Rust objects as the uniffi
//! bindings (`graft_uniffi::{Engine, Session, Adapter}`).
//!
//! The uniffi Kotlin bindings go through JNA, which costs a foreign call per streamed token;
//! here `Session.generate` streams each piece straight to a Java `TokenCallback` from the
//! generating thread. Natives are registered in `JNI_OnLoad` on `dev.graft.jni.GraftNative`
//! (Java sources in `bindings/jni/java`). Handles are `Arc` pointers owned by the Java
//! `AutoCloseable` wrappers; every error, and any panic, becomes a `dev.graft.jni.GraftException`.

use std::ffi::c_void;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use graft_uniffi::{
    Adapter, AdapterUse, Engine, EngineOptions, GenerateOptions, GraftError, Session,
};
use jni::objects::{JClass, JFloatArray, JLongArray, JObject, JString, JValue};
use jni::sys::{jfloat, jint, jlong, jstring};
use jni::{JNIEnv, JavaVM, NativeMethod};

const EXCEPTION: &str = "dev/graft/jni/GraftException";
const NATIVE_CLASS: &str = "dev/graft/jni/GraftNative";

/// Why a native call failed.
enum Failure {
    /// A graft error: thrown as a GraftException.
    Graft(GraftError),
    /// A JNI failure; when it is a pending Java exception (from a callback), that one is kept.
    Jni(jni::errors::Error),
}

impl From<GraftError> for Failure {
    fn from(e: GraftError) -> Self {
        Failure::Graft(e)
    }
}

impl From<jni::errors::Error> for Failure {
    fn from(e: jni::errors::Error) -> Self {
        Failure::Jni(e)
    }
}

type Outcome<T> = Result<T, Failure>;

/// Runs `f`; an error or a panic becomes a GraftException (unless a Java exception is already
/// pending) and the call returns `default`.
fn guard<'l, T>(
    env: &mut JNIEnv<'l>,
    default: T,
    f: impl FnOnce(&mut JNIEnv<'l>) -> Outcome<T>,
) -> T {
    let message = match catch_unwind(AssertUnwindSafe(|| f(env))) {
        Ok(Ok(v)) => return v,
        Ok(Err(Failure::Graft(e))) => e.to_string(),
        Ok(Err(Failure::Jni(e))) => format!("JNI: {e}"),
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic".into());
            format!("internal error: {what}")
        }
    };
    if !env.exception_check().unwrap_or(true) {
        let _ = env.throw_new(EXCEPTION, message);
    }
    default
}

/// A Java string argument (null is an error naming `what`).
fn string(env: &mut JNIEnv, s: &JString, what: &str) -> Outcome<String> {
    if s.is_null() {
        return Err(GraftError::InvalidArgument(format!("{what} is null")).into());
    }
    Ok(env.get_string(s)?.into())
}

fn into_handle<T>(a: Arc<T>) -> jlong {
    Arc::into_raw(a) as jlong
}

/// The object behind a handle (a new reference to it).
///
/// # Safety
/// `h` is 0 or a value returned by [`into_handle`] for the same `T` and not yet freed.
unsafe fn borrow<T>(h: jlong) -> Outcome<Arc<T>> {
    if h == 0 {
        return Err(GraftError::Closed("the handle is closed".into()).into());
    }
    let p = h as *const T;
    // SAFETY: per the contract, `p` came from Arc::into_raw and its reference is still held.
    unsafe {
        Arc::increment_strong_count(p);
        Ok(Arc::from_raw(p))
    }
}

/// Releases a handle's reference.
///
/// # Safety
/// As for [`borrow`]; the handle is not used afterwards.
unsafe fn free<T>(h: jlong) {
    if h != 0 {
        // SAFETY: per the contract, this gives back the reference `into_handle` leaked.
        drop(unsafe { Arc::from_raw(h as *const T) });
    }
}

extern "system" fn engine_open(
    mut env: JNIEnv,
    _: JClass,
    path: JString,
    threads: jint,
    context_length: jint,
) -> jlong {
    guard(&mut env, 0, |env| {
        let path = string(env, &path, "modelPath")?;
        if threads < 0 || context_length < 0 {
            return Err(GraftError::InvalidArgument(
                "threads and contextLength must not be negative".into(),
            )
            .into());
        }
        let defaults = EngineOptions::default();
        let options = EngineOptions {
            threads: (threads > 0).then_some(threads as u32),
            context_length: if context_length > 0 {
                context_length as u32
            } else {
                defaults.context_length
            },
            ..defaults
        };
        Ok(into_handle(Engine::open(path, options)?))
    })
}

extern "system" fn engine_free(_: JNIEnv, _: JClass, engine: jlong) {
    // SAFETY: the Java wrapper frees each handle once (Handle.close swaps it to 0).
    unsafe { free::<Engine>(engine) }
}

extern "system" fn engine_load_adapter(
    mut env: JNIEnv,
    _: JClass,
    engine: jlong,
    path: JString,
    name: JString,
) -> jlong {
    guard(&mut env, 0, |env| {
        // SAFETY: `engine` is a live handle of an Engine (Handle.get checked it is not closed).
        let engine = unsafe { borrow::<Engine>(engine) }?;
        let path = string(env, &path, "path")?;
        let adapter = if name.is_null() {
            engine.load_adapter(path)?
        } else {
            let name = string(env, &name, "name")?;
            engine.load_adapter_named(path, name)?
        };
        Ok(into_handle(adapter))
    })
}

extern "system" fn adapter_free(_: JNIEnv, _: JClass, adapter: jlong) {
    // SAFETY: freed once by the Java wrapper.
    unsafe { free::<Adapter>(adapter) }
}

extern "system" fn session_new(mut env: JNIEnv, _: JClass, engine: jlong) -> jlong {
    guard(&mut env, 0, |_| {
        // SAFETY: `engine` is a live Engine handle.
        let engine = unsafe { borrow::<Engine>(engine) }?;
        Ok(into_handle(engine.session()?))
    })
}

extern "system" fn session_free(_: JNIEnv, _: JClass, session: jlong) {
    // SAFETY: freed once by the Java wrapper.
    unsafe { free::<Session>(session) }
}

extern "system" fn session_set_adapters(
    mut env: JNIEnv,
    _: JClass,
    session: jlong,
    adapters: JLongArray,
    scales: JFloatArray,
) {
    guard(&mut env, (), |env| {
        // SAFETY: `session` is a live Session handle.
        let session = unsafe { borrow::<Session>(session) }?;
        let n = env.get_array_length(&adapters)? as usize;
        if env.get_array_length(&scales)? as usize != n {
            return Err(
                GraftError::InvalidArgument("adapters and scales differ in length".into()).into(),
            );
        }
        let mut handles = vec![0 as jlong; n];
        let mut s = vec![0 as jfloat; n];
        env.get_long_array_region(&adapters, 0, &mut handles)?;
        env.get_float_array_region(&scales, 0, &mut s)?;
        let uses = handles
            .iter()
            .zip(&s)
            .map(|(&h, &scale)| {
                // SAFETY: each element is a live Adapter handle (Session.setAdapters checked).
                let adapter = unsafe { borrow::<Adapter>(h) }?;
                Ok(AdapterUse { adapter, scale })
            })
            .collect::<Outcome<Vec<_>>>()?;
        session.set_adapters(uses)?;
        Ok(())
    })
}

extern "system" fn session_generate(
    mut env: JNIEnv,
    _: JClass,
    session: jlong,
    prompt: JString,
    max_tokens: jint,
    temperature: jfloat,
    callback: JObject,
) -> jstring {
    guard(&mut env, std::ptr::null_mut(), |env| {
        // SAFETY: `session` is a live Session handle.
        let session = unsafe { borrow::<Session>(session) }?;
        let prompt = string(env, &prompt, "prompt")?;
        if max_tokens < 0 {
            return Err(
                GraftError::InvalidArgument("maxTokens must not be negative".into()).into(),
            );
        }
        let options = GenerateOptions {
            max_tokens: max_tokens as u32,
            temperature,
            ..GenerateOptions::default()
        };
        let mut on_text = |piece: &str| -> graft_uniffi::Result<bool> {
            if callback.is_null() {
                return Ok(true);
            }
            let failed = || GraftError::Callback("the TokenCallback threw".into());
            let text = env.new_string(piece).map_err(|_| failed())?;
            let r = env.call_method(
                &callback,
                "onToken",
                "(Ljava/lang/String;)Z",
                &[JValue::Object(&text)],
            );
            let _ = env.delete_local_ref(text);
            r.and_then(|v| v.z()).map_err(|_| failed())
        };
        let result = session.generate_streaming(&prompt, &options, &mut on_text);
        match result {
            Ok(g) => Ok(env.new_string(g.text)?.into_raw()),
            // The callback's own exception is pending: let Java see that one.
            Err(GraftError::Callback(_)) if env.exception_check()? => {
                Err(Failure::Jni(jni::errors::Error::JavaException))
            }
            Err(e) => Err(e.into()),
        }
    })
}

extern "system" fn session_cancel(mut env: JNIEnv, _: JClass, session: jlong) {
    guard(&mut env, (), |_| {
        // SAFETY: `session` is a live Session handle.
        unsafe { borrow::<Session>(session) }?.cancel();
        Ok(())
    })
}

extern "system" fn session_reset(mut env: JNIEnv, _: JClass, session: jlong) {
    guard(&mut env, (), |_| {
        // SAFETY: `session` is a live Session handle.
        unsafe { borrow::<Session>(session) }?.reset()?;
        Ok(())
    })
}

fn method(name: &str, sig: &str, f: *mut c_void) -> NativeMethod {
    NativeMethod {
        name: name.into(),
        sig: sig.into(),
        fn_ptr: f,
    }
}

/// Registers the natives of `dev.graft.jni.GraftNative` when the JVM loads the library.
///
/// # Safety
/// Called by the JVM only, with its own `JavaVM` pointer.
#[no_mangle]
pub unsafe extern "system" fn JNI_OnLoad(vm: *mut jni::sys::JavaVM, _: *mut c_void) -> jint {
    // SAFETY: the JVM calls JNI_OnLoad with its valid JavaVM pointer.
    let Ok(vm) = (unsafe { JavaVM::from_raw(vm) }) else {
        return jni::sys::JNI_ERR;
    };
    let Ok(mut env) = vm.get_env() else {
        return jni::sys::JNI_ERR;
    };
    let s = "Ljava/lang/String;";
    let methods = [
        method(
            "engineOpen",
            &format!("({s}II)J"),
            engine_open as *mut c_void,
        ),
        method("engineFree", "(J)V", engine_free as *mut c_void),
        method(
            "engineLoadAdapter",
            &format!("(J{s}{s})J"),
            engine_load_adapter as *mut c_void,
        ),
        method("adapterFree", "(J)V", adapter_free as *mut c_void),
        method("sessionNew", "(J)J", session_new as *mut c_void),
        method("sessionFree", "(J)V", session_free as *mut c_void),
        method(
            "sessionSetAdapters",
            "(J[J[F)V",
            session_set_adapters as *mut c_void,
        ),
        method(
            "sessionGenerate",
            &format!("(J{s}IFLdev/graft/jni/TokenCallback;){s}"),
            session_generate as *mut c_void,
        ),
        method("sessionCancel", "(J)V", session_cancel as *mut c_void),
        method("sessionReset", "(J)V", session_reset as *mut c_void),
    ];
    // Every function pointer above has the JNI signature it is registered with.
    let registered = env.register_native_methods(NATIVE_CLASS, &methods);
    if registered.is_err() {
        return jni::sys::JNI_ERR;
    }
    jni::sys::JNI_VERSION_1_8
}
