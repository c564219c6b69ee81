//! `graft serve` over loopback with a plain HTTP/1.1 client: concurrent requests with different
//! adapters get exactly `graft generate`'s greedy text, streaming gives the same text in pieces,
//! bad requests get JSON errors with the right status, and a load of many requests across more
//! adapters than the cache holds completes.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};

use serde_json::{json, Value};

const PROMPT: &str = "The capital of France is";

/// A running `graft serve`, killed on drop.
struct Server {
    child: Child,
    addr: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn serve(model: &Path, dir: &Path, extra: &[&str]) -> Server {
    let mut child = common::graft_cmd()
        .arg("serve")
        .arg("--model")
        .arg(model)
        .arg("--adapters")
        .arg(dir)
        .args(["--port", "0", "--threads", "2"])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .trim()
        .strip_prefix("listening on http://")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_string();
    Server { child, addr }
}

/// One request; returns the status and the body (de-chunked).
fn http(
    addr: &str,
    method: &str,
    path: &str,
    body: &str,
    headers: &[(&str, &str)],
) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes()).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, rest) = text.split_once("\r\n\r\n").expect("a response head");
    let status: u16 = head.split(' ').nth(1).unwrap().parse().unwrap();
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(rest)
    } else {
        rest.to_string()
    };
    (status, body)
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 {
            break;
        }
        out.push_str(&rest[..n]);
        s = &rest[n + 2..];
    }
    out
}

fn post(addr: &str, path: &str, body: &Value) -> (u16, Value) {
    let (status, text) = http(addr, "POST", path, &body.to_string(), &[]);
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// `graft generate`'s greedy text for `adapter`.
fn cli(model: &Path, adapter: Option<&Path>, n: usize) -> String {
    let mut c = common::graft_cmd();
    c.arg("generate").arg("--model").arg(model);
    c.args(["--prompt", PROMPT, "--temperature", "0", "--threads", "2"]);
    c.args(["--max-tokens", &n.to_string()]);
    if let Some(a) = adapter {
        c.arg("--adapter").arg(a);
    }
    let o = c.output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout)
        .unwrap()
        .trim_end_matches('\n')
        .to_string()
}

/// The test adapters (`.cache/adapters/`) every server fixture serves: each kind and dtype.
const ADAPTERS: [&str; 7] = [
    "lora-qv-r8",
    "diablo-n64",
    "diablo-n7",
    "wegeft-r8",
    "lopa-random",
    "lora-all-r4-f16",
    "lora-ffn-r32-q8",
];

