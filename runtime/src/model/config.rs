//! Hyper-parameters read from a model file's GGUF metadata.

use graft_formats::Gguf;

use crate::error::{Error, Result};

/// The architectures graft runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arch {
    /// Llama and its relatives (SmolLM2, Mistral without SWA, ...).
    Llama,
    /// Qwen2: like llama with q/k/v biases and NeoX-style RoPE.
    Qwen2,
}

impl Arch {
    /// The `general.architecture` string.
    pub fn name(self) -> &'static str {
        match self {
            Arch::Llama => "llama",
            Arch::Qwen2 => "qwen2",
        }
    }

    fn from_name(s: &str) -> Result<Self> {
        match s {
            "llama" => Ok(Arch::Llama),
            "qwen2" => Ok(Arch::Qwen2),
            other => Err(Error::UnsupportedArchitecture(other.to_string())),
        }
    }
}

/// Model hyper-parameters.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelConfig {
    /// Architecture.
    pub arch: Arch,
    /// Vocabulary size (rows of the token embedding).
    pub n_vocab: usize,
    /// Training context length.
    pub n_ctx_train: usize,
    /// Hidden size.
    pub n_embd: usize,
    /// Transformer blocks.
    pub n_layer: usize,
    /// Feed-forward hidden size.
    pub n_ff: usize,
    /// Attention heads.
    pub n_head: usize,
    /// Key/value heads (GQA when fewer than `n_head`).
    pub n_head_kv: usize,
    /// Dimension of one head.
    pub head_dim: usize,
    /// RMSNorm epsilon.
    pub rms_eps: f32,
    /// Rotated dimensions per head.
    pub n_rot: usize,
    /// RoPE frequency base.
    pub rope_freq_base: f32,
    /// RoPE frequency scale (1 / linear scaling factor).
    pub rope_freq_scale: f32,
    /// Whether RoPE uses YaRN scaling.
    pub rope_yarn: bool,
    /// Context length RoPE scaling was computed against.
    pub n_ctx_orig: usize,
}

impl ModelConfig {
    /// Reads the hyper-parameters of `g`; `n_vocab` comes from the token embedding's shape.
    pub fn from_gguf(g: &Gguf) -> Result<Self> {
        let arch = Arch::from_name(g.get_str("general.architecture")?)?;
        let a = arch.name();
        let key = |k: &str| format!("{a}.{k}");
        let n_embd = g.get_u32(&key("embedding_length"))? as usize;
        let n_head = g.get_u32(&key("attention.head_count"))? as usize;
        let n_head_kv = g.get_u32_or(&key("attention.head_count_kv"), n_head as u32)? as usize;
        if n_embd == 0 || n_head == 0 || n_head_kv == 0 || !n_head.is_multiple_of(n_head_kv) {
            return Err(Error::InvalidHparams(format!(
                "n_embd {n_embd}, n_head {n_head}, n_head_kv {n_head_kv}: heads must be positive and n_head a multiple of n_head_kv"
            )));
        }
        let head_dim_default = (n_embd / n_head) as u32;
        let head_dim = g.get_u32_or(&key("attention.key_length"), head_dim_default)? as usize;
        let head_dim_v = g.get_u32_or(&key("attention.value_length"), head_dim_default)? as usize;
        if head_dim != head_dim_v || head_dim == 0 || !head_dim.is_multiple_of(2) {
            return Err(Error::InvalidHparams(format!(
                "key length {head_dim} and value length {head_dim_v} must be equal, even and positive"
            )));
        }
        let n_rot = g.get_u32_or(&key("rope.dimension_count"), head_dim as u32)? as usize;
        if n_rot != head_dim {
            return Err(Error::InvalidHparams(format!(
                "partial RoPE (n_rot {n_rot} != head_dim {head_dim}) is not supported"
            )));
        }
        let n_ctx_train = g.get_u32_or(&key("context_length"), 4096)? as usize;
        let (rope_freq_scale, rope_yarn) = match g.get_opt_str(&key("rope.scaling.type"))? {
            None | Some("none") => (1.0, false),
            Some(kind @ ("linear" | "yarn")) => {
                let factor = g.get_f32_or(&key("rope.scaling.factor"), 1.0)?;
                if !(factor > 0.0 && factor.is_finite()) {
                    return Err(Error::InvalidHparams(format!(
                        "rope.scaling.factor {factor}"
                    )));
                }
                (1.0 / factor, kind == "yarn")
            }
            Some(other) => {
                return Err(Error::InvalidHparams(format!(
                    "rope.scaling.type {other:?} is not supported (none, linear, yarn)"
                )))
            }
        };
        let n_ctx_orig = g.get_u32_or(
            &key("rope.scaling.original_context_length"),
            n_ctx_train as u32,
        )? as usize;
        let tok = g
            .tensor("token_embd.weight")
            .ok_or_else(|| Error::MissingTensor("token_embd.weight".into()))?;
        if tok.dims.len() != 2 || tok.dims[0] as usize != n_embd {
            return Err(Error::ShapeMismatch {
                tensor: tok.name.clone(),
                expected: vec![n_embd as u64, 0],
                got: tok.dims.clone(),
            });
        }
        let cfg = Self {
            arch,
            n_vocab: tok.dims[1] as usize,
            n_ctx_train,
            n_embd,
            n_layer: g.get_u32(&key("block_count"))? as usize,
            n_ff: g.get_u32(&key("feed_forward_length"))? as usize,
            n_head,
            n_head_kv,
            head_dim,
            rms_eps: g.get_f32(&key("attention.layer_norm_rms_epsilon"))?,
            n_rot,
            rope_freq_base: g.get_f32_or(&key("rope.freq_base"), 10000.0)?,
            rope_freq_scale,
            rope_yarn,
            n_ctx_orig,
        };
        if cfg.n_layer == 0 || cfg.n_layer > 4096 || cfg.n_ff == 0 {
            return Err(Error::InvalidHparams(format!(
                "block_count {} / feed_forward_length {}",
                cfg.n_layer, cfg.n_ff
            )));
        }
        Ok(cfg)
    }

    /// Key (and value) width of one token across the KV heads.
    pub fn n_embd_kv(&self) -> usize {
        self.head_dim * self.n_head_kv
    }

    /// Query width (`n_head * head_dim`).
    pub fn n_embd_q(&self) -> usize {
        self.head_dim * self.n_head
    }

    /// The ggml RoPE mode for this architecture.
    pub fn rope_mode(&self) -> i32 {
        match self.arch {
            Arch::Llama => graft_ggml::sys::GGML_ROPE_TYPE_NORMAL as i32,
            Arch::Qwen2 => graft_ggml::sys::GGML_ROPE_TYPE_NEOX as i32,
        }
    }

    /// RoPE parameters for `ggml_rope_ext`.
    pub fn rope(&self) -> graft_ggml::RopeParams {
        graft_ggml::RopeParams {
            n_dims: self.n_rot as i32,
            mode: self.rope_mode(),
            n_ctx_orig: self.n_ctx_orig as i32,
            freq_base: self.rope_freq_base,
            freq_scale: self.rope_freq_scale,
            ext_factor: if self.rope_yarn { 1.0 } else { 0.0 },
            attn_factor: 1.0,
            beta_fast: 32.0,
            beta_slow: 1.0,
        }
    }
}
