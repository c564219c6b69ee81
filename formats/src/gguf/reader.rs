//! The GGUF parser over an untrusted `&[u8]`.
//!
//! Layout (GGUF v2/v3, little-endian): magic `GGUF`, version u32, tensor count u64, kv count u64,
//! the kv pairs, the tensor infos, padding to `general.alignment`, then the data section.
//! Every length and count is checked against [`limits`] and against the bytes that remain
//! before anything is allocated; nothing here indexes out of bounds or panics.

use std::collections::HashMap;

use super::limits;
use super::TensorInfo;
use crate::error::{FormatError, Result};
use crate::types::GgmlType;
use crate::value::{type_id, Array, Value};

/// Fewest bytes one kv pair takes: key length (8) + type (4) + a 1-byte value.
const MIN_KV_BYTES: u64 = 13;
/// Fewest bytes one tensor info takes: name length (8) + n_dims (4) + one dim (8) + type (4) +
/// offset (8).
const MIN_TENSOR_INFO_BYTES: u64 = 32;

/// The result of parsing: everything but the bytes themselves.
#[derive(Debug)]
pub(crate) struct Parsed {
    pub version: u32,
    pub alignment: u64,
    pub data_offset: u64,
    pub metadata: Vec<(String, Value)>,
    pub key_index: HashMap<String, usize>,
    pub tensors: Vec<TensorInfo>,
    pub tensor_index: HashMap<String, usize>,
}

/// Parses a whole GGUF file held in `buf`.
pub(crate) fn parse(buf: &[u8]) -> Result<Parsed> {
    let mut c = Cursor {
        buf,
        pos: 0,
        item: String::new(),
    };

    let magic: [u8; 4] = c.array("magic")?;
    if &magic != b"GGUF" {
        return Err(FormatError::BadMagic { found: magic });
    }
    let version = c.u32("version")?;
    if !(version == 2 || version == 3) {
        return Err(FormatError::UnsupportedVersion(version));
    }
    let n_tensors = c.u64("tensor count")?;
    let n_kv = c.u64("kv count")?;
    // The tensor count is checked against the whole file here and against what the metadata
    // left below.
    let check_tensor_count = |c: &Cursor<'_>| {
        c.check_count(
            "tensor count",
            "tensor infos",
            n_tensors,
            MIN_TENSOR_INFO_BYTES,
        )
    };
    c.check_count("kv count", "metadata entries", n_kv, MIN_KV_BYTES)?;
    check_tensor_count(&c)?;

    // Metadata.
    let n_kv = to_usize(n_kv);
    let mut metadata = Vec::with_capacity(n_kv);
    let mut key_index = HashMap::with_capacity(n_kv);
    for _ in 0..n_kv {
        c.item.clear();
        let key = c.string("key", limits::MAX_KEY_LEN)?;
        if key_index.contains_key(&key) {
            return Err(FormatError::DuplicateKey(key));
        }
        c.item.clone_from(&key);
        let ty = c.u32("value type")?;
        let value = c.value(ty)?;
        key_index.insert(key.clone(), metadata.len());
        metadata.push((key, value));
    }

    let alignment = match key_index
        .get(limits::ALIGNMENT_KEY)
        .and_then(|&i| metadata.get(i))
    {
        None => limits::DEFAULT_ALIGNMENT,
        Some((_, v)) => alignment_from_value(v)?,
    };

    // Tensor infos.
    c.item.clear();
    check_tensor_count(&c)?;
    let n_tensors = to_usize(n_tensors);
    let mut infos = Vec::with_capacity(n_tensors);
    let mut tensor_index = HashMap::with_capacity(n_tensors);
    for _ in 0..n_tensors {
        c.item.clear();
        let name = c.string("tensor name", limits::MAX_TENSOR_NAME_LEN)?;
        if tensor_index.contains_key(&name) {
            return Err(FormatError::DuplicateTensor(name));
        }
        c.item.clone_from(&name);
        let n_dims = c.u32("tensor n_dims")?;
        if n_dims == 0 || n_dims as usize > limits::MAX_DIMS {
            return Err(FormatError::BadShape {
                tensor: name,
                dims: Vec::new(),
                reason: format!("{n_dims} dimensions, expected 1 to {}", limits::MAX_DIMS),
            });
        }
        let mut dims = Vec::with_capacity(n_dims as usize);
        for _ in 0..n_dims {
            dims.push(c.u64("tensor dimension")?);
        }
        let ty = c.u32("tensor type")?;
        let offset = c.u64("tensor offset")?;
        let Some(dtype) = GgmlType::from_u32(ty) else {
            return Err(FormatError::UnknownTensorType { tensor: name, ty });
        };
        let n_bytes = tensor_bytes(&name, &dims, dtype)?;
        if !offset.is_multiple_of(alignment) {
            return Err(FormatError::Misaligned {
                tensor: name,
                offset,
                alignment,
            });
        }
        tensor_index.insert(name.clone(), infos.len());
        infos.push(TensorInfo {
            name,
            dims,
            dtype,
            offset,
            abs_offset: 0,
            n_bytes,
        });
    }

    // Data section: starts at the next multiple of the alignment.
    let file_len = buf.len() as u64;
    let data_offset = align_up(c.pos as u64, alignment).ok_or(FormatError::TooLarge {
        what: "data section offset",
        item: String::new(),
        value: c.pos as u64,
        max: u64::MAX - alignment,
    })?;
    for t in &mut infos {
        let start = data_offset.checked_add(t.offset);
        match start.and_then(|s| s.checked_add(t.n_bytes)) {
            Some(_) => t.abs_offset = data_offset + t.offset,
            None => {
                let start = data_offset.saturating_add(t.offset);
                return Err(FormatError::TensorOutOfBounds {
                    tensor: t.name.clone(),
                    start,
                    end: start.saturating_add(t.n_bytes),
                    file_len,
                });
            }
        }
    }
    // Every tensor fits in u64 offsets; the file must reach the end of the last one.
    let expected = infos
        .iter()
        .map(|t| t.abs_offset + t.n_bytes)
        .max()
        .unwrap_or(0);
    if expected > file_len {
        return Err(FormatError::TruncatedData {
            expected,
            found: file_len,
        });
    }

    Ok(Parsed {
        version,
        alignment,
        data_offset,
        metadata,
        key_index,
        tensors: infos,
        tensor_index,
    })
}

