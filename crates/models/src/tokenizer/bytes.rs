//! GPT-2's reversible map between bytes and printable characters.
//!
//! Byte-level BPE vocabularies store every token as text in which each
//! byte of the underlying UTF-8 is one character: the 188 printable
//! Latin-1 bytes (`!`..=`~`, `¡`..=`¬`, `®`..=`ÿ`) stand for themselves,
//! and the other 68 (controls, space, DEL, NBSP, soft hyphen) are shifted to
//! U+0100.. in increasing byte order. A space is therefore `Ġ` (U+0120) and
//! a newline `Ċ` (U+010A).

/// Whether byte `b` is printed as itself.
const fn is_direct(b: u8) -> bool {
    matches!(b, 0x21..=0x7E | 0xA1..=0xAC | 0xAE..=0xFF)
}

/// The character that stands for each byte.
pub(crate) const BYTE_TO_CHAR: [char; 256] = {
    let mut table = ['\0'; 256];
    let mut shifted = 0u32;
    let mut b = 0usize;
    while b < 256 {
        let cp = if is_direct(b as u8) {
            b as u32
        } else {
            let cp = 256 + shifted;
            shifted += 1;
            cp
        };
        table[b] = match char::from_u32(cp) {
            Some(c) => c,
            None => '\0', // unreachable: every value is below U+0144
        };
        b += 1;
    }
    table
};

/// Inverse of [`BYTE_TO_CHAR`] over U+0000..U+0144 (`-1`: not a byte character).
const CHAR_TO_BYTE: [i16; 0x144] = {
    let mut table = [-1i16; 0x144];
    let mut b = 0usize;
    while b < 256 {
        table[BYTE_TO_CHAR[b] as usize] = b as i16;
        b += 1;
    }
    table
};

/// The byte a character stands for, if it is one of the 256 characters of
/// [`BYTE_TO_CHAR`].
pub(crate) fn char_to_byte(c: char) -> Option<u8> {
    let byte = *CHAR_TO_BYTE.get(c as usize)?;
    u8::try_from(byte).ok()
}

/// `bytes` written in GPT-2's byte characters (a token's text).
pub(crate) fn to_chars(bytes: &[u8]) -> String {
    bytes.iter().map(|&b| BYTE_TO_CHAR[b as usize]).collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn bijective_and_known_points() {
        let mut seen = std::collections::HashSet::new();
        for b in 0..=255u8 {
            let c = BYTE_TO_CHAR[b as usize];
            assert!(seen.insert(c), "duplicate char for byte {b}");
            assert_eq!(char_to_byte(c), Some(b));
        }
        assert_eq!(BYTE_TO_CHAR[b' ' as usize], '\u{120}');
        assert_eq!(BYTE_TO_CHAR[b'\n' as usize], '\u{10A}');
        assert_eq!(BYTE_TO_CHAR[b'a' as usize], 'a');
        assert_eq!(BYTE_TO_CHAR[0xAD], '\u{143}');
        assert_eq!(char_to_byte('\u{144}'), None);
        assert_eq!(char_to_byte('€'), None);
    }
}
