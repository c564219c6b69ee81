//! GGUF files: a zero-copy reader over a memory map and an aligned, atomic writer.
//!
//! [`Gguf`] parses the header, metadata and tensor infos once, validating everything (see
//! [`limits`] and `reader.rs`), and then hands out tensor data as slices of the map.
//! [`GgufWriter`] builds GGUF v3 files. The format is described in ggml's `docs/gguf.md`; the
//! adapter conventions on top of it are in the project's `ADAPTER_FORMAT.md`.

mod metadata;
mod reader;
mod writer;

use std::collections::HashMap;
use std::fmt;
use std::fs::File;
use std::path::{Path, PathBuf};

pub use writer::GgufWriter;

use crate::error::{FormatError, Result};
use crate::types::GgmlType;
use crate::value::Value;

/// Limits applied to untrusted files (and to what the writer produces).
pub mod limits {
    /// Longest metadata key, in bytes.
    pub const MAX_KEY_LEN: u64 = 64 * 1024;
    /// Longest tensor name, in bytes.
    pub const MAX_TENSOR_NAME_LEN: u64 = 64 * 1024;
    /// Longest string value, in bytes (room for an embedded `tokenizer.huggingface.json`).
    pub const MAX_STRING_LEN: u64 = 16 * 1024 * 1024;
    /// Deepest array nesting (1 = an array of scalars).
    pub const MAX_ARRAY_DEPTH: usize = 4;
    /// Most tensor dimensions (ggml's `GGML_MAX_DIMS`).
    pub const MAX_DIMS: usize = 4;
    /// Alignment of tensor data when `general.alignment` is absent.
    pub const DEFAULT_ALIGNMENT: u64 = 32;
    /// Largest accepted `general.alignment` (1 MiB): a power of two like 2^31 is valid in
    /// principle but would make a writer pad gigabytes (found by the fuzzer).
    pub const MAX_ALIGNMENT: u64 = 1 << 20;
    /// The key that sets the alignment.
    pub const ALIGNMENT_KEY: &str = "general.alignment";
}

/// Where a tensor's data lies and how to interpret it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    /// Tensor name, e.g. `blk.0.attn_q.weight`.
    pub name: String,
    /// Dimensions in ggml order (`ne0` first, contiguous), 1 to 4 of them, each > 0.
    pub dims: Vec<u64>,
    /// Element type.
    pub dtype: GgmlType,
    /// Offset of the data relative to the data section (a multiple of the alignment).
    pub offset: u64,
    /// Offset of the data from the start of the file.
    pub abs_offset: u64,
    /// Size of the data in bytes.
    pub n_bytes: u64,
}

impl TensorInfo {
    /// Number of elements (product of `dims`).
    pub fn n_elements(&self) -> u64 {
        self.dims.iter().product()
    }

    /// The dimensions padded with 1 to ggml's four: `[ne0, ne1, ne2, ne3]`.
    pub fn ne(&self) -> [u64; 4] {
        let mut ne = [1; 4];
        for (slot, &d) in ne.iter_mut().zip(&self.dims) {
            *slot = d;
        }
        ne
    }

    /// Number of dimensions stored in the file.
    pub fn n_dims(&self) -> usize {
        self.dims.len()
    }
}

enum Bytes {
    Mmap(memmap2::Mmap),
    Owned(Vec<u8>),
}

impl Bytes {
    fn as_slice(&self) -> &[u8] {
        match self {
            Bytes::Mmap(m) => m,
            Bytes::Owned(v) => v,
        }
    }
}

/// A parsed GGUF file (v2 or v3, little-endian) whose bytes stay mapped or owned.
///
/// Metadata keeps the file's order. Tensor data is borrowed from the file's bytes, never copied.
/// With [`Gguf::open`] the data section is page-aligned in memory, so each tensor's data is
/// aligned to `general.alignment`; with [`Gguf::from_bytes`] only the allocator's alignment holds.
pub struct Gguf {
    bytes: Bytes,
    path: Option<PathBuf>,
    version: u32,
    alignment: u64,
    data_offset: u64,
    metadata: Vec<(String, Value)>,
    key_index: HashMap<String, usize>,
    tensors: Vec<TensorInfo>,
    tensor_index: HashMap<String, usize>,
}

impl Gguf {
    /// Memory-maps and parses the file at `path`.
    ///
    /// Errors about the content are wrapped in [`FormatError::InFile`] naming the path
    /// (use [`FormatError::root`] to match on the cause).
    ///
    /// # Safety
    ///
    /// This function is safe to call, but the map is only sound while nobody truncates or
    /// rewrites the file: a shrunk file makes reads of the lost pages fault (SIGBUS), and a
    /// rewritten one changes bytes that were already validated. graft never modifies a file it
    /// has open; replace model and adapter files by rename (as [`GgufWriter::write_atomic`]
    /// does), which leaves the mapped inode intact.
    #[allow(unsafe_code)] // The crate's unsafe: the memory map (and `release_pages`).
    pub fn open(path: impl AsRef<Path>) -> Result<Gguf> {
        let path = path.as_ref();
        let file = File::open(path).map_err(|e| FormatError::io(path, e))?;
        // A directory opens on Unix, and mapping it fails with "No such device".
        if file.metadata().is_ok_and(|m| m.is_dir()) {
            return Err(FormatError::io(
                path,
                std::io::Error::new(
                    std::io::ErrorKind::IsADirectory,
                    "is a directory, not a GGUF file",
                ),
            ));
        }
        // SAFETY: the map is read-only and lives inside `Gguf` with the bytes it hands out;
        // the file must not be truncated or modified while mapped, as documented above.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| FormatError::io(path, e))?;
        Gguf::from_backing(Bytes::Mmap(map), Some(path.to_path_buf()))
            .map_err(|e| e.with_path(path))
    }

