//! Typed metadata getters on [`Gguf`].
//!
//! Three forms per type: `get_T(key)` (missing key is [`FormatError::MissingKey`]),
//! `get_opt_T(key)` (missing key is `Ok(None)`) and, for plain scalars, `get_T_or(key, default)`.
//! A present value of the wrong type is always an error naming the key, the type asked for and
//! the type found. Integer getters accept any integer width that holds the value, because
//! converters disagree on widths; float getters accept f32 and f64.

use std::borrow::Cow;

use super::Gguf;
use crate::error::{FormatError, Result};
use crate::value::{Array, Value};

fn wrong_type(key: &str, expected: &'static str, v: &Value) -> FormatError {
    FormatError::WrongType {
        key: key.to_string(),
        expected,
        found: v.type_name(),
    }
}

fn int<T: TryFrom<i128>>(key: &str, v: &Value, expected: &'static str) -> Result<T> {
    let n = v.as_i128().ok_or_else(|| wrong_type(key, expected, v))?;
    T::try_from(n).map_err(|_| FormatError::ValueOutOfRange {
        key: key.to_string(),
        value: n.to_string(),
        expected,
    })
}

fn conv_u32(key: &str, v: &Value) -> Result<u32> {
    int(key, v, "u32")
}

fn conv_u64(key: &str, v: &Value) -> Result<u64> {
    int(key, v, "u64")
}

fn conv_i32(key: &str, v: &Value) -> Result<i32> {
    int(key, v, "i32")
}

fn conv_i64(key: &str, v: &Value) -> Result<i64> {
    int(key, v, "i64")
}

fn conv_f32(key: &str, v: &Value) -> Result<f32> {
    v.as_f32().ok_or_else(|| wrong_type(key, "f32", v))
}

fn conv_bool(key: &str, v: &Value) -> Result<bool> {
    v.as_bool().ok_or_else(|| wrong_type(key, "bool", v))
}

fn conv_str<'a>(key: &str, v: &'a Value) -> Result<&'a str> {
    v.as_str().ok_or_else(|| wrong_type(key, "string", v))
}

fn conv_str_array<'a>(key: &str, v: &'a Value) -> Result<&'a [String]> {
    match v {
        Value::Array(Array::String(s)) => Ok(s),
        _ => Err(wrong_type(key, "array[string]", v)),
    }
}

fn conv_f32_array<'a>(key: &str, v: &'a Value) -> Result<Cow<'a, [f32]>> {
    match v {
        Value::Array(Array::F32(a)) => Ok(Cow::Borrowed(a)),
        Value::Array(Array::F64(a)) => Ok(Cow::Owned(a.iter().map(|&x| x as f32).collect())),
        _ => Err(wrong_type(key, "array[f32]", v)),
    }
}

/// An integer array as `T`: borrowed when stored as `T`, converted element by element otherwise.
fn int_array<'a, T: Clone + TryFrom<i128>>(
    key: &str,
    v: &'a Value,
    exact: impl FnOnce(&'a Array) -> Option<&'a [T]>,
    expected: &'static str,
) -> Result<Cow<'a, [T]>> {
    let Value::Array(a) = v else {
        return Err(wrong_type(key, expected, v));
    };
    if let Some(s) = exact(a) {
        return Ok(Cow::Borrowed(s));
    }
    let ints = a.ints().ok_or_else(|| wrong_type(key, expected, v))?;
    ints.into_iter()
        .enumerate()
        .map(|(i, n)| {
            T::try_from(n).map_err(|_| FormatError::ValueOutOfRange {
                key: key.to_string(),
                value: format!("{n} (element {i})"),
                expected,
            })
        })
        .collect::<Result<Vec<T>>>()
        .map(Cow::Owned)
}

fn conv_i32_array<'a>(key: &str, v: &'a Value) -> Result<Cow<'a, [i32]>> {
    let exact = |a: &'a Array| match a {
        Array::I32(s) => Some(s.as_slice()),
        _ => None,
    };
    int_array(key, v, exact, "array[i32]")
}

fn conv_u32_array<'a>(key: &str, v: &'a Value) -> Result<Cow<'a, [u32]>> {
    let exact = |a: &'a Array| match a {
        Array::U32(s) => Some(s.as_slice()),
        _ => None,
    };
    int_array(key, v, exact, "array[u32]")
}

macro_rules! getters {
    ($($get:ident, $opt:ident $(, $or:ident)? : $t:ty = $conv:ident, $desc:literal;)*) => {
        impl Gguf {$(
            #[doc = concat!("The value of `key` as ", $desc, "; `Ok(None)` if the key is absent.")]
            pub fn $opt(&self, key: &str) -> Result<Option<$t>> {
                self.get(key).map(|v| $conv(key, v)).transpose()
            }

            #[doc = concat!("The value of `key` as ", $desc, "; an error if it is absent.")]
            pub fn $get(&self, key: &str) -> Result<$t> {
                self.$opt(key)?.ok_or_else(|| FormatError::MissingKey(key.to_string()))
            }

            $(
            #[doc = concat!("The value of `key` as ", $desc, ", or `default` if it is absent.")]
            pub fn $or(&self, key: &str, default: $t) -> Result<$t> {
                Ok(self.$opt(key)?.unwrap_or(default))
            }
            )?
        )*}
    };
}

