//! Perplexity over a token sequence, with the window definition of `graft perplexity`:
//! windows start at 0, ctx-1, 2(ctx-1), ... (consecutive windows share one token); each is
//! evaluated from an empty cache; every window token after its first is scored, so each
//! token but the very first is predicted exactly once. [`perplexity_with_prompt`] makes the
//! first tokens of each window an unscored prompt (what a LoPA soft prompt is made from).

use serde::Serialize;

use crate::error::{Error, Result};
use crate::session::{LogitsFor, Session};

/// The result of [`perplexity`].
#[derive(Clone, Debug, Serialize)]
pub struct Perplexity {
    /// `exp(mean NLL)`.
    pub perplexity: f64,
    /// Number of scored tokens.
    pub tokens: usize,
    /// Mean negative log-likelihood (nats).
    pub nll_mean: f64,
}

/// Computes perplexity of `tokens` with windows of `ctx` tokens. `session` must have
/// `n_ctx >= ctx`; it is cleared before each window. `progress(done, total)` is called after
/// each window.
pub fn perplexity(
    session: &mut Session,
    tokens: &[u32],
    ctx: usize,
    progress: impl FnMut(usize, usize),
) -> Result<Perplexity> {
    perplexity_with_prompt(session, tokens, ctx, 1, progress)
}

/// [`perplexity`] where the first `prompt` tokens of each window are a prompt, decoded first
/// and not scored (windows then start at 0, ctx-prompt, 2(ctx-prompt), ..., so every token
/// after the first `prompt` is scored exactly once). With a LoPA adapter active, the soft
/// prompt is made from those tokens only, as in generation, and `n_ctx` must also hold its
/// virtual tokens. `prompt` = 1 is [`perplexity`].
pub fn perplexity_with_prompt(
    session: &mut Session,
    tokens: &[u32],
    ctx: usize,
    prompt: usize,
    mut progress: impl FnMut(usize, usize),
) -> Result<Perplexity> {
    if ctx < 2 {
        return Err(Error::InvalidRequest(format!("ctx {ctx}: need at least 2")));
    }
    if prompt == 0 || prompt >= ctx {
        return Err(Error::InvalidRequest(format!(
            "prompt {prompt}: need 1..ctx ({ctx}) tokens"
        )));
    }
    if session.config().n_ctx < ctx {
        return Err(Error::InvalidRequest(format!(
            "ctx {ctx} exceeds the session's n_ctx {}",
            session.config().n_ctx
        )));
    }
    if tokens.len() <= prompt {
        return Err(Error::InvalidRequest(format!(
            "{} tokens: need more than the {prompt}-token prompt to score",
            tokens.len()
        )));
    }
    let n_vocab = session.model().config().n_vocab;
    let step = ctx - prompt;
    let starts: Vec<usize> = (0..tokens.len() - prompt).step_by(step).collect();
    let mut nll = 0f64;
    let mut count = 0usize;
    for (i, &start) in starts.iter().enumerate() {
        let window = &tokens[start..(start + ctx).min(tokens.len())];
        session.clear();
        let logits = if prompt == 1 {
            session.decode(window, LogitsFor::All)?
        } else {
            // Row t - 1 of the logits predicts token t: the prompt's last row, then the rest.
            let mut l = session.decode(&window[..prompt], LogitsFor::Last)?;
            l.extend(session.decode(&window[prompt..], LogitsFor::All)?);
            l
        };
        let first = prompt - 1;
        for t in prompt..window.len() {
            let row = &logits[(t - 1 - first) * n_vocab..(t - first) * n_vocab];
            nll -= log_softmax_at(row, window[t] as usize);
            count += 1;
        }
        progress(i + 1, starts.len());
    }
    let nll_mean = nll / count as f64;
    Ok(Perplexity {
        perplexity: nll_mean.exp(),
        tokens: count,
        nll_mean,
    })
}

/// `log softmax(row)[i]`, computed in f64.
pub fn log_softmax_at(row: &[f32], i: usize) -> f64 {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let sum: f64 = row.iter().map(|&x| (x as f64 - max).exp()).sum();
    row[i] as f64 - max - sum.ln()
}
