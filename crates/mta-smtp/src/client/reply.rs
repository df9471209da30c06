//! Reading server replies, sans-I/O: bytes in, [`Reply`] values out, with hard caps.

use std::borrow::Cow;

use crate::proto::reply::{EnhancedCode, Reply};

/// Longest reply line accepted, terminator excluded. RFC 5321 §4.5.3.1.5 says 512; real servers exceed it a
/// little (long EHLO keywords, verbose rejections), so we allow more, but never without bound.
pub const MAX_REPLY_LINE: usize = 4096;
/// Most lines in one multiline reply (EHLO replies are the longest in practice, about 20 lines).
pub const MAX_REPLY_LINES: usize = 128;

/// Why the server's bytes are not a reply. Each is fatal for the connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ReplyError {
    /// A line longer than [`MAX_REPLY_LINE`].
    #[error("reply line longer than {MAX_REPLY_LINE} octets")]
    LineTooLong,
    /// A multiline reply with more than [`MAX_REPLY_LINES`] lines.
    #[error("reply with more than {MAX_REPLY_LINES} lines")]
    TooManyLines,
    /// A line that does not start with a code 200..=599 followed by space, `-` or the end of the line.
    #[error("malformed reply line {0:?}")]
    Malformed(String),
    /// The lines of a multiline reply carry different codes.
    #[error("reply lines with different codes ({0} then {1})")]
    CodeMismatch(u16, u16),
}

/// Byte-fed reply reader. Feed it what the server sent; it consumes whole lines only and yields a [`Reply`] once
/// the last line (`NNN ` or `NNN`) of a reply has arrived. Continuation lines (`NNN-`) are kept inside the parser
/// (bounded by the caps), so the caller's buffer holds at most one partial line.
#[derive(Debug, Default)]
pub struct ReplyParser {
    code: Option<u16>,
    lines: Vec<String>,
}

impl ReplyParser {
    /// A parser between replies.
    pub fn new() -> ReplyParser {
        ReplyParser::default()
    }

    /// Consumes complete lines from the front of `input`. Returns how many bytes were consumed and the reply when
    /// its last line was among them; bytes after that line are left for the next call (pipelined replies).
    /// `Ok((n, None))`: need more bytes (drop the first `n`, keep the rest, read, call again).
    pub fn feed(&mut self, input: &[u8]) -> Result<(usize, Option<Reply>), ReplyError> {
        let mut pos = 0;
        loop {
            let rest = &input[pos..];
            let Some(nl) = memchr::memchr(b'\n', rest) else {
                if rest.len() > MAX_REPLY_LINE + 1 {
                    return self.fail(ReplyError::LineTooLong);
                }
                return Ok((pos, None));
            };
            let mut line = &rest[..nl];
            if let [head @ .., b'\r'] = line {
                line = head;
            }
            if line.len() > MAX_REPLY_LINE {
                return self.fail(ReplyError::LineTooLong);
            }
            pos += nl + 1;
            let (code, last, text) = match parse_line(line) {
                Ok(parts) => parts,
                Err(e) => return self.fail(e),
            };
            if let Some(first) = self.code {
                if first != code {
                    return self.fail(ReplyError::CodeMismatch(first, code));
                }
            }
            if self.lines.len() >= MAX_REPLY_LINES {
                return self.fail(ReplyError::TooManyLines);
            }
            self.code = Some(code);
            self.lines.push(String::from_utf8_lossy(text).into_owned());
            if last {
                return Ok((pos, Some(self.finish(code))));
            }
        }
    }

    fn fail<T>(&mut self, e: ReplyError) -> Result<T, ReplyError> {
        self.code = None;
        self.lines.clear();
        Err(e)
    }

    fn finish(&mut self, code: u16) -> Reply {
        self.code = None;
        let mut lines = std::mem::take(&mut self.lines);
        let enhanced = lines.first().and_then(|l| enhanced_prefix(code, l)).map(|(e, _)| e);
        if let Some(e) = enhanced {
            for line in &mut lines {
                if let Some((found, len)) = enhanced_prefix(code, line) {
                    if found == e {
                        line.drain(..len);
                    }
                }
            }
        }
        Reply { code, enhanced, text: Cow::Owned(lines.join("\n")) }
    }
}

/// `(code, is_last_line, text)` of one line without its terminator.
fn parse_line(line: &[u8]) -> Result<(u16, bool, &[u8]), ReplyError> {
    let malformed = || ReplyError::Malformed(String::from_utf8_lossy(&line[..line.len().min(80)]).into_owned());
    let [a, b, c, rest @ ..] = line else { return Err(malformed()) };
    if !(b'2'..=b'5').contains(a) || !b.is_ascii_digit() || !c.is_ascii_digit() {
        return Err(malformed());
    }
    let code = u16::from(a - b'0') * 100 + u16::from(b - b'0') * 10 + u16::from(c - b'0');
    match rest {
        [] => Ok((code, true, &[])),
        [b' ', text @ ..] => Ok((code, true, text)),
        [b'-', text @ ..] => Ok((code, false, text)),
        _ => Err(malformed()),
    }
}

