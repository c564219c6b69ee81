//! [`GgufWriter`]: builds GGUF v3 files, honouring `general.alignment`, and saves them atomically.
//!
//! Tensor data is laid out in insertion order, each tensor starting at a multiple of the
//! alignment and zero-padded to the next one (as ggml's own writer does). Everything the
//! reader would reject (over-long keys or strings, deep nesting, bad shapes, duplicate names)
//! is rejected here first, so `Gguf::from_bytes(w.to_bytes()?)` always succeeds.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use super::reader::{align_up, alignment_from_value, tensor_bytes};
use super::{limits, Gguf};
use crate::error::{FormatError, Result};
use crate::types::GgmlType;
use crate::value::{Array, Value};

struct PendingTensor<'a> {
    name: String,
    dtype: GgmlType,
    dims: Vec<u64>,
    data: Cow<'a, [u8]>,
}

/// Builds a GGUF v3 file from metadata and tensors.
///
/// Tensor data may be borrowed (`&'a [u8]`, e.g. from another [`Gguf`]) or owned.
///
/// ```
/// use graft_formats::{Gguf, GgufWriter, GgmlType, Value};
/// let mut w = GgufWriter::new();
/// w.add_kv("general.architecture", "llama");
/// w.add_tensor("t", GgmlType::F32, &[2], vec![0u8; 8])?;
/// let g = Gguf::from_bytes(w.to_bytes()?)?;
/// assert_eq!(g.get_str("general.architecture")?, "llama");
/// assert_eq!(g.tensor_data(g.tensor("t").unwrap()), &[0u8; 8]);
/// # Ok::<(), graft_formats::FormatError>(())
/// ```
#[derive(Default)]
pub struct GgufWriter<'a> {
    alignment: Option<u64>,
    kvs: Vec<(String, Value)>,
    key_index: HashMap<String, usize>,
    tensors: Vec<PendingTensor<'a>>,
    tensor_index: HashMap<String, usize>,
}

