//! [`PeerText`]: bytes from a peer, safe to print on a terminal.

use std::fmt::{self, Write as _};

/// Displays bytes that came from a peer (a close reason, an error detail)
/// so that printing them cannot drive a terminal.
///
/// Printable UTF-8 is written as is. Everything else is written as a Rust
/// style escape made of printable ASCII:
///
/// - C0 control characters (U+0000–U+001F: ESC, BEL, CR, LF, TAB, …), DEL
///   (U+007F) and C1 control characters (U+0080–U+009F) as `\u{1b}`;
/// - the bidirectional overrides and isolates U+202A–U+202E and
///   U+2066–U+2069 (which reorder the rest of a line) as `\u{202e}`;
/// - each byte that is not part of valid UTF-8 as `\xff`.
///
/// The output therefore never contains a control character. A backslash is
/// printable and written as is, so the escaping is not reversible: it is for
/// people to read, not for machines to parse. Applying it twice gives the
/// same text as applying it once.
///
/// # Examples
///
/// ```
/// use qudag_transport::PeerText;
///
/// let hostile = b"\x1b[2J\x1b]0;pwned\x07ok \xff";
/// assert_eq!(
///     PeerText(hostile).to_string(),
///     r"\u{1b}[2J\u{1b}]0;pwned\u{7}ok \xff"
/// );
/// assert_eq!(PeerText(b"plain text").to_string(), "plain text");
/// ```
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct PeerText<'a>(pub &'a [u8]);

impl PeerText<'_> {
    /// True if `c` is written as an escape rather than as is.
    pub fn escapes(c: char) -> bool {
        c.is_control() || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
    }
}

impl fmt::Display for PeerText<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for chunk in self.0.utf8_chunks() {
            let valid = chunk.valid();
            let mut start = 0;
            for (i, c) in valid.char_indices() {
                if Self::escapes(c) {
                    f.write_str(&valid[start..i])?;
                    write!(f, "\\u{{{:x}}}", u32::from(c))?;
                    start = i + c.len_utf8();
                }
            }
            f.write_str(&valid[start..])?;
            for b in chunk.invalid() {
                write!(f, "\\x{b:02x}")?;
            }
        }
        Ok(())
    }
}

impl fmt::Debug for PeerText<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_char('"')?;
        fmt::Display::fmt(self, f)?;
        f.write_char('"')
    }
}

/// `s` with everything [`PeerText`] escapes escaped.
#[cfg_attr(not(feature = "quic"), allow(dead_code))]
pub(crate) fn escaped(s: impl AsRef<[u8]>) -> String {
    PeerText(s.as_ref()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn escapes_controls_bidi_and_bad_utf8() {
        let cases: [(&[u8], &str); 8] = [
            (b"\x1b[32mOK\x1b[0m", r"\u{1b}[32mOK\u{1b}[0m"),
            (b"a\rb\nc\td\x07\x00", r"a\u{d}b\u{a}c\u{9}d\u{7}\u{0}"),
            (b"\x7f", r"\u{7f}"),
            ("\u{85}\u{9b}".as_bytes(), r"\u{85}\u{9b}"),
            (
                "x\u{202e}y\u{2066}z\u{2069}".as_bytes(),
                r"x\u{202e}y\u{2066}z\u{2069}",
            ),
            (b"\xc3\x28 \xff\xfe", r"\xc3( \xff\xfe"),
            ("grüße 東京 ✓".as_bytes(), "grüße 東京 ✓"),
            (b"", ""),
        ];
        for (input, want) in cases {
            assert_eq!(PeerText(input).to_string(), want, "{input:?}");
        }
        assert_eq!(format!("{:?}", PeerText(b"a\x1b")), r#""a\u{1b}""#);
    }

    proptest! {
        /// The output never holds a control character or a bidi override.
        #[test]
        fn output_has_no_control_characters(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let out = PeerText(&bytes).to_string();
            prop_assert!(!out.chars().any(PeerText::escapes), "{:?}", out);
        }

        /// The same holds for any string of chars, however exotic.
        #[test]
        fn any_string_is_made_safe(s in any::<String>()) {
            let out = PeerText(s.as_bytes()).to_string();
            prop_assert!(!out.chars().any(PeerText::escapes), "{:?}", out);
        }

        /// Printable ASCII comes out unchanged.
        #[test]
        fn printable_ascii_round_trips(s in "[ -~]{0,200}") {
            prop_assert_eq!(PeerText(s.as_bytes()).to_string(), s);
        }

        /// Escaping twice is escaping once.
        #[test]
        fn idempotent(bytes in proptest::collection::vec(any::<u8>(), 0..128)) {
            let once = PeerText(&bytes).to_string();
            prop_assert_eq!(PeerText(once.as_bytes()).to_string(), once.clone());
        }
    }
}
