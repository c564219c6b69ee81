//! `graft serve`: an OpenAI-compatible HTTP server (axum) over the library's scheduler, which
//! decodes every running request in one graph per step whatever adapters they name.
//!
//! Routes: `POST /v1/completions`, `POST /v1/chat/completions` (server-sent events with
//! `"stream": true`), `GET /v1/models`, `GET /health`, `GET /metrics` (Prometheus text).
//! A request picks its adapter with `"model": "<file stem in DIR>"` (the base model's name, or
//! no model, means none) or several with `"adapters": [{"name": .., "scale": ..}]`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use anyhow::{Context as _, Result};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event as SseEvent, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use graft::adapter::cache::AdapterCache;
use graft::engine::StopReason;
use graft::scheduler::{Event, Job, Scheduler, SchedulerConfig};
use graft::tokenizer::ChatMessage;
use graft::{ActiveAdapters, Model, SamplerConfig};
use serde_json::{json, Value};

mod request;
use request::{Endpoint, Input, Limits};
use tokio_stream::wrappers::UnboundedReceiverStream;
use tokio_stream::StreamExt as _;

#[derive(clap::Args)]
pub struct ServeArgs {
    /// The GGUF model file.
    #[arg(long)]
    pub model: PathBuf,
    /// Directory of adapters: a request's "model" names DIR/<name>.gguf.
    #[arg(long)]
    pub adapters: PathBuf,
    /// Address to listen on (loopback by default).
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Port (0: any free port; the address is printed on stdout).
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// Requests decoded at once.
    #[arg(long, default_value_t = 8, value_parser = crate::args::positive_count)]
    pub max_batch: usize,
    /// Bound of the cache of loaded adapters no request uses, in MB.
    #[arg(long, default_value_t = 256, value_parser = crate::args::count)]
    pub adapter_cache_mb: usize,
    /// Require "Authorization: Bearer K" on every route but /health.
    #[arg(long)]
    pub api_key: Option<String>,
    /// CPU threads.
    #[arg(long, default_value_t = graft::session::default_threads(), value_parser = crate::args::positive_count)]
    pub threads: usize,
    /// Context per request (prompt plus generated tokens).
    #[arg(long, default_value_t = 2048, value_parser = crate::args::context_length)]
    pub ctx: usize,
    /// Requests that may wait for a slot; more get 429.
    #[arg(long, default_value_t = 64, value_parser = crate::args::positive_count)]
    pub max_queue: usize,
    /// Run the weights ggml has repacked CPU kernels for (Q4_0 on AVX2 and Arm, Q4_K, IQ4_NL)
    /// from a repacked copy, as llama.cpp does by default.
    #[arg(long)]
    pub cpu_repack: bool,
}

struct AppState {
    model: Arc<Model>,
    name: String,
    cache: AdapterCache,
    scheduler: Scheduler,
    api_key: Option<String>,
    next_id: AtomicU64,
    http_errors: AtomicU64,
}

pub fn run(a: ServeArgs) -> Result<()> {
    let model = Arc::new(
        Model::load(&a.model).with_context(|| format!("loading model {}", a.model.display()))?,
    );
    let name = a
        .model
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "base".into());
    let cache = AdapterCache::new(model.clone(), &a.adapters, a.adapter_cache_mb << 20)
        .with_context(|| format!("--adapters {}", a.adapters.display()))?;
    let scheduler = Scheduler::start(
        model.clone(),
        SchedulerConfig {
            max_batch: a.max_batch,
            n_ctx_seq: a.ctx,
            max_queue: a.max_queue,
            n_threads: a.threads,
            cpu_repack: a.cpu_repack,
        },
    )?;
    let state = Arc::new(AppState {
        model,
        name,
        cache,
        scheduler,
        api_key: a.api_key,
        next_id: AtomicU64::new(1),
        http_errors: AtomicU64::new(0),
    });
    let app = router(state.clone());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind((a.host.as_str(), a.port))
            .await
            .with_context(|| format!("listening on {}:{}", a.host, a.port))?;
        let addr: SocketAddr = listener.local_addr()?;
        // Adapters whose last request ended are evicted within a second when over the bound.
        let st = state.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_millis(500));
            loop {
                tick.tick().await;
                st.cache.shrink();
            }
        });
        // The address on stdout (scripts and tests read it); everything else on stderr.
        println!("listening on http://{addr}");
        eprintln!(
            "graft serve: {} over {} adapters in {} (batch {}, context {} per request{})",
            state.name,
            state.cache.list().len(),
            state.cache.dir().display(),
            a.max_batch,
            state.scheduler.n_ctx_seq(),
            if state.api_key.is_some() {
                ", API key required"
            } else {
                ""
            }
        );
        axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = tokio::signal::ctrl_c().await;
            })
            .await
            .context("serving")
    })
}

fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/v1/completions", post(completions))
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/models", get(models))
        .route("/health", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/metrics", get(metrics))
        .with_state(state)
}

/// An error answer: `{"error": {"message", "type", "param"}}` with its status.
struct ApiError {
    status: StatusCode,
    message: String,
    param: Option<&'static str>,
}

impl ApiError {
    fn bad(param: &'static str, message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
            param: Some(param),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let kind = match self.status {
            StatusCode::UNAUTHORIZED => "authentication_error",
            StatusCode::NOT_FOUND => "not_found_error",
            StatusCode::TOO_MANY_REQUESTS => "rate_limit_error",
            s if s.is_server_error() => "server_error",
            _ => "invalid_request_error",
        };
        let body = json!({"error": {"message": self.message, "type": kind, "param": self.param}});
        (self.status, Json(body)).into_response()
    }
}

fn check_key(state: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(key) = &state.api_key else {
        return Ok(());
    };
    let given = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if given == Some(key.as_str()) {
        Ok(())
    } else {
        Err(ApiError {
            status: StatusCode::UNAUTHORIZED,
            message: "a valid API key is required: Authorization: Bearer <key>".into(),
            param: None,
        })
    }
}

/// What both endpoints hand the scheduler besides the prompt.
struct Params {
    adapters: ActiveAdapters,
    model: String,
    sampler: SamplerConfig,
    max_tokens: usize,
    stop: Vec<String>,
    stream: bool,
}

/// Checks the key, parses the body and looks its adapters up (loading them on first use).
fn accept(
    state: &AppState,
    headers: &HeaderMap,
    endpoint: Endpoint,
    body: &[u8],
) -> Result<(Input, Params), ApiError> {
    check_key(state, headers)?;
    let limit = state.scheduler.n_ctx_seq() - 1;
    let limits = Limits {
        max_tokens: limit,
        base_name: &state.name,
    };
    let r =
        request::parse(endpoint, body, &limits).map_err(|e| ApiError::bad(e.param, e.message))?;
    let mut adapters = ActiveAdapters::none();
    for u in &r.adapters {
        let a = state.cache.get(&u.name).map_err(|e| match e {
            graft::Error::Registry(msg) => ApiError {
                status: StatusCode::NOT_FOUND,
                message: msg,
                param: Some(r.adapters_param),
            },
            e => ApiError {
                status: StatusCode::UNPROCESSABLE_ENTITY,
                message: format!("adapter {:?}: {e}", u.name),
                param: Some(r.adapters_param),
            },
        })?;
        adapters.set(a, u.scale);
    }
    let seed = r.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
    });
    // Completions default to 16 tokens (OpenAI's default); chat runs to the end of the context.
    let default_max_tokens = match endpoint {
        Endpoint::Completions => 16.min(limit),
        Endpoint::ChatCompletions => limit,
    };
    let params = Params {
        adapters,
        model: r.model.unwrap_or_else(|| state.name.clone()),
        sampler: SamplerConfig {
            temperature: r.temperature.unwrap_or(1.0) as f32,
            top_k: 0,
            top_p: r.top_p.unwrap_or(1.0) as f32,
            min_p: 0.0,
            repeat_penalty: 1.0,
            seed,
            ..SamplerConfig::default()
        },
        max_tokens: r.max_tokens.unwrap_or(default_max_tokens),
        stop: r.stop,
        stream: r.stream,
    };
    Ok((r.input, params))
}

fn finish_reason(r: StopReason) -> &'static str {
    match r {
        StopReason::EndOfGeneration | StopReason::StopString => "stop",
        StopReason::MaxTokens | StopReason::ContextFull => "length",
        StopReason::Cancelled => "cancelled",
    }
}

async fn completions(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let r = accept(&state, &headers, Endpoint::Completions, &body).map(|(input, p)| {
        let Input::Prompt(prompt) = input else {
            unreachable!("request::parse gives a prompt for /v1/completions")
        };
        (state.model.tokenizer().encode(&prompt, true, true), p)
    });
    respond(state, r, false).await
}

