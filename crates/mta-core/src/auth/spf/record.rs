//! SPF records (RFC 7208 §4.5, §4.6, §12 ABNF): which TXT records are SPF records, and their
//! terms. The whole record is checked before evaluation starts: "any syntax errors anywhere in
//! the record MUST be detected" (§4.6).

use std::net::{Ipv4Addr, Ipv6Addr};

use super::error::SpfError;
use super::macros::{Context, MacroString};

/// A directive's qualifier: the result when its mechanism matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Qualifier {
    /// `+` (the default).
    Pass,
    /// `-`.
    Fail,
    /// `~`.
    SoftFail,
    /// `?`.
    Neutral,
}

/// A mechanism with its arguments; CIDR prefixes default to the full address length.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Mechanism {
    /// `all`.
    All,
    /// `include:<domain-spec>`.
    Include(MacroString),
    /// `a[:<domain-spec>][/<ip4-cidr>][//<ip6-cidr>]`.
    A { domain: Option<MacroString>, cidr4: u8, cidr6: u8 },
    /// `mx[:<domain-spec>][/<ip4-cidr>][//<ip6-cidr>]`.
    Mx { domain: Option<MacroString>, cidr4: u8, cidr6: u8 },
    /// `ptr[:<domain-spec>]`.
    Ptr(Option<MacroString>),
    /// `ip4:<network>[/<cidr>]`.
    Ip4(Ipv4Addr, u8),
    /// `ip6:<network>[/<cidr>]`.
    Ip6(Ipv6Addr, u8),
    /// `exists:<domain-spec>`.
    Exists(MacroString),
}

impl Mechanism {
    /// Does evaluating it query DNS (and so count toward the limit of 10)?
    pub fn queries_dns(&self) -> bool {
        !matches!(self, Mechanism::All | Mechanism::Ip4(..) | Mechanism::Ip6(..))
    }
}

/// One directive: qualifier and mechanism.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Directive {
    pub qualifier: Qualifier,
    pub mechanism: Mechanism,
}

/// A parsed record.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct Record {
    /// Directives, in order.
    pub directives: Vec<Directive>,
    /// `redirect=`.
    pub redirect: Option<MacroString>,
    /// `exp=`.
    pub exp: Option<MacroString>,
}

/// Is this TXT record (strings joined) an SPF record: `v=spf1` (any case) then a space or the
/// end (§4.5)?
pub(crate) fn is_spf(txt: &[u8]) -> bool {
    txt.len() >= 6 && txt[..6].eq_ignore_ascii_case(b"v=spf1") && matches!(txt.get(6), None | Some(b' '))
}

/// Parse an SPF record (one for which [`is_spf`] holds).
pub(crate) fn parse(txt: &[u8]) -> Result<Record, SpfError> {
    // §3.1 / §4.6.1: 7-bit ASCII, terms separated by spaces only (no control characters)
    if let Some(b) = txt.iter().find(|&&b| !(0x20..=0x7e).contains(&b)) {
        return Err(SpfError::Syntax(format!("byte 0x{b:02x} in record")));
    }
    let text = std::str::from_utf8(txt).map_err(|_| SpfError::Syntax("not ASCII".into()))?;
    let mut record = Record::default();
    for term in text.get(6..).unwrap_or("").split(' ').filter(|t| !t.is_empty()) {
        parse_term(term, &mut record)?;
    }
    Ok(record)
}

fn syntax(term: &str, why: &str) -> SpfError {
    SpfError::Syntax(format!("{why}: {term:?}"))
}