impl<'a> GgufWriter<'a> {
    /// An empty writer with the default alignment (32).
    pub fn new() -> GgufWriter<'a> {
        GgufWriter::default()
    }

    /// A writer holding all of `g`'s metadata (including its alignment) and tensors, whose
    /// data is borrowed from `g`.
    pub fn from_gguf(g: &'a Gguf) -> GgufWriter<'a> {
        let mut w = GgufWriter::new();
        for (k, v) in g.metadata() {
            w.add_kv(k.clone(), v.clone());
        }
        for t in g.tensors() {
            w.tensor_index.insert(t.name.clone(), w.tensors.len());
            w.tensors.push(PendingTensor {
                name: t.name.clone(),
                dtype: t.dtype,
                dims: t.dims.clone(),
                data: Cow::Borrowed(g.tensor_data(t)),
            });
        }
        w
    }

    /// The alignment tensor data will get.
    pub fn alignment(&self) -> u64 {
        self.alignment.unwrap_or(limits::DEFAULT_ALIGNMENT)
    }

    /// Sets the alignment of tensor data: a nonzero power of two, at most
    /// [`limits::MAX_ALIGNMENT`].
    ///
    /// A non-default alignment is recorded as `general.alignment` (u32), so readers find it.
    pub fn set_alignment(&mut self, alignment: u64) -> Result<&mut Self> {
        let value = u32::try_from(alignment)
            .ok()
            .filter(|a| a.is_power_of_two() && u64::from(*a) <= limits::MAX_ALIGNMENT)
            .ok_or(FormatError::BadAlignment { value: alignment })?;
        if alignment != limits::DEFAULT_ALIGNMENT
            || self.key_index.contains_key(limits::ALIGNMENT_KEY)
        {
            self.add_kv(limits::ALIGNMENT_KEY, Value::U32(value));
        }
        self.alignment = Some(alignment);
        Ok(self)
    }

    /// Sets `key` to `value`. Replacing an existing key keeps its position.
    ///
    /// Setting `general.alignment` to a valid value also sets the alignment; an invalid one
    /// makes [`to_bytes`](Self::to_bytes) fail.
    pub fn add_kv(&mut self, key: impl Into<String>, value: impl Into<Value>) -> &mut Self {
        let key = key.into();
        let value = value.into();
        if key == limits::ALIGNMENT_KEY {
            self.alignment = alignment_from_value(&value).ok();
        }
        match self.key_index.get(&key) {
            Some(&i) => self.kvs[i].1 = value,
            None => {
                self.key_index.insert(key.clone(), self.kvs.len());
                self.kvs.push((key, value));
            }
        }
        self
    }

    /// Removes `key`, returning its value.
    pub fn remove_kv(&mut self, key: &str) -> Option<Value> {
        let i = self.key_index.remove(key)?;
        let (_, v) = self.kvs.remove(i);
        for idx in self.key_index.values_mut() {
            if *idx > i {
                *idx -= 1;
            }
        }
        if key == limits::ALIGNMENT_KEY {
            self.alignment = None;
        }
        Some(v)
    }

    /// The metadata set so far, in order.
    pub fn metadata(&self) -> &[(String, Value)] {
        &self.kvs
    }

    /// Adds a tensor. `dims` are in ggml order (ne0 first); `data` must hold exactly
    /// `dtype.row_bytes(ne0) * ne1 * ne2 * ne3` bytes.
    pub fn add_tensor(
        &mut self,
        name: impl Into<String>,
        dtype: GgmlType,
        dims: &[u64],
        data: impl Into<Cow<'a, [u8]>>,
    ) -> Result<&mut Self> {
        let name = name.into();
        let data = data.into();
        if name.len() as u64 > limits::MAX_TENSOR_NAME_LEN {
            return Err(FormatError::TooLarge {
                what: "tensor name length",
                item: String::new(),
                value: name.len() as u64,
                max: limits::MAX_TENSOR_NAME_LEN,
            });
        }
        if self.tensor_index.contains_key(&name) {
            return Err(FormatError::DuplicateTensor(name));
        }
        let expected = tensor_bytes(&name, dims, dtype)?;
        if expected != data.len() as u64 {
            return Err(FormatError::DataSize {
                tensor: name,
                expected,
                got: data.len() as u64,
            });
        }
        self.tensor_index.insert(name.clone(), self.tensors.len());
        self.tensors.push(PendingTensor {
            name,
            dtype,
            dims: dims.to_vec(),
            data,
        });
        Ok(self)
    }

    /// Adds an f32 tensor from values (stored little-endian).
    pub fn add_tensor_f32(
        &mut self,
        name: impl Into<String>,
        dims: &[u64],
        values: &[f32],
    ) -> Result<&mut Self> {
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.add_tensor(name, GgmlType::F32, dims, bytes)
    }

    /// Number of tensors added.
    pub fn n_tensors(&self) -> usize {
        self.tensors.len()
    }

    /// The whole file in memory.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        self.validate()?;
        let mut out = Vec::new();
        self.write_unchecked(&mut out)
            .map_err(|cause| FormatError::Write { cause })?;
        Ok(out)
    }

    /// Writes the file to `w` (wrap it in a `BufWriter` when it is unbuffered).
    pub fn write_to(&self, mut w: impl Write) -> Result<()> {
        self.validate()?;
        self.write_unchecked(&mut w)
            .map_err(|cause| FormatError::Write { cause })
    }

    /// Saves the file at `path` atomically: writes a temporary file in the same directory,
    /// fsyncs it, renames it over `path` and fsyncs the directory. An interrupted save leaves
    /// the previous file (if any) intact; a stray `.<name>.tmp-*` file may remain.
    pub fn write_atomic(&self, path: impl AsRef<Path>) -> Result<()> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        self.validate()?;
        let path = path.as_ref();
        let Some(file_name) = path.file_name() else {
            let e = io::Error::new(io::ErrorKind::InvalidInput, "path has no file name");
            return Err(FormatError::io(path, e));
        };
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        let tmp = dir.join(format!(
            ".{}.tmp-{}-{}",
            file_name.to_string_lossy(),
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .map_err(|e| FormatError::io(&tmp, e))?;
        let written = (|| {
            let mut bw = BufWriter::new(file);
            self.write_unchecked(&mut bw)?;
            let file = bw.into_inner().map_err(io::IntoInnerError::into_error)?;
            file.sync_all()
        })();
        if let Err(e) = written.map_err(|e| FormatError::io(&tmp, e)) {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
        if let Err(e) = fs::rename(&tmp, path) {
            let _ = fs::remove_file(&tmp);
            return Err(FormatError::io(path, e));
        }
        sync_dir(dir).map_err(|e| FormatError::io(dir, e))
    }

    /// Rejects what the reader would reject.
    fn validate(&self) -> Result<()> {
        for (key, value) in &self.kvs {
            if key.len() as u64 > limits::MAX_KEY_LEN {
                return Err(FormatError::TooLarge {
                    what: "key length",
                    item: String::new(),
                    value: key.len() as u64,
                    max: limits::MAX_KEY_LEN,
                });
            }
            if key == limits::ALIGNMENT_KEY {
                alignment_from_value(value)?;
            }
            check_value(key, value)?;
        }
        Ok(())
    }

    fn write_unchecked(&self, w: &mut impl Write) -> io::Result<()> {
        let alignment = self.alignment();
        w.write_all(b"GGUF")?;
        w.write_all(&3u32.to_le_bytes())?;
        w.write_all(&(self.tensors.len() as u64).to_le_bytes())?;
        w.write_all(&(self.kvs.len() as u64).to_le_bytes())?;
        let mut pos: u64 = 24;
        for (key, value) in &self.kvs {
            pos += write_str(w, key)?;
            w.write_all(&value.type_id().to_le_bytes())?;
            pos += 4 + write_value(w, value)?;
        }
        let mut offsets = Vec::with_capacity(self.tensors.len());
        let mut data_len: u64 = 0;
        for t in &self.tensors {
            let offset = align_up(data_len, alignment).ok_or_else(too_big)?;
            offsets.push(offset);
            data_len = offset + t.data.len() as u64;
            pos += write_str(w, &t.name)?;
            w.write_all(&(t.dims.len() as u32).to_le_bytes())?;
            for d in &t.dims {
                w.write_all(&d.to_le_bytes())?;
            }
            w.write_all(&t.dtype.id().to_le_bytes())?;
            w.write_all(&offset.to_le_bytes())?;
            pos += 4 + 8 * t.dims.len() as u64 + 4 + 8;
        }
        let data_start = align_up(pos, alignment).ok_or_else(too_big)?;
        pad(w, data_start - pos)?;
        let mut at: u64 = 0;
        for (t, &offset) in self.tensors.iter().zip(&offsets) {
            pad(w, offset - at)?;
            w.write_all(&t.data)?;
            at = offset + t.data.len() as u64;
        }
        pad(w, align_up(at, alignment).ok_or_else(too_big)? - at)?;
        w.flush()
    }
}

fn too_big() -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, "file size overflows u64")
}