async fn chat_completions(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let r = accept(&state, &headers, Endpoint::ChatCompletions, &body).and_then(|(input, p)| {
        let Input::Messages(list) = input else {
            unreachable!("request::parse gives messages for /v1/chat/completions")
        };
        let messages: Vec<ChatMessage> = list
            .iter()
            .map(|(role, content)| ChatMessage::new(role, content))
            .collect();
        let text = state
            .model
            .tokenizer()
            .apply_chat_template(&messages, true)
            .map_err(|e| ApiError::bad("messages", e.to_string()))?;
        Ok((state.model.tokenizer().encode(&text, true, true), p))
    });
    respond(state, r, true).await
}

/// Queues the request and answers with its text (all at once, or as server-sent events).
async fn respond(
    state: Arc<AppState>,
    parsed: Result<(Vec<u32>, Params), ApiError>,
    chat: bool,
) -> Response {
    let (prompt, p) = match parsed {
        Ok(x) => x,
        Err(e) => {
            state.http_errors.fetch_add(1, Ordering::Relaxed);
            return e.into_response();
        }
    };
    let limit = state.scheduler.n_ctx_seq() - 1;
    if prompt.len() > limit {
        state.http_errors.fetch_add(1, Ordering::Relaxed);
        return ApiError::bad(
            if chat { "messages" } else { "prompt" },
            format!(
                "the prompt has {} tokens; at most {limit} fit",
                prompt.len()
            ),
        )
        .into_response();
    }
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Event>();
    let job = Job {
        prompt,
        adapters: p.adapters,
        sampler: p.sampler,
        max_tokens: p.max_tokens.min(limit),
        stop: p.stop,
        cancel: Arc::new(AtomicBool::new(false)),
        on_event: Box::new(move |e| tx.send(e).is_ok()),
    };
    if state.scheduler.submit(job).is_err() {
        state.http_errors.fetch_add(1, Ordering::Relaxed);
        return ApiError {
            status: StatusCode::TOO_MANY_REQUESTS,
            message: "the server is busy: too many requests are waiting; retry later".into(),
            param: None,
        }
        .into_response();
    }
    let id = format!(
        "{}-{}",
        if chat { "chatcmpl" } else { "cmpl" },
        state.next_id.fetch_add(1, Ordering::Relaxed)
    );
    let created = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let model = p.model;
    if p.stream {
        let (id2, model2) = (id.clone(), model.clone());
        let chunk = move |text: Option<&str>, reason: Option<&str>| {
            if chat {
                let delta = text.map_or(json!({}), |t| json!({"role": "assistant", "content": t}));
                json!({"id": id2, "object": "chat.completion.chunk", "created": created, "model": model2,
                       "choices": [{"index": 0, "delta": delta, "finish_reason": reason}]})
            } else {
                json!({"id": id2, "object": "text_completion", "created": created, "model": model2,
                       "choices": [{"index": 0, "text": text.unwrap_or(""), "finish_reason": reason}]})
            }
        };
        let events = UnboundedReceiverStream::new(rx).map(move |e| {
            let data = match e {
                Event::Text(t) => chunk(Some(&t), None).to_string(),
                Event::Done(f) => {
                    let mut last = chunk(None, Some(finish_reason(f.stop_reason)));
                    last["usage"] = usage(f.prompt_tokens, f.completion_tokens);
                    last.to_string()
                }
                Event::Failed(msg) => {
                    json!({"error": {"message": msg, "type": "server_error"}}).to_string()
                }
            };
            Ok::<_, std::convert::Infallible>(SseEvent::default().data(data))
        });
        let done = tokio_stream::once(Ok(SseEvent::default().data("[DONE]")));
        return Sse::new(events.chain(done)).into_response();
    }
    let mut rx = rx;
    let mut text = String::new();
    while let Some(e) = rx.recv().await {
        match e {
            Event::Text(t) => text.push_str(&t),
            Event::Done(f) => {
                let reason = finish_reason(f.stop_reason);
                let choice = if chat {
                    json!({"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": reason})
                } else {
                    json!({"index": 0, "text": text, "finish_reason": reason})
                };
                return Json(json!({
                    "id": id,
                    "object": if chat { "chat.completion" } else { "text_completion" },
                    "created": created,
                    "model": model,
                    "choices": [choice],
                    "usage": usage(f.prompt_tokens, f.completion_tokens),
                }))
                .into_response();
            }
            Event::Failed(msg) => {
                return ApiError {
                    status: StatusCode::INTERNAL_SERVER_ERROR,
                    message: msg,
                    param: None,
                }
                .into_response()
            }
        }
    }
    ApiError {
        status: StatusCode::INTERNAL_SERVER_ERROR,
        message: "the request ended without a result".into(),
        param: None,
    }
    .into_response()
}

