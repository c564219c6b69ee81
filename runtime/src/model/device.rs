//! The base model's weights on a device (a GPU through graft's wgpu backend or ggml's CUDA,
//! Metal, Vulkan): uploaded once per device, tensor by tensor straight from the memory map,
//! and shared by every session on that device. Switching adapters never touches them.

use std::collections::HashMap;
use std::sync::Arc;

use graft_ggml::{Backend, Buffer, Context, FrozenContext, Tensor, TensorId};

use super::Model;
use crate::error::{Error, Result};

/// A device copy of a model's weights: the same tensors (names, types, shapes) in a device
/// buffer, found by the handle of the host tensor they copy.
pub(crate) struct DeviceWeights {
    // Drop order: metadata before the buffer holding the data.
    ctx: FrozenContext,
    map: HashMap<TensorId, TensorId>,
    _buffer: Buffer,
}

impl DeviceWeights {
    /// Uploads every weight of `model` to `backend`'s device.
    pub(crate) fn upload(model: &Model, backend: &Backend) -> Result<Self> {
        let ids = model.weight_ids();
        let ctx = Context::new(ids.len() + 1, 0)?;
        let mut pairs = Vec::with_capacity(ids.len());
        for &id in &ids {
            let host = model.w(id);
            let dev = ctx.new_tensor(host.ty(), &host.ne()).set_name(&host.name());
            pairs.push((id, dev.id()));
        }
        let buffer = backend.alloc_weights(&ctx).map_err(|e| {
            Error::InvalidRequest(format!(
                "the model's {} MB of weights do not fit on device {} ({e})",
                model.weight_bytes() >> 20,
                backend.device_description()
            ))
        })?;
        let mut map = HashMap::with_capacity(pairs.len());
        for (host, dev) in pairs {
            let name = model.w(host).name();
            let bytes = model.tensor_bytes(&name)?;
            ctx.get(dev)
                .expect("a tensor of this context")
                .write_bytes(0, bytes)?;
            map.insert(host, dev);
        }
        Ok(Self {
            ctx: FrozenContext::new(ctx),
            map,
            _buffer: buffer,
        })
    }

    /// The device tensor copying host weight `id`.
    pub(crate) fn get(&self, id: TensorId) -> Tensor<'_> {
        self.map
            .get(&id)
            .and_then(|&d| self.ctx.get(d))
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
