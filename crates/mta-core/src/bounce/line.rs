//! A reply's one-line form (`<code> <enhanced code> <text>`, as [`Response`] displays it) read back into its
//! parts: message status keeps only that line per recipient, and rule examples are written that way.

use mta_smtp::EnhancedCode;

use crate::{Origin, Response};

/// Longest line read (a stored reply is capped well below this).
const MAX_LINE: usize = 4096;

/// The enhanced code at the start of `s` (`x.y.z` with x in 2, 4, 5), and the rest after it.
fn enhanced_prefix(s: &str) -> Option<(EnhancedCode, &str)> {
    let end = s.find(' ').unwrap_or(s.len());
    let mut parts = s[..end].split('.');
    let class: u8 = parts.next()?.parse().ok()?;
    let subject: u16 = parts.next()?.parse().ok()?;
    let detail: u16 = parts.next()?.parse().ok()?;
    if parts.next().is_some() || !matches!(class, 2 | 4 | 5) || subject > 999 || detail > 999 {
        return None;
    }
    Some((EnhancedCode { class, subject, detail }, s[end..].trim_start()))
}

/// `line` as a remote response without a stage, or `None` when it does not start with a three-digit code.
pub fn parse_line(line: &str) -> Option<Response> {
    let line = line.get(..MAX_LINE).unwrap_or(line).trim();
    let code = line.get(..3)?;
    if !code.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let code: u16 = code.parse().ok()?;
    // Multi-line replies written raw (`550-5.7.1 ...`) are read the same way.
    let rest = line[3..].trim_start_matches([' ', '-']);
    let (enhanced, text) = match enhanced_prefix(rest) {
        Some((e, text)) => (Some(e), text),
        None => (None, rest),
    };
    Some(Response { code, enhanced, text: text.to_string(), stage: None, origin: Origin::Remote, tls_failure: None })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_back_what_display_writes() {
        let r = parse_line("550 5.1.1 The email account that you tried to reach does not exist.");
        let r = r.map(|r| (r.code, r.enhanced.map(|e| e.to_string()), r.text));
        assert_eq!(
            r,
            Some((550, Some("5.1.1".into()), "The email account that you tried to reach does not exist.".into()))
        );
        let r = parse_line("550 Requested action not taken: mailbox unavailable").map(|r| (r.enhanced, r.text));
        assert_eq!(r, Some((None, "Requested action not taken: mailbox unavailable".into())));
        let r = parse_line("421-4.7.0 [TSS04] Messages from 192.0.2.1 temporarily deferred").map(|r| r.code);
        assert_eq!(r, Some(421));
        assert!(parse_line("hello").is_none() && parse_line("").is_none() && parse_line("5é0 x").is_none());
        assert_eq!(parse_line("550 5.1 short").map(|r| r.enhanced), Some(None));
    }
}