/// An RFC 3463 code at the start of `text` whose class matches the reply code, and the length to strip (the code
/// and one following space).
fn enhanced_prefix(code: u16, text: &str) -> Option<(EnhancedCode, usize)> {
    let end = text.find(' ').unwrap_or(text.len());
    let mut parts = text[..end].split('.');
    let (class, subject, detail) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let number = |s: &str, max_len: usize| {
        (!s.is_empty() && s.len() <= max_len && s.bytes().all(|b| b.is_ascii_digit())).then(|| s.parse::<u16>().ok())?
    };
    let class = number(class, 1)? as u8;
    if u16::from(class) != code / 100 {
        return None;
    }
    let e = EnhancedCode { class, subject: number(subject, 3)?, detail: number(detail, 3)? };
    Some((e, (end + 1).min(text.len())))
}

/// What the server said it supports in its EHLO reply.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Capabilities {
    /// False after a HELO fallback: no extension at all.
    pub esmtp: bool,
    /// The name the server gave in the first line of its EHLO/HELO reply.
    pub server_name: String,
    /// `PIPELINING` (RFC 2920).
    pub pipelining: bool,
    /// `SIZE` (RFC 1870): `Some(0)` when offered without a limit.
    pub size: Option<u64>,
    /// `8BITMIME` (RFC 6152).
    pub eight_bit_mime: bool,
    /// `SMTPUTF8` (RFC 6531).
    pub smtputf8: bool,
    /// `CHUNKING` (RFC 3030): `BDAT`.
    pub chunking: bool,
    /// `STARTTLS` (RFC 3207).
    pub starttls: bool,
    /// `ENHANCEDSTATUSCODES` (RFC 2034).
    pub enhanced_status_codes: bool,
    /// Every extension line as the server sent it (keyword and parameters), for logging and [`Self::has`].
    pub extensions: Vec<String>,
}

impl Capabilities {
    /// Reads a 250 reply to EHLO.
    pub fn from_ehlo(reply: &Reply) -> Capabilities {
        let mut lines = reply.text.split('\n');
        let server_name = lines.next().unwrap_or("").split_whitespace().next().unwrap_or("").to_string();
        let mut caps = Capabilities { esmtp: true, server_name, ..Capabilities::default() };
        for line in lines {
            let mut words = line.split_whitespace();
            let Some(keyword) = words.next() else { continue };
            match keyword.to_ascii_uppercase().as_str() {
                "PIPELINING" => caps.pipelining = true,
                "SIZE" => caps.size = Some(words.next().and_then(|n| n.parse().ok()).unwrap_or(0)),
                "8BITMIME" => caps.eight_bit_mime = true,
                "SMTPUTF8" => caps.smtputf8 = true,
                "CHUNKING" => caps.chunking = true,
                "STARTTLS" => caps.starttls = true,
                "ENHANCEDSTATUSCODES" => caps.enhanced_status_codes = true,
                _ => {}
            }
            caps.extensions.push(line.trim().to_string());
        }
        caps
    }

    /// Reads a 250 reply to HELO: no extensions.
    pub fn from_helo(reply: &Reply) -> Capabilities {
        let server_name = reply.text.split_whitespace().next().unwrap_or("").to_string();
        Capabilities { server_name, ..Capabilities::default() }
    }

    /// Whether the server listed `keyword` (case-insensitive).
    pub fn has(&self, keyword: &str) -> bool {
        self.extensions.iter().any(|l| l.split_whitespace().next().is_some_and(|k| k.eq_ignore_ascii_case(keyword)))
    }

