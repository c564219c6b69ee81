//! The base model: hyper-parameters, tokenizer and weight tensors that point into the
//! memory-mapped GGUF file (no copy on the CPU backend).
//!
//! The forward graph of each architecture lives in its own file ([`llama`]), built from the
//! shared layers in [`layers`].

pub mod config;
pub(crate) mod device;
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
    legacy_fingerprint: String,
    quantization: String,
    /// Copies of the weights on devices (GPU backends), made when a session first needs one.
    pub(crate) devices: device::DeviceCopies,
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
        let legacy_fingerprint = legacy_fingerprint(&gguf, &config);
        let quantization = quantization(&gguf);
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
            legacy_fingerprint,
            quantization,
            devices: Default::default(),
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

    /// The identity of the base model that adapters record to refuse a wrong base, the same
    /// for every quantization of one model (see [`fingerprint`]): an adapter trained over the
    /// Q4_1 file loads on the Q8_0 and F16 files of the same model.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// Whether `recorded` (an adapter's `adapter.base.fingerprint`) names this model: the
    /// current fingerprint, or the one adapters of earlier versions recorded (which hashed
    /// tensor types, so it matches the same file only).
    pub fn matches_fingerprint(&self, recorded: &str) -> bool {
        recorded == self.fingerprint || recorded == self.legacy_fingerprint
    }

    /// The weights' quantization: the type of most 2-D weight tensors (`q4_1`, `q8_0`, `f16`...).
    pub fn quantization(&self) -> &str {
        &self.quantization
    }

    /// Resolves a weight handle.
    pub(crate) fn w(&self, id: TensorId) -> Tensor<'_> {
        self.ctx
            .get(id)
            .expect("weight handles always come from this model's context")
    }

    /// Every weight handle of the model (the tied output once).
    pub(crate) fn weight_ids(&self) -> Vec<TensorId> {
        let mut ids = vec![self.tok_embd, self.output_norm];
        if self.output != self.tok_embd {
            ids.push(self.output);
        }
        for il in 0..self.layers.len() {
            ids.extend(self.layer_weight_ids(il));
        }
        ids
    }

    /// The weights of layer `il`: norms, projections and biases.
    fn layer_weight_ids(&self, il: usize) -> Vec<TensorId> {
        let l = &self.layers[il];
        let mut ids = vec![
            l.attn_norm,
            l.wq,
            l.wk,
            l.wv,
            l.wo,
            l.ffn_norm,
            l.ffn_gate,
            l.ffn_up,
            l.ffn_down,
        ];
        ids.extend([l.bq, l.bk, l.bv, l.bo].into_iter().flatten());
        ids
    }

    /// The weights a device holds with `--gpu-layers n`, as llama.cpp's `-ngl` places them:
    /// the last `n` layers; with `n` above the layer count (or `None`), every weight, the
    /// embeddings and output layer included.
    pub(crate) fn offloaded_weight_ids(&self, gpu_layers: Option<usize>) -> Vec<TensorId> {
        let n_layer = self.layers.len();
        match gpu_layers {
            Some(n) if n <= n_layer => (n_layer - n..n_layer)
                .flat_map(|il| self.layer_weight_ids(il))
                .collect(),
            _ => self.weight_ids(),
        }
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

/// FNV-1a 64 over byte strings.
struct Fnv(u64);

impl Fnv {
    fn new() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }

    fn eat(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 ^= b as u64;
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }
}

/// `v2:arch:n_layer:n_embd:n_vocab:<fnv1a-64>` over what every quantization of one model
/// shares: the hyper-parameters, tensor names and shapes (not types), the vocabulary, and the
/// values of the 1-D tensors (norm weights, biases), which llama.cpp's quantizer keeps in F32
/// (read as bfloat16, so an F16 or BF16 copy hashes the same). A fine-tune of the same
/// architecture changes the norms and so the fingerprint. Reads a few hundred KiB at most.
fn fingerprint(g: &Gguf, c: &ModelConfig) -> String {
    let mut h = Fnv::new();
    for v in [
        c.n_layer,
        c.n_embd,
        c.n_vocab,
        c.n_head,
        c.n_head_kv,
        c.n_ff,
    ] {
        h.eat(&(v as u64).to_le_bytes());
    }
    let mut tensors: Vec<&TensorInfo> = g.tensors().iter().collect();
    tensors.sort_by(|a, b| a.name.cmp(&b.name));
    for t in &tensors {
        h.eat(t.name.as_bytes());
        for d in &t.dims {
            h.eat(&d.to_le_bytes());
        }
    }
    if let Ok(Some(tokens)) = g.get_opt_str_array("tokenizer.ggml.tokens") {
        for t in tokens {
            h.eat(t.as_bytes());
            h.eat(&[0]);
        }
    }
    for t in tensors.iter().filter(|t| t.dims.len() == 1) {
        let data = g.tensor_data(t);
        let as_f32: Vec<f32> = match t.dtype.name() {
            "f32" => data
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
            "f16" => data
                .chunks_exact(2)
                .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            "bf16" => data
                .chunks_exact(2)
                .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            _ => continue,
        };
        for x in as_f32 {
            h.eat(&half::bf16::from_f32(x).to_le_bytes());
        }
    }
    format!(
        "v2:{}:{}:{}:{}:{:016x}",
        c.arch.name(),
        c.n_layer,
        c.n_embd,
        c.n_vocab,
        h.0
    )
}

/// The fingerprint adapters recorded before [`fingerprint`]: `arch:n_layer:n_embd:n_vocab:
/// <fnv1a-64 of tensor names, types, shapes and 4 KiB of token_embd and output_norm data>`.
/// Kept so those adapters still load on the file they were made over.
fn legacy_fingerprint(g: &Gguf, c: &ModelConfig) -> String {
    let mut h = Fnv::new();
    for t in g.tensors() {
        h.eat(t.name.as_bytes());
        h.eat(&t.dtype.id().to_le_bytes());
        for d in &t.dims {
            h.eat(&d.to_le_bytes());
        }
    }
    for name in ["token_embd.weight", "output_norm.weight"] {
        if let Some(t) = g.tensor(name) {
            let data = g.tensor_data(t);
            let k = data.len().min(4096);
            h.eat(&data[..k]);
            h.eat(&data[data.len() - k..]);
        }
    }
    format!(
        "{}:{}:{}:{}:{:016x}",
        c.arch.name(),
        c.n_layer,
        c.n_embd,
        c.n_vocab,
        h.0
    )
}

/// The type of most 2-D tensors (ties: the first in type order).
fn quantization(g: &Gguf) -> String {
    let mut count: std::collections::BTreeMap<&str, usize> = Default::default();
    for t in g.tensors().iter().filter(|t| t.dims.len() >= 2) {
        *count.entry(t.dtype.name()).or_default() += 1;
    }
    count
        .iter()
        .max_by_key(|(_, n)| **n)
        .map(|(ty, _)| ty.to_string())
        .unwrap_or_else(|| "none".into())
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
