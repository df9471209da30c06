//! Delivery status notifications (RFC 3464): one per message and attempt, naming every recipient that failed.
//!
//! The DSN is a `multipart/report; report-type=delivery-status` with a human-readable part, the
//! `message/delivery-status` part, and the original message's headers (`text/rfc822-headers`). It is sent from
//! the null sender `<>` so it can never bounce back (no bounce loops).

use std::fmt::Write;

use crate::reception::rfc5322_now;
use crate::Response;

/// One failed recipient for the report.
#[derive(Debug, Clone)]
pub struct FailedRecipient {
    /// The recipient address.
    pub address: String,
    /// The reply that failed it (or our own reason, for expiry / DNS).
    pub response: Response,
    /// The remote MTA that answered, if any.
    pub remote_mta: Option<String>,
    /// Its bounce class, written as the `X-Bounce-Class:` extension field (RFC 3464 §2.4).
    pub bounce_class: Option<crate::bounce::BounceClass>,
}

/// Most octets of the original message searched for its headers (huge or headerless input).
const MAX_ORIGINAL_HEADERS: usize = 64 * 1024;

/// Longest line of the DSN, CRLF excluded (RFC 5322 §2.1.1): receivers refuse longer ones.
const MAX_LINE: usize = 998;

/// Longest address or host name written into the DSN; longer ones are cut (addresses are at most 254 octets
/// when they pass reception's checks).
const MAX_NAME: usize = 256;

/// Longest reply text written into the DSN: a hostile server's reply can be 128 lines of 4 KiB, which joined
/// would make a line no receiver accepts.
const MAX_REPLY: usize = 700;

/// The headers of `message` for the report's `text/rfc822-headers` part: its lines up to the first empty one
/// (within the first 64 KiB), each ended with CRLF and cut at 998 octets. Mail accepted through the library or
/// stored before the content rules may end lines with a bare LF or CR; copied as they are, they would make
/// the DSN itself non-conforming, and LF-only messages would have their body taken for headers.
pub fn original_headers(message: &[u8]) -> Vec<u8> {
    let mut rest = &message[..message.len().min(MAX_ORIGINAL_HEADERS)];
    let mut out = Vec::with_capacity(rest.len().min(8192));
    while !rest.is_empty() {
        let end = rest.iter().position(|b| *b == b'\r' || *b == b'\n').unwrap_or(rest.len());
        if end == 0 {
            // An empty line (CRLF, LF or CR alone): the headers end here.
            break;
        }
        let line = &rest[..end];
        out.extend_from_slice(&line[..line.len().min(MAX_LINE)]);
        out.extend_from_slice(b"\r\n");
        let terminator = if rest[end..].starts_with(b"\r\n") { 2 } else { usize::from(end < rest.len()) };
        rest = &rest[end + terminator..];
    }
    out
}

/// The `Status:` of a failed recipient (RFC 3464): the response's enhanced code when it is of the failure's
/// class (the reply code's first digit), else a default for the class. A hostile server's `550 0.0.0` or
/// `550 4.1.1` must not make the DSN unreadable or contradict itself.
fn status_of(response: &Response) -> String {
    let class = if response.code / 100 == 4 { 4 } else { 5 };
    match response.enhanced {
        Some(e) if e.class == class && e.subject <= 999 && e.detail <= 999 => e.to_string(),
        _ => format!("{class}.0.0"),
    }
}

/// `s` on one line (control characters, CR and LF included, become spaces), cut to `max` octets with `...`
/// when longer.
fn clean(s: &str, max: usize) -> String {
    let mut out = String::with_capacity(s.len().min(max));
    for c in s.chars() {
        if out.len() + c.len_utf8() > max.saturating_sub(3) && s.len() > max {
            out.push_str("...");
            break;
        }
        out.push(if c.is_control() { ' ' } else { c });
    }
    out
}