fn pad(w: &mut impl Write, n: u64) -> io::Result<()> {
    const ZEROS: [u8; 64] = [0; 64];
    let mut left = n;
    while left > 0 {
        let k = left.min(ZEROS.len() as u64) as usize;
        w.write_all(&ZEROS[..k])?;
        left -= k as u64;
    }
    Ok(())
}

#[cfg(unix)]
fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(not(unix))]
fn sync_dir(_dir: &Path) -> io::Result<()> {
    Ok(())
}

fn check_value(key: &str, value: &Value) -> Result<()> {
    match value {
        Value::String(s) => check_str(key, s),
        Value::Array(a) => {
            let depth = a.depth();
            if depth > limits::MAX_ARRAY_DEPTH {
                return Err(FormatError::TooLarge {
                    what: "array nesting depth",
                    item: key.to_string(),
                    value: depth as u64,
                    max: limits::MAX_ARRAY_DEPTH as u64,
                });
            }
            check_array(key, a)
        }
        _ => Ok(()),
    }
}

fn check_array(key: &str, a: &Array) -> Result<()> {
    match a {
        Array::String(v) => v.iter().try_for_each(|s| check_str(key, s)),
        Array::Array(v) => v.iter().try_for_each(|a| check_array(key, a)),
        _ => Ok(()),
    }
}

fn check_str(key: &str, s: &str) -> Result<()> {
    if s.len() as u64 > limits::MAX_STRING_LEN {
        return Err(FormatError::TooLarge {
            what: "string length",
            item: key.to_string(),
            value: s.len() as u64,
            max: limits::MAX_STRING_LEN,
        });
    }
    Ok(())
}

