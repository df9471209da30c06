//! What happens to a message at reception, whatever the entry point: checks of the envelope, our `Received:`
//! header (RFC 5321 §4.4) prepended, so the stored bytes are the bytes delivery sends.

use std::net::IpAddr;

/// How the message came in, for the `Received:` header's `with` clause (RFC 3848).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// SMTP without EHLO.
    Smtp,
    /// ESMTP; `tls` and `auth` select ESMTPS / ESMTPA / ESMTPSA.
    Esmtp {
        /// The session was under TLS.
        tls: bool,
        /// The client authenticated.
        auth: bool,
    },
    /// The HTTP injection API.
    Http {
        /// Over HTTPS.
        tls: bool,
    },
    /// The embedding program's API.
    Local,
}

impl Protocol {
    /// The `with` keyword.
    pub fn with_keyword(self) -> &'static str {
        match self {
            Protocol::Smtp => "SMTP",
            Protocol::Esmtp { tls: false, auth: false } => "ESMTP",
            Protocol::Esmtp { tls: true, auth: false } => "ESMTPS",
            Protocol::Esmtp { tls: false, auth: true } => "ESMTPA",
            Protocol::Esmtp { tls: true, auth: true } => "ESMTPSA",
            Protocol::Http { tls: false } => "HTTP",
            Protocol::Http { tls: true } => "HTTPS",
            Protocol::Local => "LOCAL",
        }
    }
}

/// RFC 5322 date-time of now, e.g. `Mon, 23 Nov 2026 16:33:04 +0000`.
pub fn rfc5322_now() -> String {
    let fmt = time::macros::format_description!(
        "[weekday repr:short], [day] [month repr:short] [year] [hour]:[minute]:[second] +0000"
    );
    time::OffsetDateTime::now_utc().format(&fmt).unwrap_or_default()
}

/// RFC 5322 date-time of a Unix time in milliseconds.
pub fn rfc5322_from_ms(ms: u64) -> String {
    let fmt = time::macros::format_description!(
        "[weekday repr:short], [day] [month repr:short] [year] [hour]:[minute]:[second] +0000"
    );
    time::OffsetDateTime::from_unix_timestamp_nanos(ms as i128 * 1_000_000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
        .format(&fmt)
        .unwrap_or_default()
}

/// Keep only characters that are safe inside a header comment or token (a client's HELO is untrusted).
fn sanitize(s: &str) -> String {
    s.chars().filter(|c| c.is_ascii_graphic() && !matches!(c, '(' | ')' | '\\' | ';')).take(255).collect()
}

/// Build our `Received:` header line (with CRLF), folded like Postfix's.
pub fn received_header(
    helo: Option<&str>,
    peer: Option<IpAddr>,
    hostname: &str,
    protocol: Protocol,
    id: &str,
    single_recipient: Option<&str>,
) -> String {
    let mut h = String::with_capacity(200);
    h.push_str("Received: ");
    match (helo, peer) {
        (Some(helo), Some(ip)) => h.push_str(&format!("from {} ([{}])\r\n\t", sanitize(helo), ip)),
        (None, Some(ip)) => h.push_str(&format!("from [{ip}] ([{ip}])\r\n\t")),
        (Some(helo), None) => h.push_str(&format!("from {}\r\n\t", sanitize(helo))),
        (None, None) => {}
    }
    h.push_str(&format!("by {} with {} id {}", sanitize(hostname), protocol.with_keyword(), id));
    if let Some(rcpt) = single_recipient {
        h.push_str(&format!("\r\n\tfor <{}>", sanitize(rcpt)));
    }
    h.push_str("; ");
    h.push_str(&rfc5322_now());
    h.push_str("\r\n");
    h
}

/// Syntax check of an envelope address (`local@domain`), as strict as SMTP paths: no spaces or controls, one
/// `@` separating a non-empty local part from a domain, at most 254 octets.
pub fn check_address(addr: &str) -> Result<(), &'static str> {
    if addr.is_empty() {
        return Err("empty address");
    }
    if addr.len() > 254 {
        return Err("address longer than 254 octets");
    }
    if addr.chars().any(|c| c.is_control() || c == ' ' || c == '<' || c == '>') {
        return Err("address contains spaces, controls or angle brackets");
    }
    let Some((local, domain)) = addr.rsplit_once('@') else {
        return Err("address has no @domain");
    };
    if local.is_empty() || local.len() > 64 {
        return Err("local part empty or longer than 64 octets");
    }
    if domain.is_empty() || domain.starts_with('.') || domain.ends_with('.') || domain.contains("..") {
        return Err("invalid domain");
    }
    if let Some(literal) = domain.strip_prefix('[') {
        // RFC 5321 §4.1.3: an IPv4 address or `IPv6:` and an IPv6 address (no general literal tag is
        // registered). Anything else, such as `(` or `\`, mail readers take for a comment or a quoted-pair, so
        // the address in a header would not be the one in the envelope.
        let ip = literal.strip_suffix(']').is_some_and(|inner| match inner.get(..5) {
            Some(tag) if tag.eq_ignore_ascii_case("IPv6:") => inner[5..].parse::<std::net::Ipv6Addr>().is_ok(),
            _ => inner.parse::<std::net::Ipv4Addr>().is_ok(),
        });
        return if ip { Ok(()) } else { Err("invalid address literal") };
    }
    if !domain.chars().all(|c| c.is_alphanumeric() || c == '-' || c == '.') {
        return Err("invalid characters in domain");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn received_header_is_well_formed() {
        let h = received_header(
            Some("client.example"),
            Some("192.0.2.1".parse().unwrap()),
            "mx.example",
            Protocol::Esmtp { tls: true, auth: false },
            "ID1",
            Some("a@b.example"),
        );
        assert!(h.starts_with("Received: from client.example ([192.0.2.1])\r\n\tby mx.example with ESMTPS id ID1"));
        assert!(h.ends_with("+0000\r\n"));
        assert!(!h.contains("\n\n"));
    }

    #[test]
    fn hostile_helo_cannot_inject_headers() {
        let h = received_header(Some("x\r\nBcc: evil"), None, "mx", Protocol::Smtp, "ID", None);
        assert_eq!(h.matches("\r\n").count(), 2);
    }

    #[test]
    fn addresses() {
        assert!(check_address("a@b.example").is_ok());
        assert!(check_address("a@[192.0.2.1]").is_ok());
        assert!(check_address("user@bücher.example").is_ok());
        for bad in ["", "a", "@b", "a@", "a b@c", "a@b..c", "a@.b", "a@b\r\nc"] {
            assert!(check_address(bad).is_err(), "{bad}");
        }
    }

    /// Found by the `http_inject` fuzz target: `a@[192.0\\.2.1]` and `a@[192.0.2(1]` passed, and in a From
    /// header the backslash reads as a quoted-pair and the parenthesis as a comment, so the message's From
    /// was not the address given.
    #[test]
    fn address_literals_are_ip_addresses() {
        assert!(check_address("a@[IPv6:2001:db8::1]").is_ok());
        assert!(check_address("a@[ipv6:::1]").is_ok());
        for bad in ["a@[192.0\\.2.1]", "a@[192.0.2(1]", "a@[]", "a@[a[b]", "a@[a]b]", "a@[192.0.2.1", "a@[2001:db8::1]"]
        {
            assert!(check_address(bad).is_err(), "{bad}");
        }
    }
}
