//! Tensors copied to a device (a GPU through graft's wgpu backend or ggml's CUDA, Metal,
//! Vulkan): the base model's weights, uploaded once per device and shared by every session on
//! it, and (adapter/device.rs) each adapter's graph tensors. Switching adapters never touches
//! the base. Also the CPU's repacked copy of the weights ggml has repacked kernels for
//! ([`DeviceWeights::repack_cpu`]), made once per model and shared the same way.

use std::collections::HashMap;
use std::sync::Arc;

use graft_ggml::{Backend, Buffer, Context, CpuRepack, FrozenContext, Tensor, TensorId};

use super::Model;
use crate::error::{Error, Result};

/// Copies of host tensors in one device buffer (same names, types and shapes), found by the
/// handle of the host tensor they copy. The buffer is marked as holding weights, so ggml's
/// scheduler runs the ops that read them on the device.
pub(crate) struct DeviceCopy {
    // Drop order: metadata before the buffer holding the data.
    ctx: FrozenContext,
    map: HashMap<TensorId, TensorId>,
    _buffer: Option<Buffer>,
    /// Bytes uploaded.
    pub bytes: u64,
}

impl DeviceCopy {
    /// Uploads `tensors` (host handle and tensor) to `backend`'s device; `too_big` makes the
    /// error when they do not fit.
    pub(crate) fn upload<'t>(
        tensors: &[(TensorId, Tensor<'t>)],
        backend: &Backend,
        too_big: impl FnOnce(String) -> Error,
    ) -> Result<Self> {
        Self::copy(tensors, |ctx| {
            backend
                .alloc_weights(ctx)
                .map_err(|e| too_big(e.to_string()))
        })
    }

    /// Copies `tensors` into one buffer that `alloc` makes for a context of their copies
    /// (none for no tensors).
    fn copy<'t>(
        tensors: &[(TensorId, Tensor<'t>)],
        alloc: impl FnOnce(&Context) -> Result<Buffer>,
    ) -> Result<Self> {
        let ctx = Context::new(tensors.len() + 1, 0)?;
        let mut pairs = Vec::with_capacity(tensors.len());
        for (id, host) in tensors {
            let dev = ctx.new_tensor(host.ty(), &host.ne()).set_name(&host.name());
            pairs.push((*id, *host, dev.id()));
        }
        let buffer = if pairs.is_empty() {
            None
        } else {
            Some(alloc(&ctx)?)
        };
        let mut map = HashMap::with_capacity(pairs.len());
        let mut staging = Vec::new();
        let mut bytes = 0u64;
        for (id, host, dev) in pairs {
            staging.resize(host.nbytes(), 0);
            host.read_bytes(0, &mut staging)?;
            ctx.get(dev)
                .expect("a tensor of this context")
                .write_bytes(0, &staging)?;
            bytes += staging.len() as u64;
            map.insert(id, dev);
        }
        Ok(Self {
            ctx: FrozenContext::new(ctx),
            map,
            _buffer: buffer,
            bytes,
        })
    }

    /// The device copy of host tensor `id`, if it was uploaded.
    pub(crate) fn get(&self, id: TensorId) -> Option<Tensor<'_>> {
        self.ctx.get(*self.map.get(&id)?)
    }
}

/// A device copy of a model's weights.
pub(crate) struct DeviceWeights(DeviceCopy);

impl DeviceWeights {
    /// Uploads the weights of `model` that `gpu_layers` places on a device (every weight for
    /// `None`; see [`Model::offloaded_weight_ids`]) to `backend`'s device.
    pub(crate) fn upload(
        model: &Model,
        backend: &Backend,
        gpu_layers: Option<usize>,
    ) -> Result<Self> {
        let tensors: Vec<_> = model
            .offloaded_weight_ids(gpu_layers)
            .into_iter()
            .map(|id| (id, model.w(id)))
            .collect();
        DeviceCopy::upload(&tensors, backend, |e| {
            Error::InvalidRequest(format!(
                "the model's {} MB of weights do not fit on device {} ({e})",
                model.weight_bytes() >> 20,
                backend.device_description()
            ))
        })
        .map(Self)
    }

