//! Builds ggml with cmake from the sources in the pinned `llama-cpp-sys-2` package and
//! generates bindings with bindgen.
//!
//! The source directory is found with `cargo metadata`; `GRAFT_GGML_SRC` (a path to a
//! `llama.cpp/ggml` directory) overrides it.
//!
//! The cmake build does not depend on cargo's profile, so it is built once per configuration
//! and shared by every profile, target directory and tool (clippy, test, the bindings' release
//! builds, the fuzz crate): in `GRAFT_GGML_CACHE/<target>-<key>` (default: the workspace's
//! `target/ggml`), where the key hashes everything the build depends on (sources, flags,
//! features, compiler environment, this file). With `GRAFT_GGML_SRC` set, ggml is built in
//! `OUT_DIR` as usual, so edits to those sources are picked up incrementally.

use std::env;
use std::fs;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::{Path, PathBuf};
use std::process::Command;

const PKG: &str = "llama-cpp-sys-2";

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=wrapper.h");
    println!("cargo:rerun-if-changed=cmake/CMakeLists.txt");
    println!("cargo:rerun-if-env-changed=GRAFT_GGML_SRC");
    println!("cargo:rerun-if-env-changed=GRAFT_GGML_NATIVE");
    println!("cargo:rerun-if-env-changed=GRAFT_GGML_ISA");
    println!("cargo:rerun-if-env-changed=GRAFT_GGML_CACHE");

    let ggml_src = find_ggml_source();
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
    let target = env::var("TARGET").unwrap();
    let host = env::var("HOST").unwrap();
    let cuda = env::var_os("CARGO_FEATURE_CUDA").is_some();
    let metal = env::var_os("CARGO_FEATURE_METAL").is_some();
    let vulkan = env::var_os("CARGO_FEATURE_VULKAN").is_some();

    // Host builds use every instruction the build machine has (AVX-512 VNNI here), as
    // llama.cpp's own default build does; cross builds (and GRAFT_GGML_NATIVE=0) stay generic.
    // GRAFT_GGML_ISA=avx2 builds for an AVX2-only x86-64 CPU (AMD Zen 2/3, Intel before
    // AVX-512) on any x86-64 host, so that a benchmark can measure what such a machine runs.
    let isa = env::var("GRAFT_GGML_ISA").ok().filter(|v| !v.is_empty());
    let avx2_only = match isa.as_deref() {
        None => false,
        Some("avx2") if target.starts_with("x86_64") => true,
        Some(other) => {
            panic!("GRAFT_GGML_ISA={other}: the one value supported is `avx2`, on x86-64")
        }
    };
    let native = target == host
        && !avx2_only
        && env::var("GRAFT_GGML_NATIVE")
            .map(|v| v != "0")
            .unwrap_or(true);
    let on_off = |b: bool| if b { "ON" } else { "OFF" };

    let mut defines: Vec<(&str, String)> = vec![
        ("GGML_SOURCE_DIR", ggml_src.display().to_string()),
        ("BUILD_SHARED_LIBS", "OFF".into()),
        ("GGML_BUILD_TESTS", "OFF".into()),
        ("GGML_BUILD_EXAMPLES", "OFF".into()),
        ("GGML_CCACHE", "OFF".into()),
        ("GGML_NATIVE", on_off(native).into()),
        ("GGML_OPENMP", "ON".into()),
        // llama.cpp turns tinyBLAS (llamafile sgemm) on by default; so do we, for the same
        // kernels (and results) in prompt processing.
        ("GGML_LLAMAFILE", "ON".into()),
        ("GGML_CUDA", on_off(cuda).into()),
        ("GGML_METAL", on_off(metal).into()),
        ("GGML_METAL_EMBED_LIBRARY", on_off(metal).into()),
        ("GGML_VULKAN", on_off(vulkan).into()),
        ("CMAKE_BUILD_TYPE", "Release".into()),
    ];
    if avx2_only {
        for option in [
            "GGML_SSE42",
            "GGML_AVX",
            "GGML_AVX2",
            "GGML_BMI2",
            "GGML_FMA",
            "GGML_F16C",
        ] {
            defines.push((option, "ON".into()));
        }
    }
    if target.contains("android") || target.contains("aarch64") && target != host {
        defines.push(("GGML_OPENMP", "OFF".into()));
    }
    let mut cfg = cmake::Config::new(manifest_dir.join("cmake"));
    cfg.profile("Release");
    for (k, v) in &defines {
        cfg.define(k, v);
    }
    let dst = if env::var_os("GRAFT_GGML_SRC").is_some() {
        cfg.build()
    } else {
        build_shared(&mut cfg, &defines, &manifest_dir, &target, native)
    };

    for dir in ["lib", "lib64"] {
        println!("cargo:rustc-link-search=native={}", dst.join(dir).display());
    }
    let mut libs = vec!["ggml", "ggml-cpu", "ggml-base"];
    if cuda {
        libs.insert(1, "ggml-cuda");
    }
    if metal {
        libs.insert(1, "ggml-metal");
    }
    if vulkan {
        libs.insert(1, "ggml-vulkan");
    }
    for lib in libs {
        println!("cargo:rustc-link-lib=static={lib}");
    }
    link_system_libs(&target, cuda, metal, vulkan);

    let mut builder = bindgen::Builder::default()
        .header(manifest_dir.join("wrapper.h").to_string_lossy())
        .clang_arg(format!("-I{}", ggml_src.join("include").display()))
        .allowlist_function("(ggml|gguf)_.*")
        .allowlist_type("(ggml|gguf)_.*")
        .allowlist_var("(GGML|GGUF)_.*")
        .prepend_enum_name(false)
        .derive_default(true)
        .layout_tests(false)
        .parse_callbacks(Box::new(bindgen::CargoCallbacks::new()));
    if cuda {
        builder = builder.clang_arg("-DGRAFT_GGML_CUDA");
    }
    if metal {
        builder = builder.clang_arg("-DGRAFT_GGML_METAL");
    }
    if vulkan {
        builder = builder.clang_arg("-DGRAFT_GGML_VULKAN");
    }
    let bindings = builder.generate().expect("bindgen failed on ggml headers");
    let out = PathBuf::from(env::var("OUT_DIR").unwrap());
    bindings
        .write_to_file(out.join("bindings.rs"))
        .expect("writing bindings.rs");
    println!("cargo:include={}", ggml_src.join("include").display());
}

