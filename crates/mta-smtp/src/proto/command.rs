//! SMTP command parsing (RFC 5321 §4.1, with the ESMTP parameters we announce).

use super::reply::Reply;
use std::net::{Ipv4Addr, Ipv6Addr};

/// `BODY=` of MAIL FROM (RFC 6152, RFC 3030).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Body {
    /// `BODY=7BIT`
    SevenBit,
    /// `BODY=8BITMIME`
    EightBitMime,
    /// `BODY=BINARYMIME` (needs BDAT; not announced by our server).
    BinaryMime,
}

/// Parameters of MAIL FROM we act on; RET and ENVID (DSN) are accepted and ignored.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MailParams {
    /// `SIZE=`: the client's estimate of the message size.
    pub size: Option<u64>,
    /// `BODY=`
    pub body: Option<Body>,
    /// `SMTPUTF8` (RFC 6531) was given.
    pub smtputf8: bool,
    /// `AUTH=` (RFC 4954), kept as given.
    pub auth: Option<String>,
}

/// A parsed command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `EHLO domain`
    Ehlo(String),
    /// `HELO domain`
    Helo(String),
    /// `MAIL FROM:<path> params`; an empty `sender` is the null sender `<>`.
    Mail {
        /// The reverse-path mailbox, source route stripped.
        sender: String,
        /// ESMTP parameters.
        params: MailParams,
    },
    /// `RCPT TO:<path>`; NOTIFY and ORCPT are accepted and ignored.
    Rcpt {
        /// The forward-path mailbox, source route stripped.
        recipient: String,
    },
    /// `DATA`
    Data,
    /// `BDAT size [LAST]` (RFC 3030).
    Bdat {
        /// Octets of the chunk that follow the command line.
        size: u64,
        /// Last chunk of the message.
        last: bool,
    },
    /// `RSET`
    Rset,
    /// `NOOP`
    Noop,
    /// `QUIT`
    Quit,
    /// `VRFY` (answered 252, never verified).
    Vrfy,
    /// `HELP`
    Help,
    /// `STARTTLS` (RFC 3207).
    StartTls,
    /// `AUTH mechanism [initial-response]` (RFC 4954).
    Auth {
        /// The mechanism name, upper-cased.
        mechanism: String,
        /// The base64 initial response (`=` means empty), when given.
        initial_response: Option<String>,
    },
}

