//! Continuous batching for a server: requests (each with its own adapters, sampler and limits)
//! queue up; one thread owns a [`BatchDecoder`] and, every step, admits waiting requests into
//! free sequence slots, evaluates the next tokens of every running request in one graph
//! (new prompts and decode tokens mixed), samples each request's next token and streams its
//! text. A request ends at an end-of-generation token, its token limit, one of its stop
//! strings, a full context, or when its consumer stops listening (a client that went away);
//! its slot is then free for the next.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::Instant;

use crate::adapter::ActiveAdapters;
use crate::batch::{BatchConfig, BatchDecoder, SeqId};
use crate::engine::StopReason;
use crate::error::Result;
use crate::model::Model;
use crate::sampler::{Sampler, SamplerConfig};
use crate::tokenizer::Decoder;

/// Settings of a [`Scheduler`].
#[derive(Clone, Debug)]
pub struct SchedulerConfig {
    /// Requests decoded at once (sequence slots).
    pub max_batch: usize,
    /// Positions per request: prompt plus generated tokens.
    pub n_ctx_seq: usize,
    /// Requests that may wait for a slot; more are refused ([`Scheduler::submit`]).
    pub max_queue: usize,
    /// CPU threads.
    pub n_threads: usize,
    /// Run the weights ggml has repacked CPU kernels for from a repacked copy (see
    /// [`SessionConfig::cpu_repack`](crate::SessionConfig::cpu_repack)).
    pub cpu_repack: bool,
}

/// What a request sees: its text piece by piece, then how it ended.
#[derive(Debug)]
pub enum Event {
    /// The next piece of generated text.
    Text(String),
    /// The request ended.
    Done(Finished),
    /// The request failed (the message says why); nothing follows.
    Failed(String),
}

/// How a request ended.
#[derive(Clone, Debug)]
pub struct Finished {
    /// Tokens of the prompt.
    pub prompt_tokens: usize,
    /// Tokens generated (an end-of-generation token included).
    pub completion_tokens: usize,
    /// Why it stopped.
    pub stop_reason: StopReason,
}

/// A request for the scheduler.
pub struct Job {
    /// The prompt, tokenized.
    pub prompt: Vec<u32>,
    /// Its adapters (empty: the base model).
    pub adapters: ActiveAdapters,
    /// Its sampling settings.
    pub sampler: SamplerConfig,
    /// Most tokens to generate.
    pub max_tokens: usize,
    /// Generation stops before the first of these strings (which is not returned).
    pub stop: Vec<String>,
    /// Set from anywhere to end the request.
    pub cancel: Arc<AtomicBool>,
    /// Receives the events; returning false ends the request (its consumer is gone).
    pub on_event: Box<dyn FnMut(Event) -> bool + Send>,
}

/// Counters for `/metrics`.
#[derive(Default, Debug)]
pub struct Stats {
    /// Requests accepted.
    pub requests: AtomicU64,
    /// Requests refused because the queue was full.
    pub rejected: AtomicU64,
    /// Requests finished (any reason).
    pub finished: AtomicU64,
    /// Prompt tokens evaluated.
    pub prompt_tokens: AtomicU64,
    /// Tokens generated.
    pub generated_tokens: AtomicU64,
    /// Graph steps run.
    pub steps: AtomicU64,
    /// Sum of the number of sequences over all steps (average batch = this / steps).
    pub batch_rows: AtomicU64,
    /// Requests waiting for a slot.
    pub queued: AtomicUsize,
    /// Requests being decoded.
    pub running: AtomicUsize,
    /// Microseconds spent in steps.
    pub step_us: AtomicU64,
}

/// The handle of the decoding thread; dropping it lets the thread finish the running requests
/// and exit.
pub struct Scheduler {
    tx: Option<SyncSender<Job>>,
    stats: Arc<Stats>,
    thread: Option<std::thread::JoinHandle<()>>,
    n_ctx_seq: usize,
}

