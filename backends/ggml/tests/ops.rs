//! The wrapper's ops against plain Rust reference implementations.

use graft_ggml::{quantize, Backend, Context, GraphAllocator, Type};

/// A graph's inputs and its output, built in the given context.
type Built<'a, T> = (Vec<(graft_ggml::Tensor<'a>, T)>, graft_ggml::Tensor<'a>);

/// Builds a graph with `build`, fills its F32 inputs, computes it on one thread and returns
/// the output.
fn run(build: impl for<'a> FnOnce(&'a Context) -> Built<'a, Vec<f32>>) -> Vec<f32> {
    run_on(1, |ctx| {
        let (inputs, out) = build(ctx);
        let bytes = inputs
            .into_iter()
            .map(|(t, v)| (t, v.iter().flat_map(|x| x.to_le_bytes()).collect()))
            .collect();
        (bytes, out)
    })
}

/// [`run`] on `threads` threads (a fixed count) with inputs given as raw bytes (any type).
fn run_on(
    threads: usize,
    build: impl for<'a> FnOnce(&'a Context) -> Built<'a, Vec<u8>>,
) -> Vec<f32> {
    let mut backend = Backend::cpu(threads).unwrap();
    backend.set_adaptive_threads(false);
    let ctx = Context::new(64, 64).unwrap();
    let (inputs, out) = build(&ctx);
    let mut g = ctx.new_graph(64, false);
    g.build_forward_expand(out);
    let mut alloc = GraphAllocator::new(&backend).unwrap();
    alloc.alloc(&g).unwrap();
    for (t, v) in &inputs {
        t.write_bytes(0, v).unwrap();
    }
    backend.compute(&g).unwrap();
    out.to_vec_f32().unwrap()
}

/// `v` as a tensor of type `ty` (F32 or F16) stores it: the values it holds and their bytes.
fn stored(v: &[f32], ty: Type) -> (Vec<f32>, Vec<u8>) {
    if ty == Type::F16 {
        let h: Vec<half::f16> = v.iter().map(|&a| half::f16::from_f32(a)).collect();
        (
            h.iter().map(|a| a.to_f32()).collect(),
            h.iter().flat_map(|a| a.to_le_bytes()).collect(),
        )
    } else {
        (v.to_vec(), v.iter().flat_map(|a| a.to_le_bytes()).collect())
    }
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    stored(v, Type::F32).1
}

#[test]
fn mul_mat_matches_naive() {
    let (k, m, n) = (64usize, 5usize, 3usize);
    let a: Vec<f32> = (0..k * m)
        .map(|i| ((i * 7 % 13) as f32 - 6.0) / 7.0)
        .collect();
    let b: Vec<f32> = (0..k * n)
        .map(|i| ((i * 5 % 11) as f32 - 5.0) / 5.0)
        .collect();
    let (a2, b2) = (a.clone(), b.clone());
    let got = run(|ctx| {
        let ta = ctx.new_tensor(Type::F32, &[k as i64, m as i64]).set_input();
        let tb = ctx.new_tensor(Type::F32, &[k as i64, n as i64]).set_input();
        (vec![(ta, a2), (tb, b2)], ctx.mul_mat(ta, tb).set_output())
    });
    // out[j][i] = sum_k a[i][k] * b[j][k]  (ne = [m, n])
    for j in 0..n {
        for i in 0..m {
            let want: f32 = (0..k).map(|x| a[i * k + x] * b[j * k + x]).sum();
            assert!(
                (got[j * m + i] - want).abs() < 1e-4,
                "({i},{j}) {} vs {want}",
                got[j * m + i]
            );
        }
    }
}

#[test]
fn rms_norm_and_softmax_match_naive() {
    let x: Vec<f32> = (0..8).map(|i| i as f32 - 3.5).collect();
    let x2 = x.clone();
    let got = run(|ctx| {
        let t = ctx.new_tensor(Type::F32, &[8]).set_input();
        (vec![(t, x2)], ctx.rms_norm(t, 1e-6).set_output())
    });
    let rms = (x.iter().map(|v| v * v).sum::<f32>() / 8.0 + 1e-6).sqrt();
    for (g, v) in got.iter().zip(&x) {
        assert!((g - v / rms).abs() < 1e-5);
    }
    let x2 = x.clone();
    let got = run(|ctx| {
        let t = ctx.new_tensor(Type::F32, &[8]).set_input();
        (vec![(t, x2)], ctx.soft_max_ext(t, None, 0.5).set_output())
    });
    let e: Vec<f32> = x.iter().map(|v| (v * 0.5).exp()).collect();
    let s: f32 = e.iter().sum();
    for (g, v) in got.iter().zip(&e) {
        assert!((g - v / s).abs() < 1e-6);
    }
}

#[test]
fn quantize_q8_0_round_trips_within_a_step() {
    let n = 64;
    let x: Vec<f32> = (0..n).map(|i| (i as f32 * 0.37).sin()).collect();
    let q = quantize(Type::Q8_0, &x, 1, n).unwrap();
    assert_eq!(q.len(), Type::Q8_0.row_size(n as i64));
    // Dequantize through ggml: get_rows of a Q8_0 tensor yields F32.
    let backend = Backend::cpu(1).unwrap();
    let mut backend = backend;
    let ctx = Context::new(8, 16).unwrap();
    let w = ctx.new_tensor(Type::Q8_0, &[n as i64, 1]);
    let idx = ctx.new_tensor(Type::I32, &[1]).set_input();
    let out = ctx.get_rows(w, idx).set_output();
    let mut g = ctx.new_graph(16, false);
    g.build_forward_expand(out);
    let _buf = backend.alloc_ctx_tensors(&ctx).unwrap();
    let mut alloc = GraphAllocator::new(&backend).unwrap();
    alloc.alloc(&g).unwrap();
    w.write_bytes(0, &q).unwrap();
    idx.write_i32(0, &[0]).unwrap();
    backend.compute(&g).unwrap();
    let y = out.to_vec_f32().unwrap();
    for (a, b) in x.iter().zip(&y) {
        assert!((a - b).abs() <= 1.0 / 127.0 + 1e-6, "{a} vs {b}");
    }
    assert!(
        quantize(Type::Q8_0, &x, 1, 63).is_err(),
        "length must match"
    );
}

