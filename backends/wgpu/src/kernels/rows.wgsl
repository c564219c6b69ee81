// Row operations, one workgroup of 256 per row of the node. VARIANT:
// 0 rms_norm (eps = op param 0), 1 soft_max (scale, op param 0; mask = src1 when bound),
// 2 argmax (i32 result), and the backward passes of training graphs, as ggml's CPU backend
// computes them: 3 rms_norm_back (src0 the gradient dz of the norm's output, src1 its input x:
// (dz - x * sum(x dz) / (sum(x x) + eps n)) / sqrt(sum(x x) / n + eps)), 4 soft_max_back (src0
// the gradient dy, src1 the softmax's output y: scale * (dy - dot(y, dy)) * y).
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
    let row = group_index(wg, nw);
    if (row >= ex(0)) {
        return;
    }
    let n = ne(1).x;
    let rc = coords(row, vec4<u32>(ne(1).y, ne(1).z, ne(1).w, 1u));
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