getters! {
    get_u32, get_opt_u32, get_u32_or: u32 = conv_u32, "u32 (any integer type that fits)";
    get_u64, get_opt_u64, get_u64_or: u64 = conv_u64, "u64 (any integer type that fits)";
    get_i32, get_opt_i32, get_i32_or: i32 = conv_i32, "i32 (any integer type that fits)";
    get_i64, get_opt_i64, get_i64_or: i64 = conv_i64, "i64 (any integer type that fits)";
    get_f32, get_opt_f32, get_f32_or: f32 = conv_f32, "f32 (an f32 or f64)";
    get_bool, get_opt_bool, get_bool_or: bool = conv_bool, "bool";
    get_str, get_opt_str: &str = conv_str, "a string";
    get_str_array, get_opt_str_array: &[String] = conv_str_array, "an array of strings";
    get_f32_array, get_opt_f32_array: Cow<'_, [f32]> = conv_f32_array,
        "f32s (borrowed from an f32 array, converted from an f64 array)";
    get_i32_array, get_opt_i32_array: Cow<'_, [i32]> = conv_i32_array,
        "i32s (borrowed from an i32 array, converted from other integer arrays that fit)";
    get_u32_array, get_opt_u32_array: Cow<'_, [u32]> = conv_u32_array,
        "u32s (borrowed from a u32 array, converted from other integer arrays that fit)";
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::GgufWriter;

    fn file() -> Gguf {
        let mut w = GgufWriter::new();
        w.add_kv("u8", Value::U8(7))
            .add_kv("i64", Value::I64(-1))
            .add_kv("big", Value::U64(1 << 40))
            .add_kv("f64", Value::F64(0.25))
            .add_kv("b", Value::Bool(true))
            .add_kv("s", Value::from("hi"))
            .add_kv("ss", Value::from(vec!["a", "b"]))
            .add_kv("f32s", Value::from(vec![1.0f32, 2.0]))
            .add_kv("f64s", Value::from(vec![0.5f64]))
            .add_kv("i32s", Value::from(vec![-1i32, 2]))
            .add_kv("u8s", Value::from(vec![1u8, 2]))
            .add_kv("i8s", Value::from(vec![-1i8]));
        Gguf::from_bytes(w.to_bytes().unwrap()).unwrap()
    }

    #[test]
    fn integers_widen_and_narrow_when_they_fit() {
        let g = file();
        assert_eq!(g.get_u32("u8").unwrap(), 7);
        assert_eq!(g.get_u64("u8").unwrap(), 7);
        assert_eq!(g.get_i32("i64").unwrap(), -1);
        assert_eq!(g.get_u64("big").unwrap(), 1 << 40);
        assert!(matches!(
            g.get_u32("i64"),
            Err(FormatError::ValueOutOfRange { key, expected: "u32", .. }) if key == "i64"
        ));
        assert!(matches!(
            g.get_u32("big"),
            Err(FormatError::ValueOutOfRange { .. })
        ));
        assert!(matches!(
            g.get_u32("s"),
            Err(FormatError::WrongType { key, expected: "u32", found }) if key == "s" && found == "string"
        ));
    }

    #[test]
    fn missing_optional_and_default() {
        let g = file();
        assert!(matches!(g.get_u32("nope"), Err(FormatError::MissingKey(k)) if k == "nope"));
        assert_eq!(g.get_opt_u32("nope").unwrap(), None);
        assert_eq!(g.get_u32_or("nope", 5).unwrap(), 5);
        assert_eq!(g.get_u32_or("u8", 5).unwrap(), 7);
        assert!(g.get_opt_u32("s").is_err());
        assert!(g.get_u32_or("s", 1).is_err());
        assert_eq!(g.get_f32_or("nope", 1.5).unwrap(), 1.5);
        assert!(!g.get_bool_or("nope", false).unwrap());
        assert_eq!(g.get_opt_str("nope").unwrap(), None);
    }

    #[test]
    fn floats_bools_strings() {
        let g = file();
        assert_eq!(g.get_f32("f64").unwrap(), 0.25);
        assert!(g.get_f32("u8").is_err());
        assert!(g.get_bool("b").unwrap());
        assert!(g.get_bool("u8").is_err());
        assert_eq!(g.get_str("s").unwrap(), "hi");
        assert_eq!(g.get_str_array("ss").unwrap(), ["a", "b"]);
        assert!(matches!(
            g.get_str_array("f32s"),
            Err(FormatError::WrongType { found, .. }) if found == "array[f32]"
        ));
    }

    #[test]
    fn arrays_borrow_or_convert() {
        let g = file();
        assert!(matches!(
            g.get_f32_array("f32s").unwrap(),
            Cow::Borrowed([1.0, 2.0])
        ));
        assert_eq!(&*g.get_f32_array("f64s").unwrap(), [0.5]);
        assert!(matches!(
            g.get_i32_array("i32s").unwrap(),
            Cow::Borrowed([-1, 2])
        ));
        assert_eq!(&*g.get_i32_array("u8s").unwrap(), [1, 2]);
        assert_eq!(&*g.get_u32_array("u8s").unwrap(), [1, 2]);
        assert!(matches!(
            g.get_u32_array("i8s"),
            Err(FormatError::ValueOutOfRange { value, .. }) if value == "-1 (element 0)"
        ));
        assert!(g.get_i32_array("ss").is_err());
        assert!(g.get_f32_array("i32s").is_err());
        assert_eq!(g.get_opt_f32_array("nope").unwrap(), None);
    }
}