#[test]
fn resolving_a_foreign_tensor_id_fails() {
    let a = Context::new(4, 0).unwrap();
    let b = Context::new(4, 0).unwrap();
    let t = a.new_tensor(Type::F32, &[4]);
    assert!(a.get(t.id()).is_some());
    assert!(b.get(t.id()).is_none());
}

/// `low_rank_update` (one fused node) against the four standard ops it replaces and against a
/// plain f64 sum, for F32 and F16 matrices, odd sizes and 1 or 3 threads.
#[test]
fn low_rank_update_equals_the_standard_ops() {
    let (n_in, r, n_out) = (37usize, 5usize, 29usize);
    let val = |i: usize, m: usize| ((i * m % 23) as f32 - 11.0) / 13.0;
    let x: Vec<f32> = (0..n_in).map(|i| val(i, 7)).collect();
    let base: Vec<f32> = (0..n_out).map(|i| val(i, 3)).collect();
    let m1: Vec<f32> = (0..n_in * r).map(|i| val(i, 5)).collect();
    let m2: Vec<f32> = (0..r * n_out).map(|i| val(i, 11)).collect();
    let s = 0.75f32;
    for (t1, t2) in [
        (Type::F32, Type::F32),
        (Type::F16, Type::F16),
        (Type::F32, Type::F16),
    ] {
        let compute = |threads: usize, fused: bool| -> Vec<f32> {
            run_on(threads, |ctx| {
                let tx = ctx.new_tensor(Type::F32, &[n_in as i64, 1]).set_input();
                let tb = ctx.new_tensor(Type::F32, &[n_out as i64, 1]).set_input();
                let t1m = ctx.new_tensor(t1, &[n_in as i64, r as i64]).set_input();
                let t2m = ctx.new_tensor(t2, &[r as i64, n_out as i64]).set_input();
                let out = if fused {
                    ctx.low_rank_update(tb, tx, t1m, t2m, s)
                        .expect("shapes and types it takes")
                } else {
                    ctx.add(tb, ctx.scale(ctx.mul_mat(t2m, ctx.mul_mat(t1m, tx)), s))
                }
                .set_output();
                let inputs = vec![
                    (tx, f32_bytes(&x)),
                    (tb, f32_bytes(&base)),
                    (t1m, stored(&m1, t1).1),
                    (t2m, stored(&m2, t2).1),
                ];
                (inputs, out)
            })
        };
        let standard = compute(1, false);
        // The matrices as the graph holds them (F16 rounds).
        let (m1r, m2r) = (stored(&m1, t1).0, stored(&m2, t2).0);
        let u: Vec<f64> = (0..r)
            .map(|j| {
                (0..n_in)
                    .map(|k| m1r[j * n_in + k] as f64 * x[k] as f64)
                    .sum()
            })
            .collect();
        for threads in [1, 3] {
            let fused = compute(threads, true);
            for i in 0..n_out {
                let exact: f64 = base[i] as f64
                    + s as f64 * (0..r).map(|j| m2r[i * r + j] as f64 * u[j]).sum::<f64>();
                assert!(
                    (fused[i] - standard[i]).abs() < 2e-5,
                    "{t1:?}/{t2:?} x{threads} row {i}: {} vs {}",
                    fused[i],
                    standard[i]
                );
                // F16 matrices also round their vector operand to F16, as ggml's mul_mat does.
                let tol = if t1 == Type::F16 || t2 == Type::F16 {
                    2e-2
                } else {
                    1e-5
                };
                assert!(
                    (fused[i] as f64 - exact).abs() < tol,
                    "row {i}: {} vs {exact}",
                    fused[i]
                );
            }
        }
    }
    // Shapes and flags it declines: several tokens, a trainable matrix.
    let ctx = Context::new(64, 64).unwrap();
    let x2 = ctx.new_tensor(Type::F32, &[n_in as i64, 2]);
    let b2 = ctx.new_tensor(Type::F32, &[n_out as i64, 2]);
    let a = ctx.new_tensor(Type::F32, &[n_in as i64, r as i64]);
    let b = ctx.new_tensor(Type::F32, &[r as i64, n_out as i64]);
    assert!(ctx.low_rank_update(b2, x2, a, b, 1.0).is_none());
    let x1 = ctx.new_tensor(Type::F32, &[n_in as i64, 1]);
    let b1 = ctx.new_tensor(Type::F32, &[n_out as i64, 1]);
    assert!(ctx.low_rank_update(b1, x1, a, b, 1.0).is_some());
    let trainable = ctx
        .new_tensor(Type::F32, &[n_in as i64, r as i64])
        .set_param();
    assert!(ctx.low_rank_update(b1, x1, trainable, b, 1.0).is_none());
}

