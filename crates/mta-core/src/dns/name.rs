//! Domain names as cache keys: IDNA U-labels to A-labels, lowercase, fully qualified.

use std::sync::Arc;

use super::error::DnsError;

/// `"Bücher.Example"` → `"xn--bcher-kva.example."`. Accepts a trailing dot. Underscores are
/// allowed (`_dmarc`, DKIM selectors); other characters outside letters, digits and `-` are not.
pub(crate) fn normalize(name: &str) -> Result<Arc<str>, DnsError> {
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
            || !label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
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
    }
}
