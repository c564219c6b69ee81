//! The bodies of `POST /v1/completions` and `POST /v1/chat/completions`, parsed and checked
//! before anything is looked up, tokenized or queued. Every refusal names the field at fault.
//!
//! This file depends on `serde_json` and `std` only: the fuzz target
//! `fuzz/fuzz_targets/serve_request.rs` compiles it as it is (`#[path]`), so what is fuzzed is
//! exactly what the server runs.

use serde_json::{Map, Value};

/// Which endpoint a body was posted to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoint {
    Completions,
    ChatCompletions,
}

/// What the model is to continue.
#[derive(Clone, Debug, PartialEq)]
pub enum Input {
    /// `"prompt": "..."` (completions).
    Prompt(String),
    /// `"messages": [{"role", "content"}]` (chat), as (role, content) pairs; never empty.
    Messages(Vec<(String, String)>),
}

/// One adapter a request applies, by name (a file stem in the server's adapter directory).
#[derive(Clone, Debug, PartialEq)]
pub struct AdapterUse {
    pub name: String,
    pub scale: f32,
}

/// A checked request. Absent options are `None`; the server fills in its defaults.
#[derive(Clone, Debug, PartialEq)]
pub struct Request {
    pub input: Input,
    /// The `"model"` field as given.
    pub model: Option<String>,
    /// The adapters in the order given: `"adapters"`, else the one `"model"` names (none when
    /// it names the base model, is `"base"` or is empty).
    pub adapters: Vec<AdapterUse>,
    /// The field the adapters came from (`"adapters"` or `"model"`), for a 404 that names it.
    pub adapters_param: &'static str,
    /// Within [0, 2].
    pub temperature: Option<f64>,
    /// Within (0, 1].
    pub top_p: Option<f64>,
    pub seed: Option<u64>,
    /// Within [1, `Limits::max_tokens`].
    pub max_tokens: Option<usize>,
    /// At most 4 non-empty strings.
    pub stop: Vec<String>,
    pub stream: bool,
}

/// A 400 answer: the field at fault and what is wrong with it.
#[derive(Clone, Debug, PartialEq)]
pub struct BadRequest {
    pub param: &'static str,
    pub message: String,
}

fn bad(param: &'static str, message: impl Into<String>) -> BadRequest {
    BadRequest {
        param,
        message: message.into(),
    }
}

/// What the server allows.
pub struct Limits<'a> {
    /// The most tokens one request may ask for (the per-request context less one).
    pub max_tokens: usize,
    /// The base model's name: a `"model"` naming it applies no adapter.
    pub base_name: &'a str,
}

/// At most this many stop strings (OpenAI's limit).
pub const MAX_STOP: usize = 4;

