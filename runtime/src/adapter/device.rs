//! An adapter's tensors on a device: uploaded the first time a session on that device activates
//! the adapter, kept while the adapter lives (freed with it), and shared by every session on
//! the device. The base weights are never involved: switching adapters moves adapter bytes only.

use std::sync::{Mutex, OnceLock};

use graft_ggml::{Backend, Tensor, TensorId};

use super::{Adapter, Delta};
use crate::error::{Error, Result};
use crate::model::device::DeviceCopy;

/// Devices one adapter can be resident on at once; on more, the others read it from host
/// memory (the scheduler copies what an op on the device needs).
const SLOTS: usize = 4;

/// Copies of one adapter's graph tensors on up to [`SLOTS`] devices. Slots are filled once and
/// never emptied, so a tensor borrowed from one lives as long as the adapter.
#[derive(Default)]
pub(crate) struct AdapterDevices {
    slots: [OnceLock<OnDevice>; SLOTS],
    upload: Mutex<()>,
}

struct OnDevice {
    device: String,
    copy: DeviceCopy,
}

impl AdapterDevices {
    fn find(&self, device: &str) -> Option<&OnDevice> {
        self.slots
            .iter()
            .filter_map(OnceLock::get)
            .find(|d| d.device == device)
    }

    /// The device copy of host tensor `id` on `device`, if the adapter is resident there.
    pub(crate) fn get(&self, device: &str, id: TensorId) -> Option<Tensor<'_>> {
        self.find(device)?.copy.get(id)
    }

    /// Makes `adapter` resident on `backend`'s device `device` (once; later calls return at
    /// once). Returns the bytes uploaded (0 when already there or when every slot is taken).
    pub(crate) fn upload(&self, adapter: &Adapter, device: &str, backend: &Backend) -> Result<u64> {
        if self.find(device).is_some() {
            return Ok(0);
        }
        let _one_at_a_time = self
            .upload
            .lock()
            .map_err(|_| Error::InvalidRequest("adapter upload lock poisoned".into()))?;
        if self.find(device).is_some() {
            return Ok(0);
        }
        let Some(slot) = self.slots.iter().find(|s| s.get().is_none()) else {
            return Ok(0);
        };
        let ids = graph_tensors(adapter);
        if ids.is_empty() {
            return Ok(0); // LoPA: nothing of it enters the graph
        }
        let tensors: Vec<_> = ids.into_iter().map(|id| (id, adapter.t(id))).collect();
        let copy = DeviceCopy::upload(&tensors, backend, |e| {
            Error::InvalidRequest(format!(
                "adapter {} ({} bytes) does not fit on device {} ({e})",
                adapter.name(),
                adapter.n_bytes(),
                backend.device_description()
            ))
        })?;
        let uploaded = copy.bytes;
        // Only this thread fills slots (the lock above), and this one was empty.
        let _ = slot.set(OnDevice {
            device: device.to_string(),
            copy,
        });
        Ok(uploaded)
    }
}

/// The tensors an adapter's deltas put in forward graphs (LoPA's encoder runs on the host).
fn graph_tensors(adapter: &Adapter) -> Vec<TensorId> {
    let mut ids = Vec::new();
    for d in adapter.deltas.iter().flatten() {
        match *d {
            Delta::Lora { a, b, .. } => ids.extend([a, b]),
            Delta::Diablo { d, .. } => ids.push(d),
            Delta::Wegeft { phi_t, psi, .. } => ids.extend([phi_t, psi]),
        }
    }
    let mut seen = std::collections::HashSet::new();
    ids.retain(|id| seen.insert(*id));
    ids
}
