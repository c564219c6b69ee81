// Rotary position embedding (ggml's normal and NeoX modes, with YaRN; VARIANT 1: its backward
// pass ROPE_BACK, the inverse rotation), one invocation per
// pair of elements, which it reads before writing: the node may be computed in place. Positions (src1, i32) are indexed by dim 2; src2, when bound
// (ex(1) = 1), holds frequency factors.
// ex(0) = element pairs, ex(2) = theta_scale, ex(3), ex(4) = YaRN correction dims (host-computed as
// ggml's CPU backend does); op params: 1 n_dims, 2 mode, 6 freq_scale, 7 ext_factor,
// 8 attn_factor.
@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nw: vec3<u32>,
        @builtin(local_invocation_index) li: u32) {
    let i = group_index(wg, nw) * 256u + li;
    if (i >= ex(0)) {
        return;
    }
    let n = ne(0);
    // Pair slot s of row (c.y, c.z, c.w).
    let c = coords(i, vec4<u32>(n.x / 2u, n.y, n.z, n.w));
    let s = c.x;
    let n_dims = pi(1u);
    if (2u * s >= n_dims) {
        let a = vec4<u32>(2u * s, c.y, c.z, c.w);
        let b = vec4<u32>(2u * s + 1u, c.y, c.z, c.w);
        let x0 = ld_s0(addr(1u, a));
        let x1 = ld_s0(addr(1u, b));
        st_d(addr(0u, a), x0);
        st_d(addr(0u, b), x1);
        return;
    }
    // The pair's two elements; its frequency index i0 is 2s.
    var j0 = 2u * s;
    var j1 = j0 + 1u;
    if ((pi(2u) & 2u) != 0u) {
        j0 = s;
        j1 = s + n_dims / 2u;
    }
    // theta as ggml's CPU backend accumulates it: pos * theta_scale^s, one product at a time.
    var theta = f32(ldi_s1(off(2u) + c.z * nb(2).x));
    let theta_scale = exf(2u);
    for (var k = 0u; k < s; k++) {
        theta = theta * theta_scale;
    }
    if (ex(1) == 1u) {
        theta = theta / ld_s2(off(3u) + s * nb(3).x);
    }
    let freq_scale = pf(6u);
    let ext_factor = pf(7u);
    var mscale = pf(8u);
    var t = freq_scale * theta;
    if (ext_factor != 0.0) {
        let lo = exf(3u);
        let hi = exf(4u);
        let y = (f32(s) - lo) / max(0.001, hi - lo);
        let ramp = (1.0 - min(1.0, max(0.0, y))) * ext_factor;
        t = t * (1.0 - ramp) + theta * ramp;
        mscale = mscale * (1.0 + 0.1 * log(1.0 / freq_scale));
    }
    let cs = cos(t) * mscale;
    let sn = sin(t) * mscale * select(1.0, -1.0, VARIANT == 1u);
    let a = vec4<u32>(j0, c.y, c.z, c.w);
    let b = vec4<u32>(j1, c.y, c.z, c.w);
    let x0 = ld_s0(addr(1u, a));
    let x1 = ld_s0(addr(1u, b));
    st_d(addr(0u, a), x0 * cs - x1 * sn);
    st_d(addr(0u, b), x0 * sn + x1 * cs);
}