/// Writes a GGUF string; returns the bytes written.
fn write_str(w: &mut impl Write, s: &str) -> io::Result<u64> {
    w.write_all(&(s.len() as u64).to_le_bytes())?;
    w.write_all(s.as_bytes())?;
    Ok(8 + s.len() as u64)
}

/// Writes a value's payload (not its type id); returns the bytes written.
fn write_value(w: &mut impl Write, v: &Value) -> io::Result<u64> {
    macro_rules! le {
        ($x:expr) => {{
            let b = $x.to_le_bytes();
            w.write_all(&b)?;
            b.len() as u64
        }};
    }
    Ok(match v {
        Value::U8(x) => le!(x),
        Value::I8(x) => le!(x),
        Value::U16(x) => le!(x),
        Value::I16(x) => le!(x),
        Value::U32(x) => le!(x),
        Value::I32(x) => le!(x),
        Value::U64(x) => le!(x),
        Value::I64(x) => le!(x),
        Value::F32(x) => le!(x),
        Value::F64(x) => le!(x),
        Value::Bool(b) => le!(u8::from(*b)),
        Value::String(s) => write_str(w, s)?,
        Value::Array(a) => write_array(w, a)?,
    })
}

/// Writes an array (element type, length, elements); returns the bytes written.
fn write_array(w: &mut impl Write, a: &Array) -> io::Result<u64> {
    w.write_all(&a.elem_type_id().to_le_bytes())?;
    w.write_all(&(a.len() as u64).to_le_bytes())?;
    let mut n = 12;
    macro_rules! each {
        ($v:expr) => {{
            for x in $v {
                let b = x.to_le_bytes();
                w.write_all(&b)?;
                n += b.len() as u64;
            }
        }};
    }
    match a {
        Array::U8(v) => {
            w.write_all(v)?;
            n += v.len() as u64;
        }
        Array::I8(v) => each!(v),
        Array::U16(v) => each!(v),
        Array::I16(v) => each!(v),
        Array::U32(v) => each!(v),
        Array::I32(v) => each!(v),
        Array::U64(v) => each!(v),
        Array::I64(v) => each!(v),
        Array::F32(v) => each!(v),
        Array::F64(v) => each!(v),
        Array::Bool(v) => each!(v.iter().map(|&b| u8::from(b))),
        Array::String(v) => {
            for s in v {
                n += write_str(w, s)?;
            }
        }
        Array::Array(v) => {
            for inner in v {
                n += write_array(w, inner)?;
            }
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_is_aligned() {
        let mut w = GgufWriter::new();
        w.set_alignment(64).unwrap();
        w.add_kv("a", Value::from("x"));
        w.add_tensor("t0", GgmlType::F32, &[3], vec![1u8; 12])
            .unwrap();
        w.add_tensor("t1", GgmlType::Q8_0, &[32, 2], vec![2u8; 68])
            .unwrap();
        let bytes = w.to_bytes().unwrap();
        assert_eq!(bytes.len() % 64, 0);
        let g = Gguf::from_bytes(bytes).unwrap();
        assert_eq!(g.version(), 3);
        assert_eq!(g.alignment(), 64);
        assert_eq!(g.data_offset() % 64, 0);
        assert_eq!(g.get_u32("general.alignment").unwrap(), 64);
        let t1 = g.tensor("t1").unwrap();
        assert_eq!(t1.offset, 64);
        assert_eq!(t1.abs_offset % 64, 0);
        assert_eq!(g.tensor_data(t1), &[2u8; 68][..]);
    }

    #[test]
    fn default_alignment_writes_no_key() {
        let mut w = GgufWriter::new();
        w.set_alignment(32).unwrap();
        let g = Gguf::from_bytes(w.to_bytes().unwrap()).unwrap();
        assert!(g.get("general.alignment").is_none());
        assert!(matches!(
            w.set_alignment(48),
            Err(FormatError::BadAlignment { value: 48 })
        ));
        assert!(matches!(
            w.set_alignment(1 << 33),
            Err(FormatError::BadAlignment { .. })
        ));
    }

    #[test]
    fn replacing_a_key_keeps_order_and_remove_reindexes() {
        let mut w = GgufWriter::new();
        w.add_kv("a", 1u32)
            .add_kv("b", 2u32)
            .add_kv("c", 3u32)
            .add_kv("a", "x");
        let keys: Vec<&str> = w.metadata().iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["a", "b", "c"]);
        assert_eq!(w.metadata()[0].1, Value::from("x"));
        assert_eq!(w.remove_kv("a"), Some(Value::from("x")));
        w.add_kv("c", 9u32);
        assert_eq!(
            w.metadata(),
            [("b".into(), Value::U32(2)), ("c".into(), Value::U32(9))]
        );
    }

    #[test]
    fn alignment_via_add_kv() {
        let mut w = GgufWriter::new();
        w.add_kv("general.alignment", 16u32);
        assert_eq!(w.alignment(), 16);
        w.add_kv("general.alignment", 3u32);
        assert!(matches!(
            w.to_bytes(),
            Err(FormatError::BadAlignment { value: 3 })
        ));
        w.remove_kv("general.alignment");
        assert_eq!(w.alignment(), 32);
        assert!(w.to_bytes().is_ok());
    }

    #[test]
    fn tensor_validation() {
        let mut w = GgufWriter::new();
        assert!(matches!(
            w.add_tensor("t", GgmlType::F32, &[4], vec![0u8; 15]),
            Err(FormatError::DataSize {
                expected: 16,
                got: 15,
                ..
            })
        ));
        assert!(matches!(
            w.add_tensor("t", GgmlType::Q4_0, &[16], vec![0u8; 9]),
            Err(FormatError::BadShape { .. })
        ));
        assert!(matches!(
            w.add_tensor("t", GgmlType::F32, &[1, 1, 1, 1, 1], vec![0u8; 4]),
            Err(FormatError::BadShape { .. })
        ));
        w.add_tensor_f32("t", &[2], &[1.0, 2.0]).unwrap();
        assert!(matches!(
            w.add_tensor_f32("t", &[1], &[1.0]),
            Err(FormatError::DuplicateTensor(n)) if n == "t"
        ));
        assert_eq!(w.n_tensors(), 1);
    }

    #[test]
    fn rejects_what_the_reader_rejects() {
        let mut w = GgufWriter::new();
        let deep = (0..5).fold(Array::U8(vec![]), |a, _| Array::Array(vec![a]));
        w.add_kv("deep", deep);
        assert!(matches!(
            w.to_bytes(),
            Err(FormatError::TooLarge {
                what: "array nesting depth",
                ..
            })
        ));
        let mut w = GgufWriter::new();
        w.add_kv("k".repeat(limits::MAX_KEY_LEN as usize + 1), 1u8);
        assert!(matches!(
            w.to_bytes(),
            Err(FormatError::TooLarge {
                what: "key length",
                ..
            })
        ));
    }

    #[test]
    fn from_gguf_round_trips_bytes() {
        let mut w = GgufWriter::new();
        w.set_alignment(128).unwrap();
        w.add_kv("x", vec![1.5f32, 2.5]);
        w.add_tensor_f32("a", &[3, 2], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
            .unwrap();
        w.add_tensor_f32("b", &[1], &[7.0]).unwrap();
        let bytes = w.to_bytes().unwrap();
        let g = Gguf::from_bytes(bytes.clone()).unwrap();
        assert_eq!(GgufWriter::from_gguf(&g).to_bytes().unwrap(), bytes);
    }

    #[test]
    fn write_atomic_replaces_and_leaves_no_temp() {
        let dir = std::env::temp_dir().join(format!("graft-formats-atomic-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("a.gguf");
        let mut w = GgufWriter::new();
        w.add_kv("v", 1u32);
        w.write_atomic(&path).unwrap();
        w.add_kv("v", 2u32);
        w.write_atomic(&path).unwrap();
        let g = Gguf::open(&path).unwrap();
        assert_eq!(g.get_u32("v").unwrap(), 2);
        assert_eq!(g.path(), Some(path.as_path()));
        let names: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["a.gguf"]);

        // A failing save (invalid content) leaves the previous file untouched.
        w.add_kv("general.alignment", 0u32);
        assert!(w.write_atomic(&path).is_err());
        assert_eq!(Gguf::open(&path).unwrap().get_u32("v").unwrap(), 2);
        fs::remove_dir_all(&dir).unwrap();
    }
}