/// Why a command line was refused; [`ParseError::reply`] gives the precise reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ParseError {
    /// Not a command we know: `500 5.5.1`.
    #[error("unknown command")]
    UnknownCommand,
    /// The arguments do not have the command's syntax: `501 5.5.2` with the expected syntax.
    #[error("syntax error: {0}")]
    Syntax(&'static str),
    /// A known parameter with a bad value, or a missing argument: `501 5.5.4`.
    #[error("bad parameter: {0}")]
    BadParameter(&'static str),
    /// The MAIL FROM path is not a valid address: `501 5.1.7`.
    #[error("bad sender address syntax")]
    BadSender,
    /// The RCPT TO path is not a valid address: `501 5.1.3`.
    #[error("bad recipient address syntax")]
    BadRecipient,
    /// A MAIL or RCPT parameter we do not support: `555 5.5.4`.
    #[error("unsupported parameter")]
    UnknownParameter,
}

impl ParseError {
    /// The reply to send for this error.
    pub fn reply(&self) -> Reply {
        match *self {
            ParseError::UnknownCommand => Reply::fixed(500, 5, 5, 1, "Error: command not recognized"),
            ParseError::Syntax(s) => Reply::new(501, (5, 5, 2), s),
            ParseError::BadParameter(s) => Reply::new(501, (5, 5, 4), s),
            ParseError::BadSender => Reply::fixed(501, 5, 1, 7, "Bad sender address syntax"),
            ParseError::BadRecipient => Reply::fixed(501, 5, 1, 3, "Bad recipient address syntax"),
            ParseError::UnknownParameter => Reply::fixed(555, 5, 5, 4, "Unsupported parameter"),
        }
    }
}

impl Command {
    /// Parses one command line (with or without its CRLF). Verbs and parameter names are case-insensitive.
    pub fn parse(line: &[u8]) -> Result<Command, ParseError> {
        let line = line.strip_suffix(b"\n").unwrap_or(line);
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let (verb, rest) = match memchr::memchr(b' ', line) {
            Some(i) => (&line[..i], trim(&line[i + 1..])),
            None => (line, &b""[..]),
        };
        let mut upper = [0u8; 8];
        if verb.len() > upper.len() {
            return Err(ParseError::UnknownCommand);
        }
        for (u, b) in upper.iter_mut().zip(verb) {
            *u = b.to_ascii_uppercase();
        }
        match &upper[..verb.len()] {
            b"EHLO" => Ok(Command::Ehlo(domain_arg(rest, "Syntax: EHLO hostname")?)),
            b"HELO" => Ok(Command::Helo(domain_arg(rest, "Syntax: HELO hostname")?)),
            b"MAIL" => parse_mail(rest),
            b"RCPT" => parse_rcpt(rest),
            b"DATA" => no_arg(rest, Command::Data, "Syntax: DATA"),
            b"BDAT" => parse_bdat(rest),
            b"RSET" => no_arg(rest, Command::Rset, "Syntax: RSET"),
            b"NOOP" => Ok(Command::Noop),
            b"QUIT" => no_arg(rest, Command::Quit, "Syntax: QUIT"),
            b"VRFY" => Ok(Command::Vrfy),
            b"HELP" => Ok(Command::Help),
            b"STARTTLS" => no_arg(rest, Command::StartTls, "Syntax: STARTTLS"),
            b"AUTH" => parse_auth(rest),
            _ => Err(ParseError::UnknownCommand),
        }
    }
}

fn trim(s: &[u8]) -> &[u8] {
    let start = s.iter().position(|b| !matches!(b, b' ' | b'\t')).unwrap_or(s.len());
    let end = s.iter().rposition(|b| !matches!(b, b' ' | b'\t')).map_or(start, |i| i + 1);
    &s[start..end.max(start)]
}

fn no_arg(rest: &[u8], cmd: Command, syntax: &'static str) -> Result<Command, ParseError> {
    if rest.is_empty() {
        Ok(cmd)
    } else {
        Err(ParseError::Syntax(syntax))
    }
}

fn tokens(s: &[u8]) -> impl Iterator<Item = &[u8]> {
    s.split(|b| *b == b' ').filter(|t| !t.is_empty())
}

fn domain_arg(rest: &[u8], syntax: &'static str) -> Result<String, ParseError> {
    let name = tokens(rest).next().ok_or(ParseError::BadParameter(syntax))?;
    if name.iter().any(|b| b.is_ascii_control()) {
        return Err(ParseError::BadParameter(syntax));
    }
    String::from_utf8(name.to_vec()).map_err(|_| ParseError::BadParameter(syntax))
}

/// Strips `keyword` (like `FROM:`) case-insensitively, and spaces after it (a common deviation we tolerate).
fn after_keyword<'a>(rest: &'a [u8], keyword: &[u8]) -> Option<&'a [u8]> {
    if rest.len() < keyword.len() || !rest[..keyword.len()].eq_ignore_ascii_case(keyword) {
        return None;
    }
    Some(trim(&rest[keyword.len()..]))
}

fn parse_mail(rest: &[u8]) -> Result<Command, ParseError> {
    let syntax = ParseError::Syntax("Syntax: MAIL FROM:<address>");
    let s = after_keyword(rest, b"FROM:").ok_or(syntax)?;
    let (sender, params_text) = parse_path(s, true, false).map_err(|e| e.unwrap_or(ParseError::BadSender))?;
    let mut params = MailParams::default();
    for p in tokens(params_text) {
        let (key, value) = split_param(p);
        if key.eq_ignore_ascii_case(b"SIZE") {
            let v = value.ok_or(ParseError::BadParameter("Bad SIZE parameter"))?;
            params.size = Some(parse_number(v).ok_or(ParseError::BadParameter("Bad SIZE parameter"))?);
        } else if key.eq_ignore_ascii_case(b"BODY") {
            let v = value.unwrap_or_default();
            params.body = Some(if v.eq_ignore_ascii_case(b"7BIT") {
                Body::SevenBit
            } else if v.eq_ignore_ascii_case(b"8BITMIME") {
                Body::EightBitMime
            } else if v.eq_ignore_ascii_case(b"BINARYMIME") {
                Body::BinaryMime
            } else {
                return Err(ParseError::BadParameter("Bad BODY parameter"));
            });
        } else if key.eq_ignore_ascii_case(b"SMTPUTF8") {
            if value.is_some() {
                return Err(ParseError::BadParameter("Bad SMTPUTF8 parameter"));
            }
            params.smtputf8 = true;
        } else if key.eq_ignore_ascii_case(b"AUTH") {
            let v = value.ok_or(ParseError::BadParameter("Bad AUTH parameter"))?;
            params.auth = Some(String::from_utf8_lossy(v).into_owned());
        } else if key.eq_ignore_ascii_case(b"RET") || key.eq_ignore_ascii_case(b"ENVID") {
            // DSN parameters: accepted, not acted on.
        } else {
            return Err(ParseError::UnknownParameter);
        }
    }
    Ok(Command::Mail { sender, params })
}

