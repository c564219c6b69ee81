// Row gathers and scatters, one invocation per element. VARIANT:
// 0 get_rows: dst[i0, i10, i11, i12] = src0[i0, src1[i10, i11, i12], i11, i12] (src0 in any
//   format the loaders read), 1 set_rows: dst[i0, src1[i01, i02 % ne11, i03 % ne12], i02, i03]
//   = src0[i0, i01, i02, i03], 2 get_rows_back (2-D): dst[i0, r] = the sum of src0[i0, i] over
//   the i with src1[i] = r, in i's order as the CPU adds them.
// ex(0) = elements (of dst for get_rows, of src0 for set_rows).
@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nw: vec3<u32>,
        @builtin(local_invocation_index) li: u32) {
    let i = group_index(wg, nw) * 256u + li;
    if (i >= ex(0)) {
        return;
    }
    if (VARIANT == 0u) {
        let c = coords(i, ne(0));
        let r = u32(ldi_s1(addr(2u, vec4<u32>(c.y, c.z, c.w, 0u))));
        let row = addr(1u, vec4<u32>(0u, r, c.z, c.w));
        st_d(addr(0u, c), deq_s0(row, c.x));
    } else if (VARIANT == 2u) {
        let c = coords(i, ne(0));
        var s = 0.0;
        for (var k = 0u; k < ne(2).x; k++) {
            if (u32(ldi_s1(addr(2u, vec4<u32>(k, 0u, 0u, 0u)))) == c.y) {
                s += ld_s0(addr(1u, vec4<u32>(c.x, k, 0u, 0u)));
            }
        }
        st_d(addr(0u, c), s);
    } else {
        let c = coords(i, ne(1));
        let n1 = ne(2);
        let r = u32(ldi_s1(addr(2u, vec4<u32>(c.y, c.z % n1.y, c.w % n1.z, 0u))));
        st_d(addr(0u, vec4<u32>(c.x, r, c.z, c.w)), ld_s0(addr(1u, c)));
    }
}