/// `low_rank_updates` (the WeGeFT inputs of q, k, v or gate, up in one node): each column is
/// the single `low_rank_update` with `base = x`, bit for bit, for matrices of different ranks
/// and types and 1 or 3 threads (threads split the stacked rows across columns).
#[test]
fn low_rank_updates_stack_single_updates_bit_for_bit() {
    let n_in = 41usize;
    let val = |i: usize, m: usize| ((i * m % 29) as f32 - 14.0) / 17.0;
    let x: Vec<f32> = (0..n_in).map(|i| val(i, 3)).collect();
    let pairs = [
        (4usize, Type::F32, 5usize),
        (7, Type::F16, 7),
        (2, Type::F32, 11),
    ];
    let s = -0.625f32;
    let mats: Vec<(Vec<f32>, Vec<f32>)> = pairs
        .iter()
        .map(|&(r, _, m)| {
            (
                (0..n_in * r).map(|i| val(i, m)).collect(),
                (0..r * n_in).map(|i| val(i, m + 2)).collect(),
            )
        })
        .collect();
    for threads in [1, 3] {
        let stacked = run_on(threads, |ctx| {
            let tx = ctx.new_tensor(Type::F32, &[n_in as i64, 1]).set_input();
            let mut inputs = vec![(tx, f32_bytes(&x))];
            let mut ts = Vec::new();
            for (&(r, ty, _), (m1, m2)) in pairs.iter().zip(&mats) {
                let t1 = ctx.new_tensor(ty, &[n_in as i64, r as i64]).set_input();
                let t2 = ctx.new_tensor(ty, &[r as i64, n_in as i64]).set_input();
                inputs.push((t1, stored(m1, ty).1));
                inputs.push((t2, stored(m2, ty).1));
                ts.push((t1, t2));
            }
            let out = ctx.low_rank_updates(tx, &ts, s).expect("fits").set_output();
            (inputs, out)
        });
        for (j, (&(r, ty, _), (m1, m2))) in pairs.iter().zip(&mats).enumerate() {
            let single = run_on(threads, |ctx| {
                let tx = ctx.new_tensor(Type::F32, &[n_in as i64, 1]).set_input();
                let t1 = ctx.new_tensor(ty, &[n_in as i64, r as i64]).set_input();
                let t2 = ctx.new_tensor(ty, &[r as i64, n_in as i64]).set_input();
                let out = ctx
                    .low_rank_update(tx, tx, t1, t2, s)
                    .expect("fits")
                    .set_output();
                let inputs = vec![
                    (tx, f32_bytes(&x)),
                    (t1, stored(m1, ty).1),
                    (t2, stored(m2, ty).1),
                ];
                (inputs, out)
            });
            assert_eq!(
                &stacked[j * n_in..(j + 1) * n_in],
                &single[..],
                "column {j}, {threads} threads"
            );
        }
    }
    // Not for several tokens, nor for a pair that maps elsewhere than back to x.
    let ctx = Context::new(16, 16).unwrap();
    let x2 = ctx.new_tensor(Type::F32, &[n_in as i64, 2]);
    let a = ctx.new_tensor(Type::F32, &[n_in as i64, 4]);
    let b = ctx.new_tensor(Type::F32, &[4, n_in as i64]);
    assert!(ctx.low_rank_updates(x2, &[(a, b)], 1.0).is_none());
    let x1 = ctx.new_tensor(Type::F32, &[n_in as i64, 1]);
    let wide = ctx.new_tensor(Type::F32, &[4, n_in as i64 + 1]);
    assert!(ctx
        .low_rank_updates(x1, &[(a, b), (a, wide)], 1.0)
        .is_none());
    assert!(ctx.low_rank_updates(x1, &[(a, b), (a, b)], 1.0).is_some());
}

/// `block_diag_update` (DiaBlo at decode and over prompts, one node) against the batched
/// matmul + add it replaces, for F32 and F16 blocks, odd block sizes, 1 and 5 tokens and 1 or 3
/// threads.
#[test]
fn block_diag_update_equals_the_standard_ops() {
    let (bi, bo, nb) = (5i64, 3i64, 7i64);
    let val = |i: usize, m: usize| ((i * m % 19) as f32 - 9.0) / 11.0;
    let d: Vec<f32> = (0..(bi * bo * nb) as usize).map(|i| val(i, 5)).collect();
    let s = -1.25f32;
    for (ty, n) in [
        (Type::F32, 1i64),
        (Type::F16, 1),
        (Type::F32, 5),
        (Type::F16, 5),
    ] {
        let x: Vec<f32> = (0..(nb * bi * n) as usize).map(|i| val(i, 7)).collect();
        let base: Vec<f32> = (0..(nb * bo * n) as usize).map(|i| val(i, 3)).collect();
        let (dr, bytes) = stored(&d, ty);
        let compute = |threads: usize, fused: bool| -> Vec<f32> {
            run_on(threads, |ctx| {
                let tx = ctx.new_tensor(Type::F32, &[nb * bi, n]).set_input();
                let tb = ctx.new_tensor(Type::F32, &[nb * bo, n]).set_input();
                let td = ctx.new_tensor(ty, &[bi, bo, nb]).set_input();
                let out = if fused {
                    ctx.block_diag_update(tb, tx, td, s)
                        .expect("blocks that tile")
                } else {
                    // [bi, nb, n] -> [bi, n, nb]: a batch of nb matmuls, back to [bo, nb, n].
                    let xr = ctx.cont(ctx.permute(ctx.reshape(tx, &[bi, nb, n]), [0, 2, 1, 3]));
                    let prod = ctx.cont(ctx.permute(ctx.mul_mat(td, xr), [0, 2, 1, 3]));
                    ctx.add(tb, ctx.scale(ctx.reshape(prod, &[bo * nb, n]), s))
                }
                .set_output();
                let inputs = vec![
                    (tx, f32_bytes(&x)),
                    (tb, f32_bytes(&base)),
                    (td, bytes.clone()),
                ];
                (inputs, out)
            })
        };
        let standard = compute(1, false);
        for threads in [1, 3] {
            let fused = compute(threads, true);
            for t in 0..n as usize {
                for blk in 0..nb as usize {
                    for j in 0..bo as usize {
                        let r = blk * bo as usize + j;
                        let i = t * (nb * bo) as usize + r;
                        let xt = &x[t * (nb * bi) as usize..];
                        let exact: f64 = base[i] as f64
                            + s as f64
                                * (0..bi as usize)
                                    .map(|k| {
                                        dr[r * bi as usize + k] as f64
                                            * xt[blk * bi as usize + k] as f64
                                    })
                                    .sum::<f64>();
                        assert!(
                            (fused[i] - standard[i]).abs() < 2e-5,
                            "{ty:?} n={n} x{threads} {i}: {} vs {}",
                            fused[i],
                            standard[i]
                        );
                        let tol = if ty == Type::F16 { 2e-2 } else { 1e-5 };
                        assert!((fused[i] as f64 - exact).abs() < tol, "{ty:?} {i}");
                    }
                }
            }
        }
    }
    // Blocks that do not tile x, and trainable blocks, are declined.
    let ctx = Context::new(64, 64).unwrap();
    let x = ctx.new_tensor(Type::F32, &[nb * bi + 1, 1]);
    let b = ctx.new_tensor(Type::F32, &[nb * bo, 1]);
    let d = ctx.new_tensor(Type::F32, &[bi, bo, nb]);
    assert!(ctx.block_diag_update(b, x, d, 1.0).is_none());
    let x = ctx.new_tensor(Type::F32, &[nb * bi, 1]);
    assert!(ctx.block_diag_update(b, x, d, 1.0).is_some());
    let trainable = ctx.new_tensor(Type::F32, &[bi, bo, nb]).set_param();
    assert!(ctx.block_diag_update(b, x, trainable, 1.0).is_none());
}

