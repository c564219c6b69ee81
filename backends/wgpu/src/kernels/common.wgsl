// Shared by every kernel. The host prepends the storage bindings (`d` = the node, `s0`.. = its
// sources, all raw bytes as u32 words), their typed loaders (`ld_s0`, `deq_s0`, `st_d`, ...)
// and `const VARIANT`.
//
// Parameter block, one 256-byte slot per node (see graph.rs):
//   P[2t], P[2t+1]  ne and nb (strides in bytes) of tensor t (0 = dst, 1.. = sources)
//   P[8]            byte offset of each tensor inside its binding
//   P[9..13]        the node's op_params, as ggml stores them
//   P[13..16]       values the host computed for the kernel (element counts, constants)
@group(0) @binding(0) var<uniform> P: array<vec4<u32>, 16>;

fn ne(t: u32) -> vec4<u32> { return P[t * 2u]; }
fn nb(t: u32) -> vec4<u32> { return P[t * 2u + 1u]; }
fn off(t: u32) -> u32 { return P[8][t]; }
fn pi(i: u32) -> u32 { return P[9u + i / 4u][i % 4u]; }
fn pf(i: u32) -> f32 { return bitcast<f32>(pi(i)); }
fn ex(i: u32) -> u32 { return P[13u + i / 4u][i % 4u]; }
fn exf(i: u32) -> f32 { return bitcast<f32>(ex(i)); }

// Coordinates of the i-th element of a tensor of shape n, in ggml's order (dim 0 fastest).
fn coords(i: u32, n: vec4<u32>) -> vec4<u32> {
    let r = i / n.x;
    let r2 = r / n.y;
    return vec4<u32>(i % n.x, r % n.y, r2 % n.z, r2 / n.z);
}

// Byte address of coordinates c in tensor t.
fn addr(t: u32, c: vec4<u32>) -> u32 {
    let b = nb(t);
    return off(t) + c.x * b.x + c.y * b.y + c.z * b.z + c.w * b.w;
}

// The workgroup's index in a dispatch that may be spread over x and y.
fn group_index(wg: vec3<u32>, nw: vec3<u32>) -> u32 {
    return wg.x + wg.y * nw.x;
}

// Four elements of src1 (at four byte addresses) as one vector.
fn ld4_s1(x: vec4<u32>) -> vec4<f32> {
    return vec4<f32>(ld_s1(x.x), ld_s1(x.y), ld_s1(x.z), ld_s1(x.w));
}
