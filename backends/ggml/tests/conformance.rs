//! Op conformance: every op case below runs on each device backend of the registry (graft's
//! wgpu backend, and ggml's CUDA/Metal/Vulkan when built in) and on ggml's CPU backend, from
//! the same inputs, and the results must agree by normalized mean squared error, in the spirit
//! of ggml's test-backend-ops. Shapes are odd on purpose (not multiples of any workgroup size)
//! and include broadcasting, non-contiguous views and every weight format the model uses.
//!
//! The wgpu backend must claim every case (its kernels exist for all of them). On a machine
//! without a device the suite has nothing to compare and says so;
//! `GRAFT_REQUIRE_DEVICE=wgpu,blas,vulkan` (set by scripts/test.sh, which installs Mesa's
//! lavapipe and builds ggml's BLAS and Vulkan backends as libraries graft loads at run time)
//! makes a missing one a failure instead. ggml's own backends
//! are held to the bounds of ggml's test-backend-ops.

use graft_ggml::{
    devices, quantize, sys, Backend, Context, GraphAllocator, RopeParams, Tensor, Type,
};

const Q4_0: Type = Type(sys::GGML_TYPE_Q4_0);
const Q4_1: Type = Type(sys::GGML_TYPE_Q4_1);

/// A small deterministic generator (the suite must be reproducible).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn uniform(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// One input tensor: type, shape and its bytes.
struct Input {
    ty: Type,
    ne: Vec<i64>,
    bytes: Vec<u8>,
}

fn input(rng: &mut Rng, ty: Type, ne: &[i64]) -> Input {
    let n: i64 = ne.iter().product();
    let v: Vec<f32> = (0..n).map(|_| rng.uniform()).collect();
    let bytes = match ty {
        Type::F32 => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        Type::F16 => v
            .iter()
            .flat_map(|&x| half::f16::from_f32(x).to_le_bytes())
            .collect(),
        _ => quantize(ty, &v, (n / ne[0]) as usize, ne[0] as usize).unwrap(),
    };
    Input {
        ty,
        ne: ne.to_vec(),
        bytes,
    }
}

fn indices_i32(v: &[i64], ne: &[i64]) -> Input {
    Input {
        ty: Type::I32,
        ne: ne.to_vec(),
        bytes: v.iter().flat_map(|&x| (x as i32).to_le_bytes()).collect(),
    }
}

fn indices_i64(v: &[i64], ne: &[i64]) -> Input {
    Input {
        ty: Type::I64,
        ne: ne.to_vec(),
        bytes: v.iter().flat_map(|&x| x.to_le_bytes()).collect(),
    }
}

