//! Adapters: small trained deltas over the frozen base, applied as graph hooks.
//!
//! Every kind of `ADAPTER_FORMAT.md` has one file here: [`lora`], [`diablo`], [`wegeft`]
//! (hooks on linear layers) and [`lopa`] (a soft prompt on the input embeddings). An
//! [`Adapter`] is loaded once (validated against the base before anything is allocated) and
//! shared (`Arc`); an [`ActiveAdapters`] set with per-adapter scales is chosen per session or
//! request and passed explicitly into graph building. The base weights are never modified.

pub(crate) mod active;
pub mod cache;
mod device;
pub mod diablo;
pub mod lopa;
pub mod lora;
pub mod merge;
mod peft;
pub mod registry;
pub mod wegeft;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use graft_formats::{Gguf, TensorInfo};
use graft_ggml::{Backend, Buffer, Context, FrozenContext, HostMemory, Tensor, TensorId, Type};

use crate::error::{Error, Result};
use crate::model::{FileKind, Model};

pub(crate) use active::dropout_mask_name;
pub use active::ActiveAdapters;
pub use peft::{export_peft, huggingface_id, import_peft, import_peft_bytes};

/// The linear layers an adapter can target, by the base tensor they modify.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TargetKind {
    /// `attn_q`
    AttnQ,
    /// `attn_k`
    AttnK,
    /// `attn_v`
    AttnV,
    /// `attn_output`
    AttnOut,
    /// `ffn_gate`
    FfnGate,
    /// `ffn_up`
    FfnUp,
    /// `ffn_down`
    FfnDown,
}

impl TargetKind {
    /// Every kind, in a fixed order.
    pub const ALL: [TargetKind; 7] = [
        TargetKind::AttnQ,
        TargetKind::AttnK,
        TargetKind::AttnV,
        TargetKind::AttnOut,
        TargetKind::FfnGate,
        TargetKind::FfnUp,
        TargetKind::FfnDown,
    ];

    /// The GGUF tensor stem (`attn_q`).
    pub fn stem(self) -> &'static str {
        match self {
            TargetKind::AttnQ => "attn_q",
            TargetKind::AttnK => "attn_k",
            TargetKind::AttnV => "attn_v",
            TargetKind::AttnOut => "attn_output",
            TargetKind::FfnGate => "ffn_gate",
            TargetKind::FfnUp => "ffn_up",
            TargetKind::FfnDown => "ffn_down",
        }
    }

    /// The short CLI name (`q`, `k`, `v`, `o`, `gate`, `up`, `down`).
    pub fn short(self) -> &'static str {
        match self {
            TargetKind::AttnQ => "q",
            TargetKind::AttnK => "k",
            TargetKind::AttnV => "v",
            TargetKind::AttnOut => "o",
            TargetKind::FfnGate => "gate",
            TargetKind::FfnUp => "up",
            TargetKind::FfnDown => "down",
        }
    }

    /// Parses a stem or a short name.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|k| k.stem() == s || k.short() == s)
    }

    fn index(self) -> usize {
        self as usize
    }

    /// `(n_in, n_out)` of this layer in `model`.
    pub fn dims(self, model: &Model) -> (usize, usize) {
        let c = model.config();
        let (e, q, kv, ff) = (c.n_embd, c.n_embd_q(), c.n_embd_kv(), c.n_ff);
        match self {
            TargetKind::AttnQ => (e, q),
            TargetKind::AttnK | TargetKind::AttnV => (e, kv),
            TargetKind::AttnOut => (q, e),
            TargetKind::FfnGate | TargetKind::FfnUp => (e, ff),
            TargetKind::FfnDown => (ff, e),
        }
    }
}

/// A target: layer and kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Target {
    /// Block index.
    pub layer: usize,
    /// Which linear layer.
    pub kind: TargetKind,
}

impl Target {
    /// The base tensor name (`blk.7.attn_v.weight`).
    pub fn tensor_name(&self) -> String {
        format!("blk.{}.{}.weight", self.layer, self.kind.stem())
    }