/// `out_prod(a, b)` computed by ggml's kernel and, after `use_gemm_out_prod`, by the GEMM
/// node, against a naive f64 sum: 2-D, with `b` a transposed view (the input gradient of a
/// frozen F32 weight), and 3-D with `a` broadcast over the batches (ne2 = 2 vs 6); odd sizes,
/// 1 to 3 threads; batches of small products as DiaBlo's blocks make them.
#[test]
fn gemm_out_prod_matches_ggml_out_prod() {
    // (ne0 of a, rows k, ne0 of b, batches of a, batches of b, b given transposed)
    let cases = [
        (37i64, 29i64, 11i64, 1i64, 1i64, false),
        (8, 256, 576, 1, 1, false),
        (45, 17, 23, 1, 1, true),
        (19, 31, 13, 2, 6, false),
        (1, 5, 1, 1, 1, false),
        // DiaBlo-like batches of small products: the blocks' input gradient (a short inner
        // dimension, many columns) and their gradients (sums over the tokens of small outer
        // products).
        (9, 24, 256, 8, 8, false),
        (24, 300, 9, 4, 4, false),
        (9, 300, 24, 4, 4, false),
        (9, 20, 300, 1, 1, true),
        (70, 3, 5, 3, 3, false),
    ];
    for &(m, k, n, ba, bb, transposed) in &cases {
        let a: Vec<f32> = (0..m * k * ba)
            .map(|i| ((i * 7919 % 101) as f32 - 50.0) / 37.0)
            .collect();
        let b: Vec<f32> = (0..n * k * bb)
            .map(|i| ((i * 104729 % 89) as f32 - 44.0) / 29.0)
            .collect();
        // want[j][i] (batch q) = sum_r a[r][i] (batch q / (bb/ba)) * b[r][j] (batch q)
        let mut want = vec![0f64; (m * n * bb) as usize];
        for q in 0..bb {
            let qa = q / (bb / ba);
            for j in 0..n {
                for i in 0..m {
                    want[(q * n * m + j * m + i) as usize] = (0..k)
                        .map(|r| {
                            a[(qa * k * m + r * m + i) as usize] as f64
                                * b[(q * k * n + r * n + j) as usize] as f64
                        })
                        .sum();
                }
            }
        }
        for threads in 1..=3 {
            for gemm in [false, true] {
                let mut backend = Backend::cpu(threads).unwrap();
                backend.set_adaptive_threads(false);
                let ctx = Context::new(64, 64).unwrap();
                let ta = ctx.new_tensor(Type::F32, &[m, k, ba]).set_input();
                let (tb, b_bytes) = if transposed {
                    // b stored as [k, n] and viewed transposed as [n, k]
                    let mut bt = vec![0f32; (n * k) as usize];
                    for r in 0..k {
                        for j in 0..n {
                            bt[(j * k + r) as usize] = b[(r * n + j) as usize];
                        }
                    }
                    (
                        ctx.new_tensor(Type::F32, &[k, n]).set_input(),
                        f32_bytes(&bt),
                    )
                } else {
                    (
                        ctx.new_tensor(Type::F32, &[n, k, bb]).set_input(),
                        f32_bytes(&b),
                    )
                };
                let bv = if transposed { ctx.transpose(tb) } else { tb };
                let out = ctx.out_prod(ta, bv).set_output();
                let mut g = ctx.new_graph(64, false);
                g.build_forward_expand(out);
                let rewritten = if gemm { g.use_gemm_out_prod(&ctx) } else { 0 };
                assert_eq!(rewritten, usize::from(gemm));
                let mut alloc = GraphAllocator::new(&backend).unwrap();
                alloc.alloc(&g).unwrap();
                ta.write_bytes(0, &f32_bytes(&a)).unwrap();
                tb.write_bytes(0, &b_bytes).unwrap();
                backend.compute(&g).unwrap();
                let got = out.to_vec_f32().unwrap();
                assert_eq!(got.len(), want.len());
                for (i, (&x, &w)) in got.iter().zip(&want).enumerate() {
                    assert!(
                        (x as f64 - w).abs() <= 1e-4 * (1.0 + w.abs()),
                        "case {m}x{k}x{n} b{ba}/{bb} t{transposed} gemm {gemm} x{threads} at {i}: {x} vs {w}"
                    );
                }
            }
        }
    }
}