fn parse_rcpt(rest: &[u8]) -> Result<Command, ParseError> {
    let syntax = ParseError::Syntax("Syntax: RCPT TO:<address>");
    let s = after_keyword(rest, b"TO:").ok_or(syntax)?;
    let (recipient, params_text) = parse_path(s, false, true).map_err(|e| e.unwrap_or(ParseError::BadRecipient))?;
    for p in tokens(params_text) {
        let (key, _) = split_param(p);
        if !(key.eq_ignore_ascii_case(b"NOTIFY") || key.eq_ignore_ascii_case(b"ORCPT")) {
            return Err(ParseError::UnknownParameter);
        }
    }
    Ok(Command::Rcpt { recipient })
}

fn parse_bdat(rest: &[u8]) -> Result<Command, ParseError> {
    let syntax = ParseError::Syntax("Syntax: BDAT size [LAST]");
    let mut t = tokens(rest);
    let size = t.next().and_then(parse_number).ok_or(syntax)?;
    let last = match t.next() {
        None => false,
        Some(l) if l.eq_ignore_ascii_case(b"LAST") => true,
        Some(_) => return Err(syntax),
    };
    if t.next().is_some() {
        return Err(syntax);
    }
    Ok(Command::Bdat { size, last })
}

fn parse_auth(rest: &[u8]) -> Result<Command, ParseError> {
    let syntax = ParseError::Syntax("Syntax: AUTH mechanism [initial-response]");
    let mut t = tokens(rest);
    let mech = t.next().ok_or(syntax)?;
    let initial = t.next();
    if t.next().is_some() || !mech.iter().all(|b| b.is_ascii_alphanumeric() || *b == b'-' || *b == b'_') {
        return Err(syntax);
    }
    let initial_response = match initial {
        Some(i) if i.iter().all(|b| b.is_ascii_graphic()) => Some(String::from_utf8_lossy(i).into_owned()),
        Some(_) => return Err(syntax),
        None => None,
    };
    Ok(Command::Auth { mechanism: String::from_utf8_lossy(mech).to_ascii_uppercase(), initial_response })
}

fn split_param(p: &[u8]) -> (&[u8], Option<&[u8]>) {
    match memchr::memchr(b'=', p) {
        Some(i) => (&p[..i], Some(&p[i + 1..])),
        None => (p, None),
    }
}

fn parse_number(s: &[u8]) -> Option<u64> {
    if s.is_empty() || s.len() > 20 || !s.iter().all(u8::is_ascii_digit) {
        return None;
    }
    s.iter().try_fold(0u64, |n, d| n.checked_mul(10)?.checked_add(u64::from(d - b'0')))
}

/// Parses `<path>` at the start of `s`; returns the mailbox and what follows the `>`.
/// `Err(None)` means a bad address (the caller picks 5.1.7 or 5.1.3), `Err(Some(e))` a syntax error.
fn parse_path(s: &[u8], allow_null: bool, allow_postmaster: bool) -> Result<(String, &[u8]), Option<ParseError>> {
    if s.first() != Some(&b'<') {
        return Err(None);
    }
    let mut in_quote = false;
    let mut escaped = false;
    let mut end = None;
    for (i, &b) in s.iter().enumerate().skip(1) {
        if escaped {
            escaped = false;
        } else if in_quote && b == b'\\' {
            escaped = true;
        } else if b == b'"' {
            in_quote = !in_quote;
        } else if b == b'>' && !in_quote {
            end = Some(i);
            break;
        }
    }
    let end = end.ok_or(None)?;
    let rest = &s[end + 1..];
    if !rest.is_empty() && rest[0] != b' ' {
        return Err(None);
    }
    let mut inner = &s[1..end];
    if inner.is_empty() {
        return if allow_null { Ok((String::new(), rest)) } else { Err(None) };
    }
    if inner[0] == b'@' {
        // A source route (`@a,@b:`): obsolete, must be accepted and ignored (RFC 5321 §4.1.2, C.).
        let colon = memchr::memchr(b':', inner).ok_or(None)?;
        for hop in inner[..colon].split(|b| *b == b',') {
            match hop.split_first() {
                Some((b'@', d)) if valid_domain(d) => {}
                _ => return Err(None),
            }
        }
        inner = &inner[colon + 1..];
    }
    if allow_postmaster && inner.eq_ignore_ascii_case(b"postmaster") {
        return Ok(("postmaster".to_owned(), rest));
    }
    if inner.len() > 254 || !valid_mailbox(inner) {
        return Err(None);
    }
    let mailbox = std::str::from_utf8(inner).map_err(|_| None)?;
    Ok((mailbox.to_owned(), rest))
}