    /// Parses `blk.N.<stem>.weight` (and returns the rest of the name after it).
    pub fn parse_prefix(name: &str) -> Option<(Target, &str)> {
        let rest = name.strip_prefix("blk.")?;
        let (layer, rest) = rest.split_once('.')?;
        let layer: usize = layer.parse().ok()?;
        let (stem, rest) = rest.split_once(".weight")?;
        Some((
            Target {
                layer,
                kind: TargetKind::parse(stem)?,
            },
            rest,
        ))
    }
}

/// The adapter kinds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AdapterKind {
    /// Low-rank update `B A x`.
    Lora,
    /// Trainable diagonal blocks.
    Diablo,
    /// Weight-generative fine-tuning `W (x + s φᵀ ψ x)`.
    Wegeft,
    /// Instance-dependent low-rank soft prompt.
    Lopa,
}

impl AdapterKind {
    /// The `adapter.type` string.
    pub fn name(self) -> &'static str {
        match self {
            AdapterKind::Lora => "lora",
            AdapterKind::Diablo => "diablo",
            AdapterKind::Wegeft => "wegeft",
            AdapterKind::Lopa => "lopa",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        [
            AdapterKind::Lora,
            AdapterKind::Diablo,
            AdapterKind::Wegeft,
            AdapterKind::Lopa,
        ]
        .into_iter()
        .find(|k| k.name() == s)
    }
}

/// One linear layer's delta from one adapter.
#[derive(Clone, Debug)]
pub(crate) enum Delta {
    /// `y += scale * B (A x)`; `a` ne=[n_in, r], `b` ne=[r, n_out].
    Lora {
        a: TensorId,
        b: TensorId,
        scale: f32,
    },
    /// `y += d(x)` with blocks `d` ne=[bs_in, bs_out, nb].
    Diablo {
        d: TensorId,
        bs_in: usize,
        bs_out: usize,
        nb: usize,
    },
    /// `x += scale * φᵀ (ψ x)`; `phi_t` ne=[r, n_in], `psi` ne=[n_in, r].
    Wegeft {
        phi_t: TensorId,
        psi: TensorId,
        scale: f32,
    },
}

/// A loaded adapter. Immutable and shared; its tensors live in its own buffers.
pub struct Adapter {
    name: String,
    path: Option<PathBuf>,
    kind: AdapterKind,
    description: Option<String>,
    // Per target index (layer * 7 + kind), the deltas of this adapter (usually 0 or 1).
    deltas: Vec<Vec<Delta>>,
    lopa: Option<lopa::Lopa>,
    ctx: FrozenContext,
    _buffers: Vec<Buffer>,
    /// Copies on devices (GPU sessions), made when a session there first activates it.
    devices: device::AdapterDevices,
    n_bytes: usize,
    rank: usize,
    base_fingerprint: String,
    base_quantization: Option<String>,
}

impl std::fmt::Debug for Adapter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Adapter")
            .field("name", &self.name)
            .field("kind", &self.kind)
            .field("path", &self.path)
            .field("bytes", &self.n_bytes)
            .finish()
    }
}