/// A Q4_1 product rewritten by `use_q4_1_split` (Q4_0 part on tinyBLAS plus per-block
/// offsets times the rounded activations' block sums) gives ggml's Q4_1 product up to f32
/// rounding: prompt-sized (the GEMM path) and odd token counts, shared activations (two
/// weights reading one input), 1 to 3 threads.
#[test]
fn q4_1_split_matches_the_q4_1_product() {
    let (n_in, n_out) = (576usize, 67usize);
    let w: Vec<f32> = (0..n_in * n_out)
        .map(|i| (((i * 7919) % 2003) as f32 / 2003.0 - 0.45) * 0.2)
        .collect();
    let q41 = quantize(Type::Q4_1, &w, n_out, n_in).unwrap();
    let (mut q40, mut off) = (Vec::new(), Vec::new());
    let row = Type::Q4_1.row_size(n_in as i64);
    for r in q41.chunks_exact(row) {
        graft_ggml::split_q4_1_row(r, n_in, &mut q40, &mut off).unwrap();
    }
    for n_tok in [1usize, 7, 64, 131] {
        let x: Vec<f32> = (0..n_in * n_tok)
            .map(|i| (((i * 104729) % 977) as f32 / 977.0 - 0.5) * 3.0)
            .collect();
        for threads in 1..=3 {
            let mut outs = Vec::new();
            for split in [false, true] {
                let mut backend = Backend::cpu(threads).unwrap();
                backend.set_adaptive_threads(false);
                let ctx = Context::new(64, 64).unwrap();
                let tw = ctx
                    .new_tensor(Type::Q4_1, &[n_in as i64, n_out as i64])
                    .set_input();
                let tx = ctx
                    .new_tensor(Type::F32, &[n_in as i64, n_tok as i64])
                    .set_input();
                // The split lives in its own buffer, as the trainer's copies do.
                let wctx = Context::new(4, 0).unwrap();
                let tq = wctx.new_tensor(Type::Q4_0, &[n_in as i64, n_out as i64]);
                let toff = wctx.new_tensor(Type::F32, &[2 * (n_in / 32) as i64, n_out as i64]);
                let _wbuf = backend.alloc_ctx_tensors(&wctx).unwrap();
                let y1 = ctx.mul_mat(tw, tx).set_output();
                let y2 = ctx.mul_mat(tw, tx).set_output();
                let mut g = ctx.new_graph(64, false);
                g.build_forward_expand(y1);
                g.build_forward_expand(y2);
                if split {
                    let n = g.use_q4_1_split(&ctx, |id| (id == tw.id()).then_some((tq, toff)));
                    assert_eq!(n, 2);
                }
                let mut alloc = GraphAllocator::new(&backend).unwrap();
                alloc.alloc(&g).unwrap();
                tw.write_bytes(0, &q41).unwrap();
                tx.write_bytes(0, &f32_bytes(&x)).unwrap();
                tq.write_bytes(0, &q40).unwrap();
                toff.write_bytes(0, &f32_bytes(&off)).unwrap();
                backend.compute(&g).unwrap();
                let (a, b) = (y1.to_vec_f32().unwrap(), y2.to_vec_f32().unwrap());
                assert_eq!(a, b);
                outs.push(a);
            }
            let scale = outs[0].iter().fold(0f32, |m, v| m.max(v.abs()));
            let worst = outs[0]
                .iter()
                .zip(&outs[1])
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            eprintln!("n_tok {n_tok} x{threads}: max |diff| {worst:e} of max |y| {scale}");
            assert!(
                worst <= 2e-6 * scale,
                "n_tok {n_tok} x{threads}: {worst} vs {scale}"
            );
        }
    }
}

/// The input gradient through a quantized (or F16) weight, `out_prod(W, transpose(g))` =
/// `Wᵀ g`, computed by ggml's kernel and, after `use_dequant_input_grads`, by dequantized
/// panels and an f32 GEMM, against an f64 sum over the dequantized weight: more rows than one
/// panel (300 > 256), a token count that is not a multiple of any tile, 1 to 3 threads.
#[test]
fn dequant_input_grads_match_ggml_out_prod() {
    let (n_in, n_out, n_tok) = (96usize, 300usize, 37usize);
    let w: Vec<f32> = (0..n_in * n_out)
        .map(|i| (((i * 7919) % 2003) as f32 / 2003.0 - 0.5) * 0.3)
        .collect();
    let g: Vec<f32> = (0..n_out * n_tok)
        .map(|i| (((i * 104729) % 977) as f32 / 977.0 - 0.5) * 2.0)
        .collect();
    for ty in [Type::Q4_1, Type::Q8_0, Type::F16] {
        let bytes = quantize(ty, &w, n_out, n_in).unwrap();
        let wd = graft_ggml::dequantize(ty, &bytes, n_in * n_out).unwrap();
        // want[t][i] = sum_o wd[o][i] * g[t][o]
        let want: Vec<f64> = (0..n_tok * n_in)
            .map(|ti| {
                let (t, i) = (ti / n_in, ti % n_in);
                (0..n_out)
                    .map(|o| wd[o * n_in + i] as f64 * g[t * n_out + o] as f64)
                    .sum()
            })
            .collect();
        for threads in 1..=3 {
            for gemm in [false, true] {
                let mut backend = Backend::cpu(threads).unwrap();
                backend.set_adaptive_threads(false);
                let ctx = Context::new(64, 64).unwrap();
                let tw = ctx.new_tensor(ty, &[n_in as i64, n_out as i64]).set_input();
                let tg = ctx
                    .new_tensor(Type::F32, &[n_out as i64, n_tok as i64])
                    .set_input();
                let out = ctx.out_prod(tw, ctx.transpose(tg)).set_output();
                let mut gr = ctx.new_graph(64, false);
                gr.build_forward_expand(out);
                let n = if gemm {
                    gr.use_dequant_input_grads(&ctx)
                } else {
                    0
                };
                assert_eq!(n, usize::from(gemm));
                let mut alloc = GraphAllocator::new(&backend).unwrap();
                alloc.alloc(&gr).unwrap();
                tw.write_bytes(0, &bytes).unwrap();
                tg.write_bytes(0, &f32_bytes(&g)).unwrap();
                backend.compute(&gr).unwrap();
                let got = out.to_vec_f32().unwrap();
                for (i, (&x, &y)) in got.iter().zip(&want).enumerate() {
                    assert!(
                        (x as f64 - y).abs() <= 1e-4 * (1.0 + y.abs()),
                        "{ty:?} gemm {gemm} x{threads} at {i}: {x} vs {y}"
                    );
                }
            }
        }
    }
}

