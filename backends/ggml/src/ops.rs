//! Tensor operations. Each builds a graph node in the context; nothing is computed until the
//! graph runs on a backend.

use crate::context::{Context, Tensor};
use crate::sys;
use crate::Type;

/// Rotary-embedding parameters (`ggml_rope_ext`).
#[derive(Clone, Copy, Debug)]
pub struct RopeParams {
    /// Rotated dimensions per head.
    pub n_dims: i32,
    /// `GGML_ROPE_TYPE_NORMAL` (llama) or `GGML_ROPE_TYPE_NEOX` (qwen2).
    pub mode: i32,
    /// Training context length (YaRN).
    pub n_ctx_orig: i32,
    /// Frequency base.
    pub freq_base: f32,
    /// Frequency scale (1 / linear scaling factor).
    pub freq_scale: f32,
    /// YaRN extrapolation mix (0 unless YaRN).
    pub ext_factor: f32,
    /// Attention magnitude factor.
    pub attn_factor: f32,
    /// YaRN beta fast.
    pub beta_fast: f32,
    /// YaRN beta slow.
    pub beta_slow: f32,
}

/// The signature ggml's `rope_ext` and `rope_ext_back` share.
type RopeOp = unsafe extern "C" fn(
    *mut sys::ggml_context,
    *mut sys::ggml_tensor,
    *mut sys::ggml_tensor,
    *mut sys::ggml_tensor,
    i32,
    i32,
    i32,
    f32,
    f32,
    f32,
    f32,
    f32,
    f32,
) -> *mut sys::ggml_tensor;

