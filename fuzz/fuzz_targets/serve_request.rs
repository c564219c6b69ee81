//! Fuzz target: the request bodies of `graft serve` (`POST /v1/completions` and
//! `/v1/chat/completions`). The first byte picks the endpoint; the rest is the body. Bad
//! bodies get a 400 naming a field; what is accepted keeps every documented bound and reads
//! back the same when written out as a request again.
#![no_main]

#[path = "../../runtime/src/cli/serve/request.rs"]
#[allow(dead_code)]
mod request;

use libfuzzer_sys::fuzz_target;
use request::{Endpoint, Input, Limits, Request, MAX_STOP};
use serde_json::{json, Value};

const FIELDS: [&str; 11] = [
    "body",
    "prompt",
    "messages",
    "temperature",
    "top_p",
    "seed",
    "max_tokens",
    "stream",
    "stop",
    "model",
    "adapters",
];

/// `r` written out as a request body.
fn to_body(r: &Request) -> Value {
    let mut v = json!({
        "adapters": r.adapters.iter().map(|a| json!({"name": a.name, "scale": a.scale})).collect::<Vec<_>>(),
        "stop": r.stop,
        "stream": r.stream,
    });
    match &r.input {
        Input::Prompt(p) => v["prompt"] = json!(p),
        Input::Messages(m) => {
            v["messages"] = m
                .iter()
                .map(|(role, content)| json!({"role": role, "content": content}))
                .collect()
        }
    }
    if let Some(m) = &r.model {
        v["model"] = json!(m);
    }
    if let Some(x) = r.temperature {
        v["temperature"] = json!(x);
    }
    if let Some(x) = r.top_p {
        v["top_p"] = json!(x);
    }
    if let Some(x) = r.seed {
        v["seed"] = json!(x);
    }
    if let Some(x) = r.max_tokens {
        v["max_tokens"] = json!(x);
    }
    v
}

fuzz_target!(|data: &[u8]| {
    let Some((&which, body)) = data.split_first() else {
        return;
    };
    let endpoint = if which & 1 == 0 {
        Endpoint::Completions
    } else {
        Endpoint::ChatCompletions
    };
    let limits = Limits {
        max_tokens: 1 + usize::from(which >> 1) * 16,
        base_name: "base-model",
    };
    let r = match request::parse(endpoint, body, &limits) {
        Ok(r) => r,
        Err(e) => {
            assert!(FIELDS.contains(&e.param), "unknown field {:?}", e.param);
            assert!(!e.message.is_empty());
            return;
        }
    };
    match (&r.input, endpoint) {
        (Input::Prompt(_), Endpoint::Completions) => {}
        (Input::Messages(m), Endpoint::ChatCompletions) => assert!(!m.is_empty()),
        _ => panic!("input of the wrong endpoint"),
    }
    assert!(r.temperature.is_none_or(|t| (0.0..=2.0).contains(&t)));
    assert!(r.top_p.is_none_or(|p| p > 0.0 && p <= 1.0));
    assert!(r
        .max_tokens
        .is_none_or(|n| n >= 1 && n <= limits.max_tokens));
    assert!(r.stop.len() <= MAX_STOP && r.stop.iter().all(|s| !s.is_empty()));
    assert!(r.adapters.iter().all(|a| a.scale.is_finite()));
    assert!(["adapters", "model"].contains(&r.adapters_param));
    if r.adapters_param == "model" {
        assert!(r.adapters.len() <= 1);
        assert!(r.adapters.iter().all(|a| a.name != limits.base_name));
    }
    // Round trip: the accepted request, written out, reads back the same.
    let again = request::parse(endpoint, to_body(&r).to_string().as_bytes(), &limits)
        .unwrap_or_else(|e| panic!("an accepted request written back is refused: {e:?}"));
    assert_eq!(again.input, r.input);
    assert_eq!(again.adapters, r.adapters);
    assert_eq!(again.model, r.model);
    assert_eq!(again.temperature, r.temperature);
    assert_eq!(again.top_p, r.top_p);
    assert_eq!(again.seed, r.seed);
    assert_eq!(again.max_tokens, r.max_tokens);
    assert_eq!(again.stop, r.stop);
    assert_eq!(again.stream, r.stream);
});