    /// The announced size limit, when there is one.
    pub fn max_size(&self) -> Option<u64> {
        self.size.filter(|&n| n > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn parse_all(input: &[u8]) -> Result<Vec<Reply>, ReplyError> {
        let mut p = ReplyParser::new();
        let mut out = Vec::new();
        let mut pos = 0;
        loop {
            let (n, reply) = p.feed(&input[pos..])?;
            pos += n;
            match reply {
                Some(r) => out.push(r),
                None => return Ok(out),
            }
        }
    }

    #[test]
    fn single_line_with_enhanced_code() {
        let r = parse_all(b"250 2.1.0 Ok\r\n").unwrap();
        assert_eq!(r, vec![Reply::new(250, (2, 1, 0), "Ok")]);
    }

    #[test]
    fn multiline_reply_strips_enhanced_code_from_each_line() {
        let r = parse_all(b"550-5.7.1 first\r\n550-5.7.1 second\r\n550 5.7.1 third\r\n").unwrap();
        assert_eq!(r, vec![Reply::new(550, (5, 7, 1), "first\nsecond\nthird")]);
        // And it formats back to the same wire bytes.
        let mut wire = Vec::new();
        r[0].write_to(&mut wire);
        assert_eq!(wire, b"550-5.7.1 first\r\n550-5.7.1 second\r\n550 5.7.1 third\r\n");
    }

    #[test]
    fn enhanced_code_must_match_the_class() {
        let r = parse_all(b"250 5.1.1 odd\r\n").unwrap();
        assert_eq!(r[0].enhanced, None);
        assert_eq!(r[0].text, "5.1.1 odd");
        let r = parse_all(b"451 4.7.1\r\n").unwrap();
        assert_eq!(r[0].enhanced, Some(EnhancedCode { class: 4, subject: 7, detail: 1 }));
        assert_eq!(r[0].text, "");
    }

    #[test]
    fn bare_code_lf_terminators_and_pipelined_replies() {
        let r = parse_all(b"250\n354 go ahead\r\n221 2.0.0 Bye\r\n").unwrap();
        assert_eq!(r.len(), 3);
        assert_eq!((r[0].code, r[1].code, r[2].code), (250, 354, 221));
        assert_eq!(r[1].text, "go ahead");
    }

    #[test]
    fn incomplete_input_consumes_only_whole_lines() {
        let mut p = ReplyParser::new();
        assert_eq!(p.feed(b"250-mx.example\r\n250-PIPEL").unwrap(), (16, None));
        let (n, r) = p.feed(b"250-PIPELINING\r\n250 SIZE 1000\r\n").unwrap();
        assert_eq!(n, 31);
        let caps = Capabilities::from_ehlo(&r.unwrap());
        assert!(caps.pipelining);
        assert_eq!(caps.size, Some(1000));
        assert_eq!(caps.server_name, "mx.example");
    }

    #[test]
    fn hostile_input_is_refused() {
        assert!(matches!(parse_all(b"hello\r\n"), Err(ReplyError::Malformed(_))));
        assert!(matches!(parse_all(b"199 no\r\n"), Err(ReplyError::Malformed(_))));
        assert!(matches!(parse_all(b"250x\r\n"), Err(ReplyError::Malformed(_))));
        assert_eq!(parse_all(b"250-a\r\n550 b\r\n"), Err(ReplyError::CodeMismatch(250, 550)));
        let long = vec![b'2'; MAX_REPLY_LINE + 10];
        assert_eq!(ReplyParser::new().feed(&long), Err(ReplyError::LineTooLong));
        let many = b"250-x\r\n".repeat(MAX_REPLY_LINES + 1);
        assert_eq!(parse_all(&many), Err(ReplyError::TooManyLines));
    }

    #[test]
    fn capabilities_from_ehlo() {
        let reply = parse_all(
            b"250-mx.example ESMTP\r\n250-pipelining\r\n250-SIZE\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n\
              250-CHUNKING\r\n250-STARTTLS\r\n250-AUTH PLAIN LOGIN\r\n250 ENHANCEDSTATUSCODES\r\n",
        )
        .unwrap()
        .remove(0);
        let caps = Capabilities::from_ehlo(&reply);
        assert!(caps.esmtp && caps.pipelining && caps.eight_bit_mime && caps.smtputf8 && caps.chunking);
        assert!(caps.starttls && caps.enhanced_status_codes);
        assert_eq!(caps.size, Some(0));
        assert_eq!(caps.max_size(), None);
        assert!(caps.has("auth"));
        assert!(!caps.has("DSN"));
    }

    proptest! {
        /// Arbitrary bytes, fed in arbitrary pieces, never panic, never consume more than given, and never
        /// leave more than one line's worth unconsumed.
        #[test]
        fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..6000), cut in 1usize..600) {
            let mut p = ReplyParser::new();
            let mut buf: Vec<u8> = Vec::new();
            for piece in data.chunks(cut) {
                buf.extend_from_slice(piece);
                loop {
                    match p.feed(&buf) {
                        Ok((n, reply)) => {
                            prop_assert!(n <= buf.len());
                            buf.drain(..n);
                            if reply.is_none() { break; }
                        }
                        Err(_) => { buf.clear(); p = ReplyParser::new(); break; }
                    }
                }
                prop_assert!(buf.len() <= MAX_REPLY_LINE + 1);
            }
        }

        /// Replies we format parse back to themselves.
        #[test]
        fn formatted_replies_round_trip(code in 200u16..600, e in proptest::option::of((0u16..1000, 0u16..1000)),
                                        lines in proptest::collection::vec("[a-zA-Z0-9 .,:-]{0,40}", 1..5)) {
            let text = lines.iter().map(|l| l.trim().to_string()).collect::<Vec<_>>().join("\n");
            let enhanced = e.map(|(s, d)| EnhancedCode { class: (code / 100) as u8, subject: s, detail: d });
            let reply = Reply { code, enhanced, text: text.into() };
            // A text that itself starts like an enhanced code is ambiguous without one; skip those.
            prop_assume!(enhanced.is_some() || enhanced_prefix(code, reply.text.split('\n').next().unwrap_or("")).is_none());
            let mut wire = Vec::new();
            reply.write_to(&mut wire);
            let parsed = parse_all(&wire).unwrap();
            prop_assert_eq!(parsed, vec![reply]);
        }
    }
}
