//! Adapters of a directory, loaded on first use and kept in a least-recently-used cache bounded
//! by bytes: what a server needs to answer requests that name any of many adapters.
//!
//! An adapter is the file `DIR/<name>.gguf`. A file added to the directory is found on its
//! first request; a file that changed (size or modification time) is loaded again for new
//! requests, while requests already running keep the version they started with (they hold an
//! `Arc` to it). Eviction only takes adapters no running request holds, so the cache may exceed
//! its bound while every cached adapter is in use.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use super::Adapter;
use crate::error::{Error, Result};
use crate::model::{FileKind, Model};

/// Counters for `/metrics`.
#[derive(Default, Debug)]
pub struct CacheStats {
    /// Requests served from the cache.
    pub hits: AtomicU64,
    /// Requests that loaded the adapter.
    pub misses: AtomicU64,
    /// Adapters evicted to stay under the bound.
    pub evictions: AtomicU64,
    /// Adapters loaded again because their file changed.
    pub reloads: AtomicU64,
    /// Microseconds spent loading.
    pub load_us: AtomicU64,
}

struct Entry {
    adapter: Arc<Adapter>,
    stamp: (u64, Option<SystemTime>),
    last_used: u64,
}

/// See the module documentation.
pub struct AdapterCache {
    model: Arc<Model>,
    dir: PathBuf,
    limit_bytes: usize,
    entries: Mutex<(HashMap<String, Entry>, u64)>,
    stats: CacheStats,
}

/// An adapter file of the directory, for listings.
#[derive(Clone, Debug)]
pub struct AdapterFile {
    /// Its name (the file stem).
    pub name: String,
    /// Its kind (`lora`, `diablo`, `wegeft`, `lopa`) as the file says.
    pub kind: String,
}

impl AdapterCache {
    /// A cache over `dir` for adapters of `model`, holding at most `limit_bytes` of adapters
    /// that no request uses.
    pub fn new(model: Arc<Model>, dir: impl Into<PathBuf>, limit_bytes: usize) -> Result<Self> {
        let dir = dir.into();
        if !dir.is_dir() {
            return Err(Error::Io {
                path: dir.display().to_string(),
                cause: std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "not a directory of adapters",
                ),
            });
        }
        Ok(Self {
            model,
            dir,
            limit_bytes,
            entries: Mutex::new((HashMap::new(), 0)),
            stats: CacheStats::default(),
        })
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The counters.
    pub fn stats(&self) -> &CacheStats {
        &self.stats
    }

    /// The adapter called `name` (`DIR/<name>.gguf`), from the cache or loaded now.
    /// An unknown name is [`Error::Registry`] ("no adapter named ...").
    pub fn get(&self, name: &str) -> Result<Arc<Adapter>> {
        let path = self.path_of(name)?;
        let meta = std::fs::metadata(&path).map_err(|_| {
            Error::Registry(format!(
                "no adapter named {name:?} in {}",
                self.dir.display()
            ))
        })?;
        let stamp = (meta.len(), meta.modified().ok());
        {
            let mut guard = self.entries.lock().unwrap_or_else(|e| e.into_inner());
            let (entries, clock) = &mut *guard;
            *clock += 1;
            if let Some(e) = entries.get_mut(name) {
                if e.stamp == stamp {
                    e.last_used = *clock;
                    self.stats.hits.fetch_add(1, Ordering::Relaxed);
                    return Ok(e.adapter.clone());
                }
                self.stats.reloads.fetch_add(1, Ordering::Relaxed);
            }
        }
        // Load outside the lock: other requests go on meanwhile.
        let t = Instant::now();
        let adapter = Adapter::load(&self.model, &path)?;
        self.stats
            .load_us
            .fetch_add(t.elapsed().as_micros() as u64, Ordering::Relaxed);
        self.stats.misses.fetch_add(1, Ordering::Relaxed);
        let mut guard = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let (entries, clock) = &mut *guard;
        *clock += 1;
        entries.insert(
            name.to_string(),
            Entry {
                adapter: adapter.clone(),
                stamp,
                last_used: *clock,
            },
        );
        self.evict(entries);
        Ok(adapter)
    }

    /// Drops least recently used adapters that no request holds until the cache fits its
    /// bound (or nothing more can go).
    fn evict(&self, entries: &mut HashMap<String, Entry>) {
        loop {
            let total: usize = entries.values().map(|e| e.adapter.n_bytes()).sum();
            if total <= self.limit_bytes {
                return;
            }
            // Held only by the cache (and the one `get` is returning is held by its caller).
            let victim = entries
                .iter()
                .filter(|(_, e)| Arc::strong_count(&e.adapter) == 1)
                .min_by_key(|(_, e)| e.last_used)
                .map(|(k, _)| k.clone());
            match victim {
                Some(k) => {
                    entries.remove(&k);
                    self.stats.evictions.fetch_add(1, Ordering::Relaxed);
                }
                None => return,
            }
        }
    }

    /// Evicts down to the bound now (adapters whose last request ended since the last load);
    /// a server calls this periodically.
    pub fn shrink(&self) {
        let mut guard = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        self.evict(&mut guard.0);
    }

    /// Bytes of the cached adapters.
    pub fn cached_bytes(&self) -> usize {
        let guard = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        guard.0.values().map(|e| e.adapter.n_bytes()).sum()
    }

    /// Cached adapters.
    pub fn cached(&self) -> usize {
        self.entries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .0
            .len()
    }

    /// Drops every cached adapter no request holds (the cache then holds only those in use).
    pub fn trim(&self) {
        let mut guard = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        guard.0.retain(|_, e| Arc::strong_count(&e.adapter) > 1);
    }

    /// The adapter files of the directory, by name, with their kind (read from each file's
    /// header; files that are not adapters are left out).
    pub fn list(&self) -> Vec<AdapterFile> {
        let Ok(rd) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut out: Vec<AdapterFile> = rd
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let p = e.path();
                if p.extension()? != "gguf" {
                    return None;
                }
                let name = p.file_stem()?.to_str()?.to_string();
                let g = graft_formats::Gguf::open(&p).ok()?;
                match FileKind::of(&g) {
                    FileKind::Adapter(kind) => Some(AdapterFile { name, kind }),
                    _ => None,
                }
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    /// `DIR/<name>.gguf`, for a name of letters, digits, `.`, `_` and `-` that does not start
    /// with `.` (nothing outside the directory can be named).
    fn path_of(&self, name: &str) -> Result<PathBuf> {
        let ok = !name.is_empty()
            && name.len() <= 200
            && !name.starts_with('.')
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
        if !ok {
            return Err(Error::Registry(format!(
                "no adapter named {name:?} in {} (names are file stems: letters, digits, '.', '_', '-')",
                self.dir.display()
            )));
        }
        Ok(self.dir.join(format!("{name}.gguf")))
    }
}
