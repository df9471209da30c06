//! Domain names as cache keys: IDNA U-labels to A-labels, lowercase, fully qualified.

use std::sync::Arc;

use super::error::DnsError;

/// `"Bücher.Example"` → `"xn--bcher-kva.example."`. Accepts a trailing dot. Labels may hold any
/// printable ASCII but `\\` (SPF targets such as `foo:bar/baz.example` are legal names, RFC 7208
/// §4.8); whitespace, control characters, empty labels and over-long labels or names are not.
pub(crate) fn normalize(name: &str) -> Result<Arc<str>, DnsError> {
    normalize_with(name, false)
}

/// [`normalize`], but labels may also hold spaces: SPF macro expansions make such names
/// (`%_`, RFC 7208 §7.3) and DNS allows any octet in a label. For SPF lookups only.
pub(crate) fn normalize_literal(name: &str) -> Result<Arc<str>, DnsError> {
    normalize_with(name, true)
}

fn normalize_with(name: &str, allow_space: bool) -> Result<Arc<str>, DnsError> {
    let trimmed = name.trim();
    let trimmed = trimmed.strip_suffix('.').unwrap_or(trimmed);
    let invalid = || DnsError::InvalidName(name.to_string());
    if trimmed.is_empty() {
        return Err(invalid());
    }
    let ascii = if trimmed.is_ascii() {
        trimmed.to_ascii_lowercase()
    } else {
        idna::domain_to_ascii(trimmed).map_err(|_| invalid())?
    };
    if ascii.len() > 253 {
        return Err(invalid());
    }
    for label in ascii.split('.') {
        if label.is_empty()
            || label.len() > 63
            || !label.bytes().all(|b| (b.is_ascii_graphic() && b != b'\\') || (allow_space && b == b' '))
        {
            return Err(invalid());
        }
    }
    let mut s = ascii;
    s.push('.');
    Ok(Arc::from(s))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idna_and_case() {
        assert_eq!(&*normalize("Bücher.Example").unwrap(), "xn--bcher-kva.example.");
        assert_eq!(&*normalize("MX.Example.COM.").unwrap(), "mx.example.com.");
        assert_eq!(&*normalize("_dmarc.example.com").unwrap(), "_dmarc.example.com.");
        assert!(normalize("").is_err());
        assert!(normalize("a..b").is_err());
        assert!(normalize("a b.com").is_err());
        assert_eq!(&*normalize_literal("a b.com").unwrap(), "a b.com.");
        assert!(normalize_literal("a\tb.com").is_err());
    }
}