fn parse_term(term: &str, record: &mut Record) -> Result<(), SpfError> {
    // modifier: name "=" ...; name = ALPHA *( ALPHA / DIGIT / "-" / "_" / "." )
    let name_len = term.bytes().take_while(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.')).count();
    if name_len > 0 && term.as_bytes().get(name_len) == Some(&b'=') {
        let name = &term[..name_len];
        if !name.as_bytes()[0].is_ascii_alphabetic() {
            return Err(syntax(term, "modifier name must start with a letter"));
        }
        let value = &term[name_len + 1..];
        let slot = if name.eq_ignore_ascii_case("redirect") {
            Some(&mut record.redirect)
        } else if name.eq_ignore_ascii_case("exp") {
            Some(&mut record.exp)
        } else {
            None
        };
        return match slot {
            // §6: redirect and exp at most once each
            Some(s) if s.is_some() => Err(syntax(term, "modifier given twice")),
            Some(s) => {
                *s = Some(domain_spec(value, term)?);
                Ok(())
            }
            // unknown modifiers are ignored, but their value must be a macro-string
            None => MacroString::parse(value, Context::Domain).map(|_| ()),
        };
    }
    let (qualifier, rest) = match term.as_bytes()[0] {
        b'+' => (Qualifier::Pass, &term[1..]),
        b'-' => (Qualifier::Fail, &term[1..]),
        b'~' => (Qualifier::SoftFail, &term[1..]),
        b'?' => (Qualifier::Neutral, &term[1..]),
        _ => (Qualifier::Pass, term),
    };
    let name_len = rest.bytes().take_while(|b| b.is_ascii_alphanumeric()).count();
    let (name, args) = rest.split_at(name_len);
    let name = name.to_ascii_lowercase();
    let mechanism = match name.as_str() {
        "all" if args.is_empty() => Mechanism::All,
        "include" => Mechanism::Include(required_domain(args, term)?),
        "exists" => Mechanism::Exists(required_domain(args, term)?),
        "a" | "mx" => {
            let (spec, cidr4, cidr6) = split_dual_cidr(args, term)?;
            let domain = match spec {
                "" => None,
                s => Some(domain_spec(s.strip_prefix(':').ok_or_else(|| syntax(term, "bad argument"))?, term)?),
            };
            if name == "a" {
                Mechanism::A { domain, cidr4, cidr6 }
            } else {
                Mechanism::Mx { domain, cidr4, cidr6 }
            }
        }
        "ptr" => match args {
            "" => Mechanism::Ptr(None),
            s => Mechanism::Ptr(Some(domain_spec(
                s.strip_prefix(':').ok_or_else(|| syntax(term, "bad argument"))?,
                term,
            )?)),
        },
        "ip4" => {
            let net = args.strip_prefix(':').ok_or_else(|| syntax(term, "ip4 needs an address"))?;
            let (addr, prefix) = match net.split_once('/') {
                Some((a, c)) => (a, cidr(c, 32).ok_or_else(|| syntax(term, "bad ip4 prefix length"))?),
                None => (net, 32),
            };
            Mechanism::Ip4(addr.parse().map_err(|_| syntax(term, "bad IPv4 address"))?, prefix)
        }
        "ip6" => {
            let net = args.strip_prefix(':').ok_or_else(|| syntax(term, "ip6 needs an address"))?;
            let (addr, prefix) = match net.split_once('/') {
                Some((a, c)) => (a, cidr(c, 128).ok_or_else(|| syntax(term, "bad ip6 prefix length"))?),
                None => (net, 128),
            };
            Mechanism::Ip6(addr.parse().map_err(|_| syntax(term, "bad IPv6 address"))?, prefix)
        }
        _ => return Err(syntax(term, "unknown mechanism")),
    };
    record.directives.push(Directive { qualifier, mechanism });
    Ok(())
}

fn required_domain<'a>(args: &'a str, term: &str) -> Result<MacroString, SpfError> {
    let spec: &'a str = args.strip_prefix(':').ok_or_else(|| syntax(term, "needs :domain"))?;
    domain_spec(spec, term)
}

/// `"0" / %x31-39 0*1DIGIT` (or `0*2DIGIT` for IPv6), at most `max`.
fn cidr(s: &str, max: u8) -> Option<u8> {
    let max_digits = if max > 99 { 3 } else { 2 };
    if s.is_empty()
        || s.len() > max_digits
        || !s.bytes().all(|b| b.is_ascii_digit())
        || (s.len() > 1 && s.starts_with('0'))
    {
        return None;
    }
    s.parse::<u8>().ok().filter(|&n| n <= max)
}

/// Split `[:domain-spec][/ip4-cidr][//ip6-cidr]` into the domain part (with its `:`) and the
/// prefix lengths. Only a trailing `/digits` is a prefix length: a domain-spec may itself hold
/// `/` (`a:foo:bar/baz.example.com`).
fn split_dual_cidr<'a>(args: &'a str, term: &str) -> Result<(&'a str, u8, u8), SpfError> {
    let digits_after = |s: &'a str, sep: &str| -> Option<(&'a str, &'a str)> {
        let i = s.rfind(sep)?;
        let tail = &s[i + sep.len()..];
        (!tail.is_empty() && tail.bytes().all(|b| b.is_ascii_digit())).then(|| (&s[..i], tail))
    };
    let mut rest = args;
    let mut cidr6 = 128;
    if let Some((head, tail)) = digits_after(rest, "//") {
        cidr6 = cidr(tail, 128).ok_or_else(|| syntax(term, "bad ip6 prefix length"))?;
        rest = head;
    }
    let mut cidr4 = 32;
    if let Some((head, tail)) = digits_after(rest, "/") {
        // `//` already taken: a `/` right before here would be a third slash
        cidr4 = cidr(tail, 32).ok_or_else(|| syntax(term, "bad ip4 prefix length"))?;
        rest = head;
    }
    if !rest.is_empty() && !rest.starts_with(':') {
        return Err(syntax(term, "bad argument"));
    }
    Ok((rest, cidr4, cidr6))
}

