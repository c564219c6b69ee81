//! The base model: hyper-parameters, tokenizer and weight tensors that point into the
//! memory-mapped GGUF file (no copy on the CPU backend).
//!
//! The forward graph of each architecture lives in its own file ([`llama`]), built from the
//! shared layers in [`layers`].

pub mod config;
pub(crate) mod layers;
pub(crate) mod llama;

use std::path::Path;
use std::sync::Arc;

use graft_formats::{Gguf, TensorInfo};
use graft_ggml::{Buffer, Context, FrozenContext, HostMemory, Tensor, TensorId, Type};

pub use config::{Arch, ModelConfig};

use crate::error::{Error, Result};
use crate::tokenizer::Tokenizer;

/// Weight handles of one transformer block.
#[derive(Clone, Debug)]
pub(crate) struct LayerWeights {
    pub attn_norm: TensorId,
    pub wq: TensorId,
    pub wk: TensorId,
    pub wv: TensorId,
    pub wo: TensorId,
    pub bq: Option<TensorId>,
    pub bk: Option<TensorId>,
    pub bv: Option<TensorId>,
    pub bo: Option<TensorId>,
    pub ffn_norm: TensorId,
    pub ffn_gate: TensorId,
    pub ffn_up: TensorId,
    pub ffn_down: TensorId,
}

/// A loaded base model. Cheap to share (`Arc<Model>`) between sessions; never modified.
pub struct Model {
    config: ModelConfig,
    tokenizer: Tokenizer,
    gguf: Arc<Gguf>,
    // Field order matters for drop: tensors' metadata (ctx) and the buffer over the map go
    // before the map itself (held by `gguf` and by the buffer).
    ctx: FrozenContext,
    _weights: Buffer,
    pub(crate) tok_embd: TensorId,
    pub(crate) output_norm: TensorId,
    pub(crate) output: TensorId,
    pub(crate) layers: Vec<LayerWeights>,
    fingerprint: String,
}

/// The mapped file as host memory for a ggml buffer.
struct MappedFile(Arc<Gguf>);

impl HostMemory for MappedFile {
    fn bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

impl Model {
    /// Memory-maps and validates the GGUF model at `path`.
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        let gguf = Arc::new(Gguf::open(path.as_ref())?);
        Self::from_gguf(gguf)
    }

    /// Builds the model over an already opened (memory-mapped) file.
    pub fn from_gguf(gguf: Arc<Gguf>) -> Result<Self> {
        if let kind @ (FileKind::Adapter(_) | FileKind::Other(_)) = FileKind::of(&gguf) {
            return Err(Error::WrongFileKind {
                found: kind.to_string(),
                expected: "a base model",
            });
        }
        let config = ModelConfig::from_gguf(&gguf)?;
        let tokenizer = Tokenizer::from_gguf(&gguf)?;
        let ctx = Context::new(gguf.tensors().len() + 1, 0)?;
        let weights = Buffer::from_host(Arc::new(MappedFile(gguf.clone())))?;
        let c = &config;
        let (e, q, kv, ff) = (
            c.n_embd as u64,
            c.n_embd_q() as u64,
            c.n_embd_kv() as u64,
            c.n_ff as u64,
        );

        let mut loader = Loader {
            gguf: &gguf,
            ctx: &ctx,
            buf: &weights,
        };
        let tok_embd = loader.req("token_embd.weight", &[e, c.n_vocab as u64])?;
        let output_norm = loader.req("output_norm.weight", &[e])?;
        let output = loader
            .opt("output.weight", &[e, c.n_vocab as u64])?
            .unwrap_or(tok_embd);
        let mut layers = Vec::with_capacity(c.n_layer);
        for i in 0..c.n_layer {
            let n = |s: &str| format!("blk.{i}.{s}");
            layers.push(LayerWeights {
                attn_norm: loader.req(&n("attn_norm.weight"), &[e])?,
                wq: loader.req(&n("attn_q.weight"), &[e, q])?,
                wk: loader.req(&n("attn_k.weight"), &[e, kv])?,
                wv: loader.req(&n("attn_v.weight"), &[e, kv])?,
                wo: loader.req(&n("attn_output.weight"), &[q, e])?,
                bq: loader.opt(&n("attn_q.bias"), &[q])?,
                bk: loader.opt(&n("attn_k.bias"), &[kv])?,
                bv: loader.opt(&n("attn_v.bias"), &[kv])?,
                bo: loader.opt(&n("attn_output.bias"), &[e])?,
                ffn_norm: loader.req(&n("ffn_norm.weight"), &[e])?,
                ffn_gate: loader.req(&n("ffn_gate.weight"), &[e, ff])?,
                ffn_up: loader.req(&n("ffn_up.weight"), &[e, ff])?,
                ffn_down: loader.req(&n("ffn_down.weight"), &[ff, e])?,
            });
        }
        let fingerprint = fingerprint(&gguf, &config);
        Ok(Self {
            config,
            tokenizer,
            gguf,
            ctx: FrozenContext::new(ctx),
            _weights: weights,
            tok_embd,
            output_norm,
            output,
            layers,
            fingerprint,
        })
    }

    /// Hyper-parameters.
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// The tokenizer read from the file.
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// The mapped file.
    pub fn gguf(&self) -> &Gguf {
        &self.gguf
    }

