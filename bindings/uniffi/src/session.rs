//! Sessions: one conversation's KV cache, its active adapters, generation and chat.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use graft::{ActiveAdapters, GenerateRequest, SamplerConfig};

use crate::error::{GraftError, Result, Subject};
use crate::{arg, Adapter, Open};

/// An adapter and the scale it is applied with.
#[derive(uniffi::Record)]
pub struct AdapterUse {
    /// The adapter.
    pub adapter: Arc<Adapter>,
    /// Its scale (1 = as trained; 0.5 = half the effect).
    #[uniffi(default = 1.0)]
    pub scale: f32,
}

/// What switching adapters did to the session's cache.
#[derive(Clone, Debug, uniffi::Record)]
pub struct SwitchResult {
    /// The cached conversation was computed with other adapters and is recomputed (in one
    /// batch) before the next message.
    pub cache_recomputed: bool,
    /// How many cached tokens that covers.
    pub tokens: u32,
}

/// Sampling and limits for one generation.
#[derive(Clone, Debug, uniffi::Record)]
pub struct GenerateOptions {
    /// Most tokens to generate.
    #[uniffi(default = 128)]
    pub max_tokens: u32,
    /// Sampling temperature; 0 is greedy (the most likely token every time).
    #[uniffi(default = 0.8)]
    pub temperature: f32,
    /// Top-k (0 = off).
    #[uniffi(default = 40)]
    pub top_k: u32,
    /// Top-p (1 = off).
    #[uniffi(default = 0.95)]
    pub top_p: f32,
    /// Min-p (0 = off).
    #[uniffi(default = 0.05)]
    pub min_p: f32,
    /// Repetition penalty (1 = off).
    #[uniffi(default = 1.0)]
    pub repeat_penalty: f32,
    /// Random seed of the sampler.
    #[uniffi(default = 0)]
    pub seed: u64,
    /// Stop at an end-of-generation token.
    #[uniffi(default = true)]
    pub stop_at_eog: bool,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        Self {
            max_tokens: 128,
            temperature: 0.8,
            top_k: 40,
            top_p: 0.95,
            min_p: 0.05,
            repeat_penalty: 1.0,
            seed: 0,
            stop_at_eog: true,
        }
    }
}

impl GenerateOptions {
    fn sampler(&self) -> Result<SamplerConfig> {
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            return Err(arg("temperature must be a finite number >= 0"));
        }
        if !(0.0..=1.0).contains(&self.top_p) {
            return Err(arg("top_p must be within [0, 1]"));
        }
        if !(0.0..=1.0).contains(&self.min_p) {
            return Err(arg("min_p must be within [0, 1]"));
        }
        if !(self.repeat_penalty.is_finite() && self.repeat_penalty > 0.0) {
            return Err(arg("repeat_penalty must be a finite number > 0"));
        }
        Ok(SamplerConfig {
            temperature: self.temperature,
            top_k: self.top_k as usize,
            top_p: self.top_p,
            min_p: self.min_p,
            repeat_penalty: self.repeat_penalty,
            seed: self.seed,
            ..SamplerConfig::default()
        })
    }
}

/// Why a generation stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, uniffi::Enum)]
pub enum StopReason {
    /// `max_tokens` were generated.
    MaxTokens,
    /// The model produced an end-of-generation token.
    EndOfGeneration,
    /// The listener returned false or `cancel()` was called.
    Cancelled,
    /// The session's context is full (`reset()` starts over).
    ContextFull,
}

/// Timings of one generation.
#[derive(Clone, Debug, uniffi::Record)]
pub struct GenerationTimings {
    /// Prompt processing time.
    pub prefill_ms: f64,
    /// Prompt tokens per second.
    pub prefill_tokens_per_s: f64,
    /// Generation time after the prompt.
    pub decode_ms: f64,
    /// Generated tokens per second.
    pub decode_tokens_per_s: f64,
}

/// The outcome of one generation.
#[derive(Clone, Debug, uniffi::Record)]
pub struct GenerationResult {
    /// The generated text.
    pub text: String,
    /// The generated token ids (an end-of-generation token included).
    pub tokens: Vec<u32>,
    /// How many prompt tokens were evaluated for it (after what the cache already held).
    pub prompt_tokens: u32,
    /// Why it stopped.
    pub stop_reason: StopReason,
    /// Timings.
    pub timings: GenerationTimings,
}

/// One chat message.
#[derive(Clone, Debug, uniffi::Record)]
pub struct ChatMessage {
    /// `system`, `user` or `assistant`.
    pub role: String,
    /// The text.
    pub content: String,
}

/// Receives generated text as it is produced.
#[uniffi::export(callback_interface)]
pub trait TokenListener: Send + Sync {
    /// A piece of text (one or more tokens' worth); return false to stop.
    fn on_token(&self, text: String) -> std::result::Result<bool, GraftError>;
}