/// `mul_mat(w, x)` after `use_gemm_mul_mat` (an f32 GEMM over dequantized weight panels)
/// against an f64 sum over the weight's dequantized values: F32 weights with a rank-sized
/// inner dimension (8, where ggml's GEMM does not apply), fewer rows than tokens (the tokens
/// are split), a permuted (strided) activation broadcast over batches (attention scores),
/// and Q4_1, Q8_0 and F16 weights with more rows than one panel; odd sizes, 1 to 3 threads.
/// ggml's own product is checked against the same sum where it computes in f32 (F32 weights).
#[test]
fn gemm_mul_mat_matches_an_f64_product() {
    // (weight type, k, weight rows m, tokens n, weight batches, activation batches, permuted)
    let cases = [
        (Type::F32, 8i64, 300i64, 37i64, 1i64, 1i64, false),
        (Type::F32, 576, 5, 37, 1, 1, false),
        (Type::F32, 64, 29, 31, 3, 9, true),
        // DiaBlo-like batches of small products, 7 batches over 1-3 threads.
        (Type::F32, 9, 24, 37, 7, 7, false),
        (Type::F32, 24, 9, 5, 7, 7, true),
        (Type::F32, 9, 70, 3, 4, 4, false),
        (Type::Q4_1, 96, 300, 37, 1, 1, false),
        (Type::Q8_0, 64, 513, 3, 1, 1, false),
        (Type::F16, 40, 260, 19, 1, 1, false),
    ];
    for &(ty, k, m, n, bw, bx, permuted) in &cases {
        let w: Vec<f32> = (0..k * m * bw)
            .map(|i| (((i * 7919) % 2003) as f32 / 2003.0 - 0.5) * 0.3)
            .collect();
        let x: Vec<f32> = (0..k * n * bx)
            .map(|i| (((i * 104729) % 977) as f32 / 977.0 - 0.5) * 2.0)
            .collect();
        let bytes = match ty {
            Type::F32 => f32_bytes(&w),
            _ => quantize(ty, &w, (m * bw) as usize, k as usize).unwrap(),
        };
        let wd = match ty {
            Type::F32 => w.clone(),
            _ => graft_ggml::dequantize(ty, &bytes, w.len()).unwrap(),
        };
        // x[kk, t, b] is stored at kk + k·t + k·n·b, or, permuted, at kk + k·b + k·bx·t.
        let xi = |kk: i64, t: i64, b: i64| match permuted {
            false => (kk + k * t + k * n * b) as usize,
            true => (kk + k * b + k * bx * t) as usize,
        };
        // want[b][t][i] = sum_kk wd[b / (bx/bw)][i][kk] * x[kk, t, b]
        let mut want = vec![0f64; (m * n * bx) as usize];
        for b in 0..bx {
            let bwi = b / (bx / bw);
            for t in 0..n {
                for i in 0..m {
                    want[(b * n * m + t * m + i) as usize] = (0..k)
                        .map(|kk| {
                            wd[(bwi * m * k + i * k + kk) as usize] as f64 * x[xi(kk, t, b)] as f64
                        })
                        .sum();
                }
            }
        }
        for threads in 1..=3 {
            for gemm in [false, true] {
                if !gemm && ty != Type::F32 {
                    continue; // ggml rounds the activations to the weight's dot-product type
                }
                let mut backend = Backend::cpu(threads).unwrap();
                backend.set_adaptive_threads(false);
                let ctx = Context::new(64, 64).unwrap();
                let tw = ctx.new_tensor(ty, &[k, m, bw]).set_input();
                let (tx, xv) = match permuted {
                    false => {
                        let t = ctx.new_tensor(Type::F32, &[k, n, bx]).set_input();
                        (t, t)
                    }
                    true => {
                        let t = ctx.new_tensor(Type::F32, &[k, bx, n]).set_input();
                        (t, ctx.permute(t, [0, 2, 1, 3]))
                    }
                };
                let out = ctx.mul_mat(tw, xv).set_output();
                let mut g = ctx.new_graph(64, false);
                g.build_forward_expand(out);
                let rewritten = if gemm { g.use_gemm_mul_mat(&ctx) } else { 0 };
                assert_eq!(rewritten, usize::from(gemm));
                let mut alloc = GraphAllocator::new(&backend).unwrap();
                alloc.alloc(&g).unwrap();
                tw.write_bytes(0, &bytes).unwrap();
                tx.write_bytes(0, &f32_bytes(&x)).unwrap();
                backend.compute(&g).unwrap();
                let got = out.to_vec_f32().unwrap();
                assert_eq!(got.len(), want.len());
                for (i, (&v, &y)) in got.iter().zip(&want).enumerate() {
                    assert!(
                        (v as f64 - y).abs() <= 1e-4 * (1.0 + y.abs()),
                        "{ty:?} {k}x{m}x{n} b{bw}/{bx} p{permuted} gemm {gemm} x{threads} at {i}: {v} vs {y}"
                    );
                }
            }
        }
    }
}