fn usage(prompt: usize, completion: usize) -> Value {
    json!({"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion})
}

async fn models(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    if let Err(e) = check_key(&state, &headers) {
        return e.into_response();
    }
    let mut data =
        vec![json!({"id": state.name, "object": "model", "owned_by": "graft", "kind": "base"})];
    for a in state.cache.list() {
        data.push(json!({"id": a.name, "object": "model", "owned_by": "graft", "kind": a.kind, "parent": state.name}));
    }
    Json(json!({"object": "list", "data": data})).into_response()
}

async fn metrics(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    if let Err(e) = check_key(&state, &headers) {
        return e.into_response();
    }
    let s = state.scheduler.stats();
    let c = state.cache.stats();
    let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let steps = g(&s.steps);
    let mut out = String::new();
    let mut put = |name: &str, kind: &str, help: &str, v: f64| {
        out.push_str(&format!(
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}\n"
        ));
    };
    let (counter, gauge) = ("counter", "gauge");
    put(
        "graft_requests_total",
        counter,
        "Requests accepted.",
        g(&s.requests) as f64,
    );
    let rejected = g(&s.rejected) as f64;
    put(
        "graft_requests_rejected_total",
        counter,
        "Requests refused with 429.",
        rejected,
    );
    put(
        "graft_requests_finished_total",
        counter,
        "Requests finished.",
        g(&s.finished) as f64,
    );
    let errors = g(&state.http_errors) as f64;
    put(
        "graft_http_errors_total",
        counter,
        "Requests answered with an error.",
        errors,
    );
    let prompt = g(&s.prompt_tokens) as f64;
    put(
        "graft_prompt_tokens_total",
        counter,
        "Prompt tokens evaluated.",
        prompt,
    );
    let generated = g(&s.generated_tokens) as f64;
    put(
        "graft_generated_tokens_total",
        counter,
        "Tokens generated.",
        generated,
    );
    put(
        "graft_steps_total",
        counter,
        "Batched decoding steps.",
        steps as f64,
    );
    let step_s = g(&s.step_us) as f64 / 1e6;
    put(
        "graft_step_seconds_total",
        counter,
        "Time in decoding steps.",
        step_s,
    );
    let mean = if steps > 0 {
        g(&s.batch_rows) as f64 / steps as f64
    } else {
        0.0
    };
    put(
        "graft_batch_size_mean",
        gauge,
        "Mean sequences per step.",
        mean,
    );
    let running = s.running.load(Ordering::Relaxed) as f64;
    put(
        "graft_running_requests",
        gauge,
        "Requests being decoded.",
        running,
    );
    let queued = s.queued.load(Ordering::Relaxed) as f64;
    put(
        "graft_queue_depth",
        gauge,
        "Requests waiting for a slot.",
        queued,
    );
    let cache = "graft_adapter_cache";
    put(
        &format!("{cache}_hits_total"),
        counter,
        "Adapters served from the cache.",
        g(&c.hits) as f64,
    );
    put(
        &format!("{cache}_misses_total"),
        counter,
        "Adapters loaded on a request.",
        g(&c.misses) as f64,
    );
    let ev = g(&c.evictions) as f64;
    put(
        &format!("{cache}_evictions_total"),
        counter,
        "Adapters evicted.",
        ev,
    );
    let re = g(&c.reloads) as f64;
    put(
        &format!("{cache}_reloads_total"),
        counter,
        "Adapters reloaded after a change.",
        re,
    );
    let load_s = g(&c.load_us) as f64 / 1e6;
    put(
        "graft_adapter_load_seconds_total",
        counter,
        "Time loading adapters.",
        load_s,
    );
    let bytes = state.cache.cached_bytes() as f64;
    put(
        &format!("{cache}_bytes"),
        gauge,
        "Bytes of cached adapters.",
        bytes,
    );
    put(
        &format!("{cache}_entries"),
        gauge,
        "Cached adapters.",
        state.cache.cached() as f64,
    );
    ([("content-type", "text/plain; version=0.0.4")], out).into_response()
}