/// `domain-spec = macro-string domain-end`; `domain-end = ( "." toplabel [ "." ] ) / macro-expand`.
fn domain_spec(s: &str, term: &str) -> Result<MacroString, SpfError> {
    let m = MacroString::parse(s, Context::Domain)?;
    if m.ends_with_macro() {
        return Ok(m);
    }
    let lit = m.trailing_literal();
    let lit = lit.strip_suffix('.').unwrap_or(lit);
    let Some(dot) = lit.rfind('.') else {
        return Err(syntax(term, "domain must end in .toplabel or a macro"));
    };
    if is_toplabel(&lit[dot + 1..]) {
        Ok(m)
    } else {
        Err(syntax(term, "invalid top label"))
    }
}

/// `toplabel = ( *alphanum ALPHA *alphanum ) / ( 1*alphanum "-" *( alphanum / "-" ) alphanum )`.
fn is_toplabel(l: &str) -> bool {
    let b = l.as_bytes();
    let (Some(first), Some(last)) = (b.first(), b.last()) else {
        return false;
    };
    if !b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-') {
        return false;
    }
    if b.contains(&b'-') {
        first.is_ascii_alphanumeric() && last.is_ascii_alphanumeric()
    } else {
        b.iter().any(u8::is_ascii_alphabetic)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(s: &str) -> Record {
        parse(s.as_bytes()).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn err(s: &str) {
        assert!(parse(s.as_bytes()).is_err(), "{s} should be a permerror");
    }

    #[test]
    fn selection() {
        assert!(is_spf(b"v=spf1"));
        assert!(is_spf(b"V=SpF1 -all"));
        assert!(!is_spf(b"v=spf10"));
        assert!(!is_spf(b"v=spf1-all"));
    }

    #[test]
    fn valid_records() {
        let r = ok("v=spf1 a/24//64 mx:example.com/26 ip4:192.0.2.0/24 ip6:2001:db8::/32 ptr ~all");
        assert_eq!(r.directives.len(), 6);
        assert_eq!(r.directives[0].mechanism, Mechanism::A { domain: None, cidr4: 24, cidr6: 64 });
        ok("v=spf1 moo.cow-far_out=man:dog/cat ip4:1.2.3.4 -all");
        ok("v=spf1 a:foo:bar/baz.example.com");
        ok("v=spf1 a:foo.example.xn--zckzah -all");
        ok("v=spf1 exists:%{ir}.%{l1r+-}._spf.%{d}");
        ok("v=spf1 a:example.com. -all ");
        ok("v=spf1 include:%{d}%%");
        ok("v=spf1");
    }

    #[test]
    fn invalid_records() {
        for s in [
            "v=spf1 ip4:1.2.3.4 -all moo",
            "v=spf1 moo.cow/far_out=man:dog/cat ip4:1.2.3.4 -all",
            "v=spf1 ip4:1.2.3.4 redirect:t2.example.com",
            "v=spf1 a:foo-bar -all",
            "v=spf1 a:abc.123",
            "v=spf1 a/33",
            "v=spf1 a//129",
            "v=spf1 a/24/64",
            "v=spf1 ip4:1.2.3.4/033",
            "v=spf1 ip4:1.2.3.4//32",
            "v=spf1 ip4:1.2.3",
            "v=spf1 ip6:::1.1.1.1/129",
            "v=spf1 -all.",
            "v=spf1 -all:foobar",
            "v=spf1 ptr/0",
            "v=spf1 include:",
            "v=spf1 exists",
            "v=spf1 =foo",
            "v=spf1 redirect=a.example redirect=b.example",
            "v=spf1 a:example.com\r\nptr",
            "v=spf1 exists:%{c}.example.com",
            "v=spf1 a:\u{ef}garbage.example.net",
        ] {
            err(s);
        }
    }
}
