//! The `train.*` keys of an adapter file: what `--resume` needs to continue exactly.

use graft_formats::{Gguf, GgufWriter, Value};

use super::TrainConfig;
use crate::error::{Error, Result};

/// Step count, data cursor and loss scale.
#[derive(Clone, Debug, PartialEq)]
pub struct TrainState {
    /// Optimizer steps done.
    pub step: usize,
    /// Examples consumed from the data stream (across epochs).
    pub cursor: u64,
    /// The loss scale of the backward pass (starts at [`super::LOSS_SCALE`], divided by 8
    /// whenever a scaled backward pass overflows).
    pub loss_scale: f32,
}

impl Default for TrainState {
    fn default() -> Self {
        Self {
            step: 0,
            cursor: 0,
            loss_scale: super::LOSS_SCALE,
        }
    }
}

impl TrainState {
    pub(crate) fn read(g: &Gguf) -> Result<Self> {
        Ok(Self {
            step: g.get_u64_or("train.step", 0)? as usize,
            cursor: g.get_u64_or("train.cursor", 0)?,
            loss_scale: g.get_f32_or("train.loss_scale", super::LOSS_SCALE)?,
        })
    }

    pub(crate) fn write(&self, w: &mut GgufWriter<'_>, cfg: &TrainConfig) {
        w.add_kv("train.step", Value::U64(self.step as u64));
        w.add_kv("train.cursor", Value::U64(self.cursor));
        w.add_kv("train.loss_scale", Value::F32(self.loss_scale));
        w.add_kv("train.lr", Value::F32(cfg.lr));
        w.add_kv("train.seed", Value::U64(cfg.seed));
        w.add_kv("train.ctx", Value::U64(cfg.ctx as u64));
        w.add_kv("train.batch", Value::U64(cfg.batch as u64));
        w.add_kv("train.dropout", Value::F32(cfg.dropout));
    }
}

/// An Adam moment tensor `train.<which>.<name>` (zeros when absent: a fresh adapter).
pub(crate) fn moment(g: &Gguf, which: &str, name: &str, n: usize) -> Result<Vec<f32>> {
    let key = format!("train.{which}.{name}");
    match f32_tensor(g, &key)? {
        None => Ok(vec![0.0; n]),
        Some(v) if v.len() == n => Ok(v),
        Some(v) => Err(Error::InvalidAdapter(format!(
            "{key} has {} values, expected {n}",
            v.len()
        ))),
    }
}

/// The values of the f32 training-state tensor `key`, if the file has it.
pub(crate) fn f32_tensor(g: &Gguf, key: &str) -> Result<Option<Vec<f32>>> {
    match g.tensor(key) {
        None => Ok(None),
        Some(t) if t.dtype == graft_formats::GgmlType::F32 => Ok(Some(graft_ggml::dequantize(
            graft_ggml::Type::F32,
            g.tensor_data(t),
            t.n_elements() as usize,
        )?)),
        Some(t) => Err(Error::InvalidAdapter(format!(
            "{key} has type {:?}, expected f32",
            t.dtype
        ))),
    }
}
