// dst[i0, i1, i2, i3] = dot(src0 row i0 of matrix (i2/r2, i3/r3), src1 column i1 of (i2, i3)),
// one workgroup of 64 per output element; src0 is read block by block in its own format
// (`dot_s0`), src1 is f32. ex(0) = output elements, ex(1) = blocks per row.
var<workgroup> red: array<f32, 64>;

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nw: vec3<u32>,
        @builtin(local_invocation_index) li: u32) {
    let o = group_index(wg, nw);
    if (o >= ex(0)) {
        return;
    }
    let c = coords(o, ne(0));
    let r2 = ne(2).z / ne(1).z;
    let r3 = ne(2).w / ne(1).w;
    let row = addr(1u, vec4<u32>(0u, c.x, c.z / r2, c.w / r3));
    let col = addr(2u, vec4<u32>(0u, c.y, c.z, c.w));
    var s = 0.0;
    for (var b = li; b < ex(1); b += 64u) {
        s += dot_s0(row, b, col + b * QK_S0 * 4u);
    }
    red[li] = s;
    workgroupBarrier();
    for (var k = 32u; k > 0u; k = k >> 1u) {
        if (li < k) {
            red[li] = red[li] + red[li + k];
        }
        workgroupBarrier();
    }
    if (li == 0u) {
        st_d(addr(0u, c), red[0]);
    }
}