/// One conversation: a KV cache, the adapters active in it, and generation over it.
#[derive(uniffi::Object)]
pub struct Session {
    open: Arc<Open>,
    session: Mutex<Option<graft::Session>>,
    cancel: Arc<AtomicBool>,
}

impl Session {
    pub(crate) fn create(open: Arc<Open>) -> Result<Arc<Self>> {
        let s = open
            .engine
            .new_session()
            .map_err(|e| GraftError::from_runtime(e, Subject::Other))?;
        Ok(Arc::new(Self {
            open,
            session: Mutex::new(Some(s)),
            cancel: Arc::new(AtomicBool::new(false)),
        }))
    }

    /// The session, waiting for another thread's call to finish. After a panic in an earlier
    /// call (a bug) the cache may be half-written, so it is cleared.
    fn lock(&self) -> MutexGuard<'_, Option<graft::Session>> {
        match self.session.lock() {
            Ok(g) => g,
            Err(poisoned) => {
                let mut g = poisoned.into_inner();
                if let Some(s) = g.as_mut() {
                    s.clear();
                }
                self.session.clear_poison();
                g
            }
        }
    }

    /// Runs `f` on the open session.
    fn with<T>(&self, f: impl FnOnce(&mut graft::Session) -> Result<T>) -> Result<T> {
        let mut g = self.lock();
        let s = g
            .as_mut()
            .ok_or_else(|| GraftError::Closed("the session is closed".into()))?;
        f(s)
    }

    /// Generates after `prompt_tokens` (appended to the cache), giving each piece of text to
    /// `on_text` (false or an error stops; the error is returned).
    fn run(
        &self,
        s: &mut graft::Session,
        prompt_tokens: Vec<u32>,
        options: &GenerateOptions,
        on_text: &mut dyn FnMut(&str) -> Result<bool>,
    ) -> Result<GenerationResult> {
        let req = GenerateRequest {
            prompt: String::new(),
            max_tokens: options.max_tokens as usize,
            sampler: options.sampler()?,
            stop_at_eog: options.stop_at_eog,
            cancel: Some(self.cancel.clone()),
            adapters: s.adapters().clone(),
        };
        self.cancel.store(false, Ordering::SeqCst);
        let mut failure = None;
        let g = self
            .open
            .engine
            .generate_tokens(s, prompt_tokens, &req, |piece| match on_text(piece) {
                Ok(go_on) => go_on,
                Err(e) => {
                    failure = Some(e);
                    false
                }
            })
            .map_err(|e| GraftError::from_runtime(e, Subject::Other))?;
        if let Some(e) = failure {
            return Err(e);
        }
        Ok(GenerationResult {
            prompt_tokens: g.prompt_tokens.len() as u32,
            text: g.text,
            tokens: g.tokens,
            stop_reason: match g.stop_reason {
                graft::engine::StopReason::MaxTokens => StopReason::MaxTokens,
                graft::engine::StopReason::EndOfGeneration => StopReason::EndOfGeneration,
                graft::engine::StopReason::Cancelled => StopReason::Cancelled,
                graft::engine::StopReason::ContextFull => StopReason::ContextFull,
                // Stop strings belong to the server's scheduler; a session never stops on one.
                graft::engine::StopReason::StopString => StopReason::EndOfGeneration,
            },
            timings: GenerationTimings {
                prefill_ms: g.timings.prefill_ms,
                prefill_tokens_per_s: g.timings.prefill_tokens_per_s,
                decode_ms: g.timings.decode_ms,
                decode_tokens_per_s: g.timings.decode_tokens_per_s,
            },
        })
    }

    /// The prompt's tokens as they continue this session: BOS (per the model) only at the
    /// start of the conversation.
    fn prompt_tokens(&self, s: &graft::Session, prompt: &str) -> Result<Vec<u32>> {
        if prompt.is_empty() {
            return Err(arg("the prompt is empty"));
        }
        let tok = self.open.engine.model().tokenizer();
        Ok(if s.tokens().is_empty() {
            self.open.engine.tokenize_prompt(prompt)
        } else {
            tok.encode(prompt, false, true)
        })
    }

    fn generate_blocking(
        &self,
        prompt: &str,
        options: &GenerateOptions,
        listener: Option<&dyn TokenListener>,
    ) -> Result<GenerationResult> {
        self.generate_streaming(prompt, options, &mut listener_fn(listener))
    }

    /// Continues the conversation with `prompt`, giving each piece of text to `on_text` (false
    /// or an error stops): the Rust entry point of the other bindings (JNI).
    pub fn generate_streaming(
        &self,
        prompt: &str,
        options: &GenerateOptions,
        on_text: &mut dyn FnMut(&str) -> Result<bool>,
    ) -> Result<GenerationResult> {
        self.with(|s| {
            let tokens = self.prompt_tokens(s, prompt)?;
            self.run(s, tokens, options, on_text)
        })
    }
}

/// `on_text` for an optional foreign listener.
fn listener_fn(listener: Option<&dyn TokenListener>) -> impl FnMut(&str) -> Result<bool> + '_ {
    move |piece| match listener {
        None => Ok(true),
        Some(l) => l.on_token(piece.to_string()),
    }
}

