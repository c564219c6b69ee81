// Row operations, one workgroup of 256 per row of the node. VARIANT:
// 0 rms_norm (eps = op param 0), 1 soft_max (scale, op param 0; mask = src1 when bound),
// 2 argmax (i32 result), and the backward passes of training graphs, as ggml's CPU backend
// computes them: 3 rms_norm_back (src0 the gradient dz of the norm's output, src1 its input x:
// (dz - x * sum(x dz) / (sum(x x) + eps n)) / sqrt(sum(x x) / n + eps)), 4 soft_max_back (src0
// the gradient dy, src1 the softmax's output y: scale * (dy - dot(y, dy)) * y), 5
// cross_entropy_loss (src0 logits, src1 target probabilities; one workgroup over every row:
// -sum over rows of dot(src1, log_softmax(src0)) / rows, a scalar), 6 cross_entropy_loss_back
// (src0 the loss's gradient d, src1 the logits, src2 the targets: (softmax - targets) * d / rows),
// 7 sum (of every element of src0, a scalar; one workgroup).
// ex(0) = number of rows, ex(1) = 1 when soft_max has a mask.
var<workgroup> red: array<f32, 256>;
var<workgroup> red_i: array<u32, 256>;

fn sum_all(li: u32, v: f32) -> f32 {
    red[li] = v;
    workgroupBarrier();
    for (var s = 128u; s > 0u; s = s >> 1u) {
        if (li < s) {
            red[li] = red[li] + red[li + s];
        }
        workgroupBarrier();
    }
    let r = red[0];
    workgroupBarrier();
    return r;
}

fn max_all(li: u32, v: f32) -> f32 {
    red[li] = v;
    workgroupBarrier();
    for (var s = 128u; s > 0u; s = s >> 1u) {
        if (li < s) {
            red[li] = max(red[li], red[li + s]);
        }
        workgroupBarrier();
    }
    let r = red[0];
    workgroupBarrier();
    return r;
}

fn softmax_in(c: vec4<u32>) -> f32 {
    var v = ld_s0(addr(1u, c)) * pf(0u);
    if (ex(1) == 1u) {
        v = v + mask(c);
    }
    return v;
}

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nw: vec3<u32>,
        @builtin(local_invocation_index) li: u32) {
    if (VARIANT == 5u) {
        cross_entropy(li);
        return;
    }
    if (VARIANT == 7u) {
        var s = 0.0;
        for (var i = li; i < ex(0); i += 256u) {
            s += ld_s0(addr(1u, coords(i, ne(1))));
        }
        s = sum_all(li, s);
        if (li == 0u) {
            st_d(off(0u), s);
        }
        return;
    }
    let row = group_index(wg, nw);
    if (row >= ex(0)) {
        return;
    }
    // Rows of src0, or of the node for cross_entropy_loss_back (its src0 is a scalar).
    let shape = select(ne(1), ne(0), VARIANT == 6u);
    let n = shape.x;
    let rc = coords(row, vec4<u32>(shape.y, shape.z, shape.w, 1u));
    let base = vec4<u32>(0u, rc.x, rc.y, rc.z);
    if (VARIANT == 0u) {
        var s = 0.0;
        for (var k = li; k < n; k += 256u) {
            let v = ld_s0(addr(1u, base + vec4<u32>(k, 0u, 0u, 0u)));
            s += v * v;
        }
        let scale = 1.0 / sqrt(sum_all(li, s) / f32(n) + pf(0u));
        for (var k = li; k < n; k += 256u) {
            let c = base + vec4<u32>(k, 0u, 0u, 0u);
            st_d(addr(0u, c), ld_s0(addr(1u, c)) * scale);
        }
    } else if (VARIANT == 3u) {
        var sxx = 0.0;
        var sxd = 0.0;
        for (var k = li; k < n; k += 256u) {
            let c = base + vec4<u32>(k, 0u, 0u, 0u);
            let x = ld_s1(addr(2u, c));
            sxx += x * x;
            sxd += x * ld_s0(addr(1u, c));
        }
        sxx = sum_all(li, sxx);
        sxd = sum_all(li, sxd);
        let eps = pf(0u);
        let rrms = 1.0 / sqrt(sxx / f32(n) + eps);
        let scale_x = -sxd / (sxx + eps * f32(n));
        for (var k = li; k < n; k += 256u) {
            let c = base + vec4<u32>(k, 0u, 0u, 0u);
            st_d(addr(0u, c), (ld_s0(addr(1u, c)) + ld_s1(addr(2u, c)) * scale_x) * rrms);
        }
    } else if (VARIANT == 4u) {
        var dot = 0.0;
        for (var k = li; k < n; k += 256u) {
            let c = base + vec4<u32>(k, 0u, 0u, 0u);
            dot += ld_s1(addr(2u, c)) * ld_s0(addr(1u, c));
        }
        dot = sum_all(li, dot);
        for (var k = li; k < n; k += 256u) {
            let c = base + vec4<u32>(k, 0u, 0u, 0u);
            st_d(addr(0u, c), pf(0u) * (ld_s0(addr(1u, c)) - dot) * ld_s1(addr(2u, c)));
        }
    } else if (VARIANT == 6u) {
        let ms = max_sum_exp(li, 2u, base, n);
        let m = ms.x;
        let s = ms.y;
        let d = ld_s0(off(1u)) / f32(ex(0));
        for (var k = li; k < n; k += 256u) {
            let c = base + vec4<u32>(k, 0u, 0u, 0u);
            st_d(addr(0u, c), (exp(ld_s1(addr(2u, c)) - m) / s - ld_s2(addr(3u, c))) * d);
        }
    } else if (VARIANT == 1u) {
        var m = -3.0e38;
        for (var k = li; k < n; k += 256u) {
            m = max(m, softmax_in(base + vec4<u32>(k, 0u, 0u, 0u)));
        }
        m = max_all(li, m);
        var s = 0.0;
        for (var k = li; k < n; k += 256u) {
            s += exp(softmax_in(base + vec4<u32>(k, 0u, 0u, 0u)) - m);
        }
        s = sum_all(li, s);
        for (var k = li; k < n; k += 256u) {
            let c = base + vec4<u32>(k, 0u, 0u, 0u);
            st_d(addr(0u, c), exp(softmax_in(c) - m) / s);
        }
    } else {
        var best = -3.4e38;
        var at = 0xffffffffu;
        for (var k = li; k < n; k += 256u) {
            let v = ld_s0(addr(1u, base + vec4<u32>(k, 0u, 0u, 0u)));
            if (v > best || at == 0xffffffffu) {
                best = v;
                at = k;
            }
        }
        red[li] = best;
        red_i[li] = at;
        workgroupBarrier();
        for (var s = 128u; s > 0u; s = s >> 1u) {
            if (li < s) {
                let bi = red_i[li + s];
                let bv = red[li + s];
                let ai = red_i[li];
                // The first index of the largest value, as ggml's CPU backend picks it.
                if (bi != 0xffffffffu && (ai == 0xffffffffu || bv > red[li] || (bv == red[li] && bi < ai))) {
                    red[li] = bv;
                    red_i[li] = bi;
                }
            }
            workgroupBarrier();
        }
        if (li == 0u) {
            sti_d(addr(0u, vec4<u32>(row % ne(0).x, row / ne(0).x, 0u, 0u)), i32(red_i[0]));
        }
    }
}

