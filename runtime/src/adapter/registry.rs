//! The adapter registry: adapters loaded once per base model, shared by every session, with
//! limits and a load policy. Loading validates and builds outside the lock; only a complete
//! adapter is ever inserted, so a failed load leaves the registry unchanged.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, RwLock};

use super::{ActiveAdapters, Adapter, AdapterKind};
use crate::error::{Error, Result};
use crate::model::Model;

/// Registry limits.
#[derive(Clone, Debug)]
pub struct RegistryLimits {
    /// Most adapters loaded at once.
    pub max_adapters: usize,
    /// Most bytes of adapter tensors loaded at once.
    pub max_bytes: usize,
    /// Largest rank (LoRA/WeGeFT), block count (DiaBlo) or virtual tokens (LoPA) accepted.
    pub max_rank: usize,
}

impl Default for RegistryLimits {
    fn default() -> Self {
        Self {
            max_adapters: 256,
            max_bytes: 4 << 30,
            max_rank: 4096,
        }
    }
}

/// What to do when the name is taken.
#[derive(Clone, Debug)]
pub enum LoadPolicy {
    /// Fail if the name is taken.
    Create,
    /// Replace whatever is there (sessions holding the old one keep it until they drop it).
    Replace,
    /// Replace only if the current adapter is this one (optimistic concurrency).
    CompareAndSwap(Arc<Adapter>),
}

/// A summary of one loaded adapter.
#[derive(Clone, Debug, serde::Serialize)]
pub struct AdapterInfo {
    /// Registered name.
    pub name: String,
    /// `lora`, `diablo`, `wegeft` or `lopa`.
    pub kind: &'static str,
    /// Source file.
    pub path: Option<String>,
    /// Tensor bytes.
    pub bytes: usize,
    /// Rank / blocks / virtual tokens.
    pub rank: usize,
    /// Number of targeted linear layers.
    pub targets: usize,
}

/// Adapters loaded for one base model.
pub struct AdapterRegistry {
    model: Arc<Model>,
    limits: RegistryLimits,
    inner: RwLock<BTreeMap<String, Arc<Adapter>>>,
}

impl AdapterRegistry {
    /// An empty registry for `model` with default limits.
    pub fn new(model: Arc<Model>) -> Self {
        Self::with_limits(model, RegistryLimits::default())
    }

    /// An empty registry with `limits`.
    pub fn with_limits(model: Arc<Model>, limits: RegistryLimits) -> Self {
        Self {
            model,
            limits,
            inner: RwLock::new(BTreeMap::new()),
        }
    }

    /// The base model.
    pub fn model(&self) -> &Arc<Model> {
        &self.model
    }

    /// Loads the adapter at `path` under `name`.
    pub fn load(
        &self,
        name: &str,
        path: impl AsRef<Path>,
        policy: LoadPolicy,
    ) -> Result<Arc<Adapter>> {
        if name.is_empty() || name.len() > 256 {
            return Err(Error::Registry(format!(
                "adapter name {name:?} must be 1 to 256 bytes"
            )));
        }
        if matches!(policy, LoadPolicy::Create) && self.get(name).is_some() {
            return Err(Error::Registry(format!(
                "an adapter named {name:?} is already loaded"
            )));
        }
        let mut a = Adapter::load(&self.model, path)?;
        Arc::get_mut(&mut a)
            .expect("freshly loaded adapter is unshared")
            .name = name.to_string();
        self.insert(a, policy)
    }

    /// Inserts an already built adapter under its name.
    pub fn insert(&self, adapter: Arc<Adapter>, policy: LoadPolicy) -> Result<Arc<Adapter>> {
        if adapter.base_fingerprint() != self.model.fingerprint() {
            return Err(Error::InvalidAdapter(format!(
                "adapter {} was loaded for another base model",
                adapter.name()
            )));
        }
        if adapter.rank() > self.limits.max_rank {
            return Err(Error::Registry(format!(
                "adapter {} has rank {} > the limit {}",
                adapter.name(),
                adapter.rank(),
                self.limits.max_rank
            )));
        }
        let mut map = self.inner.write().unwrap_or_else(|e| e.into_inner());
        let name = adapter.name().to_string();
        let old = map.get(&name).cloned();
        match (&policy, &old) {
            (LoadPolicy::Create, Some(_)) => {
                return Err(Error::Registry(format!(
                    "an adapter named {name:?} is already loaded"
                )))
            }
            (LoadPolicy::CompareAndSwap(expected), cur)
                if !cur.as_ref().is_some_and(|c| Arc::ptr_eq(c, expected)) =>
            {
                return Err(Error::Registry(format!(
                    "compare-and-swap on {name:?} failed: the loaded adapter changed"
                )));
            }
            _ => {}
        }
        let others: usize = map
            .iter()
            .filter(|(n, _)| **n != name)
            .map(|(_, a)| a.n_bytes())
            .sum();
        let count = map.len() + usize::from(old.is_none());
        if count > self.limits.max_adapters {
            return Err(Error::Registry(format!(
                "{} adapters are loaded, the limit is {}",
                map.len(),
                self.limits.max_adapters
            )));
        }
        if others + adapter.n_bytes() > self.limits.max_bytes {
            return Err(Error::Registry(format!(
                "loading {name:?} ({} bytes) would exceed the limit of {} bytes",
                adapter.n_bytes(),
                self.limits.max_bytes
            )));
        }
        map.insert(name, adapter.clone());
        Ok(adapter)
    }

    /// The adapter called `name`.
    pub fn get(&self, name: &str) -> Option<Arc<Adapter>> {
        self.inner
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .cloned()
    }

    /// Removes `name`; sessions using it keep it alive until they switch away.
    pub fn unload(&self, name: &str) -> Result<Arc<Adapter>> {
        self.inner
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(name)
            .ok_or_else(|| Error::Registry(format!("no adapter named {name:?} is loaded")))
    }

    /// Every loaded adapter.
    pub fn list(&self) -> Vec<AdapterInfo> {
        self.inner
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .map(|a| AdapterInfo {
                name: a.name().to_string(),
                kind: a.kind().name(),
                path: a.path().map(|p| p.display().to_string()),
                bytes: a.n_bytes(),
                rank: a.rank(),
                targets: a.targets().len(),
            })
            .collect()
    }

    /// Builds an active set from `(name, scale)` pairs.
    pub fn active(&self, spec: &[(&str, f32)]) -> Result<ActiveAdapters> {
        let mut set = ActiveAdapters::none();
        for (name, s) in spec {
            if !s.is_finite() {
                return Err(Error::InvalidRequest(format!(
                    "scale {s} for adapter {name:?} is not finite"
                )));
            }
            let a = self
                .get(name)
                .ok_or_else(|| Error::Registry(format!("no adapter named {name:?} is loaded")))?;
            set.set(a, *s);
        }
        Ok(set)
    }
}

impl AdapterKind {
    /// Every kind.
    pub const ALL: [AdapterKind; 4] = [
        AdapterKind::Lora,
        AdapterKind::Diablo,
        AdapterKind::Wegeft,
        AdapterKind::Lopa,
    ];
}
