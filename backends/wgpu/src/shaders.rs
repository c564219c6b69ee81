//! WGSL sources: one file per op family (`kernels/*.wgsl`), specialised for the element types
//! of the node by typed loaders and stores generated here.
//!
//! Every tensor is bound as raw bytes in a `array<u32>`: f16 halves and quantized blocks are
//! unpacked from words, so no device feature beyond WebGPU's baseline is needed, and blocks of
//! 18, 20 or 34 bytes need no alignment. An f16 result is written with atomic bit operations
//! on its word, so two invocations writing the two halves of one word never race.

use graft_ggml_sys as sys;

/// The op families, each one WGSL file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Family {
    Elementwise,
    Rows,
    MulMat,
    Index,
    Rope,
}

impl Family {
    fn body(self) -> &'static str {
        match self {
            Self::Elementwise => include_str!("kernels/elementwise.wgsl"),
            Self::Rows => include_str!("kernels/rows.wgsl"),
            Self::MulMat => include_str!("kernels/mul_mat.wgsl"),
            Self::Index => include_str!("kernels/index.wgsl"),
            Self::Rope => include_str!("kernels/rope.wgsl"),
        }
    }
}

/// A compiled pipeline's identity: the family, its variant and the types of the node
/// (`types[0]`) and of each bound source.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Kernel {
    pub name: &'static str,
    pub family: Family,
    pub variant: u32,
    pub types: Vec<sys::ggml_type>,
}

impl Kernel {
    /// Storage buffers bound after the parameter block.
    pub fn storage_buffers(&self) -> usize {
        self.types.len()
    }
}

/// Element types the loaders read, and the formats `deq`/`dot` unpack.
pub(crate) fn readable(ty: sys::ggml_type) -> bool {
    matches!(
        ty,
        sys::GGML_TYPE_F32
            | sys::GGML_TYPE_F16
            | sys::GGML_TYPE_Q4_0
            | sys::GGML_TYPE_Q4_1
            | sys::GGML_TYPE_Q8_0
    )
}

/// The full WGSL source of `kernel`, reading its parameter block from a read-only storage
/// buffer when `params_in_storage` (see `Gpu::params_in_storage`), else from a uniform buffer.
pub(crate) fn source(kernel: &Kernel, params_in_storage: bool) -> String {
    let mut s = String::new();
    s.push_str(&format!("const VARIANT: u32 = {}u;\n", kernel.variant));
    let common = include_str!("kernels/common.wgsl");
    if params_in_storage {
        s.push_str(&common.replace("var<uniform> P:", "var<storage, read> P:"));
    } else {
        s.push_str(common);
    }
    for (i, &ty) in kernel.types.iter().enumerate() {
        if i == 0 {
            s.push_str(&dst_decl(ty));
        } else {
            s.push_str(&src_decl(&format!("s{}", i - 1), i as u32 + 1, ty));
        }
    }
    // Sources a variant does not bind still need their loaders to exist.
    for i in kernel.types.len()..=3 {
        let v = format!("s{}", i - 1);
        s.push_str(&format!(
            "fn ld_{v}(b: u32) -> f32 {{ return 0.0; }}\nfn ldi_{v}(b: u32) -> i32 {{ return 0; }}\n"
        ));
    }
    s.push_str(kernel.family.body());
    s
}

fn dst_decl(ty: sys::ggml_type) -> String {
    let mut s = String::new();
    if ty == sys::GGML_TYPE_F16 {
        s.push_str("@group(0) @binding(1) var<storage, read_write> d: array<atomic<u32>>;\n");
        s.push_str(
            "fn st_d(b: u32, v: f32) {\n\
             \x20   let sh = ((b >> 1u) & 1u) * 16u;\n\
             \x20   let h = f16_bits(v);\n\
             \x20   atomicAnd(&d[b >> 2u], ~(0xffffu << sh));\n\
             \x20   atomicOr(&d[b >> 2u], h << sh);\n\
             }\n",
        );
        s.push_str("fn sti_d(b: u32, v: i32) { }\n");
    } else {
        s.push_str("@group(0) @binding(1) var<storage, read_write> d: array<u32>;\n");
        s.push_str("fn st_d(b: u32, v: f32) { d[b >> 2u] = bitcast<u32>(v); }\n");
        s.push_str("fn sti_d(b: u32, v: i32) { d[b >> 2u] = bitcast<u32>(v); }\n");
    }
    s
}

