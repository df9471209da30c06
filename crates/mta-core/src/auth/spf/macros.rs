//! Macro strings (RFC 7208 §7): parsed once with the record (a syntax error is a `permerror`
//! before anything is evaluated), expanded per use.

use std::fmt::Write as _;
use std::net::IpAddr;

use super::error::SpfError;

/// The most parts a transformer may keep (`%{d128}`); larger counts mean "all" anyway.
const MAX_PARTS: usize = 128;

/// One piece of a macro string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Token {
    /// Text taken as is.
    Literal(String),
    /// `%%`, `%_` or `%-`, decoded: a `macro-expand` in the ABNF, so a domain-spec may end in
    /// one.
    Escaped(&'static str),
    /// `%{...}`.
    Expand(Macro),
}

/// `%{` letter transformers delimiters `}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Macro {
    /// The macro letter, lowercase.
    pub letter: u8,
    /// Written in uppercase: URL-escape the value (§7.3).
    pub escape: bool,
    /// Keep only this many right-hand parts (`None`: all).
    pub parts: Option<usize>,
    /// `r`: reverse the parts first.
    pub reverse: bool,
    /// Split on these (default `.`).
    pub delimiters: Vec<u8>,
}

/// A parsed macro string.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct MacroString(pub Vec<Token>);

/// Where a macro string appears: the letters `c`, `r` and `t` are for explanations only (§7.2),
/// and only explanations may hold spaces (`explain-string`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Context {
    /// A `domain-spec` or an unknown modifier's value.
    Domain,
    /// The text of an `exp=` TXT record.
    Explanation,
}

impl MacroString {
    /// Parse `s` (ASCII checked by the caller for records; explanations check it here).
    pub fn parse(s: &str, ctx: Context) -> Result<Self, SpfError> {
        let bad = |why: &str| SpfError::Syntax(format!("{why} in macro string {s:?}"));
        let b = s.as_bytes();
        let mut tokens = Vec::new();
        let mut lit = String::new();
        let mut i = 0;
        while i < b.len() {
            let c = b[i];
            match c {
                b'%' => {
                    let escaped = match b.get(i + 1) {
                        Some(b'%') => "%",
                        Some(b'_') => " ",
                        Some(b'-') => "%20",
                        Some(b'{') => {
                            let end = b[i + 2..].iter().position(|&c| c == b'}').ok_or_else(|| bad("unclosed %{"))?;
                            let m = parse_macro(&b[i + 2..i + 2 + end], ctx).ok_or_else(|| bad("bad macro"))?;
                            if !lit.is_empty() {
                                tokens.push(Token::Literal(std::mem::take(&mut lit)));
                            }
                            tokens.push(Token::Expand(m));
                            i += 2 + end + 1;
                            continue;
                        }
                        _ => return Err(bad("lone %")),
                    };
                    if !lit.is_empty() {
                        tokens.push(Token::Literal(std::mem::take(&mut lit)));
                    }
                    tokens.push(Token::Escaped(escaped));
                    i += 2;
                }
                b' ' if ctx == Context::Explanation => {
                    lit.push(' ');
                    i += 1;
                }
                0x21..=0x7e => {
                    lit.push(char::from(c));
                    i += 1;
                }
                _ => return Err(bad("invalid character")),
            }
        }
        if !lit.is_empty() {
            tokens.push(Token::Literal(lit));
        }
        Ok(MacroString(tokens))
    }

    /// Does the string end with a macro (`domain-end = macro-expand`)?
    pub fn ends_with_macro(&self) -> bool {
        matches!(self.0.last(), Some(Token::Expand(_) | Token::Escaped(_)))
    }

    /// The trailing literal text (for the `toplabel` check).
    pub fn trailing_literal(&self) -> &str {
        match self.0.last() {
            Some(Token::Literal(l)) => l,
            _ => "",
        }
    }
}

fn parse_macro(body: &[u8], ctx: Context) -> Option<Macro> {
    let (&first, rest) = body.split_first()?;
    let letter = first.to_ascii_lowercase();
    let allowed: &[u8] = match ctx {
        Context::Domain => b"slodiphv",
        Context::Explanation => b"slodiphvcrt",
    };
    if !allowed.contains(&letter) {
        return None;
    }
    let digits = rest.iter().take_while(|c| c.is_ascii_digit()).count();
    let parts = if digits == 0 {
        None
    } else {
        // a long run of digits is "more parts than there are": all of them
        let n = std::str::from_utf8(&rest[..digits]).ok()?.parse::<usize>().unwrap_or(usize::MAX);
        if n == 0 {
            return None;
        }
        Some(n.min(MAX_PARTS))
    };
    let mut rest = &rest[digits..];
    let reverse = matches!(rest.first(), Some(b'r' | b'R'));
    if reverse {
        rest = &rest[1..];
    }
    if !rest.iter().all(|c| b".-+,/_=".contains(c)) {
        return None;
    }
    let delimiters = if rest.is_empty() { vec![b'.'] } else { rest.to_vec() };
    Some(Macro { letter, escape: first.is_ascii_uppercase(), parts, reverse, delimiters })
}

/// The values macros expand to.
#[derive(Debug, Clone)]
pub(crate) struct Values<'a> {
    /// `<sender>`: `local@domain`.
    pub sender: &'a str,
    /// Its local part.
    pub local: &'a str,
    /// Its domain.
    pub sender_domain: &'a str,
    /// The current `<domain>`.
    pub domain: &'a str,
    /// The client address (IPv4-mapped addresses already unmapped).
    pub ip: IpAddr,
    /// The HELO/EHLO name.
    pub helo: &'a str,
    /// Our host name (`%{r}`).
    pub receiver: &'a str,
    /// `%{p}`: the validated name, looked up only when a macro uses it.
    pub validated: Option<&'a str>,
}