type Build = Box<dyn for<'a> Fn(&'a Context, &[Tensor<'a>]) -> Tensor<'a>>;

/// One op on given inputs, and how close the device must come to the CPU.
struct Case {
    name: String,
    inputs: Vec<Input>,
    build: Build,
    max_nmse: f64,
}

fn case(
    name: impl Into<String>,
    inputs: Vec<Input>,
    max_nmse: f64,
    build: impl for<'a> Fn(&'a Context, &[Tensor<'a>]) -> Tensor<'a> + 'static,
) -> Case {
    Case {
        name: name.into(),
        inputs,
        build: Box::new(build),
        max_nmse,
    }
}

/// The result of a case on `backend` as f32 values, or `None` when the backend declines it.
fn run(backend: &mut Backend, c: &Case) -> Option<Vec<f32>> {
    let ctx = Context::new(64, 64).unwrap();
    let ins: Vec<Tensor<'_>> = c
        .inputs
        .iter()
        .map(|i| ctx.new_tensor(i.ty, &i.ne).set_input())
        .collect();
    let out = (c.build)(&ctx, &ins).set_output();
    if !backend.supports_op(out) {
        return None;
    }
    let mut g = ctx.new_graph(64, false);
    g.build_forward_expand(out);
    let mut alloc = GraphAllocator::new(backend).unwrap();
    alloc.alloc(&g).unwrap();
    for (t, i) in ins.iter().zip(&c.inputs) {
        t.write_bytes(0, &i.bytes).unwrap();
    }
    backend
        .compute(&g)
        .unwrap_or_else(|e| panic!("{}: {e}", c.name));
    let mut bytes = vec![0u8; out.nbytes()];
    out.read_bytes(0, &mut bytes).unwrap();
    Some(match out.ty() {
        Type::F32 => bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect(),
        Type::F16 => bytes
            .chunks_exact(2)
            .map(|b| half::f16::from_le_bytes(b.try_into().unwrap()).to_f32())
            .collect(),
        Type::I32 => bytes
            .chunks_exact(4)
            .map(|b| i32::from_le_bytes(b.try_into().unwrap()) as f32)
            .collect(),
        t => panic!("{}: output type {}", c.name, t.name()),
    })
}

fn nmse(got: &[f32], want: &[f32]) -> f64 {
    let (mut err, mut norm) = (0f64, 0f64);
    for (&g, &w) in got.iter().zip(want) {
        err += (g as f64 - w as f64).powi(2);
        norm += (w as f64).powi(2);
    }
    if norm == 0.0 {
        err
    } else {
        err / norm
    }
}

/// Every case, with shapes drawn from `seed`.
fn cases(seed: u64) -> Vec<Case> {
    let mut r = Rng(seed);
    let mut v = Vec::new();
    let dim = |r: &mut Rng, lo: u64, hi: u64| (lo + r.below(hi - lo + 1)) as i64;

    // Element-wise binary ops, with the second operand broadcast in several ways.
    for (name, op) in [("add", 0), ("sub", 1), ("mul", 2), ("div", 3)] {
        let (n0, n1, n2, n3) = (dim(&mut r, 1, 300), dim(&mut r, 1, 9), dim(&mut r, 1, 5), 2);
        for b_ne in [[n0, n1, n2, n3], [n0, 1, n2, 1], [1, n1, 1, 1]] {
            let a = input(&mut r, Type::F32, &[n0, n1, n2, n3]);
            let mut b = input(&mut r, Type::F32, &b_ne);
            if op == 3 {
                // Keep divisors away from zero.
                let vals: Vec<f32> = b
                    .bytes
                    .chunks_exact(4)
                    .map(|x| f32::from_le_bytes(x.try_into().unwrap()) + 2.0)
                    .collect();
                b.bytes = vals.iter().flat_map(|x| x.to_le_bytes()).collect();
            }
            v.push(case(
                format!("{name} {:?} by {:?}", a.ne, b_ne),
                vec![a, b],
                1e-12,
                move |c, t| match op {
                    0 => c.add(t[0], t[1]),
                    1 => c.sub(t[0], t[1]),
                    2 => c.mul(t[0], t[1]),
                    _ => c.div(t[0], t[1]),
                },
            ));
        }
    }
    let (n0, n1) = (dim(&mut r, 1, 1000), dim(&mut r, 1, 7));
    v.push(case(
        "scale",
        vec![input(&mut r, Type::F32, &[n0, n1])],
        1e-12,
        |c, t| c.scale(t[0], 0.37),
    ));

    // ACC: a smaller tensor added into a view of a bigger one (rows at an offset, as DiaBlo's
    // block products and the batched decoder's row groups are added).
    let (n0, n1) = (dim(&mut r, 2, 300), dim(&mut r, 2, 9));
    let (m0, m1) = (dim(&mut r, 1, n0 as u64), dim(&mut r, 1, n1 as u64));
    let (row, col) = (
        r.below((n1 - m1 + 1) as u64) as usize,
        r.below((n0 - m0 + 1) as u64) as usize,
    );
    v.push(case(
        format!("acc [{m0}, {m1}] into [{n0}, {n1}] at row {row}, column {col}"),
        vec![
            input(&mut r, Type::F32, &[n0, n1]),
            input(&mut r, Type::F32, &[m0, m1]),
        ],
        1e-12,
        move |c, t| {
            let nb1 = 4 * n0 as usize;
            c.acc(
                t[0],
                t[1],
                [nb1, nb1 * n1 as usize, nb1 * n1 as usize],
                row * nb1 + col * 4,
            )
        },
    ));

    // Copies between F32 and F16, from contiguous and permuted sources.
    for (from, to) in [
        (Type::F32, Type::F16),
        (Type::F16, Type::F32),
        (Type::F32, Type::F32),
        (Type::F16, Type::F16),
    ] {
        let (n0, n1, n2) = (dim(&mut r, 1, 70), dim(&mut r, 1, 9), dim(&mut r, 1, 5));
        let a = input(&mut r, from, &[n0, n1, n2]);
        let b = input(&mut r, to, &[n1, n0, n2]);
        v.push(case(
            format!(
                "cpy {} -> {} permuted {:?}",
                from.name(),
                to.name(),
                [n0, n1, n2]
            ),
            vec![a, b],
            1e-7,
            |c, t| {
                let p = c.permute(t[0], [1, 0, 2, 3]);
                c.cpy(p, t[1])
            },
        ));
        let a = input(&mut r, from, &[n0, n1, n2]);
        let b = input(&mut r, to, &[n0, n1, n2]);
        v.push(case(
            format!("cpy {} -> {} {:?}", from.name(), to.name(), [n0, n1, n2]),
            vec![a, b],
            1e-7,
            |c, t| c.cpy(t[0], t[1]),
        ));
    }
    let (n0, n1) = (dim(&mut r, 1, 90), dim(&mut r, 1, 30));
    v.push(case(
        "cont of a transpose",
        vec![input(&mut r, Type::F32, &[n0, n1])],
        1e-12,
        |c, t| {
            let tr = c.transpose(t[0]);
            c.cont(tr)
        },
    ));

    // SiLU and its backward pass (training graphs).
    let (n0, n1) = (dim(&mut r, 1, 700), dim(&mut r, 1, 7));
    v.push(case(
        format!("silu {n0}x{n1}"),
        vec![input(&mut r, Type::F32, &[n0, n1])],
        1e-9,
        |c, t| c.silu(t[0]),
    ));
    v.push(case(
        format!("silu_back {n0}x{n1}"),
        vec![
            input(&mut r, Type::F32, &[n0, n1]),
            input(&mut r, Type::F32, &[n0, n1]),
        ],
        1e-9,
        |c, t| c.silu_back(t[0], t[1]),
    ));

    // Row ops.
    for n0 in [dim(&mut r, 1, 255), dim(&mut r, 257, 3000)] {
        let n1 = dim(&mut r, 1, 6);
        v.push(case(
            format!("rms_norm {n0}x{n1}"),
            vec![input(&mut r, Type::F32, &[n0, n1, 2])],
            1e-9,
            |c, t| c.rms_norm(t[0], 1e-5),
        ));
        v.push(case(
            format!("soft_max {n0}x{n1}"),
            vec![input(&mut r, Type::F32, &[n0, n1, 3])],
            1e-9,
            |c, t| c.soft_max_ext(t[0], None, 0.7),
        ));
        for mask_ty in [Type::F32, Type::F16] {
            let a = input(&mut r, Type::F32, &[n0, n1, 3]);
            let mut m = input(&mut r, Type::F32, &[n0, n1 + 2]);
            // A causal-style mask: some -inf entries, never a whole row.
            let mut vals: Vec<f32> = m
                .bytes
                .chunks_exact(4)
                .map(|x| f32::from_le_bytes(x.try_into().unwrap()))
                .collect();
            for (i, x) in vals.iter_mut().enumerate() {
                if i as i64 % n0 > (i as i64 / n0) + n0 / 2 {
                    *x = f32::NEG_INFINITY;
                }
            }
            m.bytes = if mask_ty == Type::F16 {
                vals.iter()
                    .flat_map(|&x| half::f16::from_f32(x).to_le_bytes())
                    .collect()
            } else {
                vals.iter().flat_map(|x| x.to_le_bytes()).collect()
            };
            m.ty = mask_ty;
            v.push(case(
                format!("soft_max {n0}x{n1} with a {} mask", mask_ty.name()),
                vec![a, m],
                1e-9,
                |c, t| c.soft_max_ext(t[0], Some(t[1]), 0.125),
            ));
        }
        v.push(case(
            format!("argmax {n0}x{n1}"),
            vec![input(&mut r, Type::F32, &[n0, n1])],
            0.0,
            |c, t| c.argmax(t[0]),
        ));
    }

    // SwiGLU, fused halves and split.
    let (n0, n1) = (dim(&mut r, 1, 400), dim(&mut r, 1, 5));
    v.push(case(
        "swiglu",
        vec![input(&mut r, Type::F32, &[2 * n0, n1])],
        1e-10,
        |c, t| c.swiglu(t[0]),
    ));
    v.push(case(
        "swiglu_split",
        vec![
            input(&mut r, Type::F32, &[n0, n1]),
            input(&mut r, Type::F32, &[n0, n1]),
        ],
        1e-10,
        |c, t| c.swiglu_split(t[0], t[1]),
    ));

    // RoPE, normal (llama) and NeoX (qwen2), with and without YaRN.
    for (mode, ext) in [(0, 0.0), (2, 0.0), (0, 1.0), (2, 1.0)] {
        let head = 2 * dim(&mut r, 2, 40);
        let (heads, tokens) = (dim(&mut r, 1, 5), dim(&mut r, 1, 7));
        let n_dims = if r.below(2) == 0 {
            head
        } else {
            head / 2 / 2 * 2
        };
        let pos: Vec<i64> = (0..tokens).map(|_| r.below(5000) as i64).collect();
        let p = RopeParams {
            n_dims: n_dims as i32,
            mode,
            n_ctx_orig: 4096,
            freq_base: 10000.0,
            freq_scale: if ext > 0.0 { 0.25 } else { 1.0 },
            ext_factor: ext,
            attn_factor: 1.0,
            beta_fast: 32.0,
            beta_slow: 1.0,
        };
        v.push(case(
            format!("rope mode {mode} ext {ext} head {head} dims {n_dims}"),
            vec![
                input(&mut r, Type::F32, &[head, heads, tokens]),
                indices_i32(&pos, &[tokens]),
            ],
            1e-7,
            move |c, t| c.rope_ext(t[0], t[1], &p),
        ));
        v.push(case(
            format!("rope_back mode {mode} ext {ext} head {head} dims {n_dims}"),
            vec![
                input(&mut r, Type::F32, &[head, heads, tokens]),
                indices_i32(&pos, &[tokens]),
            ],
            1e-7,
            move |c, t| c.rope_ext_back(t[0], t[1], &p),
        ));
    }

    // Backward passes of the row ops, and of a broadcast (training graphs).
    for n0 in [dim(&mut r, 1, 255), dim(&mut r, 257, 1500)] {
        let n1 = dim(&mut r, 1, 6);
        let two = |r: &mut Rng| {
            vec![
                input(r, Type::F32, &[n0, n1, 2]),
                input(r, Type::F32, &[n0, n1, 2]),
            ]
        };
        v.push(case(
            format!("rms_norm_back {n0}x{n1}"),
            two(&mut r),
            1e-9,
            |c, t| c.rms_norm_back(t[0], t[1], 1e-5),
        ));
        v.push(case(
            format!("soft_max_back {n0}x{n1}"),
            two(&mut r),
            1e-9,
            |c, t| c.soft_max_ext_back(t[0], t[1], 0.7),
        ));
    }
    // The cross entropy against target distributions (rows summing to 1, as the trainer's
    // one-hot labels do), its backward pass, and the gradient of a row gather.
    let (n0, n1) = (dim(&mut r, 2, 700), dim(&mut r, 1, 9));
    let targets = |r: &mut Rng| {
        let mut t = input(r, Type::F32, &[n0, n1]);
        let vals: Vec<f32> = t
            .bytes
            .chunks_exact(4)
            .map(|x| f32::from_le_bytes(x.try_into().unwrap()).abs())
            .collect();
        let norm: Vec<f32> = vals
            .chunks(n0 as usize)
            .flat_map(|row| {
                let s: f32 = row.iter().sum();
                row.iter().map(move |x| x / s)
            })
            .collect();
        t.bytes = norm.iter().flat_map(|x| x.to_le_bytes()).collect();
        t
    };
    let tg = targets(&mut r);
    v.push(case(
        format!("cross_entropy_loss {n0}x{n1}"),
        vec![input(&mut r, Type::F32, &[n0, n1]), tg],
        1e-9,
        |c, t| c.cross_entropy_loss(t[0], t[1]),
    ));
    let tg = targets(&mut r);
    v.push(case(
        format!("cross_entropy_loss_back {n0}x{n1}"),
        vec![
            input(&mut r, Type::F32, &[1]),
            input(&mut r, Type::F32, &[n0, n1]),
            tg,
        ],
        1e-9,
        |c, t| c.cross_entropy_loss_back(t[0], t[1], t[2]),
    ));
    let (rows, n_idx) = (dim(&mut r, 1, 12), dim(&mut r, 1, 20));
    let idx: Vec<i64> = (0..n_idx).map(|_| r.below(rows as u64) as i64).collect();
    v.push(case(
        format!("get_rows_back {n0}x{n_idx} into {rows} rows"),
        vec![
            input(&mut r, Type::F32, &[n0, n_idx]),
            indices_i32(&idx, &[n_idx]),
        ],
        1e-12,
        move |c, t| c.get_rows_back(t[0], t[1], c.new_tensor(Type::F32, &[n0, rows])),
    ));
    for (small, repeats) in [([7, 1, 3, 1], [3, 5, 1, 2]), ([1, 4, 1, 1], [9, 1, 2, 1])] {
        let big: Vec<i64> = small.iter().zip(repeats).map(|(a, b)| a * b).collect();
        let shape = big.clone();
        v.push(case(
            format!("repeat {small:?} to {big:?}"),
            vec![input(&mut r, Type::F32, &small)],
            1e-12,
            move |c, t| c.repeat(t[0], c.new_tensor(Type::F32, &shape)),
        ));
        v.push(case(
            format!("sum of {big:?}"),
            vec![input(&mut r, Type::F32, &big)],
            1e-9,
            |c, t| c.sum(t[0]),
        ));
        v.push(case(
            format!("repeat_back {big:?} to {small:?}"),
            vec![input(&mut r, Type::F32, &big)],
            1e-12,
            move |c, t| c.repeat_back(t[0], c.new_tensor(Type::F32, &small)),
        ));
    }

    // Row gathers from every weight format, scatters into the F32 and F16 caches.
    for ty in [Type::F32, Type::F16, Q4_0, Q4_1, Type::Q8_0] {
        let k = if ty.block_size() > 1 {
            32 * dim(&mut r, 1, 5)
        } else {
            dim(&mut r, 1, 90)
        };
        let rows = dim(&mut r, 2, 40);
        let n = dim(&mut r, 1, 9);
        let idx: Vec<i64> = (0..n).map(|_| r.below(rows as u64) as i64).collect();
        v.push(case(
            format!("get_rows {} {k}x{rows} <- {n}", ty.name()),
            vec![input(&mut r, ty, &[k, rows]), indices_i32(&idx, &[n])],
            1e-12,
            |c, t| c.get_rows(t[0], t[1]),
        ));
    }
    for ty in [Type::F32, Type::F16] {
        let (k, rows, n) = (dim(&mut r, 1, 130), dim(&mut r, 8, 40), dim(&mut r, 1, 7));
        let idx: Vec<i64> = (0..n).map(|i| (i * 3 + 1) % rows).collect();
        v.push(case(
            format!("set_rows into {} {k}x{rows} <- {n}", ty.name()),
            vec![
                input(&mut r, ty, &[k, rows]),
                input(&mut r, Type::F32, &[k, n]),
                indices_i64(&idx, &[n]),
            ],
            1e-7,
            |c, t| c.set_rows(t[0], t[1], t[2]),
        ));
    }

    // Matrix products: every weight format, one token (decode) and several (prompt), and
    // weights broadcast over a batch of matrices.
    for ty in [Type::F32, Type::F16, Q4_0, Q4_1, Type::Q8_0] {
        let k = if ty.block_size() > 1 {
            32 * dim(&mut r, 1, 12)
        } else {
            dim(&mut r, 1, 300)
        };
        let m = dim(&mut r, 1, 70);
        // The device rounds activations as the CPU does (to F16 for F16 weights, to 8-bit
        // blocks for quantized ones), so only the order of float sums may differ.
        let tol = 1e-10;
        for (n, batch) in [(1, 1), (dim(&mut r, 2, 9), 1), (dim(&mut r, 1, 4), 3)] {
            let wb = if batch > 1 { 1 } else { batch };
            v.push(case(
                format!("mul_mat {} {k}x{m} by {n} x{batch}", ty.name()),
                vec![
                    input(&mut r, ty, &[k, m, wb]),
                    input(&mut r, Type::F32, &[k, n, batch]),
                ],
                tol,
                |c, t| c.mul_mat(t[0], t[1]),
            ));
        }
        // A prompt-sized product: at least 32 rows, tokens and inputs, where prompt kernels
        // (tiled, BLAS) take over.
        let (k, m, n) = (
            32 * dim(&mut r, 2, 6),
            dim(&mut r, 33, 80),
            dim(&mut r, 33, 48),
        );
        v.push(case(
            format!("mul_mat {} {k}x{m} by {n} (prompt)", ty.name()),
            vec![
                input(&mut r, ty, &[k, m, 1]),
                input(&mut r, Type::F32, &[k, n, 1]),
            ],
            tol,
            |c, t| c.mul_mat(t[0], t[1]),
        ));
    }
    // Outer products (the backward pass's OUT_PROD): `a [k, m] x b [n, m] -> [k, n]`, summed
    // over m; the input gradient through a weight of any format takes the incoming gradient
    // as a transposed view, the adapter and attention gradients take contiguous ones, in
    // batches (sharing one F32 `a`: attention heads).
    for ty in [Type::F32, Type::F16, Q4_0, Q4_1, Type::Q8_0] {
        let k = if ty.block_size() > 1 {
            32 * dim(&mut r, 1, 6)
        } else {
            dim(&mut r, 1, 150)
        };
        let (m, n) = (dim(&mut r, 1, 70), dim(&mut r, 1, 40));
        v.push(case(
            format!("out_prod {} {k}x{m} by a transposed {m}x{n}", ty.name()),
            vec![
                input(&mut r, ty, &[k, m]),
                input(&mut r, Type::F32, &[m, n]),
            ],
            1e-10,
            |c, t| c.out_prod(t[0], c.transpose(t[1])),
        ));
        // The CPU broadcasts `a` for F32 only.
        let batch = dim(&mut r, 2, 3);
        let ab = if ty == Type::F32 { 1 } else { batch };
        v.push(case(
            format!("out_prod {} {k}x{m}x{ab} by {n}x{m} x{batch}", ty.name()),
            vec![
                input(&mut r, ty, &[k, m, ab]),
                input(&mut r, Type::F32, &[n, m, batch]),
            ],
            1e-10,
            |c, t| c.out_prod(t[0], t[1]),
        ));
    }
    v
}

/// The normalized error ggml's test-backend-ops allows its backends: 5e-4 for matrix
/// products, 1e-7 for the rest.
fn ggml_backend_max_nmse(case: &str) -> f64 {
    if case.starts_with("mul_mat") {
        5e-4
    } else {
        1e-7
    }
}

fn device_names() -> Vec<(String, String)> {
    devices()
        .into_iter()
        .filter(|d| d.backend != "cpu")
        .map(|d| (d.backend, d.name))
        .collect()
}

#[test]
fn every_claimed_op_matches_the_cpu_backend() {
    let devs = device_names();
    // A comma-separated list of backends that must have a device here.
    for want in std::env::var("GRAFT_REQUIRE_DEVICE")
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|w| !w.is_empty())
    {
        assert!(
            devs.iter().any(|(b, _)| b == want),
            "GRAFT_REQUIRE_DEVICE names {want}, but the registry has {devs:?}"
        );
    }
    if devs.is_empty() {
        eprintln!("no device backend on this machine: nothing to compare");
        return;
    }
    let mut cpu = Backend::cpu(2).unwrap();
    cpu.set_adaptive_threads(false);
    let mut failures = Vec::new();
    // wgpu has two matrix-vector kernels; each device runs the one that suits it, so both
    // are run here on every device.
    let mut runs: Vec<(&String, &String, &str)> = Vec::new();
    for (backend, name) in &devs {
        runs.push((backend, name, ""));
        #[cfg(feature = "wgpu")]
        if backend == "wgpu" {
            runs.push((backend, name, "cooperative"));
            runs.push((backend, name, "per-output"));
        }
    }
    for (backend, name, matvec) in runs {
        #[cfg(feature = "wgpu")]
        graft_wgpu::set_matvec(match matvec {
            "cooperative" => graft_wgpu::MatVec::Cooperative,
            "per-output" => graft_wgpu::MatVec::PerOutput,
            _ => graft_wgpu::MatVec::Auto,
        });
        let name = &format!("{name}{}{matvec}", if matvec.is_empty() { "" } else { " " });
        let mut dev = Backend::on_device(name.split(' ').next().unwrap()).unwrap();
        let (mut ran, mut declined) = (0, Vec::new());
        for seed in [0x9e3779b97f4a7c15u64, 0x2545f4914f6cdd1d] {
            for c in cases(seed) {
                let want = run(&mut cpu, &c).expect("the CPU backend computes every case");
                let Some(got) = run(&mut dev, &c) else {
                    declined.push(c.name.clone());
                    continue;
                };
                ran += 1;
                assert_eq!(got.len(), want.len(), "{name}: {}", c.name);
                let e = nmse(&got, &want);
                // ggml's own backends (CUDA, Vulkan, ... loaded or built in) round matrix
                // products their own way (F16 accumulation, other activation blocks): they are
                // held to the bound of ggml's test-backend-ops instead of graft's kernels' one.
                let max = if backend == "wgpu" || c.max_nmse == 0.0 {
                    c.max_nmse
                } else {
                    c.max_nmse.max(ggml_backend_max_nmse(&c.name))
                };
                let bad = if max == 0.0 {
                    got != want
                } else {
                    e.is_nan() || e > max
                };
                if bad {
                    failures.push(format!("{name}: {}: nmse {e:.3e} > {max:.0e}", c.name));
                }
            }
        }
        eprintln!(
            "{name} ({backend}): {ran} cases agree or are listed below; {} declined",
            declined.len()
        );
        if backend == "wgpu" {
            assert!(declined.is_empty(), "{name} declined {declined:#?}");
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}