/// Validates `general.alignment`: a nonzero power of two, at most
/// [`limits::MAX_ALIGNMENT`].
pub(crate) fn alignment_from_value(v: &Value) -> Result<u64> {
    let Some(n) = v.as_i128() else {
        return Err(FormatError::WrongType {
            key: limits::ALIGNMENT_KEY.to_string(),
            expected: "u32",
            found: v.type_name(),
        });
    };
    match u32::try_from(n) {
        Ok(a) if a.is_power_of_two() && u64::from(a) <= limits::MAX_ALIGNMENT => Ok(u64::from(a)),
        _ => Err(FormatError::BadAlignment {
            value: u64::try_from(n).unwrap_or(u64::MAX),
        }),
    }
}

/// Checks a tensor's shape and returns its size in bytes.
pub(crate) fn tensor_bytes(name: &str, dims: &[u64], dtype: GgmlType) -> Result<u64> {
    let bad = |reason: String| FormatError::BadShape {
        tensor: name.to_string(),
        dims: dims.to_vec(),
        reason,
    };
    if dims.is_empty() || dims.len() > limits::MAX_DIMS {
        return Err(bad(format!(
            "{} dimensions, expected 1 to {}",
            dims.len(),
            limits::MAX_DIMS
        )));
    }
    let mut n: u64 = 1;
    for &d in dims {
        if d == 0 {
            return Err(bad("a dimension is 0".into()));
        }
        n = match n.checked_mul(d) {
            Some(n) if n <= i64::MAX as u64 => n,
            _ => return Err(bad("element count overflows i64".into())),
        };
    }
    let ne0 = dims[0];
    let bs = dtype.block_size();
    if !ne0.is_multiple_of(bs) {
        return Err(bad(format!(
            "ne0 = {ne0} is not a multiple of the {dtype} block size {bs}"
        )));
    }
    // bytes = (ne0 / block_size) * type_size * rows; 8-byte types can overflow u64.
    (ne0 / bs)
        .checked_mul(dtype.type_size())
        .and_then(|row| row.checked_mul(n / ne0))
        .ok_or_else(|| bad("byte size overflows u64".into()))
}

/// `x` rounded up to a multiple of `align` (a power of two), or `None` on overflow.
pub(crate) fn align_up(x: u64, align: u64) -> Option<u64> {
    Some(x.checked_add(align - 1)? & !(align - 1))
}

/// A count already checked against the remaining bytes, so it fits in memory's address space.
fn to_usize(n: u64) -> usize {
    usize::try_from(n).unwrap_or(usize::MAX)
}

/// Fewest bytes one array element of type `ty` takes in the file.
fn min_elem_bytes(ty: u32) -> Option<u64> {
    Some(match ty {
        type_id::U8 | type_id::I8 | type_id::BOOL => 1,
        type_id::U16 | type_id::I16 => 2,
        type_id::U32 | type_id::I32 | type_id::F32 => 4,
        type_id::U64 | type_id::I64 | type_id::F64 => 8,
        type_id::STRING => 8,
        type_id::ARRAY => 12,
        _ => return None,
    })
}

struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
    /// The key or tensor being read, for error messages.
    item: String,
}

macro_rules! le_readers {
    ($($name:ident: $t:ty),*) => {$(
        fn $name(&mut self, what: &'static str) -> Result<$t> {
            Ok(<$t>::from_le_bytes(self.array(what)?))
        }
    )*};
}

/// The largest size a metadata count may imply and still be read as a cut-short file rather
/// than a corrupt count (1 TiB, beyond any model file).
const MAX_PLAUSIBLE_BYTES: u64 = 1 << 40;

impl<'a> Cursor<'a> {
    fn remaining(&self) -> u64 {
        self.buf.len().saturating_sub(self.pos) as u64
    }

    fn truncated(&self, what: &'static str, need: u64) -> FormatError {
        FormatError::Truncated {
            what,
            item: self.item.clone(),
            offset: self.pos as u64,
            need,
            have: self.remaining(),
        }
    }

    fn take(&mut self, n: u64, what: &'static str) -> Result<&'a [u8]> {
        let rest = self.buf.get(self.pos..).unwrap_or_default();
        match usize::try_from(n).ok().and_then(|n| rest.get(..n)) {
            Some(s) => {
                self.pos += s.len();
                Ok(s)
            }
            None => Err(self.truncated(what, n)),
        }
    }

    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N]> {
        let rest = self.buf.get(self.pos..).unwrap_or_default();
        match rest.split_first_chunk::<N>() {
            Some((head, _)) => {
                self.pos += N;
                Ok(*head)
            }
            None => Err(self.truncated(what, N as u64)),
        }
    }

    le_readers!(u8: u8, i8: i8, u16: u16, i16: i16, u32: u32, i32: i32, u64: u64, i64: i64,
                f32: f32, f64: f64);

    /// Fails unless `n` items of at least `min_bytes` each fit in the remaining bytes: a count
    /// that would fit in a file of plausible size means the file was cut short (`Truncated`),
    /// a larger one is corrupt (`TooLarge`).
    /// `items` names the counted things in the truncation message.
    fn check_count(
        &self,
        what: &'static str,
        items: &'static str,
        n: u64,
        min_bytes: u64,
    ) -> Result<()> {
        let max = self.remaining() / min_bytes;
        if n > max {
            if let Some(need) = n
                .checked_mul(min_bytes)
                .filter(|&b| b <= MAX_PLAUSIBLE_BYTES)
            {
                return Err(self.truncated(items, need));
            }
            return Err(FormatError::TooLarge {
                what,
                item: self.item.clone(),
                value: n,
                max,
            });
        }
        Ok(())
    }

    fn string(&mut self, what: &'static str, max_len: u64) -> Result<String> {
        let len = self.u64(what)?;
        if len > max_len {
            return Err(FormatError::TooLarge {
                what,
                item: self.item.clone(),
                value: len,
                max: max_len,
            });
        }
        let offset = self.pos as u64;
        let bytes = self.take(len, what)?;
        match std::str::from_utf8(bytes) {
            Ok(s) => Ok(s.to_owned()),
            Err(_) => Err(FormatError::InvalidUtf8 {
                what,
                item: self.item.clone(),
                offset,
            }),
        }
    }

    fn bool(&mut self) -> Result<bool> {
        let offset = self.pos as u64;
        match self.u8("bool value")? {
            0 => Ok(false),
            1 => Ok(true),
            value => Err(FormatError::InvalidBool {
                key: self.item.clone(),
                value,
                offset,
            }),
        }
    }

    fn value(&mut self, ty: u32) -> Result<Value> {
        Ok(match ty {
            type_id::U8 => Value::U8(self.u8("u8 value")?),
            type_id::I8 => Value::I8(self.i8("i8 value")?),
            type_id::U16 => Value::U16(self.u16("u16 value")?),
            type_id::I16 => Value::I16(self.i16("i16 value")?),
            type_id::U32 => Value::U32(self.u32("u32 value")?),
            type_id::I32 => Value::I32(self.i32("i32 value")?),
            type_id::U64 => Value::U64(self.u64("u64 value")?),
            type_id::I64 => Value::I64(self.i64("i64 value")?),
            type_id::F32 => Value::F32(self.f32("f32 value")?),
            type_id::F64 => Value::F64(self.f64("f64 value")?),
            type_id::BOOL => Value::Bool(self.bool()?),
            type_id::STRING => Value::String(self.string("string value", limits::MAX_STRING_LEN)?),
            type_id::ARRAY => Value::Array(self.array_value(1)?),
            ty => {
                return Err(FormatError::UnknownValueType {
                    key: self.item.clone(),
                    ty,
                })
            }
        })
    }