    /// Parses a GGUF file held in memory (tests, fuzzing, files received over a channel).
    pub fn from_bytes(bytes: Vec<u8>) -> Result<Gguf> {
        Gguf::from_backing(Bytes::Owned(bytes), None)
    }

    fn from_backing(bytes: Bytes, path: Option<PathBuf>) -> Result<Gguf> {
        let p = reader::parse(bytes.as_slice())?;
        Ok(Gguf {
            bytes,
            path,
            version: p.version,
            alignment: p.alignment,
            data_offset: p.data_offset,
            metadata: p.metadata,
            key_index: p.key_index,
            tensors: p.tensors,
            tensor_index: p.tensor_index,
        })
    }

    /// GGUF version (2 or 3).
    pub fn version(&self) -> u32 {
        self.version
    }

    /// Alignment of tensor data (`general.alignment`, default 32): a nonzero power of two.
    pub fn alignment(&self) -> u64 {
        self.alignment
    }

    /// Offset of the data section from the start of the file.
    pub fn data_offset(&self) -> u64 {
        self.data_offset
    }

    /// The whole file.
    pub fn as_bytes(&self) -> &[u8] {
        self.bytes.as_slice()
    }

    /// The data section (empty if the file ends before it, which only happens without tensors).
    pub fn data_section(&self) -> &[u8] {
        let start = usize::try_from(self.data_offset).unwrap_or(usize::MAX);
        self.as_bytes().get(start..).unwrap_or_default()
    }

    /// The path the file was opened from (`None` for [`Gguf::from_bytes`]).
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// Length of the file in bytes.
    pub fn file_len(&self) -> u64 {
        self.as_bytes().len() as u64
    }

    /// All metadata, in file order.
    pub fn metadata(&self) -> &[(String, Value)] {
        &self.metadata
    }

    /// The value of `key`, if present.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.key_index
            .get(key)
            .and_then(|&i| self.metadata.get(i))
            .map(|(_, v)| v)
    }

    /// Whether `key` is present.
    pub fn contains_key(&self, key: &str) -> bool {
        self.key_index.contains_key(key)
    }

    /// All tensor infos, in file order.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    /// The tensor called `name`, if present.
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensor_index
            .get(name)
            .and_then(|&i| self.tensors.get(i))
    }

    /// Drops the memory pages of tensor `info`'s data from this process's resident set, once
    /// the data has been copied elsewhere (a repacked weight). The map stays valid: a later read
    /// maps the pages again from the file, which the page cache usually still holds. A no-op for
    /// owned bytes, off Unix, and for an info whose range lies outside the file.
    #[allow(unsafe_code)] // madvise on the memory map
    pub fn release_pages(&self, info: &TensorInfo) {
        #[cfg(unix)]
        if let Bytes::Mmap(m) = &self.bytes {
            let (Ok(start), Ok(len)) = (
                usize::try_from(info.abs_offset),
                usize::try_from(info.n_bytes),
            ) else {
                return;
            };
            if start.checked_add(len).is_none_or(|end| end > m.len()) {
                return;
            }
            // SAFETY: the map is read-only and shared (`Mmap::map`), so MADV_DONTNEED discards no
            // data: the next access to these pages reads the file's bytes again, and references
            // into them (ggml's tensor pointers, borrowed slices) stay valid.
            let _ =
                unsafe { m.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, start, len) };
        }
    }

    /// The bytes of a tensor of this file (`info.n_bytes` of them, at `info.abs_offset`).
    ///
    /// `info` must come from this file's [`tensors`](Self::tensors); for an info whose range
    /// lies outside the file (one from another file) the slice is empty.
    pub fn tensor_data(&self, info: &TensorInfo) -> &[u8] {
        let range = usize::try_from(info.abs_offset).ok().and_then(|start| {
            let len = usize::try_from(info.n_bytes).ok()?;
            Some(start..start.checked_add(len)?)
        });
        range
            .and_then(|r| self.as_bytes().get(r))
            .unwrap_or_default()
    }
}

impl fmt::Debug for Gguf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Gguf")
            .field("path", &self.path)
            .field("version", &self.version)
            .field("file_len", &self.file_len())
            .field("alignment", &self.alignment)
            .field("data_offset", &self.data_offset)
            .field("n_kv", &self.metadata.len())
            .field("n_tensors", &self.tensors.len())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ne_pads_with_ones() {
        let t = TensorInfo {
            name: "t".into(),
            dims: vec![3, 5],
            dtype: GgmlType::F32,
            offset: 0,
            abs_offset: 0,
            n_bytes: 60,
        };
        assert_eq!(t.ne(), [3, 5, 1, 1]);
        assert_eq!(t.n_elements(), 15);
        assert_eq!(t.n_dims(), 2);
    }

    #[test]
    fn gguf_is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<Gguf>();
    }
}