/// Build the DSN message bytes (CRLF line ends) for `failed` recipients of a message from `original_sender`.
pub fn build_dsn(
    reporting_mta: &str,
    original_id: &str,
    original_sender: &str,
    arrival_date: &str,
    failed: &[FailedRecipient],
    original: &[u8],
    expired: bool,
) -> Vec<u8> {
    let boundary = format!("dsn-{original_id}-{:x}", rand::random::<u64>());
    let mut m = String::with_capacity(2048);
    let _ = write!(m, "From: Mail Delivery System <MAILER-DAEMON@{reporting_mta}>\r\n");
    let _ = write!(m, "To: <{}>\r\n", clean(original_sender, MAX_NAME));
    let subject =
        if expired { "Delivery Status Notification (Delay expired)" } else { "Undelivered Mail Returned to Sender" };
    let _ = write!(m, "Subject: {subject}\r\n");
    let _ = write!(m, "Date: {}\r\n", rfc5322_now());
    let _ = write!(m, "Message-ID: <{original_id}.dsn.{:x}@{reporting_mta}>\r\n", rand::random::<u32>());
    m.push_str("Auto-Submitted: auto-replied\r\nMIME-Version: 1.0\r\n");
    let _ =
        write!(m, "Content-Type: multipart/report; report-type=delivery-status;\r\n\tboundary=\"{boundary}\"\r\n\r\n");
    m.push_str("This is a MIME-encapsulated message.\r\n\r\n");

    let _ = write!(m, "--{boundary}\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n");
    let _ = write!(m, "This is the mail system at host {reporting_mta}.\r\n\r\n");
    if expired {
        m.push_str("Your message could not be delivered before its maximum queue lifetime expired.\r\n\r\n");
    } else {
        m.push_str("Your message could not be delivered to one or more recipients. It is attached below.\r\n\r\n");
    }
    for f in failed {
        let _ = write!(m, "<{}>: {}\r\n", clean(&f.address, MAX_NAME), clean(&f.response.to_string(), MAX_REPLY));
    }
    m.push_str("\r\n");

    let _ = write!(m, "--{boundary}\r\nContent-Type: message/delivery-status\r\n\r\n");
    let _ = write!(
        m,
        "Reporting-MTA: dns; {reporting_mta}\r\nX-Queue-ID: {original_id}\r\nArrival-Date: {arrival_date}\r\n"
    );
    for f in failed {
        let _ = write!(
            m,
            "\r\nFinal-Recipient: rfc822; {}\r\nAction: failed\r\nStatus: {}\r\n",
            clean(&f.address, MAX_NAME),
            status_of(&f.response)
        );
        if let Some(mta) = &f.remote_mta {
            let _ = write!(m, "Remote-MTA: dns; {}\r\n", clean(mta, MAX_NAME));
            let _ = write!(m, "Diagnostic-Code: smtp; {}\r\n", clean(&f.response.to_string(), MAX_REPLY));
        } else {
            let _ = write!(m, "Diagnostic-Code: x-local; {}\r\n", clean(&f.response.to_string(), MAX_REPLY));
        }
        if let Some(c) = f.bounce_class {
            let _ = write!(m, "X-Bounce-Class: {}\r\n", c.code());
        }
    }
    m.push_str("\r\n");

    let _ = write!(m, "--{boundary}\r\nContent-Type: text/rfc822-headers\r\n\r\n");
    let mut out = m.into_bytes();
    out.extend_from_slice(&original_headers(original));
    out.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A response from its text form: a server's reply (`550 5.1.1 …`, multi-line with CRLF), or one of our
    /// own reasons (`4.4.7 Message expired …`, an enhanced code first).
    fn resp(text: &str) -> Response {
        let mut parser = mta_smtp::client::ReplyParser::new();
        if let Ok((_, Some(reply))) = parser.feed(format!("{text}\r\n").as_bytes()) {
            return Response::remote(&reply, mta_smtp::client::Stage::Rcpt);
        }
        let (code, rest) = text.split_once(' ').unwrap_or((text, ""));
        let parts: Vec<u16> = code.split('.').filter_map(|p| p.parse().ok()).collect();
        match parts[..] {
            [c, s, d] => Response::local(c * 100 + 50, (c as u8, s, d), rest),
            _ => Response { enhanced: None, ..Response::local(550, (5, 0, 0), text) },
        }
    }

    #[test]
    fn dsn_names_every_failed_recipient_with_original_headers() {
        let original = b"Received: x\r\nFrom: a@s.test\r\nSubject: hello\r\n\r\nsecret body\r\n";
        let failed = vec![
            FailedRecipient {
                address: "x@d.test".into(),
                response: resp("550 5.1.1 no such user"),
                remote_mta: Some("mx.d.test".into()),
                bounce_class: Some(crate::bounce::BounceClass::InvalidRecipient),
            },
            FailedRecipient {
                address: "y@d.test".into(),
                response: resp("552 mailbox full"),
                remote_mta: Some("mx.d.test".into()),
                bounce_class: None,
            },
        ];
        let dsn =
            String::from_utf8(build_dsn("mx.test", "ID1", "a@s.test", "Mon, 1 Jan 2024", &failed, original, false))
                .unwrap();
        assert!(dsn.contains("Content-Type: multipart/report; report-type=delivery-status"));
        assert!(dsn.contains("Final-Recipient: rfc822; x@d.test\r\nAction: failed\r\nStatus: 5.1.1"));
        assert!(dsn.contains("Diagnostic-Code: smtp; 550 5.1.1 no such user\r\nX-Bounce-Class: 10\r\n"));
        assert!(dsn.contains("Final-Recipient: rfc822; y@d.test\r\nAction: failed\r\nStatus: 5.0.0"));
        assert!(dsn.contains("Subject: hello"));
        assert!(!dsn.contains("secret body"));
        assert!(dsn.contains("To: <a@s.test>"));
        assert!(!dsn.contains('\n') || dsn.matches('\n').count() == dsn.matches("\r\n").count());
    }

    fn dsn_of(reply: &str, original: &[u8]) -> String {
        let failed = [FailedRecipient {
            address: "x@d.test".into(),
            response: resp(reply),
            remote_mta: None,
            bounce_class: None,
        }];
        String::from_utf8_lossy(&build_dsn("mx.test", "ID1", "a@s.test", "Mon, 1 Jan 2024", &failed, original, false))
            .into_owned()
    }

    fn assert_crlf_only(dsn: &str) {
        assert_eq!(dsn.matches('\n').count(), dsn.matches("\r\n").count(), "bare LF in {dsn:?}");
        assert_eq!(dsn.matches('\r').count(), dsn.matches("\r\n").count(), "bare CR in {dsn:?}");
    }

    /// Found by the `dsn` fuzz target: an original message of one LF, or one CR, was copied into the report
    /// as it was, so the DSN carried a bare LF or CR.
    #[test]
    fn bare_line_ends_of_the_original_become_crlf() {
        for original in [&b"\n"[..], b"\r", b"Subject: a\rX-B: b\nX-C: c\r\n\r\nbody"] {
            let dsn = dsn_of("550 5.1.1 no", original);
            assert_crlf_only(&dsn);
        }
        let dsn = dsn_of("550 5.1.1 no", b"Subject: a\rX-B: b\nX-C: c\r\n\r\nbody");
        assert!(dsn.contains("\r\n\r\nSubject: a\r\nX-B: b\r\nX-C: c\r\n\r\n--dsn-"), "{dsn}");
    }

    #[test]
    fn lf_only_original_keeps_its_body_out() {
        let dsn = dsn_of("550 5.1.1 no", b"From: a@s.test\nSubject: hello\n\nsecret body\n");
        assert!(dsn.contains("Subject: hello\r\n"));
        assert!(!dsn.contains("secret body"), "{dsn}");
        assert_crlf_only(&dsn);
    }

    /// Found by the `dsn` fuzz target's line-length check: a long (or many-line) reply from a hostile server
    /// made a `Diagnostic-Code:` line no receiver accepts; so did a long header line of the original.
    #[test]
    fn lines_stay_within_998_octets() {
        let reply = format!("550-5.7.1 {}\r\n550 5.7.1 {}", "x".repeat(4000), "y".repeat(4000));
        let original = format!("Subject: {}\r\n\r\nbody\r\n", "s".repeat(5000));
        let dsn = dsn_of(&reply, original.as_bytes());
        for line in dsn.split("\r\n") {
            assert!(line.len() <= 998, "line of {} octets", line.len());
        }
        // Multi-line replies are one line since responses are typed: `<code> <enhanced> <lines joined by a space>`.
        assert!(dsn.contains("Diagnostic-Code: x-local; 550 5.7.1 xxx"));
        assert!(dsn.contains("xxx...\r\n"), "a cut reply says so");
    }

    /// Found by the `dsn` fuzz target: `400 0.0.0` from a server became `Status: 0.0.0`, not an RFC 3463 code.
    #[test]
    fn status_is_a_failure_code_of_the_reply_class() {
        assert_eq!(status_of(&resp("400 0.0.0 ")), "4.0.0");
        assert_eq!(status_of(&resp("550 9999.1.1 x")), "5.0.0");
        assert_eq!(status_of(&resp("550 4.1.1 x")), "5.0.0", "class differs from the reply's");
        assert_eq!(status_of(&resp("250 2.0.0 ok")), "5.0.0", "not a failure");
        assert_eq!(status_of(&resp("550 5.7.26 unauthenticated")), "5.7.26");
        assert_eq!(status_of(&resp("451 4.7.1 greylisted")), "4.7.1");
        assert_eq!(status_of(&resp("4.4.7 Message expired; last error: 451 4.7.1 x")), "4.4.7");
        assert_eq!(status_of(&resp("5.1.2 No MX for nx.test")), "5.1.2");
        assert_eq!(status_of(&resp("")), "5.0.0");
    }
}
