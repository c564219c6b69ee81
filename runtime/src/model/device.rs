//! Tensors copied to a device (a GPU through graft's wgpu backend or ggml's CUDA, Metal,
//! Vulkan): the base model's weights, uploaded once per device and shared by every session on
//! it, and (adapter/device.rs) each adapter's graph tensors. Switching adapters never touches
//! the base.

use std::collections::HashMap;
use std::sync::Arc;

use graft_ggml::{Backend, Buffer, Context, FrozenContext, Tensor, TensorId};

use super::Model;
use crate::error::{Error, Result};

/// Copies of host tensors in one device buffer (same names, types and shapes), found by the
/// handle of the host tensor they copy. The buffer is marked as holding weights, so ggml's
/// scheduler runs the ops that read them on the device.
pub(crate) struct DeviceCopy {
    // Drop order: metadata before the buffer holding the data.
    ctx: FrozenContext,
    map: HashMap<TensorId, TensorId>,
    _buffer: Buffer,
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
        let ctx = Context::new(tensors.len() + 1, 0)?;
        let mut pairs = Vec::with_capacity(tensors.len());
        for (id, host) in tensors {
            let dev = ctx.new_tensor(host.ty(), &host.ne()).set_name(&host.name());
            pairs.push((*id, *host, dev.id()));
        }
        let buffer = backend
            .alloc_weights(&ctx)
            .map_err(|e| too_big(e.to_string()))?;
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
    /// Uploads every weight of `model` to `backend`'s device.
    pub(crate) fn upload(model: &Model, backend: &Backend) -> Result<Self> {
        let tensors: Vec<_> = model
            .weight_ids()
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

    /// The device tensor copying host weight `id`.
    pub(crate) fn get(&self, id: TensorId) -> Tensor<'_> {
        self.0
            .get(id)
            .expect("every weight of the model has a device copy")
    }
}

/// Device copies of one model, by device name, made on first use.
#[derive(Default)]
pub(crate) struct DeviceCopies(std::sync::Mutex<HashMap<String, Arc<DeviceWeights>>>);

impl DeviceCopies {
    /// The copy on `backend`'s device `name`, uploading it the first time.
    pub(crate) fn get(
        &self,
        model: &Model,
        name: &str,
        backend: &Backend,
    ) -> Result<Arc<DeviceWeights>> {
        let mut copies = self
            .0
            .lock()
            .map_err(|_| Error::InvalidRequest("device weight cache poisoned".into()))?;
        if let Some(w) = copies.get(name) {
            return Ok(w.clone());
        }
        let w = Arc::new(DeviceWeights::upload(model, backend)?);
        copies.insert(name.to_string(), w.clone());
        Ok(w)
    }
}
