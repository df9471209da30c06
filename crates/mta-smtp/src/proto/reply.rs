//! SMTP replies: a basic code, an optional enhanced status code (RFC 3463) and text.

use std::borrow::Cow;
use std::fmt;

/// An RFC 3463 enhanced status code such as `5.7.1`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EnhancedCode {
    /// 2 (success), 4 (persistent transient) or 5 (permanent).
    pub class: u8,
    /// The subject (`7` = security or policy status, ...).
    pub subject: u16,
    /// The detail within the subject.
    pub detail: u16,
}

impl fmt::Display for EnhancedCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.class, self.subject, self.detail)
    }
}

/// One SMTP reply. Text with `\n` in it is sent as a multiline reply, one line per `\n`-separated part.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The three-digit basic code (RFC 5321 §4.2).
    pub code: u16,
    /// The enhanced status code put before the text of each line, when the reply carries one. The greeting and
    /// the replies to EHLO/HELO have none (RFC 2034).
    pub enhanced: Option<EnhancedCode>,
    /// Human-readable text; static for the common replies so building them does not allocate.
    pub text: Cow<'static, str>,
}

impl Reply {
    /// A reply with an enhanced status code given as `(class, subject, detail)`.
    pub fn new(code: u16, enhanced: (u8, u16, u16), text: impl Into<Cow<'static, str>>) -> Reply {
        Reply {
            code,
            enhanced: Some(EnhancedCode { class: enhanced.0, subject: enhanced.1, detail: enhanced.2 }),
            text: text.into(),
        }
    }

    /// A reply without an enhanced status code (greeting, EHLO/HELO replies, SASL challenges).
    pub fn basic(code: u16, text: impl Into<Cow<'static, str>>) -> Reply {
        Reply { code, enhanced: None, text: text.into() }
    }

    /// `const` constructor for replies kept in constants.
    pub const fn fixed(code: u16, class: u8, subject: u16, detail: u16, text: &'static str) -> Reply {
        Reply { code, enhanced: Some(EnhancedCode { class, subject, detail }), text: Cow::Borrowed(text) }
    }

    /// 2xx: the command succeeded.
    pub fn is_positive(&self) -> bool {
        (200..300).contains(&self.code)
    }

    /// 4xx: a transient failure, the client may retry later.
    pub fn is_transient(&self) -> bool {
        (400..500).contains(&self.code)
    }

    /// 5xx: a permanent failure.
    pub fn is_permanent(&self) -> bool {
        (500..600).contains(&self.code)
    }

    /// Appends the wire form (`code[-| ][enhanced ]text\r\n` per line) to `out`. CR and other control
    /// characters in the text are replaced by spaces so a handler's text can never break the framing.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        let code = self.code.min(999);
        let digits = [b'0' + (code / 100) as u8, b'0' + (code / 10 % 10) as u8, b'0' + (code % 10) as u8];
        let mut lines = self.text.split('\n').peekable();
        loop {
            let line = lines.next().unwrap_or("");
            let last = lines.peek().is_none();
            out.extend_from_slice(&digits);
            out.push(if last { b' ' } else { b'-' });
            if let Some(e) = self.enhanced {
                // Writing to a Vec cannot fail.
                let _ = std::io::Write::write_fmt(out, format_args!("{e} "));
            }
            out.extend(line.bytes().map(|b| if b < 0x20 || b == 0x7f { b' ' } else { b }));
            out.extend_from_slice(b"\r\n");
            if last {
                break;
            }
        }
    }
}

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut out = Vec::new();
        self.write_to(&mut out);
        f.write_str(String::from_utf8_lossy(&out).trim_end())
    }
}

/// Replies used in several places; handlers may use them too.
impl Reply {
    /// `250 2.0.0 Ok`
    pub const OK: Reply = Reply::fixed(250, 2, 0, 0, "Ok");
    /// `421 4.3.2 Service shutting down`: shutdown, or a new connection under back-pressure.
    pub const SHUTTING_DOWN: Reply = Reply::fixed(421, 4, 3, 2, "Service shutting down");
    /// `451 4.3.2 ...`: refuse a new transaction under back-pressure.
    pub const TRY_AGAIN_LATER: Reply = Reply::fixed(451, 4, 3, 2, "Service busy, try again later");
    /// `550 5.7.1 Relay access denied`: the recipient is not ours and the client may not relay.
    pub const RELAY_DENIED: Reply = Reply::fixed(550, 5, 7, 1, "Relay access denied");
    /// `503 5.5.1 Bad sequence of commands`
    pub const BAD_SEQUENCE: Reply = Reply::fixed(503, 5, 5, 1, "Error: bad sequence of commands");
    /// `552 5.3.4 Message size exceeds fixed maximum message size`
    pub const TOO_BIG: Reply = Reply::fixed(552, 5, 3, 4, "Message size exceeds fixed maximum message size");
    /// `451 4.3.0 Local error in processing`: the spool failed; the client keeps the message and retries.
    pub const LOCAL_ERROR: Reply = Reply::fixed(451, 4, 3, 0, "Error: local error in processing");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wire(r: &Reply) -> String {
        let mut v = Vec::new();
        r.write_to(&mut v);
        String::from_utf8(v).unwrap_or_default()
    }

    #[test]
    fn single_and_multi_line() {
        assert_eq!(wire(&Reply::OK), "250 2.0.0 Ok\r\n");
        assert_eq!(wire(&Reply::basic(250, "a\nb\nc")), "250-a\r\n250-b\r\n250 c\r\n");
        assert_eq!(wire(&Reply::new(550, (5, 7, 1), "x\ny")), "550-5.7.1 x\r\n550 5.7.1 y\r\n");
    }

    #[test]
    fn control_characters_are_neutralised() {
        assert_eq!(wire(&Reply::basic(550, "a\rb")), "550 a b\r\n");
        assert_eq!(Reply::TOO_BIG.to_string(), "552 5.3.4 Message size exceeds fixed maximum message size");
    }
}
