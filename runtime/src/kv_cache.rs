//! The key/value cache of one session: F16 tensors per layer in a backend buffer.
//!
//! Keys are stored `[n_embd_kv, n_ctx]` (one row per position). Values are stored
//! transposed, `[n_ctx, n_embd_kv]`, for the matmul attention path (so `V·softmax` reads
//! contiguous rows) and untransposed for flash attention, as llama.cpp does.

use graft_ggml::{Backend, Buffer, Context, Tensor, TensorId, Type};

use crate::error::{Error, Result};
use crate::model::ModelConfig;

/// Per-session KV cache.
pub struct KvCache {
    ctx: Context,
    _buf: Buffer,
    k: Vec<TensorId>,
    v: Vec<TensorId>,
    n_ctx: usize,
    n_embd_kv: usize,
    v_trans: bool,
    elem_size: usize,
}

impl KvCache {
    /// Allocates a cache of `n_ctx` positions for `cfg` on `backend`, F16 (llama.cpp's
    /// default) or F32 (`f32`: exact, twice the memory; matmul attention only).
    pub fn new(
        cfg: &ModelConfig,
        n_ctx: usize,
        flash_attn: bool,
        f32: bool,
        backend: &Backend,
    ) -> Result<Self> {
        let ty = if f32 && !flash_attn {
            Type::F32
        } else {
            Type::F16
        };
        let n_embd_kv = cfg.n_embd_kv();
        let elem = if ty == Type::F32 { 4 } else { 2 };
        let bytes = (2 * cfg.n_layer as u128) * (n_ctx as u128) * (n_embd_kv as u128) * elem;
        let mb = bytes / (1 << 20);
        // Checked here so a context that cannot fit is one clear error, not ggml's allocator
        // lines followed by an allocation failure (or an overcommitted map that is killed
        // later).
        if let Some(total) = physical_memory_bytes() {
            if bytes > total as u128 {
                return Err(Error::InvalidRequest(format!(
                    "a context of {n_ctx} tokens needs a {mb} MB KV cache, more than this machine's {} MB of memory",
                    total >> 20
                )));
            }
        }
        let ctx = Context::new(2 * cfg.n_layer + 2, 0)?;
        let mut k = Vec::with_capacity(cfg.n_layer);
        let mut v = Vec::with_capacity(cfg.n_layer);
        for il in 0..cfg.n_layer {
            let kt = ctx
                .new_tensor(ty, &[n_embd_kv as i64, n_ctx as i64])
                .set_name(&format!("cache_k_l{il}"));
            let vne = if flash_attn {
                [n_embd_kv as i64, n_ctx as i64]
            } else {
                [n_ctx as i64, n_embd_kv as i64]
            };
            let vt = ctx.new_tensor(ty, &vne).set_name(&format!("cache_v_l{il}"));
            k.push(kt.id());
            v.push(vt.id());
        }
        let buf = backend.alloc_ctx_tensors(&ctx).map_err(|e| {
            Error::InvalidRequest(format!(
                "a context of {n_ctx} tokens needs a {mb} MB KV cache, which could not be allocated ({e})"
            ))
        })?;
        Ok(Self {
            ctx,
            _buf: buf,
            k,
            v,
            n_ctx,
            n_embd_kv,
            v_trans: !flash_attn,
            elem_size: if ty == Type::F32 { 4 } else { 2 },
        })
    }

    /// Capacity in positions.
    pub fn n_ctx(&self) -> usize {
        self.n_ctx
    }

    /// Whether values are stored transposed (matmul attention).
    pub fn v_trans(&self) -> bool {
        self.v_trans
    }

    /// Width of one position's keys (and values).
    pub fn n_embd_kv(&self) -> usize {
        self.n_embd_kv
    }

    /// Layer `il`'s key tensor.
    pub(crate) fn k(&self, il: usize) -> Tensor<'_> {
        self.ctx
            .get(self.k[il])
            .expect("cache tensor of this cache")
    }

    /// Layer `il`'s value tensor.
    pub(crate) fn v(&self, il: usize) -> Tensor<'_> {
        self.ctx
            .get(self.v[il])
            .expect("cache tensor of this cache")
    }

    /// Bytes per cached element (2 for F16, 4 for F32).
    pub fn elem_size(&self) -> usize {
        self.elem_size
    }

    /// Bytes held by the cache.
    pub fn size_bytes(&self) -> usize {
        self._buf.size()
    }

    /// Checks that `backend` (whose memory holds the cache) can run the writes of new rows, as
    /// the forward graph makes them: ggml aborts the process when a graph writes into a buffer
    /// whose backend cannot run the write, and a device declines a layer's cache larger than
    /// it can bind at once.
    pub(crate) fn check_writable(&self, backend: &Backend) -> Result<()> {
        let ctx = Context::new(8, 0)?;
        let (n_embd, n_ctx) = (self.n_embd_kv as i64, self.n_ctx as i64);
        let rows = ctx.new_tensor(Type::F32, &[n_embd, 1]);
        let idx = ctx.new_tensor(Type::I64, &[1]);
        let k = ctx.set_rows(self.k(0), rows, idx);
        let v = if self.v_trans {
            let flat = ctx.view(self.v(0), &[1, n_ctx * n_embd], &[self.elem_size], 0);
            let one = ctx.new_tensor(Type::F32, &[1, n_embd]);
            ctx.set_rows(flat, one, ctx.new_tensor(Type::I64, &[n_embd]))
        } else {
            ctx.set_rows(self.v(0), rows, idx)
        };
        if backend.supports_op(k) && backend.supports_op(v) {
            return Ok(());
        }
        Err(Error::InvalidRequest(format!(
            "device {} cannot hold this KV cache ({} MiB per layer at {} positions in one \
             binding); use a shorter context or --backend cpu",
            backend.device_description(),
            (self.n_ctx * self.n_embd_kv * self.elem_size) >> 20,
            self.n_ctx
        )))
    }
}

/// Installed physical memory (Linux: `MemTotal` of /proc/meminfo); `None` where unknown.
fn physical_memory_bytes() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}
