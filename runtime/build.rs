//! Link settings of the `graft` binary (and this crate's tests).
//!
//! ggml's backend libraries (`libggml-cuda.so`, built with `GGML_BACKEND_DL`) call into ggml's
//! base library. On Linux the binary exports the ggml it links statically, so that a library
//! graft loads at run time binds to that copy (one logger, one registry) instead of a second
//! one from the `libggml-base.so` shipped beside it. See backends/ggml/src/dynamic.rs.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    if os == "linux" || os == "android" {
        for glob in ["ggml_*", "gguf_*"] {
            for kind in ["bins", "tests"] {
                println!("cargo:rustc-link-arg-{kind}=-Wl,--export-dynamic-symbol={glob}");
            }
        }
    }
}