    /// A cheap identity of the base model (architecture, shapes, types and a hash of a few
    /// tensors' bytes) that adapters record to refuse a wrong base.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// Resolves a weight handle.
    pub(crate) fn w(&self, id: TensorId) -> Tensor<'_> {
        self.ctx
            .get(id)
            .expect("weight handles always come from this model's context")
    }

    /// Row `token` of the token embedding as f32 (dequantized from the map).
    pub fn embedding_row(&self, token: u32) -> Result<Vec<f32>> {
        let info = self
            .gguf
            .tensor("token_embd.weight")
            .ok_or_else(|| Error::MissingTensor("token_embd.weight".into()))?;
        let n_embd = self.config.n_embd;
        if token as usize >= self.config.n_vocab {
            return Err(Error::InvalidRequest(format!(
                "token id {token} is outside the vocabulary"
            )));
        }
        let ty = Type(info.dtype.id());
        let row = ty.row_size(n_embd as i64);
        let data = self.gguf.tensor_data(info);
        let start = token as usize * row;
        Ok(graft_ggml::dequantize(
            ty,
            &data[start..start + row],
            n_embd,
        )?)
    }

    /// Bytes of weight data mapped from the file.
    pub fn weight_bytes(&self) -> u64 {
        self.gguf.tensors().iter().map(|t| t.n_bytes).sum()
    }
}

struct Loader<'a> {
    gguf: &'a Gguf,
    ctx: &'a Context,
    buf: &'a Buffer,
}

impl Loader<'_> {
    fn req(&mut self, name: &str, dims: &[u64]) -> Result<TensorId> {
        self.opt(name, dims)?
            .ok_or_else(|| Error::MissingTensor(name.to_string()))
    }

    fn opt(&mut self, name: &str, dims: &[u64]) -> Result<Option<TensorId>> {
        let Some(info) = self.gguf.tensor(name) else {
            return Ok(None);
        };
        check_dims(info, dims)?;
        let ty = Type(info.dtype.id());
        if !ty.is_supported() {
            return Err(Error::UnsupportedTensorType {
                tensor: name.into(),
                ty: info.dtype.name().into(),
            });
        }
        let ne: Vec<i64> = info.dims.iter().map(|&d| d as i64).collect();
        let t = self.ctx.new_tensor(ty, &ne).set_name(name);
        if t.nbytes() as u64 != info.n_bytes {
            return Err(Error::UnsupportedTensorType {
                tensor: name.into(),
                ty: format!(
                    "{} (ggml size {} != file size {})",
                    info.dtype.name(),
                    t.nbytes(),
                    info.n_bytes
                ),
            });
        }
        self.buf.place(t, info.abs_offset as usize)?;
        Ok(Some(t.id()))
    }
}

fn check_dims(info: &TensorInfo, dims: &[u64]) -> Result<()> {
    if info.dims != dims {
        return Err(Error::ShapeMismatch {
            tensor: info.name.clone(),
            expected: dims.to_vec(),
            got: info.dims.clone(),
        });
    }
    Ok(())
}

/// `arch:n_layer:n_embd:n_vocab:<fnv1a-64 of tensor names, types, shapes and the first and
/// last 4 KiB of token_embd and output_norm data>`. Reads a few KiB, never the whole file.
fn fingerprint(g: &Gguf, c: &ModelConfig) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |bytes: &[u8]| {
        for &b in bytes {
            h ^= b as u64;
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    };
    for t in g.tensors() {
        eat(t.name.as_bytes());
        eat(&t.dtype.id().to_le_bytes());
        for d in &t.dims {
            eat(&d.to_le_bytes());
        }
    }
    for name in ["token_embd.weight", "output_norm.weight"] {
        if let Some(t) = g.tensor(name) {
            let data = g.tensor_data(t);
            let k = data.len().min(4096);
            eat(&data[..k]);
            eat(&data[data.len() - k..]);
        }
    }
    format!(
        "{}:{}:{}:{}:{h:016x}",
        c.arch.name(),
        c.n_layer,
        c.n_embd,
        c.n_vocab
    )
}

/// What a GGUF file holds, from its metadata, for errors that say what a file is when it is
/// not what was expected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileKind {
    /// A model: `general.architecture` without adapter metadata.
    Model(String),
    /// An adapter (`general.type = "adapter"` or an `adapter.type` key): its kind.
    Adapter(String),
    /// Neither (`general.type` of another value, or no architecture).
    Other(String),
}

impl FileKind {
    /// Classifies an opened file.
    pub fn of(g: &Gguf) -> FileKind {
        let s = |k: &str| g.get_opt_str(k).ok().flatten().map(str::to_string);
        let adapter = s("adapter.type");
        match (s("general.type").as_deref(), adapter) {
            (Some("adapter"), kind) | (_, kind @ Some(_)) => {
                FileKind::Adapter(kind.unwrap_or_else(|| "unknown".into()))
            }
            (Some("model") | None, _) => match s("general.architecture") {
                Some(arch) => FileKind::Model(arch),
                None => FileKind::Other("a GGUF file without general.architecture".into()),
            },
            (Some(other), _) => FileKind::Other(format!("a GGUF file of type {other:?}")),
        }
    }
}

impl std::fmt::Display for FileKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FileKind::Model(arch) => write!(f, "a base model ({arch})"),
            FileKind::Adapter(kind) => write!(f, "a {kind} adapter"),
            FileKind::Other(what) => f.write_str(what),
        }
    }
}