fn valid_mailbox(m: &[u8]) -> bool {
    let local_end = if m.first() == Some(&b'"') {
        match quoted_end(m) {
            Some(e) => e,
            None => return false,
        }
    } else {
        match memchr::memrchr(b'@', m) {
            Some(at) if valid_dot_string(&m[..at]) => at,
            _ => return false,
        }
    };
    match m[local_end..].split_first() {
        Some((b'@', domain)) => valid_domain(domain) || valid_address_literal(domain),
        _ => false,
    }
}

/// Index just past the closing quote of the quoted string that starts `m`.
fn quoted_end(m: &[u8]) -> Option<usize> {
    let mut i = 1;
    while i < m.len() {
        match m[i] {
            b'"' => return Some(i + 1),
            b'\\' if i + 1 < m.len() && (32..=126).contains(&m[i + 1]) => i += 2,
            b if b >= 0x80 || ((32..=126).contains(&b) && b != b'\\') => i += 1,
            _ => return None,
        }
    }
    None
}

fn is_atext(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b >= 0x80 || b"!#$%&'*+-/=?^_`{|}~".contains(&b)
}

fn valid_dot_string(s: &[u8]) -> bool {
    !s.is_empty() && s.split(|b| *b == b'.').all(|atom| !atom.is_empty() && atom.iter().all(|b| is_atext(*b)))
}

fn valid_domain(d: &[u8]) -> bool {
    !d.is_empty()
        && d.len() <= 255
        && d.split(|b| *b == b'.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label.iter().all(|b| b.is_ascii_alphanumeric() || *b == b'-' || *b >= 0x80)
                && label[0] != b'-'
                && label[label.len() - 1] != b'-'
        })
}

