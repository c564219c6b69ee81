//! ggml tensor element types: their GGUF ids, names and block layout.
//!
//! A quantized type stores elements in blocks: `block_size()` elements take `type_size()` bytes.
//! Ids, names and sizes match the ggml sources pinned by the workspace (`ggml.h` `enum ggml_type`,
//! `ggml.c` type traits, `ggml-common.h` block structs). Ids that ggml removed (4, 5, 31-33,
//! 36-38) are not types.

use std::fmt;

use crate::error::{FormatError, Result};

/// QK_K: elements per super-block of the k-quants and i-quants.
const QK_K: u64 = 256;

/// A ggml tensor element type, with ggml's numeric id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
#[allow(non_camel_case_types, missing_docs)]
pub enum GgmlType {
    F32 = 0,
    F16 = 1,
    Q4_0 = 2,
    Q4_1 = 3,
    Q5_0 = 6,
    Q5_1 = 7,
    Q8_0 = 8,
    Q8_1 = 9,
    Q2_K = 10,
    Q3_K = 11,
    Q4_K = 12,
    Q5_K = 13,
    Q6_K = 14,
    Q8_K = 15,
    IQ2_XXS = 16,
    IQ2_XS = 17,
    IQ3_XXS = 18,
    IQ1_S = 19,
    IQ4_NL = 20,
    IQ3_S = 21,
    IQ2_S = 22,
    IQ4_XS = 23,
    I8 = 24,
    I16 = 25,
    I32 = 26,
    I64 = 27,
    F64 = 28,
    IQ1_M = 29,
    BF16 = 30,
    TQ1_0 = 34,
    TQ2_0 = 35,
    MXFP4 = 39,
    NVFP4 = 40,
    Q1_0 = 41,
    Q2_0 = 42,
}

impl GgmlType {
    /// Every type, in id order.
    pub const ALL: [GgmlType; 35] = {
        use GgmlType::*;
        [
            F32, F16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q8_1, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, Q8_K,
            IQ2_XXS, IQ2_XS, IQ3_XXS, IQ1_S, IQ4_NL, IQ3_S, IQ2_S, IQ4_XS, I8, I16, I32, I64, F64,
            IQ1_M, BF16, TQ1_0, TQ2_0, MXFP4, NVFP4, Q1_0, Q2_0,
        ]
    };

    /// The type with ggml id `id`, or `None` for unknown and removed ids.
    pub fn from_u32(id: u32) -> Option<GgmlType> {
        use GgmlType::*;
        Some(match id {
            0 => F32,
            1 => F16,
            2 => Q4_0,
            3 => Q4_1,
            6 => Q5_0,
            7 => Q5_1,
            8 => Q8_0,
            9 => Q8_1,
            10 => Q2_K,
            11 => Q3_K,
            12 => Q4_K,
            13 => Q5_K,
            14 => Q6_K,
            15 => Q8_K,
            16 => IQ2_XXS,
            17 => IQ2_XS,
            18 => IQ3_XXS,
            19 => IQ1_S,
            20 => IQ4_NL,
            21 => IQ3_S,
            22 => IQ2_S,
            23 => IQ4_XS,
            24 => I8,
            25 => I16,
            26 => I32,
            27 => I64,
            28 => F64,
            29 => IQ1_M,
            30 => BF16,
            34 => TQ1_0,
            35 => TQ2_0,
            39 => MXFP4,
            40 => NVFP4,
            41 => Q1_0,
            42 => Q2_0,
            _ => return None,
        })
    }

    /// The ggml id.
    pub fn id(self) -> u32 {
        self as u32
    }

    /// `(elements per block, bytes per block)`.
    fn layout(self) -> (u64, u64) {
        use GgmlType::*;
        match self {
            F32 => (1, 4),
            F16 => (1, 2),
            BF16 => (1, 2),
            F64 => (1, 8),
            I8 => (1, 1),
            I16 => (1, 2),
            I32 => (1, 4),
            I64 => (1, 8),
            // 32-element blocks: an f16 scale (+ f16 min / extra bits) and packed quants.
            Q4_0 => (32, 18),
            Q4_1 => (32, 20),
            Q5_0 => (32, 22),
            Q5_1 => (32, 24),
            Q8_0 => (32, 34),
            Q8_1 => (32, 36),
            IQ4_NL => (32, 18),
            MXFP4 => (32, 17),
            NVFP4 => (64, 36),
            Q1_0 => (128, 18),
            Q2_0 => (64, 18),
            // 256-element super-blocks.
            Q2_K => (QK_K, 84),
            Q3_K => (QK_K, 110),
            Q4_K => (QK_K, 144),
            Q5_K => (QK_K, 176),
            Q6_K => (QK_K, 210),
            Q8_K => (QK_K, 292),
            IQ2_XXS => (QK_K, 66),
            IQ2_XS => (QK_K, 74),
            IQ3_XXS => (QK_K, 98),
            IQ1_S => (QK_K, 50),
            IQ3_S => (QK_K, 110),
            IQ2_S => (QK_K, 82),
            IQ4_XS => (QK_K, 136),
            IQ1_M => (QK_K, 56),
            TQ1_0 => (QK_K, 54),
            TQ2_0 => (QK_K, 66),
        }
    }

    /// Elements per block (1 for plain types).
    pub fn block_size(self) -> u64 {
        self.layout().0
    }

