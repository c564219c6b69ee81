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

// Matrix products round their activations (src1) as ggml's CPU backend does before its dot
// products, so both backends give the same results up to the order of float sums: to f16 for
// f16 weights, and to 8-bit blocks of 32 (scale d = max|x| / 127, q = round(x / d)) for
// quantized weights. `xq_s1` is the scale d and 1/d of the block at byte address x, `xq4_s1`
// those of four blocks.
fn f16r(v: f32) -> f32 {
    return unpack2x16float(f16_bits(v)).x;
}

fn f16r4(v: vec4<f32>) -> vec4<f32> {
    return vec4<f32>(f16r(v.x), f16r(v.y), f16r(v.z), f16r(v.w));
}

struct Xq {
    d: f32,
    id: f32,
}

fn xq_s1(x: u32) -> Xq {
    var amax = 0.0;
    for (var j = 0u; j < 32u; j++) {
        amax = max(amax, abs(ld_s1(x + 4u * j)));
    }
    let d = amax / 127.0;
    return Xq(d, select(0.0, 1.0 / d, d != 0.0));
}

struct Xq4 {
    d: vec4<f32>,
    id: vec4<f32>,
}

fn xq4_s1(x: vec4<u32>) -> Xq4 {
    var amax = vec4<f32>(0.0);
    for (var j = 0u; j < 32u; j++) {
        amax = max(amax, abs(ld4_s1(x + 4u * j)));
    }
    let d = amax / 127.0;
    return Xq4(d, select(vec4<f32>(0.0), 1.0 / d, d != vec4<f32>(0.0)));
}

// The f16 bits of v rounded to nearest, ties to even, as the CPU's F16C conversion does
// (WGSL leaves the rounding of pack2x16float to the implementation; lavapipe truncates).
fn f16_bits(v: f32) -> u32 {
    let x = bitcast<u32>(v);
    let sign = (x >> 16u) & 0x8000u;
    let a = x & 0x7fffffffu;
    if (a > 0x7f800000u) {
        return sign | 0x7e00u;
    }
    let e = i32(a >> 23u) - 112;
    if (e >= 31) {
        return sign | 0x7c00u;
    }
    var m = a & 0x7fffffu;
    var shift = 13u;
    var h = 0u;
    if (e <= 0) {
        if (e < -10) {
            return sign;
        }
        m = m | 0x800000u;
        shift = u32(14 - e);
    } else {
        h = u32(e) << 10u;
    }
    h = h | (m >> shift);
    let rem = m & ((1u << shift) - 1u);
    let half = 1u << (shift - 1u);
    if (rem > half || (rem == half && (h & 1u) == 1u)) {
        h = h + 1u;
    }
    return sign | h;
}
