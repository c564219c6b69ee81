//! The high-level API: a loaded model plus tokenization, sampling and streaming generation.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;

use crate::adapter::ActiveAdapters;
use crate::error::{Error, Result};
use crate::model::Model;
use crate::sampler::{Sampler, SamplerConfig};
use crate::session::{LogitsFor, Session, SessionConfig};
use crate::tokenizer::Decoder;

/// A loaded model and the default settings for its sessions. Cheap to clone and share.
#[derive(Clone)]
pub struct Engine {
    model: Arc<Model>,
    session_cfg: SessionConfig,
    load_ms: f64,
}

/// One generation request.
#[derive(Clone, Debug)]
pub struct GenerateRequest {
    /// Prompt text, tokenized as llama.cpp does (BOS per the file's flag, special tokens
    /// parsed).
    pub prompt: String,
    /// Most tokens to generate.
    pub max_tokens: usize,
    /// Sampling parameters.
    pub sampler: SamplerConfig,
    /// Stop at an end-of-generation token (EOS, EOT, `<|im_end|>`...). Default true.
    pub stop_at_eog: bool,
    /// Set to true (from any thread) to stop generation at the next token.
    pub cancel: Option<Arc<AtomicBool>>,
    /// Adapters (with their scales) active for this request only.
    pub adapters: ActiveAdapters,
}

impl GenerateRequest {
    /// A greedy request for `prompt` with 128 tokens at most.
    pub fn new(prompt: impl Into<String>) -> Self {
        Self {
            prompt: prompt.into(),
            max_tokens: 128,
            sampler: SamplerConfig::greedy(),
            stop_at_eog: true,
            cancel: None,
            adapters: ActiveAdapters::none(),
        }
    }

    /// Sets the adapters.
    pub fn adapters(mut self, a: ActiveAdapters) -> Self {
        self.adapters = a;
        self
    }

    /// Sets the token limit.
    pub fn max_tokens(mut self, n: usize) -> Self {
        self.max_tokens = n;
        self
    }

    /// Sets the sampler.
    pub fn sampler(mut self, s: SamplerConfig) -> Self {
        self.sampler = s;
        self
    }
}

/// Why generation stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    /// The token limit was reached.
    MaxTokens,
    /// An end-of-generation token was sampled (it is included in `tokens`, not in `text`).
    EndOfGeneration,
    /// The callback returned false or the cancel flag was set.
    Cancelled,
    /// The context is full.
    ContextFull,
    /// One of the request's stop strings was generated (it is not in the text).
    StopString,
}

/// Timings of one generation, in the units of `graft generate --json`.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Timings {
    /// Model load time (memory-map, validation, tokenizer).
    pub load_ms: f64,
    /// Prompt processing time.
    pub prefill_ms: f64,
    /// Prompt tokens per second.
    pub prefill_tokens_per_s: f64,
    /// Generation time (excluding prefill).
    pub decode_ms: f64,
    /// Generated tokens per second (each one a single-token forward pass).
    pub decode_tokens_per_s: f64,
}

/// The result of [`Engine::generate`].
#[derive(Clone, Debug, Serialize)]
pub struct Generation {
    /// Prompt token ids.
    pub prompt_tokens: Vec<u32>,
    /// Generated token ids.
    pub tokens: Vec<u32>,
    /// Generated text (end-of-generation tokens are not rendered).
    pub text: String,
    /// Why it stopped.
    pub stop_reason: StopReason,
    /// Timings.
    pub timings: Timings,
    /// Where the session's graphs ran (totals over the session's life).
    pub backend: crate::BackendReport,
}