/// Parses and checks a request body.
pub fn parse(endpoint: Endpoint, body: &[u8], limits: &Limits<'_>) -> Result<Request, BadRequest> {
    let m = match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(m)) => m,
        Ok(_) => return Err(bad("body", "the body must be a JSON object")),
        Err(e) => return Err(bad("body", format!("malformed JSON: {e}"))),
    };
    let input = match endpoint {
        Endpoint::Completions => match m.get("prompt") {
            Some(Value::String(s)) => Input::Prompt(s.clone()),
            _ => return Err(bad("prompt", "'prompt' must be a string")),
        },
        Endpoint::ChatCompletions => Input::Messages(messages(&m)?),
    };
    let temperature = number(
        &m,
        "temperature",
        |x| (0.0..=2.0).contains(&x),
        "a number within [0, 2]",
    )?;
    let top_p = number(
        &m,
        "top_p",
        |x| x > 0.0 && x <= 1.0,
        "a number within (0, 1]",
    )?;
    let seed = match m.get("seed") {
        None | Some(Value::Null) => None,
        Some(v) => Some(whole(v).ok_or_else(|| {
            bad(
                "seed",
                format!("'seed' must be a whole number within [0, 2^64), got {v}"),
            )
        })?),
    };
    let limit = limits.max_tokens;
    let max_tokens = match m.get("max_tokens") {
        None | Some(Value::Null) => None,
        Some(v) => match whole(v) {
            Some(n) if n >= 1 && n <= limit as u64 => Some(n as usize),
            _ => {
                return Err(bad(
                    "max_tokens",
                    format!("'max_tokens' must be a whole number within [1, {limit}], got {v}"),
                ))
            }
        },
    };
    let stream = match m.get("stream") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(v) => {
            return Err(bad(
                "stream",
                format!("'stream' must be true or false, got {v}"),
            ))
        }
    };
    let stop_err = || {
        bad(
            "stop",
            format!("'stop' must be a non-empty string or up to {MAX_STOP} of them"),
        )
    };
    let stop = match m.get("stop") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(s)) if !s.is_empty() => vec![s.clone()],
        Some(Value::Array(a)) if a.len() <= MAX_STOP => {
            let mut out = Vec::with_capacity(a.len());
            for s in a {
                match s.as_str() {
                    Some(s) if !s.is_empty() => out.push(s.to_string()),
                    _ => return Err(stop_err()),
                }
            }
            out
        }
        Some(_) => return Err(stop_err()),
    };
    let model = match m.get("model") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(v) => return Err(bad("model", format!("'model' must be a string, got {v}"))),
    };
    let (adapters, adapters_param) = match m.get("adapters") {
        None | Some(Value::Null) => {
            let names_adapter = model
                .as_deref()
                .is_some_and(|s| s != limits.base_name && s != "base" && !s.is_empty());
            let list = match &model {
                Some(name) if names_adapter => vec![AdapterUse {
                    name: name.clone(),
                    scale: 1.0,
                }],
                _ => Vec::new(),
            };
            (list, "model")
        }
        Some(Value::Array(list)) => (adapter_list(list)?, "adapters"),
        Some(_) => {
            return Err(bad(
                "adapters",
                "'adapters' must be a list of {\"name\", \"scale\"}",
            ))
        }
    };
    Ok(Request {
        input,
        model,
        adapters,
        adapters_param,
        temperature,
        top_p,
        seed,
        max_tokens,
        stop,
        stream,
    })
}

fn messages(m: &Map<String, Value>) -> Result<Vec<(String, String)>, BadRequest> {
    let err = || {
        bad(
            "messages",
            "'messages' must be a non-empty list of {\"role\", \"content\"} strings",
        )
    };
    let list = m
        .get("messages")
        .and_then(Value::as_array)
        .ok_or_else(err)?;
    let mut out = Vec::with_capacity(list.len());
    for item in list {
        let role = item.get("role").and_then(Value::as_str).ok_or_else(err)?;
        let content = item
            .get("content")
            .and_then(Value::as_str)
            .ok_or_else(err)?;
        out.push((role.to_string(), content.to_string()));
    }
    if out.is_empty() {
        return Err(err());
    }
    Ok(out)
}

fn adapter_list(list: &[Value]) -> Result<Vec<AdapterUse>, BadRequest> {
    let mut out = Vec::with_capacity(list.len());
    for item in list {
        let name = item
            .get("name")
            .and_then(Value::as_str)
            .ok_or_else(|| bad("adapters", "each of 'adapters' needs a \"name\" string"))?;
        let scale = match item.get("scale") {
            None | Some(Value::Null) => 1.0,
            Some(v) => v
                .as_f64()
                .map(|s| s as f32)
                .filter(|s| s.is_finite())
                .ok_or_else(|| {
                    bad(
                        "adapters",
                        format!("the scale of adapter {name:?} must be a finite number, got {v}"),
                    )
                })?,
        };
        out.push(AdapterUse {
            name: name.to_string(),
            scale,
        });
    }
    Ok(out)
}

/// A whole number >= 0: an integer, or a float with no fraction that is exact in f64 (`3.0`).
fn whole(v: &Value) -> Option<u64> {
    v.as_u64().or_else(|| {
        v.as_f64()
            .filter(|x| *x >= 0.0 && x.fract() == 0.0 && *x <= (1u64 << 53) as f64)
            .map(|x| x as u64)
    })
}

