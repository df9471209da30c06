//! Raw `content` straight from its JSON string literal to message bytes, in one pass and one output buffer.
//!
//! serde_json would first unescape the literal into a scratch buffer, then copy it into a `String`, which the
//! normalizer copies once more: three buffers of the message's size besides the request body. Here the literal
//! (already validated by serde_json as part of the body) is unescaped piece by piece, each piece fed to the
//! line-end [`Normalizer`] (and, with an `Idempotency-Key`, to the request fingerprint), so the only buffer is
//! the output, and it never grows: every escape decodes to at most as many bytes as it takes in the literal.

use memchr::{memchr, memchr2};

use super::error::ApiError;

/// Longest line of raw content, CRLF excluded (RFC 5322 §2.1.1).
pub const MAX_LINE: usize = 998;

/// Raw content made CRLF-clean as it streams in: a lone LF becomes CRLF, a bare CR or a line over
/// [`MAX_LINE`] octets is refused, a final CRLF is added when missing.
#[derive(Debug)]
pub struct Normalizer {
    out: Vec<u8>,
    /// Octets of the current line so far (pieces may split a line anywhere).
    line: usize,
    /// The last piece ended with a CR: the next byte must be its LF.
    cr: bool,
}

impl Normalizer {
    /// A normalizer whose output needs at most `capacity` bytes (no reallocation below that).
    pub fn with_capacity(capacity: usize) -> Self {
        Normalizer { out: Vec::with_capacity(capacity), line: 0, cr: false }
    }

    /// Append the next piece of the content.
    pub fn push(&mut self, mut piece: &[u8]) -> Result<(), ApiError> {
        while let Some(&first) = piece.first() {
            if self.cr {
                if first != b'\n' {
                    return Err(bare_cr());
                }
                self.end_line();
                self.cr = false;
                piece = &piece[1..];
                continue;
            }
            let end = memchr2(b'\r', b'\n', piece).unwrap_or(piece.len());
            self.line += end;
            if self.line > MAX_LINE {
                return Err(ApiError::bad_field(
                    "line_too_long",
                    "content",
                    format!("content has a line longer than {MAX_LINE} octets"),
                ));
            }
            let (text, rest) = piece.split_at(end);
            self.out.extend_from_slice(text);
            match rest.split_first() {
                None => break,
                Some((b'\n', after)) => {
                    self.end_line();
                    piece = after;
                }
                Some((_, after)) => {
                    self.cr = true;
                    piece = after;
                }
            }
        }
        Ok(())
    }

    fn end_line(&mut self) {
        self.out.extend_from_slice(b"\r\n");
        self.line = 0;
    }

    /// The message bytes; refused when empty or ending in a bare CR.
    pub fn finish(mut self) -> Result<Vec<u8>, ApiError> {
        if self.cr {
            return Err(bare_cr());
        }
        if self.out.is_empty() {
            return Err(ApiError::bad_field("invalid_content", "content", "content is empty"));
        }
        if !self.out.ends_with(b"\r\n") {
            self.out.extend_from_slice(b"\r\n");
        }
        Ok(self.out)
    }
}

fn bare_cr() -> ApiError {
    ApiError::bad_field("bare_cr", "content", "content contains a CR not followed by LF")
}

fn bad_string(why: &str) -> ApiError {
    ApiError::bad_field("invalid_json", "content", format!("content is not a valid JSON string: {why}"))
}

/// Unescape the JSON string literal `literal` (quotes included) and hand its UTF-8 bytes to `piece`, runs of
/// unescaped text as slices of `literal` (no copy), each escape as its few decoded bytes.
pub fn decode_string(literal: &[u8], mut piece: impl FnMut(&[u8]) -> Result<(), ApiError>) -> Result<(), ApiError> {
    let Some(mut rest) = literal.strip_prefix(b"\"").and_then(|l| l.strip_suffix(b"\"")) else {
        return Err(bad_string("not a string"));
    };
    loop {
        let Some(at) = memchr(b'\\', rest) else {
            if !rest.is_empty() {
                piece(rest)?;
            }
            return Ok(());
        };
        let (text, escape) = rest.split_at(at);
        if !text.is_empty() {
            piece(text)?;
        }
        let simple: &[u8] = match escape.get(1) {
            Some(b'"') => b"\"",
            Some(b'\\') => b"\\",
            Some(b'/') => b"/",
            Some(b'b') => b"\x08",
            Some(b'f') => b"\x0c",
            Some(b'n') => b"\n",
            Some(b'r') => b"\r",
            Some(b't') => b"\t",
            Some(b'u') => {
                let (ch, used) = unicode_escape(escape)?;
                let mut buf = [0u8; 4];
                piece(ch.encode_utf8(&mut buf).as_bytes())?;
                rest = escape.get(used..).unwrap_or_default();
                continue;
            }
            _ => return Err(bad_string("unknown escape")),
        };
        piece(simple)?;
        rest = escape.get(2..).unwrap_or_default();
    }
}

/// `\uXXXX` (or a `\uD8xx\uDCxx` surrogate pair) at the start of `escape`: the character and the bytes used.
fn unicode_escape(escape: &[u8]) -> Result<(char, usize), ApiError> {
    let first = hex4(escape.get(2..6))?;
    let code = match first {
        0xD800..=0xDBFF => {
            if escape.get(6..8) != Some(b"\\u") {
                return Err(bad_string("lone leading surrogate"));
            }
            let low = hex4(escape.get(8..12))?;
            if !(0xDC00..=0xDFFF).contains(&low) {
                return Err(bad_string("lone leading surrogate"));
            }
            let code = 0x10000 + ((u32::from(first) - 0xD800) << 10) + (u32::from(low) - 0xDC00);
            return char::from_u32(code).map(|c| (c, 12)).ok_or_else(|| bad_string("invalid surrogate pair"));
        }
        0xDC00..=0xDFFF => return Err(bad_string("lone trailing surrogate")),
        code => u32::from(code),
    };
    char::from_u32(code).map(|c| (c, 6)).ok_or_else(|| bad_string("invalid \\u escape"))
}

