//! Code-point classes and the GPT-2 byte <-> character mapping.
//!
//! The classes follow the scheme llama.cpp's pre-tokenizers use: every code point has exactly
//! one category flag (letter, number, punctuation, ...) derived from its Unicode general
//! category, plus a separate whitespace flag from the Unicode `White_Space` property.

use unicode_general_category::{get_general_category, GeneralCategory as G};

/// Category and helper flags of one code point.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct CpFlags(u16);

impl CpFlags {
    pub const UNDEFINED: u16 = 0x0001;
    pub const NUMBER: u16 = 0x0002;
    pub const LETTER: u16 = 0x0004;
    pub const SEPARATOR: u16 = 0x0008;
    pub const MARK: u16 = 0x0010;
    pub const PUNCTUATION: u16 = 0x0020;
    pub const SYMBOL: u16 = 0x0040;
    pub const CONTROL: u16 = 0x0080;
    pub const WHITESPACE: u16 = 0x0100;

    /// Flags of a code point outside the current chunk: nothing set.
    pub const NONE: CpFlags = CpFlags(0);

    pub fn of(c: char) -> CpFlags {
        let cat = match get_general_category(c) {
            G::UppercaseLetter
            | G::LowercaseLetter
            | G::TitlecaseLetter
            | G::ModifierLetter
            | G::OtherLetter => Self::LETTER,
            G::NonspacingMark | G::SpacingMark | G::EnclosingMark => Self::MARK,
            G::DecimalNumber | G::LetterNumber | G::OtherNumber => Self::NUMBER,
            G::ConnectorPunctuation
            | G::DashPunctuation
            | G::OpenPunctuation
            | G::ClosePunctuation
            | G::InitialPunctuation
            | G::FinalPunctuation
            | G::OtherPunctuation => Self::PUNCTUATION,
            G::MathSymbol | G::CurrencySymbol | G::ModifierSymbol | G::OtherSymbol => Self::SYMBOL,
            G::SpaceSeparator | G::LineSeparator | G::ParagraphSeparator => Self::SEPARATOR,
            G::Control | G::Format | G::Surrogate | G::PrivateUse => Self::CONTROL,
            _ => Self::UNDEFINED, // Unassigned (and any category added later)
        };
        let ws = if is_whitespace(c) {
            Self::WHITESPACE
        } else {
            0
        };
        CpFlags(cat | ws)
    }

    #[inline]
    pub fn is_letter(self) -> bool {
        self.0 & Self::LETTER != 0
    }
    #[inline]
    pub fn is_number(self) -> bool {
        self.0 & Self::NUMBER != 0
    }
    #[inline]
    pub fn is_mark(self) -> bool {
        self.0 & Self::MARK != 0
    }
    #[inline]
    pub fn is_whitespace(self) -> bool {
        self.0 & Self::WHITESPACE != 0
    }
    /// Any flag set, i.e. the position is inside the chunk.
    #[inline]
    pub fn any(self) -> bool {
        self.0 != 0
    }
    /// The category bits alone.
    #[inline]
    pub fn category(self) -> u16 {
        self.0 & 0x00FF
    }
}

/// Unicode `White_Space`.
pub(crate) fn is_whitespace(c: char) -> bool {
    matches!(
        c as u32,
        0x09..=0x0D
            | 0x20
            | 0x85
            | 0xA0
            | 0x1680
            | 0x2000..=0x200A
            | 0x2028
            | 0x2029
            | 0x202F
            | 0x205F
            | 0x3000
    )
}

/// Bytes that GPT-2's byte-level BPE maps to themselves.
fn byte_is_printable(b: u8) -> bool {
    matches!(b, 0x21..=0x7E | 0xA1..=0xAC | 0xAE..=0xFF)
}

/// GPT-2 byte-level encoding of one byte: printable Latin-1 bytes map to the same code point,
/// the other 68 bytes (0x00-0x20, 0x7F-0xA0, 0xAD) to U+0100.. in byte order.
pub(crate) fn byte_to_char(b: u8) -> char {
    let cp = match b {
        _ if byte_is_printable(b) => b as u32,
        0x00..=0x20 => 256 + b as u32,
        0x7F..=0xA0 => 256 + 33 + (b as u32 - 0x7F),
        _ => 256 + 67, // 0xAD
    };
    char::from_u32(cp).unwrap_or('\u{FFFD}')
}

/// Inverse of [`byte_to_char`].
pub(crate) fn char_to_byte(c: char) -> Option<u8> {
    let cp = c as u32;
    if cp < 256 {
        let b = cp as u8;
        return byte_is_printable(b).then_some(b);
    }
    match cp - 256 {
        n @ 0..=32 => Some(n as u8),
        n @ 33..=66 => Some((0x7F + n - 33) as u8),
        67 => Some(0xAD),
        _ => None,
    }
}

/// The 256 byte-level characters, indexed by byte.
pub(crate) fn byte_char_table() -> [char; 256] {
    let mut t = ['\0'; 256];
    for (b, slot) in t.iter_mut().enumerate() {
        *slot = byte_to_char(b as u8);
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_map_roundtrip() {
        for b in 0..=255u8 {
            assert_eq!(char_to_byte(byte_to_char(b)), Some(b));
        }
        assert_eq!(byte_to_char(b' '), '\u{120}'); // 'Ġ'
        assert_eq!(byte_to_char(b'\n'), '\u{10A}'); // 'Ċ'
        assert_eq!(byte_to_char(0xAD), '\u{143}');
    }

    #[test]
    fn flags() {
        assert!(CpFlags::of('a').is_letter());
        assert!(CpFlags::of('7').is_number());
        assert!(CpFlags::of('½').is_number());
        assert!(CpFlags::of(' ').is_whitespace());
        assert!(CpFlags::of('\u{3000}').is_whitespace());
        assert_eq!(CpFlags::of('!').category(), CpFlags::PUNCTUATION);
        assert_eq!(CpFlags::of('$').category(), CpFlags::SYMBOL);
        assert!(CpFlags::of('\u{0378}').any()); // unassigned still has a flag
    }
}