// The soft_max mask, broadcast over src0's rows.
fn mask(c: vec4<u32>) -> f32 {
    return ld_s1(addr(2u, c % ne(2)));
}

// The largest of the n values of the row at `base` in tensor t (1: src0, 2: src1), and the
// sum of their exponentials after subtracting it (the softmax's denominator).
fn max_sum_exp(li: u32, t: u32, base: vec4<u32>, n: u32) -> vec2<f32> {
    var m = -3.0e38;
    for (var k = li; k < n; k += 256u) {
        m = max(m, ld_row(t, base + vec4<u32>(k, 0u, 0u, 0u)));
    }
    m = max_all(li, m);
    var s = 0.0;
    for (var k = li; k < n; k += 256u) {
        s += exp(ld_row(t, base + vec4<u32>(k, 0u, 0u, 0u)) - m);
    }
    return vec2<f32>(m, sum_all(li, s));
}

fn ld_row(t: u32, c: vec4<u32>) -> f32 {
    if (t == 1u) {
        return ld_s0(addr(1u, c));
    }
    return ld_s1(addr(2u, c));
}

// The mean cross entropy over every row, in one workgroup (rows one after another).
fn cross_entropy(li: u32) {
    let n = ne(1).x;
    var total = 0.0;
    for (var row = 0u; row < ex(0); row++) {
        let rc = coords(row, vec4<u32>(ne(1).y, ne(1).z, ne(1).w, 1u));
        let base = vec4<u32>(0u, rc.x, rc.y, rc.z);
        let ms = max_sum_exp(li, 1u, base, n);
        let m = ms.x;
        let log_sum = log(ms.y);
        var t = 0.0;
        for (var k = li; k < n; k += 256u) {
            let c = base + vec4<u32>(k, 0u, 0u, 0u);
            t += (ld_s0(addr(1u, c)) - m - log_sum) * ld_s1(addr(2u, c));
        }
        total += sum_all(li, t);
    }
    if (li == 0u) {
        st_d(off(0u), -total / f32(ex(0)));
    }
}