/// ggml's cross-entropy loss and, after `use_fast_cross_entropy`, the per-row custom node
/// summed: one-hot and soft labels, a row width that is not a multiple of the vector lanes,
/// rows over two dimensions, logits spread so wide that the exponentials span the f32 range
/// and so narrow that the log-sum-exp is most of the loss; 1 to 3 threads. Both against an
/// f64 log-softmax.
#[test]
fn fast_cross_entropy_matches_ggml() {
    // (row width, rows, row batches, soft labels, logit spread)
    let cases = [
        (1003i64, 7i64, 1i64, false, 60.0f32),
        (1003, 5, 1, false, 2.0),
        (49, 3, 2, true, 60.0),
    ];
    for (nc, ne1, ne2, soft, spread) in cases {
        let n = (nc * ne1 * ne2) as usize;
        let logits: Vec<f32> = (0..n)
            .map(|i| (((i * 7919) % 2003) as f32 / 2003.0 - 0.5) * spread)
            .collect();
        let mut labels = vec![0f32; n];
        for (r, row) in labels.chunks_mut(nc as usize).enumerate() {
            if soft {
                let z: f32 = (1..=nc).map(|j| j as f32).sum();
                for (j, v) in row.iter_mut().enumerate() {
                    *v = (j + 1) as f32 / z;
                }
            } else {
                row[(r * 37) % nc as usize] = 1.0;
            }
        }
        let rows = (ne1 * ne2) as usize;
        let want: f64 = logits
            .chunks(nc as usize)
            .zip(labels.chunks(nc as usize))
            .map(|(l, lab)| {
                let max = l.iter().fold(f32::NEG_INFINITY, |a, &v| a.max(v)) as f64;
                let lse = l.iter().map(|&v| (v as f64 - max).exp()).sum::<f64>().ln() + max;
                -l.iter()
                    .zip(lab)
                    .map(|(&v, &p)| p as f64 * (v as f64 - lse))
                    .sum::<f64>()
            })
            .sum::<f64>()
            / rows as f64;
        for threads in 1..=3 {
            for fast in [false, true] {
                let mut backend = Backend::cpu(threads).unwrap();
                backend.set_adaptive_threads(false);
                let ctx = Context::new(64, 64).unwrap();
                let tl = ctx.new_tensor(Type::F32, &[nc, ne1, ne2]).set_input();
                let tb = ctx.new_tensor(Type::F32, &[nc, ne1, ne2]).set_input();
                let loss = ctx.cross_entropy_loss(tl, tb).set_output();
                let mut g = ctx.new_graph(64, false);
                g.build_forward_expand(loss);
                let rewritten = if fast {
                    g.use_fast_cross_entropy(&ctx)
                } else {
                    0
                };
                assert_eq!(rewritten, usize::from(fast));
                let mut alloc = GraphAllocator::new(&backend).unwrap();
                alloc.alloc(&g).unwrap();
                tl.write_f32(0, &logits).unwrap();
                tb.write_f32(0, &labels).unwrap();
                backend.compute(&g).unwrap();
                let got = loss.to_vec_f32().unwrap()[0] as f64;
                assert!(
                    (got - want).abs() <= 1e-6 * want.abs(),
                    "{nc}x{ne1}x{ne2} soft {soft} fast {fast} x{threads}: {got} vs {want}"
                );
            }
        }
    }
}

/// The cross entropy with label ids (`use_sparse_cross_entropy`: forward and backward rewritten,
/// the one-hot labels never read) against ggml's nodes over the one-hot labels and an f64
/// reference: the loss, and the logits' gradient `(softmax - onehot) · scale / rows`. A row
/// width that is not a multiple of the vector lanes, rows over two dimensions, a wide and a
/// narrow logit spread, 1 to 3 threads; a loss scale as training uses.
#[test]
fn sparse_cross_entropy_matches_ggml_with_one_hot_labels() {
    // (row width, rows, row batches, logit spread)
    let cases = [
        (1003i64, 7i64, 1i64, 60.0f32),
        (1003, 5, 1, 2.0),
        (49, 3, 2, 20.0),
    ];
    let scale = 64.0f32;
    for (nc, ne1, ne2, spread) in cases {
        let (ncu, rows) = (nc as usize, (ne1 * ne2) as usize);
        let logits: Vec<f32> = (0..ncu * rows)
            .map(|i| (((i * 7919) % 2003) as f32 / 2003.0 - 0.5) * spread)
            .collect();
        let ids: Vec<i32> = (0..rows).map(|r| ((r * 37) % ncu) as i32).collect();
        let mut onehot = vec![0f32; ncu * rows];
        for (r, &j) in ids.iter().enumerate() {
            onehot[r * ncu + j as usize] = 1.0;
        }
        // f64: loss = mean over rows of lse - l[id]; grad = (softmax - onehot) * scale / rows
        let mut want_loss = 0f64;
        let mut want_grad = vec![0f64; ncu * rows];
        for r in 0..rows {
            let l = &logits[r * ncu..(r + 1) * ncu];
            let max = l.iter().fold(f32::NEG_INFINITY, |a, &v| a.max(v)) as f64;
            let z: f64 = l.iter().map(|&v| (v as f64 - max).exp()).sum();
            want_loss += (z.ln() + max - l[ids[r] as usize] as f64) / rows as f64;
            for j in 0..ncu {
                let p = (l[j] as f64 - max).exp() / z;
                let y = if j == ids[r] as usize { 1.0 } else { 0.0 };
                want_grad[r * ncu + j] = (p - y) * scale as f64 / rows as f64;
            }
        }
        let gmax = want_grad.iter().fold(0f64, |m, v| m.max(v.abs()));
        for threads in 1..=3 {
            for sparse in [false, true] {
                let mut backend = Backend::cpu(threads).unwrap();
                backend.set_adaptive_threads(false);
                let ctx = Context::with_graph(64, 64, true).unwrap();
                let tl = ctx.new_tensor(Type::F32, &[nc, ne1, ne2]).set_param();
                let tb = ctx.new_tensor(Type::F32, &[nc, ne1, ne2]).set_input();
                let ti = ctx.new_tensor(Type::I32, &[ne1 * ne2]).set_input();
                let loss = ctx.cross_entropy_loss(tl, tb).set_output();
                let mut g = ctx.new_graph(64, true);
                g.build_forward_expand(ctx.scale(loss, scale).set_loss());
                g.build_backward_expand(&ctx);
                let dense = if sparse {
                    g.use_sparse_cross_entropy(&ctx, tb, ti)
                } else {
                    true
                };
                assert_eq!(
                    dense, !sparse,
                    "the one-hot labels are read only without the rewrite"
                );
                let mut alloc = GraphAllocator::new(&backend).unwrap();
                alloc.alloc(&g).unwrap();
                tl.write_f32(0, &logits).unwrap();
                if sparse {
                    ti.write_i32(0, &ids).unwrap();
                }
                if dense {
                    tb.write_f32(0, &onehot).unwrap();
                }
                g.reset_grads();
                backend.compute(&g).unwrap();
                let got = loss.to_vec_f32().unwrap()[0] as f64;
                let what = format!("{nc}x{ne1}x{ne2} sparse {sparse} x{threads}");
                assert!(
                    (got - want_loss).abs() <= 1e-6 * want_loss.abs(),
                    "{what}: {got} vs {want_loss}"
                );
                let grad = g.grad(tl).unwrap().to_vec_f32().unwrap();
                for (i, (&v, &y)) in grad.iter().zip(&want_grad).enumerate() {
                    assert!(
                        (v as f64 - y).abs() <= 1e-5 * gmax,
                        "{what} at {i}: {v} vs {y}"
                    );
                }
            }
        }
    }
}