/// The model and a fresh directory of adapters for test `test`.
fn fixture(test: &str) -> Option<(PathBuf, PathBuf)> {
    let model = common::model("SmolLM2-135M-Instruct.Q4_1.gguf")?;
    let dir = std::env::temp_dir().join(format!("graft-serve-{}-{test}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    for a in ADAPTERS {
        let src = common::repo_root().join(format!(".cache/adapters/{a}.gguf"));
        std::fs::copy(&src, dir.join(format!("{a}.gguf"))).unwrap();
    }
    Some((model, dir))
}

#[test]
fn concurrent_requests_with_different_adapters_match_the_cli() {
    let Some((model, dir)) = fixture("match") else {
        return;
    };
    let names: Vec<&str> = std::iter::once("base").chain(ADAPTERS).collect();
    let n = 16;
    let expected: Vec<String> = names
        .iter()
        .map(|a| {
            let path = (*a != "base").then(|| dir.join(format!("{a}.gguf")));
            cli(&model, path.as_deref(), n)
        })
        .collect();
    let server = serve(&model, &dir, &["--max-batch", "8"]);
    let addr = server.addr.clone();
    let threads: Vec<_> = names
        .iter()
        .map(|a| {
            let (addr, a) = (addr.clone(), a.to_string());
            std::thread::spawn(move || {
                post(
                    &addr,
                    "/v1/completions",
                    &json!({"model": a, "prompt": PROMPT, "max_tokens": n, "temperature": 0}),
                )
            })
        })
        .collect();
    for ((name, want), t) in names.iter().zip(&expected).zip(threads) {
        let (status, v) = t.join().unwrap();
        assert_eq!(status, 200, "{name}: {v}");
        assert_eq!(v["choices"][0]["text"].as_str().unwrap(), want, "{name}");
        assert_eq!(v["usage"]["completion_tokens"], n, "{name}");
    }
    // Streaming: the same text in pieces, then [DONE].
    let body = json!({"model": "diablo-n7", "prompt": PROMPT, "max_tokens": n, "temperature": 0, "stream": true});
    let (status, text) = http(&addr, "POST", "/v1/completions", &body.to_string(), &[]);
    assert_eq!(status, 200);
    let mut pieces = Vec::new();
    for line in text.lines().filter_map(|l| l.strip_prefix("data: ")) {
        if line == "[DONE]" {
            pieces.push(None);
            continue;
        }
        let v: Value = serde_json::from_str(line).unwrap();
        pieces.push(Some(v["choices"][0]["text"].as_str().unwrap().to_string()));
    }
    assert_eq!(pieces.last(), Some(&None), "ends with [DONE]");
    assert!(pieces.len() > 3);
    let joined: String = pieces.iter().flatten().cloned().collect();
    assert_eq!(joined, expected[3]);
    // The models list: the base and every adapter with its kind.
    let (status, v) = post(&addr, "/v1/models", &json!({}));
    assert_eq!(status, 405, "GET only: {v}");
    let (status, text) = http(&addr, "GET", "/v1/models", "", &[]);
    assert_eq!(status, 200);
    let v: Value = serde_json::from_str(&text).unwrap();
    let kinds: Vec<(String, String)> = v["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["id"].as_str().unwrap().into(),
                m["kind"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert_eq!(kinds.len(), 8);
    assert!(kinds.contains(&("wegeft-r8".into(), "wegeft".into())));
    // Chat through the model's template.
    let (status, v) = post(
        &addr,
        "/v1/chat/completions",
        &json!({"model": "lora-qv-r8", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4, "temperature": 0}),
    );
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["object"], "chat.completion");
    assert!(v["choices"][0]["message"]["content"].is_string());
}

#[test]
fn bad_requests_get_json_errors_and_the_server_keeps_serving() {
    let Some((model, dir)) = fixture("errors") else {
        return;
    };
    let server = serve(&model, &dir, &["--api-key", "sekret", "--ctx", "64"]);
    let addr = &server.addr;
    let auth = [("Authorization", "Bearer sekret")];
    let call = |body: &str, headers: &[(&str, &str)]| -> (u16, Value) {
        let (s, t) = http(addr, "POST", "/v1/completions", body, headers);
        (s, serde_json::from_str(&t).unwrap_or(Value::String(t)))
    };
    let ok = json!({"prompt": PROMPT, "max_tokens": 2, "temperature": 0}).to_string();
    assert_eq!(call(&ok, &[]).0, 401);
    assert_eq!(call(&ok, &[("Authorization", "Bearer wrong")]).0, 401);
    assert_eq!(
        http(addr, "GET", "/health", "", &[]).0,
        200,
        "health needs no key"
    );
    for (body, status, param) in [
        ("{not json".to_string(), 400, "body"),
        ("[1, 2]".to_string(), 400, "body"),
        (json!({"max_tokens": 2}).to_string(), 400, "prompt"),
        (
            json!({"prompt": "x", "temperature": -1}).to_string(),
            400,
            "temperature",
        ),
        (
            json!({"prompt": "x", "max_tokens": 0}).to_string(),
            400,
            "max_tokens",
        ),
        (
            json!({"prompt": "x", "max_tokens": 1000}).to_string(),
            400,
            "max_tokens",
        ),
        (
            json!({"prompt": "x", "stream": "yes"}).to_string(),
            400,
            "stream",
        ),
        (
            json!({"prompt": "word ".repeat(400)}).to_string(),
            400,
            "prompt",
        ),
        (
            json!({"prompt": "x", "model": "nope"}).to_string(),
            404,
            "model",
        ),
        (
            json!({"prompt": "x", "model": "../etc/passwd"}).to_string(),
            404,
            "model",
        ),
        (
            json!({"prompt": "x", "adapters": [{"scale": 1}]}).to_string(),
            400,
            "adapters",
        ),
    ] {
        let (s, v) = call(&body, &auth);
        assert_eq!(s, status, "{body}: {v}");
        assert_eq!(v["error"]["param"], param, "{body}: {v}");
        assert!(v["error"]["message"].as_str().unwrap().len() > 5);
    }
    // Still serving, with two adapters at once and a stop string.
    let (s, v) = call(
        &json!({"prompt": PROMPT, "max_tokens": 8, "temperature": 0,
                "adapters": [{"name": "lora-qv-r8", "scale": 0.5}, {"name": "wegeft-r8"}], "stop": ["\n"]})
        .to_string(),
        &auth,
    );
    assert_eq!(s, 200, "{v}");
    assert!(
        !v["choices"][0]["text"].as_str().unwrap().contains('\n'),
        "{v}"
    );
    let (s, text) = http(addr, "GET", "/metrics", "", &auth);
    assert_eq!(s, 200);
    assert!(text.contains("graft_http_errors_total 13"), "{text}");
}

#[test]
fn a_full_queue_answers_429_and_a_client_that_leaves_frees_its_slot() {
    let Some((model, dir)) = fixture("queue") else {
        return;
    };
    let server = serve(&model, &dir, &["--max-batch", "1", "--max-queue", "1"]);
    let addr = server.addr.clone();
    // A long streaming request holds the one slot; the client reads one event and leaves.
    let body =
        json!({"prompt": PROMPT, "max_tokens": 2000, "temperature": 0, "stream": true}).to_string();
    let mut s = TcpStream::connect(&addr).unwrap();
    write!(
        s,
        "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut first = [0u8; 256];
    let _ = s.read(&mut first).unwrap();
    // The response headers leave the server when the request is queued, not when it runs: wait
    // until the scheduler has taken it (on a loaded machine its thread may start late).
    wait_for_metrics(&addr, &["graft_running_requests 1", "graft_queue_depth 0"]);
    // One more waits in the queue; the third is refused.
    let waiting = {
        let addr = addr.clone();
        std::thread::spawn(move || {
            post(
                &addr,
                "/v1/completions",
                &json!({"prompt": PROMPT, "max_tokens": 2, "temperature": 0}),
            )
        })
    };
    wait_for_metrics(&addr, &["graft_running_requests 1", "graft_queue_depth 1"]);
    let (status, v) = post(
        &addr,
        "/v1/completions",
        &json!({"prompt": "x", "max_tokens": 2}),
    );
    assert_eq!(status, 429, "{v}");
    drop(s); // the streaming client goes away: its request ends and the queued one runs
    let (status, v) = waiting.join().unwrap();
    assert_eq!(status, 200, "{v}");
    let (_, text) = http(&addr, "GET", "/metrics", "", &[]);
    assert!(text.contains("graft_requests_rejected_total 1"), "{text}");
    assert!(text.contains("graft_running_requests 0"), "{text}");
}

/// Polls `/metrics` until every line of `lines` is in it (up to a minute).
fn wait_for_metrics(addr: &str, lines: &[&str]) {
    let mut text = String::new();
    for _ in 0..600 {
        text = http(addr, "GET", "/metrics", "", &[]).1;
        if lines.iter().all(|l| text.lines().any(|t| t == *l)) {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    panic!("/metrics never showed {lines:?}:\n{text}");
}

#[test]
fn many_requests_across_more_adapters_than_the_cache_holds() {
    let Some((model, dir)) = fixture("load") else {
        return;
    };
    // 20 adapters of 1.9 MB; the cache holds 5 MB of adapters no request uses.
    for i in 0..20 {
        std::fs::copy(
            dir.join("lora-qv-r8.gguf"),
            dir.join(format!("user{i}.gguf")),
        )
        .unwrap();
    }
    let server = serve(
        &model,
        &dir,
        &["--max-batch", "8", "--adapter-cache-mb", "5"],
    );
    let addr = server.addr.clone();
    let clients: Vec<_> = (0..16)
        .map(|c| {
            let addr = addr.clone();
            std::thread::spawn(move || {
                let mut codes = Vec::new();
                for r in 0..13 {
                    let k = c * 13 + r;
                    if k >= 200 {
                        break;
                    }
                    let (status, v) = post(
                        &addr,
                        "/v1/completions",
                        &json!({"model": format!("user{}", k % 20), "prompt": format!("Request {k}:"), "max_tokens": 3}),
                    );
                    assert!(status == 200 || status == 429, "{status}: {v}");
                    codes.push(status);
                }
                codes
            })
        })
        .collect();
    let codes: Vec<u16> = clients
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    assert_eq!(codes.len(), 200);
    assert!(
        codes.iter().filter(|&&c| c == 200).count() >= 190,
        "{codes:?}"
    );
    // Adapters whose requests ended are evicted down to the bound within a second or so.
    std::thread::sleep(std::time::Duration::from_millis(1200));
    let (_, text) = http(&addr, "GET", "/metrics", "", &[]);
    let metric = |name: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .unwrap_or_else(|| panic!("{name} in {text}"))
            .parse()
            .unwrap()
    };
    assert_eq!(metric("graft_running_requests"), 0.0);
    assert_eq!(metric("graft_queue_depth"), 0.0);
    assert!(
        metric("graft_adapter_cache_bytes") <= 5.0 * 1048576.0,
        "{text}"
    );
    assert!(
        metric("graft_adapter_cache_evictions_total") > 0.0,
        "{text}"
    );
    assert!(
        metric("graft_batch_size_mean") > 1.0,
        "requests were batched: {text}"
    );
}
