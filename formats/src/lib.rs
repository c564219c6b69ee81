//! graft-formats: the file formats graft reads and writes, with no compute.
//!
//! - [`gguf`]: a zero-copy GGUF v2/v3 reader over a memory map ([`Gguf`]) that treats every file
//!   as untrusted input, and a writer ([`GgufWriter`]) that honours alignment and saves
//!   atomically.
//! - [`types`]: ggml element types ([`GgmlType`]) with their block sizes.
//! - [`value`]: metadata values ([`Value`], [`Array`]).
//! - [`error`]: the crate's one error type ([`FormatError`]).
//!
//! Adapter files are GGUF files with the conventions of the project's `ADAPTER_FORMAT.md`.
//! The only `unsafe` in this crate is the memory map in [`Gguf::open`].

#![warn(missing_docs)]
#![deny(unsafe_code)]

pub mod error;
pub mod gguf;
pub mod types;
pub mod value;

pub use error::{FormatError, Result};
pub use gguf::{Gguf, GgufWriter, TensorInfo};
pub use types::GgmlType;
pub use value::{Array, Value};