/// `%{i}`: dotted quad, or dot-separated nibbles for IPv6.
fn ip_dotted(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => {
            let mut s = String::with_capacity(63);
            for byte in v6.octets() {
                for nibble in [byte >> 4, byte & 0xf] {
                    if !s.is_empty() {
                        s.push('.');
                    }
                    let _ = write!(s, "{nibble:x}");
                }
            }
            s
        }
    }
}

fn url_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

impl Macro {
    fn expand(&self, v: &Values<'_>) -> String {
        let raw: String = match self.letter {
            b's' => v.sender.to_string(),
            b'l' => v.local.to_string(),
            b'o' => v.sender_domain.to_string(),
            b'd' => v.domain.to_string(),
            b'i' => ip_dotted(v.ip),
            b'p' => v.validated.unwrap_or("unknown").to_string(),
            b'v' => if v.ip.is_ipv4() { "in-addr" } else { "ip6" }.to_string(),
            b'h' => v.helo.to_string(),
            b'c' => v.ip.to_string(),
            b'r' => if v.receiver.is_empty() { "unknown" } else { v.receiver }.to_string(),
            b't' => std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs())
                .to_string(),
            _ => String::new(),
        };
        let transformed = if self.parts.is_none() && !self.reverse && self.delimiters == b"." {
            raw
        } else {
            let mut parts: Vec<&str> = raw.split(|c: char| self.delimiters.contains(&(c as u8))).collect();
            if self.reverse {
                parts.reverse();
            }
            let keep = self.parts.unwrap_or(usize::MAX).min(parts.len());
            parts[parts.len() - keep..].join(".")
        };
        if self.escape {
            url_escape(&transformed)
        } else {
            transformed
        }
    }
}

impl MacroString {
    /// Expand with `v`.
    pub fn expand(&self, v: &Values<'_>) -> String {
        let mut out = String::new();
        for t in &self.0 {
            match t {
                Token::Literal(l) => out.push_str(l),
                Token::Escaped(e) => out.push_str(e),
                Token::Expand(m) => out.push_str(&m.expand(v)),
            }
        }
        out
    }

    /// Does any macro need `%{p}` (a PTR validation)?
    pub fn uses_ptr(&self) -> bool {
        self.0.iter().any(|t| matches!(t, Token::Expand(m) if m.letter == b'p'))
    }
}

/// A target name from an expanded domain-spec: truncated from the left to 253 characters by
/// whole labels (§7.3), trailing dot removed.
pub(crate) fn target_name(expanded: &str) -> String {
    let mut s = expanded.strip_suffix('.').unwrap_or(expanded);
    while s.len() > 253 {
        match s.find('.') {
            Some(i) => s = &s[i + 1..],
            None => break,
        }
    }
    s.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values() -> Values<'static> {
        Values {
            sender: "strong-bad@email.example.com",
            local: "strong-bad",
            sender_domain: "email.example.com",
            domain: "email.example.com",
            ip: "192.0.2.3".parse().unwrap(),
            helo: "mx.example.org",
            receiver: "",
            validated: None,
        }
    }

    fn x(s: &str) -> String {
        MacroString::parse(s, Context::Explanation).unwrap().expand(&values())
    }

    #[test]
    fn rfc_7208_section_7_4_examples() {
        assert_eq!(x("%{s}"), "strong-bad@email.example.com");
        assert_eq!(x("%{o}"), "email.example.com");
        assert_eq!(x("%{d}"), "email.example.com");
        assert_eq!(x("%{d4}"), "email.example.com");
        assert_eq!(x("%{d3}"), "email.example.com");
        assert_eq!(x("%{d2}"), "example.com");
        assert_eq!(x("%{d1}"), "com");
        assert_eq!(x("%{dr}"), "com.example.email");
        assert_eq!(x("%{d2r}"), "example.email");
        assert_eq!(x("%{l}"), "strong-bad");
        assert_eq!(x("%{l-}"), "strong.bad");
        assert_eq!(x("%{lr}"), "strong-bad");
        assert_eq!(x("%{lr-}"), "bad.strong");
        assert_eq!(x("%{l1r-}"), "strong");
        assert_eq!(x("%{ir}.%{v}._spf.%{d2}"), "3.2.0.192.in-addr._spf.example.com");
        assert_eq!(x("%{lr-}.lp._spf.%{d2}"), "bad.strong.lp._spf.example.com");
        assert_eq!(x("%{S}"), "strong-bad%40email.example.com");
        assert_eq!(x("a%%b%_c%-d"), "a%b c%20d");
    }

    #[test]
    fn ipv6_nibbles() {
        let mut v = values();
        v.ip = "2001:db8::cb01".parse().unwrap();
        let m = MacroString::parse("%{ir}.%{v}._spf.%{d2}", Context::Domain).unwrap();
        assert_eq!(
            m.expand(&v),
            "1.0.b.c.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6._spf.example.com"
        );
    }

    #[test]
    fn syntax_errors() {
        for bad in ["%{x}", "%{d0}", "%{d", "%a", "50%", "%{dq}", "%{c}", "a b"] {
            assert!(MacroString::parse(bad, Context::Domain).is_err(), "{bad}");
        }
        assert!(MacroString::parse("%{c} %{r} %{t}", Context::Explanation).is_ok());
    }
}