    /// A copy, in ggml's `CPU_REPACK` buffer type, of the weights that only `mul_mat` reads
    /// (the layers' projections; the output matrix unless it is the token embeddings) and that
    /// this CPU has repacked kernels for; the others stay in the map. Once copied, their pages
    /// of the map leave the resident set (the CPU graphs read the copy). No copy (an empty one)
    /// when ggml lacks the buffer type or no weight qualifies, e.g. Q4_1 and Q8_0 on x86.
    pub(crate) fn repack_cpu(model: &Model) -> Result<Self> {
        let repack = CpuRepack::get();
        let mut ids = Vec::new();
        if model.output != model.tok_embd {
            ids.push(model.output);
        }
        for l in &model.layers {
            ids.extend([l.wq, l.wk, l.wv, l.wo, l.ffn_gate, l.ffn_up, l.ffn_down]);
        }
        let tensors: Vec<_> = ids
            .into_iter()
            .map(|id| (id, model.w(id)))
            .filter(|(_, t)| {
                let ne = t.ne();
                repack
                    .is_some_and(|r| ne[2] == 1 && ne[3] == 1 && r.supports(t.ty(), [ne[0], ne[1]]))
            })
            .collect();
        // (Without the buffer type no tensor qualifies, and `copy` allocates nothing.)
        let copy = DeviceCopy::copy(&tensors, |ctx| match repack {
            Some(r) => Ok(r.alloc(ctx)?),
            None => Err(Error::InvalidRequest(
                "ggml has no CPU_REPACK buffer type".into(),
            )),
        })?;
        for (_, t) in &tensors {
            if let Some(info) = model.gguf.tensor(&t.name()) {
                model.gguf.release_pages(info);
            }
        }
        Ok(Self(copy))
    }

    /// How many weights this copy holds.
    pub(crate) fn len(&self) -> usize {
        self.0.map.len()
    }

    /// The copy of host weight `id`; `None` for a weight this copy does not hold (a partial
    /// copy, [`DeviceWeights::repack_cpu`]), which graphs then read from the map.
    pub(crate) fn get(&self, id: TensorId) -> Option<Tensor<'_>> {
        self.0.get(id)
    }
}

/// Device copies of one model, by device name, made on first use.
#[derive(Default)]
pub(crate) struct DeviceCopies(std::sync::Mutex<HashMap<String, Arc<DeviceWeights>>>);

impl DeviceCopies {
    /// The copy on `backend`'s device `name` of the weights `gpu_layers` places there,
    /// uploading it the first time.
    pub(crate) fn get(
        &self,
        model: &Model,
        name: &str,
        backend: &Backend,
        gpu_layers: Option<usize>,
    ) -> Result<Arc<DeviceWeights>> {
        let n_layer = model.layers.len();
        let key = match gpu_layers {
            Some(n) if n <= n_layer => format!("{name} (last {n} layers)"),
            _ => name.to_string(),
        };
        self.get_or_make(&key, || DeviceWeights::upload(model, backend, gpu_layers))
    }

    /// The CPU's repacked copy ([`DeviceWeights::repack_cpu`]), made the first time.
    pub(crate) fn cpu_repacked(&self, model: &Model) -> Result<Arc<DeviceWeights>> {
        self.get_or_make("CPU_REPACK", || DeviceWeights::repack_cpu(model))
    }

    fn get_or_make(
        &self,
        name: &str,
        make: impl FnOnce() -> Result<DeviceWeights>,
    ) -> Result<Arc<DeviceWeights>> {
        let mut copies = self
            .0
            .lock()
            .map_err(|_| Error::InvalidRequest("device weight cache poisoned".into()))?;
        if let Some(w) = copies.get(name) {
            return Ok(w.clone());
        }
        let w = Arc::new(make()?);
        copies.insert(name.to_string(), w.clone());
        Ok(w)
    }
}