fn link_system_libs(target: &str, cuda: bool, metal: bool, vulkan: bool) {
    if target.contains("apple") {
        println!("cargo:rustc-link-lib=c++");
        println!("cargo:rustc-link-lib=framework=Accelerate");
        if metal {
            for fw in ["Foundation", "Metal", "MetalKit"] {
                println!("cargo:rustc-link-lib=framework={fw}");
            }
        }
    } else if target.contains("android") {
        println!("cargo:rustc-link-lib=c++_shared");
    } else {
        println!("cargo:rustc-link-lib=stdc++");
        if !(target.contains("aarch64") && target != env::var("HOST").unwrap_or_default()) {
            println!("cargo:rustc-link-lib=gomp");
        }
    }
    if cuda {
        if let Ok(p) = env::var("CUDA_PATH") {
            println!("cargo:rustc-link-search=native={p}/lib64");
        }
        println!("cargo:rustc-link-search=native=/usr/local/cuda/lib64");
        for lib in ["cudart", "cublas", "cublasLt", "cuda"] {
            println!("cargo:rustc-link-lib={lib}");
        }
    }
    if vulkan {
        println!("cargo:rustc-link-lib=vulkan");
    }
}

/// Builds ggml in the shared cache directory of this configuration, unless a complete build is
/// already there. A lock file serializes cargo processes that build the same configuration.
fn build_shared(
    cfg: &mut cmake::Config,
    defines: &[(&str, String)],
    manifest_dir: &Path,
    target: &str,
    native: bool,
) -> PathBuf {
    let root = env::var_os("GRAFT_GGML_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| manifest_dir.join("../../target/ggml"));
    let mut h = DefaultHasher::new();
    target.hash(&mut h);
    defines.hash(&mut h);
    for file in ["build.rs", "cmake/CMakeLists.txt"] {
        fs::read(manifest_dir.join(file))
            .expect("reading the ggml-sys build inputs")
            .hash(&mut h);
    }
    // The compiler environment the cmake crate passes on (CC, CFLAGS, CC_<target>, ...).
    let target_us = target.replace('-', "_");
    for var in ["CC", "CXX", "CFLAGS", "CXXFLAGS", "AR", "CMAKE_GENERATOR"] {
        for name in [
            var.to_string(),
            format!("{var}_{target}"),
            format!("{var}_{target_us}"),
            format!("TARGET_{var}"),
        ] {
            println!("cargo:rerun-if-env-changed={name}");
            (name.clone(), env::var_os(&name)).hash(&mut h);
        }
    }
    // -march=native compiles for this CPU: a cache moved to another machine must not be reused.
    if native {
        if let Ok(info) = fs::read_to_string("/proc/cpuinfo") {
            info.lines()
                .find(|l| l.starts_with("flags") || l.starts_with("Features"))
                .hash(&mut h);
        }
    }
    let dst = root.join(format!("{target}-{:016x}", h.finish()));
    let done = dst.join("graft-build-complete");
    fs::create_dir_all(&dst).expect("creating the ggml build cache directory");
    let lock = fs::File::create(dst.join("graft-build.lock")).expect("creating the build lock");
    lock.lock().expect("locking the ggml build cache directory");
    if !done.exists() {
        cfg.out_dir(&dst).build();
        fs::write(&done, b"").expect("marking the ggml build complete");
    }
    dst
}

/// Finds `<llama-cpp-sys-2>/llama.cpp/ggml`.
fn find_ggml_source() -> PathBuf {
    if let Some(p) = env::var_os("GRAFT_GGML_SRC") {
        return PathBuf::from(p);
    }
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
    let workspace = manifest_dir.join("../../Cargo.toml");
    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args(["metadata", "--format-version", "1", "--manifest-path"])
        .arg(&workspace)
        .env_remove("CARGO_TARGET_DIR")
        .output()
        .expect("running `cargo metadata` to find the llama-cpp-sys-2 sources");
    if !out.status.success() {
        panic!(
            "`cargo metadata` failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).expect("cargo metadata JSON");
    let pkgs = meta["packages"].as_array().expect("packages array");
    let pkg = pkgs
        .iter()
        .find(|p| p["name"] == PKG)
        .unwrap_or_else(|| panic!("package {PKG} not in cargo metadata"));
    let manifest = Path::new(pkg["manifest_path"].as_str().expect("manifest_path"));
    let dir = manifest.parent().unwrap().join("llama.cpp").join("ggml");
    if !dir.join("CMakeLists.txt").exists() {
        panic!("ggml sources not found at {}", dir.display());
    }
    dir
}