fn hex4(digits: Option<&[u8]>) -> Result<u16, ApiError> {
    let digits = digits.ok_or_else(|| bad_string("short \\u escape"))?;
    // from_str_radix alone would also take a sign.
    if !digits.iter().all(u8::is_ascii_hexdigit) {
        return Err(bad_string("invalid \\u escape"));
    }
    let text = std::str::from_utf8(digits).map_err(|_| bad_string("invalid \\u escape"))?;
    u16::from_str_radix(text, 16).map_err(|_| bad_string("invalid \\u escape"))
}

/// Write `piece` (decoded string bytes) escaped exactly as serde_json writes strings, so a fingerprint taken
/// while streaming equals one taken over a parsed `serde_json::Value`.
pub fn write_escaped(piece: &[u8], out: &mut impl std::io::Write) {
    let mut start = 0;
    for (i, &b) in piece.iter().enumerate() {
        let unicode;
        let escaped: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            0x08 => b"\\b",
            0x0c => b"\\f",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0..=0x1f => {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                unicode = [b'\\', b'u', b'0', b'0', HEX[usize::from(b >> 4)], HEX[usize::from(b & 0xf)]];
                &unicode
            }
            _ => continue,
        };
        // Writing into a hasher or a Vec cannot fail.
        let _ = out.write_all(&piece[start..i]);
        let _ = out.write_all(escaped);
        start = i + 1;
    }
    let _ = out.write_all(&piece[start..]);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(literal: &str) -> Result<Vec<u8>, ApiError> {
        let mut n = Normalizer::with_capacity(literal.len());
        decode_string(literal.as_bytes(), |p| n.push(p))?;
        n.finish()
    }

    fn normalize(s: &str) -> Result<Vec<u8>, ApiError> {
        let mut n = Normalizer::with_capacity(s.len());
        n.push(s.as_bytes())?;
        n.finish()
    }

    #[test]
    fn raw_lf_becomes_crlf_and_bare_cr_is_refused() {
        assert_eq!(normalize("A: b\n\nbody").unwrap(), b"A: b\r\n\r\nbody\r\n");
        assert_eq!(normalize("A: b\r\n\r\nbody\r\n").unwrap(), b"A: b\r\n\r\nbody\r\n");
        assert_eq!(normalize("A: b\r\n\rbody").unwrap_err().code, "bare_cr");
        assert_eq!(normalize(&"x".repeat(999)).unwrap_err().code, "line_too_long");
        assert!(normalize(&"x".repeat(998)).is_ok());
    }

    #[test]
    fn escapes_decode_and_line_ends_normalize_across_pieces() {
        let body = serde_json::to_string("A: b\r\nC: d\n\ntab\there \"q\" \\ / é € 😀\u{1}").unwrap();
        assert_eq!(decode(&body).unwrap(), "A: b\r\nC: d\r\n\r\ntab\there \"q\" \\ / é € 😀\u{1}\r\n".as_bytes());
        assert_eq!(decode(r#""x\u000d\u000Ay\/\ud83d\ude00""#).unwrap(), "x\r\ny/😀\r\n".as_bytes());
        assert_eq!(decode(r#""a\rb""#).unwrap_err().code, "bare_cr");
        assert_eq!(decode(r#""a\r""#).unwrap_err().code, "bare_cr");
        assert_eq!(decode(r#""""#).unwrap_err().code, "invalid_content");
        assert_eq!(decode(r#""\ud83d x""#).unwrap_err().code, "invalid_json");
        assert_eq!(decode(r#""\ude00""#).unwrap_err().code, "invalid_json");
        assert_eq!(decode(r#""\u12""#).unwrap_err().code, "invalid_json");
        assert_eq!(decode("[1]").unwrap_err().code, "invalid_json");
    }

    #[test]
    fn long_lines_are_counted_across_escapes() {
        let ok = format!("\"{}\\n{}\"", "x".repeat(998), "y".repeat(998));
        assert!(decode(&ok).is_ok());
        // 997 plain octets, then an escaped one: 998 is fine, a 999th is not.
        assert!(decode(&format!("\"{}\\t\"", "x".repeat(997))).is_ok());
        let e = decode(&format!("\"{}\\t\\t\"", "x".repeat(997))).unwrap_err();
        assert_eq!(e.code, "line_too_long");
    }

    #[test]
    fn output_never_outgrows_the_literal() {
        // The output buffer is sized by the literal: the worst cases must fit without growing.
        for s in ["\n", "\r\n", "a\nb\n", "\u{0}", "😀", "é", "x"] {
            let literal = serde_json::to_string(s).unwrap();
            let mut n = Normalizer::with_capacity(literal.len());
            decode_string(literal.as_bytes(), |p| n.push(p)).unwrap();
            let out = n.finish().unwrap();
            assert!(out.len() <= literal.len(), "{s:?}: {} > {}", out.len(), literal.len());
        }
    }

    #[test]
    fn escaping_matches_serde_json() {
        let mut text: String = (0u32..0x80).filter_map(char::from_u32).collect();
        text.push_str("é€😀\u{7f}\u{2028}");
        let mut ours = b"\"".to_vec();
        write_escaped(text.as_bytes(), &mut ours);
        ours.push(b'"');
        assert_eq!(String::from_utf8(ours).unwrap(), serde_json::to_string(&text).unwrap());
    }
}
