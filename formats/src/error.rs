//! The one error type of `graft-formats`.
//!
//! Every parse failure is a [`FormatError`] variant that carries the facts needed to act on it:
//! the key or tensor involved, the byte offset, what was expected and what was found. Errors
//! raised while reading a file on disk are wrapped in [`FormatError::InFile`] so the message
//! names the path; [`FormatError::root`] gives back the underlying variant for matching.
//!
//! Each message is complete on its own: a variant that wraps another error (an I/O error, the
//! error found in a file) prints it and does not also return it from `source()`, so a report
//! that walks the chain never prints a cause twice.

use std::path::{Path, PathBuf};

/// `Result` with [`FormatError`].
pub type Result<T> = std::result::Result<T, FormatError>;

/// Everything that can go wrong while reading or writing a GGUF file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FormatError {
    /// An I/O operation on `path` failed.
    #[error("{}: {}", path.display(), io_message(cause))]
    Io {
        /// The file or directory involved.
        path: PathBuf,
        /// The underlying error.
        cause: std::io::Error,
    },

    /// Writing to a stream (no path) failed.
    #[error("write failed: {cause}")]
    Write {
        /// The underlying error.
        cause: std::io::Error,
    },

    /// An error found in the file at `path` (see [`FormatError::root`]).
    #[error("{}: {error}", path.display())]
    InFile {
        /// The file being read or written.
        path: PathBuf,
        /// What is wrong with it.
        error: Box<FormatError>,
    },

    /// The file does not start with `GGUF`.
    #[error("not a GGUF file: magic is {found:02x?}, expected \"GGUF\"")]
    BadMagic {
        /// The first four bytes of the file.
        found: [u8; 4],
    },

    /// The GGUF version is not 2 or 3.
    #[error("unsupported GGUF version {0} (supported: 2 and 3, little-endian)")]
    UnsupportedVersion(u32),

    /// The file ends before a field that must be there.
    #[error(
        "the file is truncated: {what}{} at offset {offset} needs {need} bytes, {have} left",
        item_suffix(item)
    )]
    Truncated {
        /// Which field was being read.
        what: &'static str,
        /// The key or tensor being read (empty in the header).
        item: String,
        /// Offset of the field in the file.
        offset: u64,
        /// Bytes the field needs.
        need: u64,
        /// Bytes left in the file.
        have: u64,
    },

    /// A length, count or depth exceeds its limit or what the remaining bytes can hold.
    #[error("{what}{} is {value}, more than the maximum {max}", item_suffix(item))]
    TooLarge {
        /// Which quantity.
        what: &'static str,
        /// The key or tensor being read (empty in the header).
        item: String,
        /// The value found.
        value: u64,
        /// The largest value accepted here.
        max: u64,
    },

    /// A metadata value has a type id that GGUF does not define.
    #[error("key '{key}': unknown value type {ty}")]
    UnknownValueType {
        /// The key whose value (or array element type) is unknown.
        key: String,
        /// The type id found.
        ty: u32,
    },

    /// A tensor has a ggml type id this crate does not know (or one that was removed).
    #[error("tensor '{tensor}': unknown ggml type {ty}")]
    UnknownTensorType {
        /// The tensor name.
        tensor: String,
        /// The type id found.
        ty: u32,
    },

    /// The tensor data ends past the end of the file: the file was cut short (an interrupted
    /// download or copy).
    #[error("the file is truncated: its tensor data needs {expected} bytes, the file has {found}")]
    TruncatedData {
        /// The file length the tensor table implies (end of the last tensor's data).
        expected: u64,
        /// The file's length.
        found: u64,
    },

    /// A tensor's data does not lie inside the file (an offset or size that overflows).
    #[error("tensor '{tensor}': data [{start}, {end}) lies outside the file ({file_len} bytes)")]
    TensorOutOfBounds {
        /// The tensor name.
        tensor: String,
        /// Absolute start offset (saturated on overflow).
        start: u64,
        /// Absolute end offset (saturated on overflow).
        end: u64,
        /// The file length.
        file_len: u64,
    },

    /// A tensor's data offset is not a multiple of the file's alignment.
    #[error(
        "tensor '{tensor}': data offset {offset} is not a multiple of the alignment {alignment}"
    )]
    Misaligned {
        /// The tensor name.
        tensor: String,
        /// The offset relative to the data section.
        offset: u64,
        /// The file's `general.alignment`.
        alignment: u64,
    },

    /// A tensor's shape is invalid (dimension count, zero dimension, overflow, block size).
    #[error("tensor '{tensor}': bad shape {dims:?}: {reason}")]
    BadShape {
        /// The tensor name.
        tensor: String,
        /// The dimensions read (ggml order, ne0 first).
        dims: Vec<u64>,
        /// What is wrong with them.
        reason: String,
    },

    /// Data handed to the writer does not match the tensor's size.
    #[error("tensor '{tensor}': data is {got} bytes, its type and shape need {expected}")]
    DataSize {
        /// The tensor name.
        tensor: String,
        /// Bytes required by dtype and dims.
        expected: u64,
        /// Bytes supplied.
        got: u64,
    },

    /// A number of elements that is not a multiple of the type's block size.
    #[error("{n} elements of {dtype} are not a multiple of its block size {block_size}")]
    NotBlockMultiple {
        /// The element count.
        n: u64,
        /// The type name.
        dtype: &'static str,
        /// Elements per block.
        block_size: u64,
    },

    /// A metadata key occurs twice.
    #[error("duplicate metadata key '{0}'")]
    DuplicateKey(String),

    /// A tensor name occurs twice.
    #[error("duplicate tensor '{0}'")]
    DuplicateTensor(String),

    /// A string is not valid UTF-8.
    #[error("invalid UTF-8 in {what}{} at offset {offset}", item_suffix(item))]
    InvalidUtf8 {
        /// Which string (key, value, tensor name).
        what: &'static str,
        /// The key or tensor being read (empty if the key itself is bad).
        item: String,
        /// Offset of the string bytes.
        offset: u64,
    },

    /// A boolean value that is neither 0 nor 1.
    #[error("key '{key}': invalid bool byte {value} at offset {offset}")]
    InvalidBool {
        /// The key.
        key: String,
        /// The byte found.
        value: u8,
        /// Its offset.
        offset: u64,
    },

    /// `general.alignment` is not a nonzero power of two that fits in u32.
    #[error("general.alignment is {value}, expected a nonzero power of two")]
    BadAlignment {
        /// The value found.
        value: u64,
    },

    /// A required metadata key is missing.
    #[error("missing metadata key '{0}'")]
    MissingKey(String),

    /// A metadata value has a different type than the caller asked for.
    #[error("key '{key}': expected {expected}, found {found}")]
    WrongType {
        /// The key.
        key: String,
        /// The type asked for.
        expected: &'static str,
        /// The type in the file.
        found: String,
    },

    /// A metadata integer does not fit the type the caller asked for.
    #[error("key '{key}': value {value} does not fit in {expected}")]
    ValueOutOfRange {
        /// The key.
        key: String,
        /// The value found, as text.
        value: String,
        /// The type asked for.
        expected: &'static str,
    },
}