impl Scheduler {
    /// Starts the decoding thread over `model`.
    pub fn start(model: Arc<Model>, cfg: SchedulerConfig) -> Result<Self> {
        let decoder = BatchDecoder::new(
            model,
            BatchConfig {
                n_seq_max: cfg.max_batch,
                n_ctx_seq: cfg.n_ctx_seq,
                n_batch: 512,
                n_threads: cfg.n_threads,
                cpu_repack: cfg.cpu_repack,
                ..BatchConfig::default()
            },
        )?;
        let n_ctx_seq = decoder.config().n_ctx_seq;
        let (tx, rx) = mpsc::sync_channel(cfg.max_queue);
        let stats = Arc::new(Stats::default());
        let st = stats.clone();
        let thread = std::thread::Builder::new()
            .name("graft-scheduler".into())
            .spawn(move || run(decoder, rx, &st))
            .map_err(|e| crate::Error::InvalidRequest(format!("starting the scheduler: {e}")))?;
        Ok(Self {
            tx: Some(tx),
            stats,
            thread: Some(thread),
            n_ctx_seq,
        })
    }

    /// Queues `job`; gives it back when the queue is full (the caller answers "busy").
    #[allow(clippy::result_large_err)]
    pub fn submit(&self, job: Job) -> std::result::Result<(), Job> {
        let tx = self.tx.as_ref().expect("the sender lives until drop");
        self.stats.queued.fetch_add(1, Ordering::Relaxed);
        match tx.try_send(job) {
            Ok(()) => {
                self.stats.requests.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Err(TrySendError::Full(job) | TrySendError::Disconnected(job)) => {
                self.stats.queued.fetch_sub(1, Ordering::Relaxed);
                self.stats.rejected.fetch_add(1, Ordering::Relaxed);
                Err(job)
            }
        }
    }

    /// The counters.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Positions each request may use (prompt plus generated tokens).
    pub fn n_ctx_seq(&self) -> usize {
        self.n_ctx_seq
    }
}

impl Drop for Scheduler {
    fn drop(&mut self) {
        self.tx.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A request being decoded.
struct Running<'t> {
    job: Job,
    id: SeqId,
    started: bool,
    sampler: Sampler,
    history: Vec<u32>,
    generated: usize,
    decoder: Decoder<'t>,
    /// Text generated so far and how much of it was sent.
    text: String,
    sent: usize,
    next: u32,
    done: Option<StopReason>,
}

fn run(mut decoder: BatchDecoder, rx: Receiver<Job>, stats: &Stats) {
    let model = decoder.model().clone();
    let tok = model.tokenizer();
    let max = decoder.config().n_seq_max;
    let n_ctx_seq = decoder.config().n_ctx_seq;
    let mut running: Vec<Running<'_>> = Vec::new();
    let mut open = true;
    loop {
        // Admit waiting requests into free slots; block only when nothing runs.
        while open && running.len() < max {
            let job = if running.is_empty() {
                rx.recv().ok()
            } else {
                match rx.try_recv() {
                    Ok(j) => Some(j),
                    Err(mpsc::TryRecvError::Empty) => break,
                    Err(mpsc::TryRecvError::Disconnected) => None,
                }
            };
            let Some(mut job) = job else {
                open = false;
                break;
            };
            stats.queued.fetch_sub(1, Ordering::Relaxed);
            if job.prompt.is_empty() || job.prompt.len() >= n_ctx_seq {
                let msg = if job.prompt.is_empty() {
                    "the prompt is empty".to_string()
                } else {
                    format!(
                        "the prompt has {} tokens; at most {} fit",
                        job.prompt.len(),
                        n_ctx_seq - 1
                    )
                };
                (job.on_event)(Event::Failed(msg));
                continue;
            }
            match decoder.add_sequence(job.adapters.clone()) {
                Ok(id) => {
                    let sampler = Sampler::new(job.sampler.clone());
                    running.push(Running {
                        history: job.prompt.clone(),
                        job,
                        id,
                        started: false,
                        sampler,
                        generated: 0,
                        decoder: Decoder::new(tok),
                        text: String::new(),
                        sent: 0,
                        next: 0,
                        done: None,
                    });
                }
                Err(e) => {
                    (job.on_event)(Event::Failed(e.to_string()));
                }
            }
        }
        if running.is_empty() {
            if open {
                continue;
            }
            return;
        }
        stats.running.store(running.len(), Ordering::Relaxed);
        // Requests cancelled while waiting for this step end without it.
        for r in &mut running {
            if r.job.cancel.load(Ordering::Relaxed) {
                r.done = Some(StopReason::Cancelled);
            }
        }
        let work: Vec<(SeqId, Vec<u32>)> = running
            .iter()
            .filter(|r| r.done.is_none())
            .map(|r| {
                let toks = if r.started {
                    vec![r.next]
                } else {
                    r.job.prompt.clone()
                };
                (r.id, toks)
            })
            .collect();
        if !work.is_empty() {
            let t = Instant::now();
            let refs: Vec<(SeqId, &[u32])> = work.iter().map(|(i, t)| (*i, &t[..])).collect();
            match decoder.step(&refs) {
                Ok(logits) => {
                    stats.steps.fetch_add(1, Ordering::Relaxed);
                    stats
                        .batch_rows
                        .fetch_add(work.len() as u64, Ordering::Relaxed);
                    stats
                        .step_us
                        .fetch_add(t.elapsed().as_micros() as u64, Ordering::Relaxed);
                    let mut l = logits.into_iter();
                    for r in running.iter_mut().filter(|r| r.done.is_none()) {
                        let logits = l.next().expect("one row per request");
                        if !r.started {
                            r.started = true;
                            stats
                                .prompt_tokens
                                .fetch_add(r.job.prompt.len() as u64, Ordering::Relaxed);
                        }
                        advance(r, &logits, tok, n_ctx_seq, stats);
                    }
                }
                Err(e) => {
                    for r in running.iter_mut().filter(|r| r.done.is_none()) {
                        (r.job.on_event)(Event::Failed(e.to_string()));
                        r.done = Some(StopReason::Cancelled);
                        r.generated = usize::MAX; // no Done event
                    }
                }
            }
        }
        // Finished requests leave; their slots serve the next ones.
        let mut i = 0;
        while i < running.len() {
            if let Some(reason) = running[i].done {
                let mut r = running.swap_remove(i);
                decoder.remove_sequence(r.id);
                stats.finished.fetch_add(1, Ordering::Relaxed);
                stats.running.store(running.len(), Ordering::Relaxed);
                if r.generated != usize::MAX {
                    let rest = r.decoder.finish();
                    r.text.push_str(&rest);
                    flush(&mut r, true);
                    (r.job.on_event)(Event::Done(Finished {
                        prompt_tokens: r.job.prompt.len(),
                        completion_tokens: r.generated,
                        stop_reason: reason,
                    }));
                }
            } else {
                i += 1;
            }
        }
        stats.running.store(running.len(), Ordering::Relaxed);
    }
}

/// Samples the next token of `r` from `logits` and streams its text; marks `r` done when it
/// ends.
fn advance(
    r: &mut Running<'_>,
    logits: &[f32],
    tok: &crate::tokenizer::Tokenizer,
    n_ctx_seq: usize,
    stats: &Stats,
) {
    let next = r.sampler.sample(logits, &r.history);
    r.generated += 1;
    stats.generated_tokens.fetch_add(1, Ordering::Relaxed);
    r.history.push(next);
    r.next = next;
    if tok.is_eog(next) {
        r.done = Some(StopReason::EndOfGeneration);
        return;
    }
    let piece = r.decoder.push(next);
    r.text.push_str(&piece);
    if let Some(at) = r
        .job
        .stop
        .iter()
        .filter(|s| !s.is_empty())
        .filter_map(|s| r.text.find(s.as_str()))
        .min()
    {
        r.text.truncate(at);
        r.done = Some(StopReason::StopString);
        return;
    }
    if !flush(r, false) {
        r.done = Some(StopReason::Cancelled);
        return;
    }
    if r.generated >= r.job.max_tokens {
        r.done = Some(StopReason::MaxTokens);
    } else if r.history.len() >= n_ctx_seq {
        r.done = Some(StopReason::ContextFull);
    }
}

/// Sends the text that can no longer turn into a stop string (all of it when `all`); false
/// when the consumer is gone.
fn flush(r: &mut Running<'_>, all: bool) -> bool {
    let mut upto = r.text.len();
    if !all {
        // Hold back a tail that is a prefix of some stop string.
        for s in r.job.stop.iter().filter(|s| !s.is_empty()) {
            for k in (1..s.len()).rev() {
                if r.text.len() >= r.sent + k && s.is_char_boundary(k) && r.text.ends_with(&s[..k])
                {
                    upto = upto.min(r.text.len() - k);
                    break;
                }
            }
        }
    }
    while !r.text.is_char_boundary(upto) {
        upto -= 1;
    }
    if upto <= r.sent {
        return true;
    }
    let piece = r.text[r.sent..upto].to_string();
    r.sent = upto;
    (r.job.on_event)(Event::Text(piece))
}