macro_rules! unary {
    ($(#[$m:meta])* $name:ident => $f:ident) => {
        $(#[$m])*
        pub fn $name<'a>(&'a self, a: Tensor<'a>) -> Tensor<'a> {
            // SAFETY: valid context and tensor (lifetimes tie both to this context's use).
            self.wrap(unsafe { sys::$f(self.raw(), a.raw()) })
        }
    };
}

macro_rules! binary {
    ($(#[$m:meta])* $name:ident => $f:ident) => {
        $(#[$m])*
        pub fn $name<'a>(&'a self, a: Tensor<'a>, b: Tensor<'a>) -> Tensor<'a> {
            // SAFETY: valid context and tensors; ggml asserts shape compatibility.
            self.wrap(unsafe { sys::$f(self.raw(), a.raw(), b.raw()) })
        }
    };
}

impl Context {
    binary!(
        /// `a [k, m] x b [k, n] -> [m, n]`, broadcasting dims 2 and 3 of `a` over `b`.
        mul_mat => ggml_mul_mat);
    binary!(
        /// Element-wise sum, `b` broadcast over `a`.
        add => ggml_add);
    binary!(
        /// Element-wise product, `b` broadcast over `a`.
        mul => ggml_mul);
    binary!(
        /// Element-wise difference, `b` broadcast over `a`.
        sub => ggml_sub);
    binary!(
        /// Element-wise quotient, `b` broadcast over `a`.
        div => ggml_div);
    unary!(
        /// Index of the largest value of each row (I32).
        argmax => ggml_argmax);
    unary!(
        /// `silu(x) * g` with `x` and `g` the two halves of each row of `a`.
        swiglu => ggml_swiglu);
    binary!(
        /// Rows of `a` selected by the I32 indices in `b`.
        get_rows => ggml_get_rows);
    binary!(
        /// `silu(a) * b` (SwiGLU with separate gate and up projections).
        swiglu_split => ggml_swiglu_split);
    binary!(
        /// Outer product `a bᵀ` (used by backward passes).
        out_prod => ggml_out_prod);
    binary!(
        /// `a` tiled over `b`'s shape (a multiple of `a`'s in every dim).
        repeat => ggml_repeat);
    binary!(
        /// Copies `a` into `b` (converting the type); returns the view of `b`.
        cpy => ggml_cpy);
    unary!(
        /// SiLU activation.
        silu => ggml_silu);
    binary!(
        /// SiLU's backward pass: `dy * s * (1 + x (1 - s))`, `s = sigmoid(x)`, for the incoming
        /// gradient `dy = a` and the SiLU's input `x = b` (the order ggml's autodiff uses).
        silu_back => ggml_silu_back);
    unary!(
        /// Hyperbolic tangent.
        tanh => ggml_tanh);
    unary!(
        /// Logistic sigmoid.
        sigmoid => ggml_sigmoid);
    unary!(
        /// A contiguous copy.
        cont => ggml_cont);
    unary!(
        /// Swaps dims 0 and 1 (a view).
        transpose => ggml_transpose);
    unary!(
        /// Sum of all elements (a 1-element tensor).
        sum => ggml_sum);
    unary!(
        /// Mean along dim 0.
        mean => ggml_mean);
    unary!(
        /// Element-wise square.
        sqr => ggml_sqr);

    /// RMS normalisation along dim 0.
    pub fn rms_norm<'a>(&'a self, a: Tensor<'a>, eps: f32) -> Tensor<'a> {
        // SAFETY: valid context and tensor.
        self.wrap(unsafe { sys::ggml_rms_norm(self.raw(), a.raw(), eps) })
    }

    /// `a` with `b` added into the view of `a` given by strides `nb1..nb3` and byte `offset`
    /// (differentiable in both).
    pub fn acc<'a>(
        &'a self,
        a: Tensor<'a>,
        b: Tensor<'a>,
        nb: [usize; 3],
        offset: usize,
    ) -> Tensor<'a> {
        // SAFETY: valid context and tensors; ggml asserts the view fits in `a`.
        self.wrap(unsafe {
            sys::ggml_acc(self.raw(), a.raw(), b.raw(), nb[0], nb[1], nb[2], offset)
        })
    }

    /// Pads `a` with zeros at the end of each dimension.
    pub fn pad<'a>(&'a self, a: Tensor<'a>, p: [i32; 4]) -> Tensor<'a> {
        // SAFETY: valid context and tensor.
        self.wrap(unsafe { sys::ggml_pad(self.raw(), a.raw(), p[0], p[1], p[2], p[3]) })
    }

    /// `a * s`.
    pub fn scale<'a>(&'a self, a: Tensor<'a>, s: f32) -> Tensor<'a> {
        // SAFETY: valid context and tensor.
        self.wrap(unsafe { sys::ggml_scale(self.raw(), a.raw(), s) })
    }

    /// Casts to `ty`.
    pub fn cast<'a>(&'a self, a: Tensor<'a>, ty: Type) -> Tensor<'a> {
        // SAFETY: valid context and tensor.
        self.wrap(unsafe { sys::ggml_cast(self.raw(), a.raw(), ty.0) })
    }

    /// Reshape (a view; `a` must be contiguous).
    pub fn reshape<'a>(&'a self, a: Tensor<'a>, ne: &[i64]) -> Tensor<'a> {
        // SAFETY: valid context and tensor; ggml asserts the element count matches.
        let p = unsafe {
            match *ne {
                [n0] => sys::ggml_reshape_1d(self.raw(), a.raw(), n0),
                [n0, n1] => sys::ggml_reshape_2d(self.raw(), a.raw(), n0, n1),
                [n0, n1, n2] => sys::ggml_reshape_3d(self.raw(), a.raw(), n0, n1, n2),
                [n0, n1, n2, n3] => sys::ggml_reshape_4d(self.raw(), a.raw(), n0, n1, n2, n3),
                _ => panic!("reshape takes 1 to 4 dims"),
            }
        };
        self.wrap(p)
    }

    /// A strided view: dims `ne`, byte strides `nb` (for dims 1..), byte `offset`.
    pub fn view<'a>(
        &'a self,
        a: Tensor<'a>,
        ne: &[i64],
        nb: &[usize],
        offset: usize,
    ) -> Tensor<'a> {
        // SAFETY: valid context and tensor; ggml asserts the view stays inside `a`.
        let p = unsafe {
            match (ne, nb) {
                ([n0], []) => sys::ggml_view_1d(self.raw(), a.raw(), *n0, offset),
                ([n0, n1], [b1]) => sys::ggml_view_2d(self.raw(), a.raw(), *n0, *n1, *b1, offset),
                ([n0, n1, n2], [b1, b2]) => {
                    sys::ggml_view_3d(self.raw(), a.raw(), *n0, *n1, *n2, *b1, *b2, offset)
                }
                ([n0, n1, n2, n3], [b1, b2, b3]) => sys::ggml_view_4d(
                    self.raw(),
                    a.raw(),
                    *n0,
                    *n1,
                    *n2,
                    *n3,
                    *b1,
                    *b2,
                    *b3,
                    offset,
                ),
                _ => panic!("view: ne has 1 to 4 dims and nb one fewer"),
            }
        };
        self.wrap(p)
    }

    /// Permutes the axes (a view).
    pub fn permute<'a>(&'a self, a: Tensor<'a>, axes: [i32; 4]) -> Tensor<'a> {
        // SAFETY: valid context and tensor; ggml asserts a valid permutation.
        self.wrap(unsafe {
            sys::ggml_permute(self.raw(), a.raw(), axes[0], axes[1], axes[2], axes[3])
        })
    }

    /// Contiguous copy reshaped to 2-D.
    pub fn cont_2d<'a>(&'a self, a: Tensor<'a>, n0: i64, n1: i64) -> Tensor<'a> {
        // SAFETY: valid context and tensor.
        self.wrap(unsafe { sys::ggml_cont_2d(self.raw(), a.raw(), n0, n1) })
    }

    /// Writes the rows of `src` into `dst` at the row indices `idx` (I64 or I32); returns
    /// the updated `dst` view.
    pub fn set_rows<'a>(&'a self, dst: Tensor<'a>, src: Tensor<'a>, idx: Tensor<'a>) -> Tensor<'a> {
        // SAFETY: valid context and tensors.
        self.wrap(unsafe { sys::ggml_set_rows(self.raw(), dst.raw(), src.raw(), idx.raw()) })
    }

    /// RMS normalisation's backward pass: the gradient of its input, from the gradient `a` of
    /// its output and its input `b`.
    pub fn rms_norm_back<'a>(&'a self, a: Tensor<'a>, b: Tensor<'a>, eps: f32) -> Tensor<'a> {
        // SAFETY: valid context and tensors; ggml asserts equal shapes.
        self.wrap(unsafe { sys::ggml_rms_norm_back(self.raw(), a.raw(), b.raw(), eps) })
    }

    /// The softmax's backward pass: the gradient of its input, from the gradient `a` of its
    /// output and its output `b` (`scale` as in the forward [`Context::soft_max_ext`]).
    pub fn soft_max_ext_back<'a>(&'a self, a: Tensor<'a>, b: Tensor<'a>, scale: f32) -> Tensor<'a> {
        // SAFETY: valid context and tensors; ggml asserts equal shapes.
        self.wrap(unsafe { sys::ggml_soft_max_ext_back(self.raw(), a.raw(), b.raw(), scale, 0.0) })
    }

    /// The cross entropy's backward pass: the gradient of the logits `b` from the loss's
    /// gradient `a` (a scalar) and the targets `c`.
    pub fn cross_entropy_loss_back<'a>(
        &'a self,
        a: Tensor<'a>,
        b: Tensor<'a>,
        c: Tensor<'a>,
    ) -> Tensor<'a> {
        // SAFETY: valid context and tensors; ggml asserts the shapes.
        self.wrap(unsafe {
            sys::ggml_cross_entropy_loss_back(self.raw(), a.raw(), b.raw(), c.raw())
        })
    }

    /// The gradient of [`Context::get_rows`]: rows of `a` added into the rows of `c`'s shape
    /// that the I32 indices `b` name.
    pub fn get_rows_back<'a>(&'a self, a: Tensor<'a>, b: Tensor<'a>, c: Tensor<'a>) -> Tensor<'a> {
        // SAFETY: valid context and tensors; ggml asserts the shapes.
        self.wrap(unsafe { sys::ggml_get_rows_back(self.raw(), a.raw(), b.raw(), c.raw()) })
    }

    /// `b`'s shape filled with the sums of `a`'s repeats of it (the backward pass of a
    /// broadcast).
    pub fn repeat_back<'a>(&'a self, a: Tensor<'a>, b: Tensor<'a>) -> Tensor<'a> {
        // SAFETY: valid context and tensors; ggml asserts `b` repeats into `a`.
        self.wrap(unsafe { sys::ggml_repeat_back(self.raw(), a.raw(), b.raw()) })
    }

    /// `softmax(a * scale + mask)` along dim 0 (mask may be `None`).
    pub fn soft_max_ext<'a>(
        &'a self,
        a: Tensor<'a>,
        mask: Option<Tensor<'a>>,
        scale: f32,
    ) -> Tensor<'a> {
        let m = mask.map_or(std::ptr::null_mut(), |m| m.raw());
        // SAFETY: valid context and tensors (mask may be null).
        self.wrap(unsafe { sys::ggml_soft_max_ext(self.raw(), a.raw(), m, scale, 0.0) })
    }

    /// Rotary position embedding of `a [head_dim, n_head, n_tokens]` at I32 positions `pos`.
    pub fn rope_ext<'a>(&'a self, a: Tensor<'a>, pos: Tensor<'a>, p: &RopeParams) -> Tensor<'a> {
        self.rope_op(sys::ggml_rope_ext, a, pos, p)
    }

    /// RoPE's backward pass: the inverse rotation of the gradient `a` of [`Context::rope_ext`]'s
    /// output.
    pub fn rope_ext_back<'a>(
        &'a self,
        a: Tensor<'a>,
        pos: Tensor<'a>,
        p: &RopeParams,
    ) -> Tensor<'a> {
        self.rope_op(sys::ggml_rope_ext_back, a, pos, p)
    }

    /// `op` (ggml's `rope_ext` or `rope_ext_back`, which take the same arguments) over `a`.
    fn rope_op<'a>(
        &'a self,
        op: RopeOp,
        a: Tensor<'a>,
        pos: Tensor<'a>,
        p: &RopeParams,
    ) -> Tensor<'a> {
        // SAFETY: valid context and tensors; no frequency factors.
        self.wrap(unsafe {
            op(
                self.raw(),
                a.raw(),
                pos.raw(),
                std::ptr::null_mut(),
                p.n_dims,
                p.mode,
                p.n_ctx_orig,
                p.freq_base,
                p.freq_scale,
                p.ext_factor,
                p.attn_factor,
                p.beta_fast,
                p.beta_slow,
            )
        })
    }

    /// Flash attention: `q [d, n_tokens, n_head]`, `k`/`v [d, n_kv, n_head_kv]` (F16), mask
    /// F16 `[n_kv, n_tokens]`; returns `[d, n_head, n_tokens]` with F32 accumulation.
    pub fn flash_attn_ext<'a>(
        &'a self,
        q: Tensor<'a>,
        k: Tensor<'a>,
        v: Tensor<'a>,
        mask: Tensor<'a>,
        scale: f32,
    ) -> Tensor<'a> {
        // SAFETY: valid context and tensors.
        let t = unsafe {
            sys::ggml_flash_attn_ext(
                self.raw(),
                q.raw(),
                k.raw(),
                v.raw(),
                mask.raw(),
                scale,
                0.0,
                0.0,
            )
        };
        self.wrap(t).accumulate_f32()
    }

    /// Cross-entropy loss between logits `a` and target probabilities `b` (training).
    pub fn cross_entropy_loss<'a>(&'a self, a: Tensor<'a>, b: Tensor<'a>) -> Tensor<'a> {
        // SAFETY: valid context and tensors.
        self.wrap(unsafe { sys::ggml_cross_entropy_loss(self.raw(), a.raw(), b.raw()) })
    }
}