#[uniffi::export]
impl Session {
    /// Makes `adapters` (each with its scale) the active set; an empty list is the base model.
    /// The conversation so far is kept and recomputed with the new set before the next message.
    pub fn set_adapters(&self, adapters: Vec<AdapterUse>) -> Result<SwitchResult> {
        let mut set = ActiveAdapters::none();
        for u in &adapters {
            if !u.scale.is_finite() {
                return Err(arg(format!(
                    "adapter {}: the scale must be a finite number",
                    u.adapter.inner.name()
                )));
            }
            set.set(u.adapter.inner.clone(), u.scale);
        }
        self.with(|s| {
            let sw = s
                .set_adapters(set)
                .map_err(|e| GraftError::from_runtime(e, Subject::Adapter))?;
            Ok(SwitchResult {
                cache_recomputed: sw.cache_invalidated,
                tokens: sw.tokens_to_recompute as u32,
            })
        })
    }

    /// The active adapters' names, in the order they apply.
    pub fn active_adapters(&self) -> Result<Vec<String>> {
        self.with(|s| {
            Ok(s.adapters()
                .iter()
                .map(|(a, _)| a.name().to_string())
                .collect())
        })
    }

    /// Forgets the conversation (the adapters stay active).
    pub fn reset(&self) -> Result<()> {
        self.with(|s| {
            s.clear();
            Ok(())
        })
    }

    /// Tokens the session's cache holds.
    pub fn context_used(&self) -> Result<u32> {
        self.with(|s| Ok(s.tokens().len() as u32))
    }

    /// Continues the conversation with `prompt` and returns the generated text.
    pub fn generate(&self, prompt: String, max_tokens: u32, temperature: f32) -> Result<String> {
        let options = GenerateOptions {
            max_tokens,
            temperature,
            ..GenerateOptions::default()
        };
        Ok(self.generate_blocking(&prompt, &options, None)?.text)
    }

    /// Continues the conversation with `prompt`, streaming each piece of text to `listener`.
    #[uniffi::method(default(listener = None))]
    pub fn generate_with(
        &self,
        prompt: String,
        options: GenerateOptions,
        listener: Option<Box<dyn TokenListener>>,
    ) -> Result<GenerationResult> {
        self.generate_blocking(&prompt, &options, listener.as_deref())
    }

    /// `generate_with` off the caller's thread (Kotlin `suspend`, Swift `async`, Python
    /// asyncio).
    #[uniffi::method(default(listener = None))]
    pub async fn generate_async(
        self: Arc<Self>,
        prompt: String,
        options: GenerateOptions,
        listener: Option<Box<dyn TokenListener>>,
    ) -> Result<GenerationResult> {
        let (tx, rx) = futures_channel::oneshot::channel();
        std::thread::Builder::new()
            .name("graft-generate".into())
            .spawn(move || {
                let r = self.generate_blocking(&prompt, &options, listener.as_deref());
                let _ = tx.send(r);
            })
            .map_err(|e| GraftError::Runtime(format!("starting a thread: {e}")))?;
        rx.await.map_err(|_| {
            GraftError::Runtime("the generation thread ended without a result".into())
        })?
    }

    /// Applies the model's chat template to `messages` (the whole conversation), reuses what
    /// the cache already holds of it, and generates the assistant's reply.
    #[uniffi::method(default(listener = None))]
    pub fn chat(
        &self,
        messages: Vec<ChatMessage>,
        options: GenerateOptions,
        listener: Option<Box<dyn TokenListener>>,
    ) -> Result<GenerationResult> {
        if messages.is_empty() {
            return Err(arg("no messages"));
        }
        let tok = self.open.engine.model().tokenizer();
        let msgs: Vec<graft::tokenizer::ChatMessage> = messages
            .iter()
            .map(|m| graft::tokenizer::ChatMessage::new(m.role.clone(), m.content.clone()))
            .collect();
        let prompt = tok
            .apply_chat_template(&msgs, true)
            .map_err(|e| GraftError::from_runtime(e.into(), Subject::Model))?;
        let tokens = self.open.engine.tokenize_prompt(&prompt);
        self.with(|s| {
            // Keep the cached prefix the new conversation shares; evaluate the rest.
            let common = s
                .tokens()
                .iter()
                .zip(&tokens)
                .take_while(|(a, b)| a == b)
                .count()
                .min(tokens.len().saturating_sub(1));
            s.truncate(common);
            let mut on_text = listener_fn(listener.as_deref());
            self.run(s, tokens[common..].to_vec(), &options, &mut on_text)
        })
    }

    /// Stops the generation in progress (from any thread) at the next token.
    pub fn cancel(&self) {
        self.cancel.store(true, Ordering::SeqCst);
    }

    /// Releases the KV cache: later calls fail with `Closed`.
    pub fn release(&self) {
        self.cancel();
        *self.lock() = None;
    }
}
