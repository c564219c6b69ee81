// One invocation per element of the node. VARIANT picks the operation:
// 0 add, 1 sub, 2 mul, 3 div (src1 broadcast over src0), 4 scale (x*s + b), 5 copy (between
// any shapes of the same element count: CPY, DUP, CONT), 6 swiglu.
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
    } else {
        r = swiglu(c);
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