fn item_suffix(item: &str) -> String {
    if item.is_empty() {
        String::new()
    } else {
        format!(" of '{item}'")
    }
}

impl FormatError {
    /// Wraps this error with the path of the file it concerns (I/O errors already have one).
    pub fn with_path(self, path: impl AsRef<Path>) -> FormatError {
        match self {
            e @ (FormatError::Io { .. } | FormatError::InFile { .. }) => e,
            FormatError::Write { cause } => FormatError::io(path, cause),
            e => FormatError::InFile {
                path: path.as_ref().to_path_buf(),
                error: Box::new(e),
            },
        }
    }

    /// The underlying error, looking through [`FormatError::InFile`].
    pub fn root(&self) -> &FormatError {
        match self {
            FormatError::InFile { error, .. } => error.root(),
            e => e,
        }
    }

    pub(crate) fn io(path: impl AsRef<Path>, cause: std::io::Error) -> FormatError {
        FormatError::Io {
            path: path.as_ref().to_path_buf(),
            cause,
        }
    }
}

/// An I/O error in words a user acts on: the OS message without the `(os error N)` suffix.
fn io_message(e: &std::io::Error) -> String {
    let s = e.to_string();
    match s.find(" (os error ") {
        Some(i) => s[..i].to_string(),
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn with_path_wraps_and_root_unwraps() {
        let e = FormatError::DuplicateKey("a".into()).with_path("/x/y.gguf");
        assert!(e
            .to_string()
            .starts_with("/x/y.gguf: duplicate metadata key 'a'"));
        assert!(matches!(e.root(), FormatError::DuplicateKey(k) if k == "a"));
        // Wrapping twice keeps one path.
        let e2 = e.with_path("/other");
        assert!(e2.to_string().starts_with("/x/y.gguf"));
    }

    #[test]
    fn messages_name_the_item() {
        let e = FormatError::Truncated {
            what: "string bytes",
            item: "general.name".into(),
            offset: 10,
            need: 4,
            have: 1,
        };
        assert_eq!(
            e.to_string(),
            "the file is truncated: string bytes of 'general.name' at offset 10 needs 4 bytes, 1 left"
        );
    }
}