#[test]
fn derived_tensors_are_made_once_per_source_and_key_until_reset() {
    let mut ctx = Context::new(16, 0).unwrap();
    {
        let ctx = &ctx;
        let (a, b) = (
            ctx.new_tensor(Type::F32, &[4, 3]),
            ctx.new_tensor(Type::F32, &[4, 3]),
        );
        let made = std::cell::Cell::new(0);
        let copy = |src, what, p| {
            ctx.derived(src, what, p, || {
                made.set(made.get() + 1);
                ctx.cont(ctx.transpose(src))
            })
        };
        let first = copy(a, "t", 1);
        assert_eq!(copy(a, "t", 1).id(), first.id());
        assert_ne!(copy(a, "t", 2).id(), first.id());
        assert_ne!(copy(a, "u", 1).id(), first.id());
        assert_ne!(copy(b, "t", 1).id(), first.id());
        assert_eq!(made.get(), 4);
    }
    ctx.reset();
    let c = ctx.new_tensor(Type::F32, &[4, 3]);
    let mut made = false;
    ctx.derived(c, "t", 1, || {
        made = true;
        c
    });
    assert!(made, "a reset context derives anew");
}

/// ggml's `soft_max_ext` and, after `use_masked_softmax`, the custom node that stops each row
/// at the mask's last open column: a causal mask, a mask with holes and additive values, a
/// mask taller than the scores (as ggml pads it) broadcast over 3 heads; 1 to 3 threads.
/// Both against an f64 softmax.
#[test]
fn masked_softmax_matches_ggml() {
    let inf = f32::NEG_INFINITY;
    let (nkv, nq, heads, scale) = (37i64, 29i64, 3i64, 0.125f32);
    let mask_rows = nq + 3;
    let causal: Vec<f32> = (0..mask_rows * nkv)
        .map(|i| if i % nkv <= i / nkv + 5 { 0.0 } else { inf })
        .collect();
    let holes: Vec<f32> = (0..mask_rows * nkv)
        .map(|i| match (i * 7919) % 11 {
            0..=2 => inf,
            3 => -1.5,
            _ => 0.0,
        })
        .collect();
    let x: Vec<f32> = (0..nkv * nq * heads)
        .map(|i| (((i * 104729) % 977) as f32 / 977.0 - 0.5) * 20.0)
        .collect();
    for mask in [&causal, &holes] {
        let mut want = vec![0f64; x.len()];
        for h in 0..heads {
            for q in 0..nq {
                let row = ((h * nq + q) * nkv) as usize;
                let v: Vec<f64> = (0..nkv as usize)
                    .map(|k| x[row + k] as f64 * scale as f64 + mask[(q * nkv) as usize + k] as f64)
                    .collect();
                let max = v.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let sum: f64 = v.iter().map(|v| (v - max).exp()).sum();
                for k in 0..nkv as usize {
                    want[row + k] = (v[k] - max).exp() / sum;
                }
            }
        }
        for threads in 1..=3 {
            for custom in [false, true] {
                let mut backend = Backend::cpu(threads).unwrap();
                backend.set_adaptive_threads(false);
                let ctx = Context::new(64, 64).unwrap();
                let tx = ctx.new_tensor(Type::F32, &[nkv, nq, heads]).set_input();
                let tm = ctx.new_tensor(Type::F32, &[nkv, mask_rows]).set_input();
                let out = ctx.soft_max_ext(tx, Some(tm), scale).set_output();
                let mut g = ctx.new_graph(64, false);
                g.build_forward_expand(out);
                let rewritten = if custom {
                    g.use_masked_softmax(&ctx)
                } else {
                    0
                };
                assert_eq!(rewritten, usize::from(custom));
                let mut alloc = GraphAllocator::new(&backend).unwrap();
                alloc.alloc(&g).unwrap();
                tx.write_bytes(0, &f32_bytes(&x)).unwrap();
                tm.write_bytes(0, &f32_bytes(mask)).unwrap();
                backend.compute(&g).unwrap();
                let got = out.to_vec_f32().unwrap();
                for (i, (&v, &w)) in got.iter().zip(&want).enumerate() {
                    assert!(
                        (v as f64 - w).abs() <= 1e-6,
                        "custom {custom} x{threads} at {i}: {v} vs {w}"
                    );
                }
            }
        }
    }
}
