// dst[i0, i1, i2, i3] = dot(src0 row i0 of matrix (i2/r2, i3/r3), src1 column i1 of (i2, i3)).
// src0 is read block by block in its own format (`dot_s0`, `dot4_s0`), src1 is f32. Variants:
//   0  cooperative: one workgroup of 64 per output, the threads taking every 64th block of the
//      row and summing in workgroup memory (matrix-vector products on hardware GPUs);
//   1  one invocation per output, the whole row (matrix-vector products where barriers are
//      dear, as on software renderers);
//   2  one invocation per tile of 4 rows by 4 columns: each weight block is unpacked once for
//      4 columns (prompts). Columns past the end read the last column and are not stored;
//   3  the outer product OUT_PROD of the backward pass, one invocation per 4 outputs of a
//      row (i0; i1 .. i1+3): dst[i0, i1, i2, i3] = sum over m of src0[i0, m, i2/r2, i3/r3] *
//      src1[i1, m, i2, i3], each src0 element unpacked once (`deq_s0`) for the 4 columns, src1
//      at any strides (the backward pass hands it transposed views), summed in m's order as
//      the CPU does. Columns past the end read the last one and are not stored.
// ex(0) = outputs (0, 1) or tiles (2, 3); ex(1) = blocks per row.
var<workgroup> red: array<f32, 64>;

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nw: vec3<u32>,
        @builtin(local_invocation_index) li: u32) {
    if (VARIANT == 0u) {
        cooperative(group_index(wg, nw), li);
    } else {
        let g = group_index(wg, nw) * 64u + li;
        if (VARIANT == 1u) {
            per_output(g);
        } else if (VARIANT == 2u) {
            tile(g);
        } else {
            out_prod(g);
        }
    }
}

fn cooperative(o: u32, li: u32) {
    if (o >= ex(0)) {
        return;
    }
    let c = coords(o, ne(0));
    let row = src_row(c);
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

fn src_row(c: vec4<u32>) -> u32 {
    let r2 = ne(2).z / ne(1).z;
    let r3 = ne(2).w / ne(1).w;
    return addr(1u, vec4<u32>(0u, c.x, c.z / r2, c.w / r3));
}

fn per_output(o: u32) {
    if (o >= ex(0)) {
        return;
    }
    let c = coords(o, ne(0));
    let row = src_row(c);
    let col = addr(2u, vec4<u32>(0u, c.y, c.z, c.w));
    var s = 0.0;
    for (var b = 0u; b < ex(1); b++) {
        s += dot_s0(row, b, col + b * QK_S0 * 4u);
    }
    st_d(addr(0u, c), s);
}

fn tile(g: u32) {
    if (g >= ex(0)) {
        return;
    }
    let n = ne(0);
    let tm = (n.x + 3u) / 4u;
    let tn = (n.y + 3u) / 4u;
    let i0 = (g % tm) * 4u;
    let i1 = ((g / tm) % tn) * 4u;
    let zw = g / (tm * tn);
    let z = zw % n.z;
    let w = zw / n.z;
    let last = n.y - 1u;
    let xa = vec4<u32>(
        addr(2u, vec4<u32>(0u, min(i1, last), z, w)),
        addr(2u, vec4<u32>(0u, min(i1 + 1u, last), z, w)),
        addr(2u, vec4<u32>(0u, min(i1 + 2u, last), z, w)),
        addr(2u, vec4<u32>(0u, min(i1 + 3u, last), z, w)));
    let step = QK_S0 * 4u;
    for (var r = 0u; r < 4u; r++) {
        let i = i0 + r;
        if (i >= n.x) {
            break;
        }
        let row = src_row(vec4<u32>(i, 0u, z, w));
        var s = vec4<f32>(0.0);
        for (var b = 0u; b < ex(1); b++) {
            s += dot4_s0(row, b, xa + vec4<u32>(b * step));
        }
        for (var j = 0u; j < 4u; j++) {
            if (i1 + j < n.y) {
                st_d(addr(0u, vec4<u32>(i, i1 + j, z, w)), s[j]);
            }
        }
    }
}

fn out_prod(g: u32) {
    if (g >= ex(0)) {
        return;
    }
    let n = ne(0);
    let tn = (n.y + 3u) / 4u;
    let i = g % n.x;
    let j = ((g / n.x) % tn) * 4u;
    let zw = g / (n.x * tn);
    let z = zw % n.z;
    let w = zw / n.z;
    let r2 = ne(2).z / ne(1).z;
    let r3 = ne(2).w / ne(1).w;
    let last = n.y - 1u;
    let cols = vec4<u32>(j, min(j + 1u, last), min(j + 2u, last), min(j + 3u, last));
    var s = vec4<f32>(0.0);
    for (var m = 0u; m < ne(1).y; m++) {
        let a = deq_s0(addr(1u, vec4<u32>(0u, m, z / r2, w / r3)), i);
        let b = vec4<f32>(
            ld_s1(addr(2u, vec4<u32>(cols.x, m, z, w))),
            ld_s1(addr(2u, vec4<u32>(cols.y, m, z, w))),
            ld_s1(addr(2u, vec4<u32>(cols.z, m, z, w))),
            ld_s1(addr(2u, vec4<u32>(cols.w, m, z, w))));
        s = fma(vec4<f32>(a), b, s);
    }
    for (var k = 0u; k < 4u; k++) {
        if (j + k < n.y) {
            st_d(addr(0u, vec4<u32>(i, j + k, z, w)), s[k]);
        }
    }
}