fn valid_address_literal(d: &[u8]) -> bool {
    let Some(inner) = d.strip_prefix(b"[").and_then(|d| d.strip_suffix(b"]")) else {
        return false;
    };
    let Ok(text) = std::str::from_utf8(inner) else {
        return false;
    };
    if text.parse::<Ipv4Addr>().is_ok() {
        return true;
    }
    match text.split_once(':') {
        Some((tag, addr)) if tag.eq_ignore_ascii_case("IPv6") => addr.parse::<Ipv6Addr>().is_ok(),
        Some((tag, content)) => {
            valid_domain(tag.as_bytes())
                && !tag.bytes().any(|b| b >= 0x80)
                && !content.is_empty()
                && content.bytes().all(|b| (33..=90).contains(&b) || (94..=126).contains(&b))
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mail(s: &str) -> Result<(String, MailParams), ParseError> {
        match Command::parse(s.as_bytes())? {
            Command::Mail { sender, params } => Ok((sender, params)),
            other => panic!("not MAIL: {other:?}"),
        }
    }

    fn rcpt(s: &str) -> Result<String, ParseError> {
        match Command::parse(s.as_bytes())? {
            Command::Rcpt { recipient } => Ok(recipient),
            other => panic!("not RCPT: {other:?}"),
        }
    }

    #[test]
    fn verbs_are_case_insensitive() {
        assert_eq!(Command::parse(b"ehlo client.example\r\n"), Ok(Command::Ehlo("client.example".into())));
        assert_eq!(Command::parse(b"Helo x"), Ok(Command::Helo("x".into())));
        assert_eq!(Command::parse(b"data"), Ok(Command::Data));
        assert_eq!(Command::parse(b"StartTLS"), Ok(Command::StartTls));
        assert_eq!(Command::parse(b"quit"), Ok(Command::Quit));
        assert_eq!(Command::parse(b"NOOP anything"), Ok(Command::Noop));
        assert_eq!(Command::parse(b"VRFY bob"), Ok(Command::Vrfy));
        assert_eq!(Command::parse(b"XYZZY"), Err(ParseError::UnknownCommand));
        assert_eq!(Command::parse(b"STARTTLSX"), Err(ParseError::UnknownCommand));
        assert_eq!(Command::parse(b""), Err(ParseError::UnknownCommand));
        assert!(matches!(Command::parse(b"DATA x"), Err(ParseError::Syntax(_))));
        assert!(matches!(Command::parse(b"EHLO"), Err(ParseError::BadParameter(_))));
    }

    #[test]
    fn mail_paths_and_params() {
        assert_eq!(mail("MAIL FROM:<a@b.example>").map(|m| m.0), Ok("a@b.example".into()));
        assert_eq!(mail("mail from: <a@b.example>").map(|m| m.0), Ok("a@b.example".into()));
        assert_eq!(mail("MAIL FROM:<>").map(|m| m.0), Ok(String::new()));
        assert_eq!(mail("MAIL FROM:<@r1.example,@r2.example:a@b.example>").map(|m| m.0), Ok("a@b.example".into()));
        assert_eq!(mail("MAIL FROM:<\"a b\\\"c\"@b.example>").map(|m| m.0), Ok("\"a b\\\"c\"@b.example".into()));
        assert_eq!(mail("MAIL FROM:<a@[192.0.2.1]>").map(|m| m.0), Ok("a@[192.0.2.1]".into()));
        assert_eq!(mail("MAIL FROM:<a@[IPv6:2001:db8::1]>").map(|m| m.0), Ok("a@[IPv6:2001:db8::1]".into()));
        assert_eq!(mail("MAIL FROM:<δοκιμή@παράδειγμα.δοκιμή> SMTPUTF8").map(|m| m.1.smtputf8), Ok(true));
        let (_, p) = mail("MAIL FROM:<a@b> SIZE=1000 body=8bitmime AUTH=<> RET=HDRS ENVID=x").unwrap_or_default();
        assert_eq!(p.size, Some(1000));
        assert_eq!(p.body, Some(Body::EightBitMime));
        assert_eq!(mail("MAIL FROM:a@b"), Err(ParseError::BadSender));
        assert_eq!(mail("MAIL FROM:<a@b"), Err(ParseError::BadSender));
        assert_eq!(mail("MAIL FROM:<a@b>x"), Err(ParseError::BadSender));
        assert_eq!(mail("MAIL FROM:<a..b@c>"), Err(ParseError::BadSender));
        assert_eq!(mail("MAIL FROM:<a@-b>"), Err(ParseError::BadSender));
        assert_eq!(mail("MAIL FROM:<a@[300.1.1.1]>"), Err(ParseError::BadSender));
        assert_eq!(mail("MAIL FROM:<a@b> FOO=1"), Err(ParseError::UnknownParameter));
        assert!(matches!(mail("MAIL FROM:<a@b> SIZE=x"), Err(ParseError::BadParameter(_))));
        assert!(matches!(mail("MAIL FROM:<a@b> SIZE=99999999999999999999999"), Err(ParseError::BadParameter(_))));
        assert!(matches!(mail("MAIL FROM:<a@b> BODY=9BIT"), Err(ParseError::BadParameter(_))));
        assert!(matches!(mail("MAIL TO:<a@b>"), Err(ParseError::Syntax(_))));
    }

    #[test]
    fn rcpt_paths() {
        assert_eq!(rcpt("RCPT TO:<x@y.example> NOTIFY=NEVER ORCPT=rfc822;x@y"), Ok("x@y.example".into()));
        assert_eq!(rcpt("RCPT TO:<Postmaster>"), Ok("postmaster".into()));
        assert_eq!(rcpt("RCPT TO:<>"), Err(ParseError::BadRecipient));
        assert_eq!(rcpt("RCPT TO:<bob>"), Err(ParseError::BadRecipient));
        assert_eq!(rcpt("RCPT TO:<x@y> SIZE=1"), Err(ParseError::UnknownParameter));
    }

    #[test]
    fn bdat_and_auth() {
        assert_eq!(Command::parse(b"BDAT 100"), Ok(Command::Bdat { size: 100, last: false }));
        assert_eq!(Command::parse(b"bdat 0 last"), Ok(Command::Bdat { size: 0, last: true }));
        assert!(matches!(Command::parse(b"BDAT"), Err(ParseError::Syntax(_))));
        assert!(matches!(Command::parse(b"BDAT -1"), Err(ParseError::Syntax(_))));
        assert!(matches!(Command::parse(b"BDAT 1 LAST x"), Err(ParseError::Syntax(_))));
        assert_eq!(
            Command::parse(b"AUTH plain AGFAYg=="),
            Ok(Command::Auth { mechanism: "PLAIN".into(), initial_response: Some("AGFAYg==".into()) })
        );
        assert_eq!(
            Command::parse(b"AUTH LOGIN"),
            Ok(Command::Auth { mechanism: "LOGIN".into(), initial_response: None })
        );
    }

    #[test]
    fn replies_for_errors() {
        assert_eq!(ParseError::UnknownParameter.reply().code, 555);
        assert_eq!(ParseError::BadSender.reply().to_string(), "501 5.1.7 Bad sender address syntax");
    }
}