    /// Reads an array (element type, length, elements) nested `depth` levels deep.
    fn array_value(&mut self, depth: usize) -> Result<Array> {
        if depth > limits::MAX_ARRAY_DEPTH {
            return Err(FormatError::TooLarge {
                what: "array nesting depth",
                item: self.item.clone(),
                value: depth as u64,
                max: limits::MAX_ARRAY_DEPTH as u64,
            });
        }
        let ty = self.u32("array element type")?;
        let Some(min) = min_elem_bytes(ty) else {
            return Err(FormatError::UnknownValueType {
                key: self.item.clone(),
                ty,
            });
        };
        let n = self.u64("array length")?;
        self.check_count("array length", "array elements", n, min)?;
        let n = to_usize(n);

        // Fixed-size elements: take the exact bytes first, then decode.
        macro_rules! fixed {
            ($var:ident, $t:ty) => {{
                const W: usize = std::mem::size_of::<$t>();
                let bytes = self.take((n * W) as u64, "array data")?;
                Array::$var(
                    bytes
                        .chunks_exact(W)
                        .filter_map(|c| c.try_into().ok().map(<$t>::from_le_bytes))
                        .collect(),
                )
            }};
        }
        Ok(match ty {
            type_id::U8 => Array::U8(self.take(n as u64, "array data")?.to_vec()),
            type_id::I8 => fixed!(I8, i8),
            type_id::U16 => fixed!(U16, u16),
            type_id::I16 => fixed!(I16, i16),
            type_id::U32 => fixed!(U32, u32),
            type_id::I32 => fixed!(I32, i32),
            type_id::U64 => fixed!(U64, u64),
            type_id::I64 => fixed!(I64, i64),
            type_id::F32 => fixed!(F32, f32),
            type_id::F64 => fixed!(F64, f64),
            type_id::BOOL => {
                let mut v = Vec::with_capacity(n);
                for _ in 0..n {
                    v.push(self.bool()?);
                }
                Array::Bool(v)
            }
            type_id::STRING => {
                let mut v = Vec::with_capacity(n);
                for _ in 0..n {
                    v.push(self.string("string array element", limits::MAX_STRING_LEN)?);
                }
                Array::String(v)
            }
            _ => {
                // type_id::ARRAY (min_elem_bytes rejected everything else).
                let mut v = Vec::with_capacity(n);
                for _ in 0..n {
                    v.push(self.array_value(depth + 1)?);
                }
                Array::Array(v)
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn align_up_works() {
        assert_eq!(align_up(0, 32), Some(0));
        assert_eq!(align_up(1, 32), Some(32));
        assert_eq!(align_up(64, 32), Some(64));
        assert_eq!(align_up(u64::MAX, 32), None);
    }

    #[test]
    fn tensor_bytes_checks_shape() {
        assert_eq!(
            tensor_bytes("t", &[64, 3], GgmlType::Q4_0).unwrap(),
            2 * 18 * 3
        );
        assert!(matches!(
            tensor_bytes("t", &[], GgmlType::F32),
            Err(FormatError::BadShape { .. })
        ));
        assert!(matches!(
            tensor_bytes("t", &[1, 0], GgmlType::F32),
            Err(FormatError::BadShape { .. })
        ));
        assert!(matches!(
            tensor_bytes("t", &[1 << 32, 1 << 32], GgmlType::F32),
            Err(FormatError::BadShape { .. })
        ));
        assert!(matches!(
            tensor_bytes("t", &[16], GgmlType::Q8_0),
            Err(FormatError::BadShape { .. })
        ));
        // The element count fits i64 but the byte size does not fit u64.
        assert!(matches!(
            tensor_bytes("t", &[i64::MAX as u64], GgmlType::F64),
            Err(FormatError::BadShape { reason, .. }) if reason.contains("byte size")
        ));
    }

    #[test]
    fn alignment_values() {
        assert_eq!(alignment_from_value(&Value::U32(64)).unwrap(), 64);
        assert_eq!(alignment_from_value(&Value::U8(1)).unwrap(), 1);
        assert!(matches!(
            alignment_from_value(&Value::U32(0)),
            Err(FormatError::BadAlignment { value: 0 })
        ));
        assert!(matches!(
            alignment_from_value(&Value::U32(48)),
            Err(FormatError::BadAlignment { value: 48 })
        ));
        assert!(matches!(
            alignment_from_value(&Value::I32(-32)),
            Err(FormatError::BadAlignment { .. })
        ));
        assert!(matches!(
            alignment_from_value(&Value::U64(1 << 40)),
            Err(FormatError::BadAlignment { .. })
        ));
        assert!(matches!(
            alignment_from_value(&Value::F32(32.0)),
            Err(FormatError::WrongType { .. })
        ));
    }
}