impl Adapter {
    /// Loads and validates the adapter at `path` for `model`: a GGUF adapter file, or a PEFT
    /// directory (`adapter_config.json` + `adapter_model.safetensors`), which is converted.
    pub fn load(model: &Model, path: impl AsRef<Path>) -> Result<Arc<Adapter>> {
        let path = path.as_ref();
        let name = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "adapter".into());
        let gguf = if path.is_dir() {
            let bytes = peft::import_peft_to_gguf_bytes(model, path)?;
            Gguf::from_bytes(bytes)?
        } else {
            Gguf::open(path)?
        };
        let mut a = Self::from_gguf(model, Arc::new(gguf), name)?;
        a.path = Some(path.to_path_buf());
        Ok(Arc::new(a))
    }

    /// Builds an adapter from an opened GGUF file.
    pub fn from_gguf(model: &Model, g: Arc<Gguf>, name: String) -> Result<Adapter> {
        let header = Header::read(model, &g)?;
        let mut b = Builder::new(model, g.clone(), header.kind)?;
        match header.kind {
            AdapterKind::Lora => lora::load(&mut b, &g)?,
            AdapterKind::Diablo => diablo::load(&mut b, &g)?,
            AdapterKind::Wegeft => wegeft::load(&mut b, &g)?,
            AdapterKind::Lopa => b.lopa = Some(lopa::Lopa::load(model, &g)?),
        }
        b.finish(name, header)
    }

    /// The name it is registered under (default: the file stem).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Kind.
    pub fn kind(&self) -> AdapterKind {
        self.kind
    }

    /// The file it came from.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// `adapter.description` / `general.name`, if any.
    pub fn description(&self) -> Option<&str> {
        self.description.as_deref()
    }

    /// The fingerprint of the base model this adapter was validated against.
    pub fn base_fingerprint(&self) -> &str {
        &self.base_fingerprint
    }

    /// The quantization of the base file the adapter was made over, when the file records it
    /// (graft writes it; llama.cpp's LoRA files do not).
    pub fn base_quantization(&self) -> Option<&str> {
        self.base_quantization.as_deref()
    }

    /// A note for the user when the adapter was made over another quantization of this base
    /// (it loads: the base model is the same; outputs differ as much as the two files do).
    pub fn quantization_note(&self, model: &Model) -> Option<String> {
        let made = self.base_quantization()?;
        (made != model.quantization()).then(|| {
            format!(
                "adapter {} was made over the {made} file of this model; this base file is {}",
                self.name,
                model.quantization()
            )
        })
    }

    /// Bytes of adapter tensor data.
    pub fn n_bytes(&self) -> usize {
        self.n_bytes
    }

    /// The largest rank (LoRA/WeGeFT), block count (DiaBlo) or virtual tokens (LoPA).
    pub fn rank(&self) -> usize {
        self.rank
    }

    /// Targets this adapter modifies.
    pub fn targets(&self) -> Vec<Target> {
        self.deltas
            .iter()
            .enumerate()
            .filter(|(_, d)| !d.is_empty())
            .map(|(i, _)| Target {
                layer: i / 7,
                kind: TargetKind::ALL[i % 7],
            })
            .collect()
    }

    pub(crate) fn deltas(&self, t: Target) -> &[Delta] {
        self.deltas
            .get(t.layer * 7 + t.kind.index())
            .map_or(&[], |v| v.as_slice())
    }

    /// For a LoPA adapter, its soft prompt (m rows of `n_embd`) for `prompt` at `s_user`.
    pub fn soft_prompt(
        &self,
        model: &Model,
        prompt: &[u32],
        s_user: f32,
    ) -> Result<Option<Vec<f32>>> {
        let Some(l) = &self.lopa else { return Ok(None) };
        let e = lopa::mean_embedding(model, prompt)?;
        Ok(Some(l.soft_prompt(&e, s_user)))
    }

    pub(crate) fn lopa(&self) -> Option<&lopa::Lopa> {
        self.lopa.as_ref()
    }

    pub(crate) fn t(&self, id: TensorId) -> Tensor<'_> {
        self.ctx.get(id).expect("adapter tensor of this adapter")
    }

    /// Tensor `id` as graphs on `device` read it: its copy there when the adapter is resident
    /// on that device (see [`Adapter::upload_to`]), else the host tensor.
    pub(crate) fn t_on(&self, id: TensorId, device: Option<&str>) -> Tensor<'_> {
        device
            .and_then(|d| self.devices.get(d, id))
            .unwrap_or_else(|| self.t(id))
    }

    /// Makes the adapter resident on `backend`'s device `device` (once per device; the copy is
    /// freed with the adapter). Returns the bytes uploaded.
    pub(crate) fn upload_to(&self, device: &str, backend: &Backend) -> Result<u64> {
        self.devices.upload(self, device, backend)
    }

    /// Host copy of one of this adapter's tensors as f32 (merge and export).
    pub(crate) fn tensor_f32(&self, id: TensorId) -> Result<Vec<f32>> {
        let t = self.t(id);
        let mut bytes = vec![0u8; t.nbytes()];
        t.read_bytes(0, &mut bytes)?;
        Ok(graft_ggml::dequantize(
            t.ty(),
            &bytes,
            t.nelements() as usize,
        )?)
    }
}

