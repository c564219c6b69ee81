// One invocation per element of the node. VARIANT picks the operation:
// 0 add, 1 sub, 2 mul, 3 div (src1 broadcast over src0), 4 scale (x*s + b), 5 copy (between
// any shapes of the same element count: CPY, DUP, CONT), 6 swiglu, 7 acc (src0 plus src1
// added into the view of it that op params 0..3 describe: strides nb1, nb2, nb3, byte offset;
// the node and src0 contiguous, the view's rows and planes not overlapping), 8 silu, 9 the
// silu's backward pass (src0 the incoming gradient dy, src1 the silu's input x, as ggml's
// autodiff passes them: dy * s * (1 + x * (1 - s)) with s = sigmoid(x)), 10 repeat_back (the
// sum of src0's repeats of the node's shape, in the CPU's order), 11 repeat (src0 tiled over the
// node's shape).
// ex(0) = element count of the node.
@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nw: vec3<u32>,
        @builtin(local_invocation_index) li: u32) {
    let i = group_index(wg, nw) * 256u + li;
    if (i >= ex(0)) {
        return;
    }
    let c = coords(i, ne(0));
    var r: f32;
    if (VARIANT <= 3u) {
        let a = ld_s0(addr(1u, c));
        let b = ld_s1(addr(2u, c % ne(2)));
        if (VARIANT == 0u) { r = a + b; }
        else if (VARIANT == 1u) { r = a - b; }
        else if (VARIANT == 2u) { r = a * b; }
        else { r = a / b; }
    } else if (VARIANT == 4u) {
        r = ld_s0(addr(1u, c)) * pf(0u) + pf(1u);
    } else if (VARIANT == 5u) {
        r = ld_s0(addr(1u, coords(i, ne(1))));
    } else if (VARIANT == 6u) {
        r = swiglu(c);
    } else if (VARIANT == 8u) {
        let x = ld_s0(addr(1u, c));
        r = x / (1.0 + exp(-x));
    } else if (VARIANT == 11u) {
        r = ld_s0(addr(1u, c % ne(1)));
    } else if (VARIANT == 10u) {
        let nr = ne(1) / ne(0);
        let n0 = ne(0);
        r = 0.0;
        for (var k3 = 0u; k3 < nr.w; k3++) {
            for (var k2 = 0u; k2 < nr.z; k2++) {
                for (var k1 = 0u; k1 < nr.y; k1++) {
                    for (var k0 = 0u; k0 < nr.x; k0++) {
                        let k = vec4<u32>(k0, k1, k2, k3) * n0;
                        r += ld_s0(addr(1u, c + k));
                    }
                }
            }
        }
    } else if (VARIANT == 9u) {
        let x = ld_s1(addr(2u, c));
        let s = 1.0 / (1.0 + exp(-x));
        r = ld_s0(addr(1u, c)) * s * (1.0 + x * (1.0 - s));
    } else {
        r = ld_s0(addr(1u, c));
        let o = pi(3u);
        let p = i * 4u;
        if (p >= o) {
            var q = p - o;
            let c3 = q / pi(2u);
            q = q % pi(2u);
            let c2 = q / pi(1u);
            q = q % pi(1u);
            let c1 = q / pi(0u);
            let c0 = (q % pi(0u)) / 4u;
            let n1 = ne(2);
            if (c0 < n1.x && c1 < n1.y && c2 < n1.z && c3 < n1.w) {
                r += ld_s1(addr(2u, vec4<u32>(c0, c1, c2, c3)));
            }
        }
    }
    st_d(addr(0u, c), r);
}

// silu(a) * g. The gate is src1 when bound (ex(1) = 1); otherwise both halves are in src0's
// row, swapped when op param 1 says so.
fn swiglu(c: vec4<u32>) -> f32 {
    var a: f32;
    var g: f32;
    if (ex(1) == 1u) {
        a = ld_s0(addr(1u, c));
        g = ld_s1(addr(2u, c));
    } else {
        let nc = ne(0).x;
        let swapped = pi(1u) != 0u;
        a = ld_s0(addr(1u, c + vec4<u32>(select(0u, nc, swapped), 0u, 0u, 0u)));
        g = ld_s0(addr(1u, c + vec4<u32>(select(nc, 0u, swapped), 0u, 0u, 0u)));
    }
    return a / (1.0 + exp(-a)) * g;
}