    /// Bytes per block.
    pub fn type_size(self) -> u64 {
        self.layout().1
    }

    /// Whether this is a block-quantized type (block size > 1).
    pub fn is_quantized(self) -> bool {
        self.block_size() > 1
    }

    /// ggml's name for the type ("f32", "q4_1", "q6_K", "iq2_xxs", ...).
    pub fn name(self) -> &'static str {
        use GgmlType::*;
        match self {
            F32 => "f32",
            F16 => "f16",
            Q4_0 => "q4_0",
            Q4_1 => "q4_1",
            Q5_0 => "q5_0",
            Q5_1 => "q5_1",
            Q8_0 => "q8_0",
            Q8_1 => "q8_1",
            Q2_K => "q2_K",
            Q3_K => "q3_K",
            Q4_K => "q4_K",
            Q5_K => "q5_K",
            Q6_K => "q6_K",
            Q8_K => "q8_K",
            IQ2_XXS => "iq2_xxs",
            IQ2_XS => "iq2_xs",
            IQ3_XXS => "iq3_xxs",
            IQ1_S => "iq1_s",
            IQ4_NL => "iq4_nl",
            IQ3_S => "iq3_s",
            IQ2_S => "iq2_s",
            IQ4_XS => "iq4_xs",
            I8 => "i8",
            I16 => "i16",
            I32 => "i32",
            I64 => "i64",
            F64 => "f64",
            IQ1_M => "iq1_m",
            BF16 => "bf16",
            TQ1_0 => "tq1_0",
            TQ2_0 => "tq2_0",
            MXFP4 => "mxfp4",
            NVFP4 => "nvfp4",
            Q1_0 => "q1_0",
            Q2_0 => "q2_0",
        }
    }

    /// Bytes taken by `n` consecutive elements (one row of `n` = ne0 elements).
    ///
    /// Fails if `n` is not a multiple of [`block_size`](Self::block_size) or the size overflows.
    pub fn row_bytes(self, n: u64) -> Result<u64> {
        let (bs, ts) = self.layout();
        if !n.is_multiple_of(bs) {
            return Err(FormatError::NotBlockMultiple {
                n,
                dtype: self.name(),
                block_size: bs,
            });
        }
        (n / bs)
            .checked_mul(ts)
            .ok_or_else(|| FormatError::TooLarge {
                what: "tensor byte size",
                item: String::new(),
                value: n,
                max: (u64::MAX / ts).saturating_mul(bs),
            })
    }
}

impl fmt::Display for GgmlType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl TryFrom<u32> for GgmlType {
    type Error = u32;

    /// Converts a ggml id; the error is the unknown id.
    fn try_from(id: u32) -> std::result::Result<Self, u32> {
        GgmlType::from_u32(id).ok_or(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_and_unknown_ids_are_none() {
        for t in GgmlType::ALL {
            assert_eq!(GgmlType::from_u32(t.id()), Some(t));
        }
        let known: Vec<u32> = GgmlType::ALL.iter().map(|t| t.id()).collect();
        for id in 0..100 {
            if !known.contains(&id) {
                assert_eq!(GgmlType::from_u32(id), None, "id {id}");
            }
        }
        for removed in [4, 5, 31, 32, 33, 36, 37, 38] {
            assert_eq!(GgmlType::from_u32(removed), None);
        }
    }

    #[test]
    fn sizes_match_ggml() {
        // Spot checks against ggml-common.h block layouts.
        assert_eq!(
            (GgmlType::Q4_0.block_size(), GgmlType::Q4_0.type_size()),
            (32, 18)
        );
        assert_eq!(
            (GgmlType::Q4_1.block_size(), GgmlType::Q4_1.type_size()),
            (32, 20)
        );
        assert_eq!(
            (GgmlType::Q8_0.block_size(), GgmlType::Q8_0.type_size()),
            (32, 34)
        );
        assert_eq!(
            (GgmlType::Q6_K.block_size(), GgmlType::Q6_K.type_size()),
            (256, 210)
        );
        assert_eq!(
            (GgmlType::Q8_K.block_size(), GgmlType::Q8_K.type_size()),
            (256, 292)
        );
        assert_eq!(
            (GgmlType::BF16.block_size(), GgmlType::BF16.type_size()),
            (1, 2)
        );
        for t in GgmlType::ALL {
            assert!(t.block_size() >= 1 && t.type_size() >= 1, "{t}");
            assert_eq!(t.is_quantized(), t.block_size() > 1);
        }
    }

    #[test]
    fn names_are_unique_and_display_matches() {
        let mut names: Vec<&str> = GgmlType::ALL.iter().map(|t| t.name()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), GgmlType::ALL.len());
        assert_eq!(GgmlType::Q4_1.to_string(), "q4_1");
        assert_eq!(GgmlType::Q4_K.to_string(), "q4_K");
    }

    #[test]
    fn row_bytes() {
        assert_eq!(GgmlType::F32.row_bytes(7).unwrap(), 28);
        assert_eq!(GgmlType::Q4_1.row_bytes(576).unwrap(), 18 * 20);
        assert!(matches!(
            GgmlType::Q4_0.row_bytes(33),
            Err(FormatError::NotBlockMultiple {
                n: 33,
                block_size: 32,
                ..
            })
        ));
        assert!(GgmlType::F64.row_bytes(u64::MAX).is_err());
        assert_eq!(GgmlType::Q8_0.row_bytes(0).unwrap(), 0);
    }
}