/// The adapter's tensors, without the `train.*` training state (optimizer moments...) that
/// inference ignores.
/// What [`strip_train_state`] removed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stripped {
    /// Tensors removed (optimizer moments, GaLore state).
    pub tensors: usize,
    /// Metadata keys removed (`train.*`).
    pub keys: usize,
    /// File sizes before and after.
    pub bytes_before: u64,
    /// The new file's size.
    pub bytes_after: u64,
}

/// Writes a copy of the adapter at `src` without its training state (`train.*` tensors and
/// keys: Adam moments, GaLore projections, step and data cursor) to `dst`, atomically: the
/// file to ship. It loads and runs the same; training it further starts a new optimizer.
pub fn strip_train_state(src: &Path, dst: &Path) -> Result<Stripped> {
    let g = Gguf::open(src)?;
    if let kind @ (FileKind::Model(_) | FileKind::Other(_)) = FileKind::of(&g) {
        return Err(Error::WrongFileKind {
            found: kind.to_string(),
            expected: "an adapter",
        });
    }
    let mut w = graft_formats::GgufWriter::new();
    let mut keys = 0;
    for (k, v) in g.metadata() {
        if k.starts_with("train.") {
            keys += 1;
        } else {
            w.add_kv(k.clone(), v.clone());
        }
    }
    for t in model_tensors(&g) {
        w.add_tensor(t.name.clone(), t.dtype, &t.dims, g.tensor_data(t))?;
    }
    let tensors = g.tensors().len() - model_tensors(&g).count();
    w.write_atomic(dst)?;
    let size = |p: &Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    Ok(Stripped {
        tensors,
        keys,
        bytes_before: g.as_bytes().len() as u64,
        bytes_after: size(dst),
    })
}

pub(crate) fn model_tensors(g: &Gguf) -> impl Iterator<Item = &TensorInfo> {
    g.tensors().iter().filter(|t| !t.name.starts_with("train."))
}

/// The metadata every adapter file carries.
pub(crate) struct Header {
    pub kind: AdapterKind,
    pub description: Option<String>,
    /// `adapter.base.quantization`: the base file's quantization it was made over.
    pub base_quantization: Option<String>,
}

impl Header {
    fn read(model: &Model, g: &Gguf) -> Result<Self> {
        let bad = |msg: String| Error::InvalidAdapter(msg);
        match g.get_opt_str("general.type")? {
            Some("adapter") => {}
            Some(other) => {
                return Err(bad(format!(
                    "general.type is {other:?}, not \"adapter\" (is this a model file?)"
                )))
            }
            None => return Err(bad("general.type is missing (not an adapter file)".into())),
        }
        let arch = g.get_str("general.architecture")?;
        let base_arch = model.config().arch.name();
        if arch != base_arch {
            return Err(bad(format!(
                "the adapter is for architecture {arch:?}, the base model is {base_arch:?}"
            )));
        }
        if let Some(fp) = g.get_opt_str("adapter.base.fingerprint")? {
            if !model.matches_fingerprint(fp) {
                return Err(Error::WrongBase {
                    adapter: fp.to_string(),
                    base: model.fingerprint().to_string(),
                });
            }
        }
        let base_quantization = g
            .get_opt_str("adapter.base.quantization")?
            .map(str::to_string);
        let kind_s = g.get_str("adapter.type")?;
        let kind = AdapterKind::parse(kind_s).ok_or_else(|| {
            bad(format!(
                "adapter.type {kind_s:?} is not one of lora, diablo, wegeft, lopa"
            ))
        })?;
        let description = match g.get_opt_str("adapter.description")? {
            Some(d) => Some(d.to_string()),
            None => g.get_opt_str("general.name")?.map(str::to_string),
        };
        Ok(Self {
            kind,
            description,
            base_quantization,
        })
    }
}

/// Host memory of an opened adapter file, for a zero-copy buffer.
struct MappedAdapter(Arc<Gguf>);

impl HostMemory for MappedAdapter {
    fn bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

/// Collects an adapter's tensors: stored ones are placed in place over the file map (when it
/// is aligned), derived ones (transposes) go into an owned buffer.
pub(crate) struct Builder<'m> {
    pub model: &'m Model,
    g: Arc<Gguf>,
    kind: AdapterKind,
    ctx: Context,
    mapped: Vec<(TensorId, usize)>,
    owned: Vec<(TensorId, Vec<u8>)>,
    pub deltas: Vec<Vec<Delta>>,
    pub lopa: Option<lopa::Lopa>,
    pub rank: usize,
    n_bytes: usize,
}