fn src_decl(v: &str, binding: u32, ty: sys::ggml_type) -> String {
    let mut s =
        format!("@group(0) @binding({binding}) var<storage, read_write> {v}: array<u32>;\n");
    // Byte and half-word access at any (even, for halves) byte address.
    s.push_str(&format!(
        "fn byte_{v}(b: u32) -> u32 {{ return ({v}[b >> 2u] >> ((b & 3u) * 8u)) & 0xffu; }}\n\
         fn half_{v}(b: u32) -> f32 {{ return unpack2x16float({v}[b >> 2u])[(b >> 1u) & 1u]; }}\n\
         fn ldi_{v}(b: u32) -> i32 {{ return bitcast<i32>({v}[b >> 2u]); }}\n"
    ));
    // `dot` is written once for one column of src1 and made into `dot_` and `dot4_` by
    // `dot_fns`; it rounds src1 as ggml's CPU backend does (see kernels/common.wgsl).
    let (ld, qk, deq, dot) = match ty {
        sys::GGML_TYPE_F16 => (
            format!("return half_{v}(b);"),
            1,
            format!("return half_{v}(row + 2u * i);"),
            format!("return half_{v}(row + 2u * blk) * $R($LD(x));"),
        ),
        sys::GGML_TYPE_Q4_0 => (
            "return 0.0;".into(),
            32,
            format!(
                "let bb = row + (i / 32u) * 18u; let j = i % 32u;\n\
                 let q = byte_{v}(bb + 2u + j % 16u);\n\
                 return (f32(select(q & 15u, q >> 4u, j >= 16u)) - 8.0) * half_{v}(bb);"
            ),
            format!(
                "let bb = row + blk * 18u; let xs = $XQ(x); var s = $T(0.0);\n\
                 for (var j = 0u; j < 16u; j++) {{\n\
                 let q = byte_{v}(bb + 2u + j);\n\
                 s += (f32(q & 15u) - 8.0) * round($LD(x + 4u * j) * xs.id)\n\
                 + (f32(q >> 4u) - 8.0) * round($LD(x + 4u * (j + 16u)) * xs.id);\n\
                 }}\n\
                 return s * half_{v}(bb) * $R(xs.d);"
            ),
        ),
        sys::GGML_TYPE_Q4_1 => (
            "return 0.0;".into(),
            32,
            format!(
                "let bb = row + (i / 32u) * 20u; let j = i % 32u;\n\
                 let q = byte_{v}(bb + 4u + j % 16u);\n\
                 return f32(select(q & 15u, q >> 4u, j >= 16u)) * half_{v}(bb) + half_{v}(bb + 2u);"
            ),
            format!(
                "let bb = row + blk * 20u; let xs = $XQ(x); var s = $T(0.0); var sq = $T(0.0);\n\
                 for (var j = 0u; j < 16u; j++) {{\n\
                 let q = byte_{v}(bb + 4u + j);\n\
                 let x0 = round($LD(x + 4u * j) * xs.id); let x1 = round($LD(x + 4u * (j + 16u)) * xs.id);\n\
                 s += f32(q & 15u) * x0 + f32(q >> 4u) * x1; sq += x0 + x1;\n\
                 }}\n\
                 return s * half_{v}(bb) * $R(xs.d) + half_{v}(bb + 2u) * $R(xs.d * sq);"
            ),
        ),
        sys::GGML_TYPE_Q8_0 => (
            "return 0.0;".into(),
            32,
            format!(
                "let bb = row + (i / 32u) * 34u;\n\
                 let q = bitcast<i32>(byte_{v}(bb + 2u + i % 32u) << 24u) >> 24u;\n\
                 return f32(q) * half_{v}(bb);"
            ),
            format!(
                "let bb = row + blk * 34u; let xs = $XQ(x); var s = $T(0.0);\n\
                 for (var j = 0u; j < 32u; j++) {{\n\
                 let q = bitcast<i32>(byte_{v}(bb + 2u + j) << 24u) >> 24u;\n\
                 s += f32(q) * round($LD(x + 4u * j) * xs.id);\n\
                 }}\n\
                 return s * half_{v}(bb) * $R(xs.d);"
            ),
        ),
        // F32, and the integer index types (read through ldi_).
        _ => (
            format!("return bitcast<f32>({v}[b >> 2u]);"),
            1,
            format!("return bitcast<f32>({v}[(row >> 2u) + i]);"),
            format!("return bitcast<f32>({v}[(row >> 2u) + blk]) * $LD(x);"),
        ),
    };
    s.push_str(&format!("fn ld_{v}(b: u32) -> f32 {{ {ld} }}\n"));
    s.push_str(&format!("const QK_{}: u32 = {qk}u;\n", v.to_uppercase()));
    s.push_str(&format!(
        "fn deq_{v}(row: u32, i: u32) -> f32 {{\n{deq}\n}}\n"
    ));
    s.push_str(&dot_fns(v, &dot));
    s
}

/// `dot_{v}` (block `blk` of the row at byte `row` with the src1 column at byte `x`) and
/// `dot4_{v}` (the same block with four columns at once, `x` their four addresses) from one
/// body, whose `$T` is the result type, `$LD` src1's loader, `$XQ` its 8-bit block scale and
/// `$R` the rounding to f16.
fn dot_fns(v: &str, body: &str) -> String {
    let mut s = String::new();
    for (name, x, t, ld, xq, r) in [
        ("dot", "u32", "f32", "ld_s1", "xq_s1", "f16r"),
        (
            "dot4",
            "vec4<u32>",
            "vec4<f32>",
            "ld4_s1",
            "xq4_s1",
            "f16r4",
        ),
    ] {
        let b = body
            .replace("$T", t)
            .replace("$LD", ld)
            .replace("$XQ", xq)
            .replace("$R", r);
        s.push_str(&format!(
            "fn {name}_{v}(row: u32, blk: u32, x: {x}) -> {t} {{\n{b}\n}}\n"
        ));
    }
    s
}