fn number(
    m: &Map<String, Value>,
    key: &'static str,
    ok: impl Fn(f64) -> bool,
    want: &str,
) -> Result<Option<f64>, BadRequest> {
    match m.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => match v.as_f64() {
            Some(x) if ok(x) => Ok(Some(x)),
            _ => Err(bad(key, format!("'{key}' must be {want}, got {v}"))),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits<'static> = Limits {
        max_tokens: 100,
        base_name: "smol",
    };

    fn completions(body: &str) -> Result<Request, BadRequest> {
        parse(Endpoint::Completions, body.as_bytes(), &LIMITS)
    }

    #[test]
    fn model_names_one_adapter_unless_it_is_the_base() {
        let r = completions(r#"{"prompt": "x", "model": "pirate"}"#).unwrap();
        assert_eq!(
            r.adapters,
            [AdapterUse {
                name: "pirate".into(),
                scale: 1.0
            }]
        );
        assert_eq!(r.adapters_param, "model");
        for base in ["smol", "base", ""] {
            let body = format!(r#"{{"prompt": "x", "model": "{base}"}}"#);
            assert!(completions(&body).unwrap().adapters.is_empty());
        }
        let r = completions(r#"{"prompt": "x", "model": "smol", "adapters": [{"name": "a", "scale": 0.5}, {"name": "b"}]}"#).unwrap();
        assert_eq!(r.adapters.len(), 2);
        assert_eq!((r.adapters[0].scale, r.adapters[1].scale), (0.5, 1.0));
        assert_eq!(r.adapters_param, "adapters");
    }

    /// Numbers parse correctly rounded (serde_json's `float_roundtrip`), whatever their
    /// spelling, so an accepted request written back reads back the same (found by the
    /// serve_request fuzz target: this temperature parsed one ulp below 1e-26).
    #[test]
    fn numbers_parse_correctly_rounded() {
        let r = completions(r#"{"prompt": "x", "temperature": 0.000000000000000000000000010}"#)
            .unwrap();
        assert_eq!(r.temperature, Some(1e-26));
        let again = completions(&format!(
            r#"{{"prompt": "x", "temperature": {}}}"#,
            1e-26f64
        ))
        .unwrap();
        assert_eq!(again.temperature, r.temperature);
    }

    #[test]
    fn every_refusal_names_its_field() {
        for (body, param) in [
            ("[1]", "body"),
            ("{", "body"),
            (r#"{"prompt": 3}"#, "prompt"),
            (r#"{"prompt": "x", "temperature": 2.5}"#, "temperature"),
            (r#"{"prompt": "x", "top_p": 0}"#, "top_p"),
            (r#"{"prompt": "x", "seed": -1}"#, "seed"),
            (r#"{"prompt": "x", "seed": 1.5}"#, "seed"),
            (r#"{"prompt": "x", "max_tokens": 101}"#, "max_tokens"),
            (r#"{"prompt": "x", "max_tokens": 0}"#, "max_tokens"),
            (r#"{"prompt": "x", "stream": "yes"}"#, "stream"),
            (r#"{"prompt": "x", "stop": ""}"#, "stop"),
            (
                r#"{"prompt": "x", "stop": ["a", "b", "c", "d", "e"]}"#,
                "stop",
            ),
            (r#"{"prompt": "x", "stop": ["a", 1]}"#, "stop"),
            (r#"{"prompt": "x", "model": 7}"#, "model"),
            (r#"{"prompt": "x", "adapters": {"name": "a"}}"#, "adapters"),
            (r#"{"prompt": "x", "adapters": [{"scale": 1}]}"#, "adapters"),
            (
                r#"{"prompt": "x", "adapters": [{"name": "a", "scale": 1e300}]}"#,
                "adapters",
            ),
        ] {
            let e = completions(body).unwrap_err();
            assert_eq!(e.param, param, "{body}: {}", e.message);
        }
        let e = parse(Endpoint::ChatCompletions, br#"{"messages": []}"#, &LIMITS).unwrap_err();
        assert_eq!(e.param, "messages");
    }

    #[test]
    fn whole_numbers_may_be_written_as_floats() {
        let r = completions(r#"{"prompt": "x", "seed": 3.0, "max_tokens": 100.0}"#).unwrap();
        assert_eq!((r.seed, r.max_tokens), (Some(3), Some(100)));
        let r = completions(r#"{"prompt": "x", "seed": 18446744073709551615}"#).unwrap();
        assert_eq!(r.seed, Some(u64::MAX));
    }
}