impl<'m> Builder<'m> {
    fn new(model: &'m Model, g: Arc<Gguf>, kind: AdapterKind) -> Result<Self> {
        let n = g.tensors().len();
        Ok(Self {
            model,
            kind,
            ctx: Context::new(2 * n + 8, 0)?,
            g,
            mapped: Vec::new(),
            owned: Vec::new(),
            deltas: vec![Vec::new(); model.config().n_layer * 7],
            lopa: None,
            rank: 0,
            n_bytes: 0,
        })
    }

    /// Declares a stored tensor (after its shape and type were validated).
    pub fn stored(&mut self, info: &TensorInfo) -> TensorId {
        let ne: Vec<i64> = info.dims.iter().map(|&d| d as i64).collect();
        let t = self
            .ctx
            .new_tensor(Type(info.dtype.id()), &ne)
            .set_name(&info.name);
        self.mapped.push((t.id(), info.abs_offset as usize));
        self.n_bytes += info.n_bytes as usize;
        t.id()
    }

    /// The stored bytes of a tensor of this file.
    pub fn tensor_bytes(&self, info: &TensorInfo) -> &[u8] {
        self.g.tensor_data(info)
    }

    /// Declares a derived f32 tensor with its values.
    pub fn derived(&mut self, name: &str, ne: &[i64], values: &[f32]) -> TensorId {
        let t = self.ctx.new_tensor(Type::F32, ne).set_name(name);
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.n_bytes += bytes.len();
        self.owned.push((t.id(), bytes));
        t.id()
    }

    pub fn push(&mut self, t: Target, d: Delta) -> Result<()> {
        if t.layer >= self.model.config().n_layer {
            return Err(Error::InvalidAdapter(format!(
                "{} targets layer {}, but the base has {} layers",
                t.tensor_name(),
                t.layer,
                self.model.config().n_layer
            )));
        }
        self.deltas[t.layer * 7 + t.kind.index()].push(d);
        Ok(())
    }

    fn finish(self, name: String, header: Header) -> Result<Adapter> {
        let self_fp = self.model.fingerprint().to_string();
        let Builder {
            g,
            kind,
            ctx,
            mapped,
            owned,
            deltas,
            lopa,
            rank,
            n_bytes,
            ..
        } = self;
        let mut buffers = Vec::new();
        // Stored tensors are used in place over the file map when it is aligned (a file);
        // otherwise (an in-memory conversion) they are copied like derived ones.
        let mut copies: Vec<(TensorId, &[u8])> = Vec::new();
        if !mapped.is_empty() {
            match Buffer::from_host(Arc::new(MappedAdapter(g.clone()))) {
                Ok(buf) => {
                    for (id, off) in &mapped {
                        buf.place(ctx.get(*id).expect("own tensor"), *off)?;
                    }
                    buffers.push(buf);
                }
                Err(_) => {
                    for (id, off) in &mapped {
                        let n = ctx.get(*id).expect("own tensor").nbytes();
                        copies.push((*id, &g.as_bytes()[*off..*off + n]));
                    }
                }
            }
        }
        copies.extend(owned.iter().map(|(id, b)| (*id, b.as_slice())));
        if !copies.is_empty() {
            // Allocates every tensor not yet placed (derived ones, and copies).
            let backend = Backend::cpu(1)?;
            let buf = backend.alloc_ctx_tensors(&ctx)?;
            for (id, bytes) in copies {
                ctx.get(id).expect("own tensor").write_bytes(0, bytes)?;
            }
            buffers.push(buf);
        }
        Ok(Adapter {
            name,
            path: None,
            kind,
            description: header.description,
            deltas,
            lopa,
            ctx: FrozenContext::new(ctx),
            _buffers: buffers,
            devices: Default::default(),
            n_bytes,
            rank,
            base_fingerprint: self_fp,
            base_quantization: header.base_quantization,
        })
    }
}