impl Engine {
    /// Loads (memory-maps) the model at `path` with default session settings.
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        Self::load_with(path, SessionConfig::default())
    }

    /// Loads the model at `path`; new sessions use `session_cfg`.
    pub fn load_with(path: impl AsRef<Path>, session_cfg: SessionConfig) -> Result<Self> {
        let t = Instant::now();
        let model = Arc::new(Model::load(path)?);
        Ok(Self {
            model,
            session_cfg,
            load_ms: t.elapsed().as_secs_f64() * 1e3,
        })
    }

    /// Wraps an already loaded model.
    pub fn from_model(model: Arc<Model>, session_cfg: SessionConfig) -> Self {
        Self {
            model,
            session_cfg,
            load_ms: 0.0,
        }
    }

    /// The model.
    pub fn model(&self) -> &Arc<Model> {
        &self.model
    }

    /// Milliseconds it took to load the model.
    pub fn load_ms(&self) -> f64 {
        self.load_ms
    }

    /// Default session settings.
    pub fn session_config(&self) -> &SessionConfig {
        &self.session_cfg
    }

    /// A new session with the default settings.
    pub fn new_session(&self) -> Result<Session> {
        Session::new(self.model.clone(), self.session_cfg.clone())
    }

    /// Tokenizes a prompt as llama.cpp does: BOS if the file asks for it, special tokens
    /// parsed.
    pub fn tokenize_prompt(&self, text: &str) -> Vec<u32> {
        self.model.tokenizer().encode(text, true, true)
    }

    /// Generates from `req` in a fresh session, calling `on_text` with each decoded piece of
    /// text; returning `false` from it stops generation.
    pub fn generate(
        &self,
        req: &GenerateRequest,
        on_text: impl FnMut(&str) -> bool,
    ) -> Result<Generation> {
        let mut session = self.new_session()?;
        let mut g = self.generate_in(&mut session, req, on_text)?;
        g.timings.load_ms = self.load_ms;
        Ok(g)
    }

    /// Generates in `session`, continuing whatever it already holds (multi-turn chat), with
    /// the request's adapters active (a switch recomputes the cached context).
    pub fn generate_in(
        &self,
        session: &mut Session,
        req: &GenerateRequest,
        on_text: impl FnMut(&str) -> bool,
    ) -> Result<Generation> {
        let prompt_tokens = if session.tokens().is_empty() {
            self.tokenize_prompt(&req.prompt)
        } else {
            self.model.tokenizer().encode(&req.prompt, false, true)
        };
        self.generate_tokens(session, prompt_tokens, req, on_text)
    }

    /// Generates in `session` after appending `prompt_tokens` (already tokenized; the
    /// request's `prompt` text is ignored).
    pub fn generate_tokens(
        &self,
        session: &mut Session,
        prompt_tokens: Vec<u32>,
        req: &GenerateRequest,
        mut on_text: impl FnMut(&str) -> bool,
    ) -> Result<Generation> {
        let tok = self.model.tokenizer();
        session.set_adapters(req.adapters.clone())?;
        if prompt_tokens.is_empty() {
            return Err(Error::InvalidRequest("the prompt is empty".into()));
        }
        let cancelled = || {
            req.cancel
                .as_ref()
                .is_some_and(|c| c.load(Ordering::Relaxed))
        };
        let mut sampler = Sampler::new(req.sampler.clone());
        let mut timings = Timings::default();

        let t0 = Instant::now();
        let mut logits = session.decode(&prompt_tokens, LogitsFor::Last)?;
        timings.prefill_ms = t0.elapsed().as_secs_f64() * 1e3;
        timings.prefill_tokens_per_s = rate(prompt_tokens.len(), timings.prefill_ms);

        let mut history: Vec<u32> = session.tokens().to_vec();
        let mut tokens = Vec::new();
        let mut text = String::new();
        let mut decoder = Decoder::new(tok);
        let mut stop = StopReason::MaxTokens;
        let t1 = Instant::now();
        let mut n_decoded = 0usize;
        while tokens.len() < req.max_tokens {
            if cancelled() {
                stop = StopReason::Cancelled;
                break;
            }
            let next = sampler.sample(&logits, &history);
            tokens.push(next);
            history.push(next);
            if req.stop_at_eog && tok.is_eog(next) {
                stop = StopReason::EndOfGeneration;
                break;
            }
            let piece = decoder.push(next);
            text.push_str(&piece);
            if !piece.is_empty() && !on_text(&piece) {
                stop = StopReason::Cancelled;
                break;
            }
            if tokens.len() == req.max_tokens {
                break;
            }
            if session.remaining() == 0 {
                stop = StopReason::ContextFull;
                break;
            }
            logits = session.decode(&[next], LogitsFor::Last)?;
            n_decoded += 1;
        }
        let rest = decoder.finish();
        if !rest.is_empty() {
            text.push_str(&rest);
            on_text(&rest);
        }
        timings.decode_ms = t1.elapsed().as_secs_f64() * 1e3;
        timings.decode_tokens_per_s = rate(n_decoded, timings.decode_ms);
        Ok(Generation {
            prompt_tokens,
            tokens,
            text,
            stop_reason: stop,
            timings,
            backend: session.backend_report(),
        })
    }
}

fn rate(n: usize, ms: f64) -> f64 {
    if ms > 0.0 {
        n as f64 / (ms / 1e3)
    } else {
        0.0
    }
}
