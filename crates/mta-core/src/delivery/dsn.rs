//! Delivery status notifications (RFC 3464): one per message and attempt, naming every recipient that failed.
//!
//! The DSN is a `multipart/report; report-type=delivery-status` with a human-readable part, the
//! `message/delivery-status` part, and the original message's headers (`text/rfc822-headers`). It is sent from
//! the null sender `<>` so it can never bounce back (no bounce loops).

use std::fmt::Write;

use crate::reception::rfc5322_now;

/// One failed recipient for the report.
#[derive(Debug, Clone)]
pub struct FailedRecipient {
    /// The recipient address.
    pub address: String,
    /// The reply that failed it (or our own reason, for expiry / DNS).
    pub reply: String,
    /// The remote MTA that answered, if any.
    pub remote_mta: Option<String>,
}

/// The headers of `message`: everything up to the first empty line (capped, for huge or headerless input).
pub fn original_headers(message: &[u8]) -> &[u8] {
    let end = memchr_blank_line(message).unwrap_or(message.len().min(64 * 1024));
    &message[..end.min(64 * 1024)]
}

fn memchr_blank_line(m: &[u8]) -> Option<usize> {
    m.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 2)
}

/// The enhanced status code in a reply (`550 5.1.1 ...` → `5.1.1`), or a default for the class.
fn status_of(reply: &str) -> String {
    let mut parts = reply.split_whitespace();
    let code = parts.next().unwrap_or("");
    if let Some(enh) = parts.next() {
        let ok = enh.split('.').count() == 3
            && enh.split('.').all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
        if ok {
            return enh.to_string();
        }
    }
    if code.starts_with('4') {
        "4.0.0".into()
    } else {
        "5.0.0".into()
    }
}

fn clean(s: &str) -> String {
    s.chars().map(|c| if c.is_control() { ' ' } else { c }).collect()
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
    let _ = write!(m, "To: <{}>\r\n", clean(original_sender));
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
        let _ = write!(m, "<{}>: {}\r\n", clean(&f.address), clean(&f.reply));
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
            clean(&f.address),
            status_of(&f.reply)
        );
        if let Some(mta) = &f.remote_mta {
            let _ = write!(m, "Remote-MTA: dns; {}\r\n", clean(mta));
            let _ = write!(m, "Diagnostic-Code: smtp; {}\r\n", clean(&f.reply));
        } else {
            let _ = write!(m, "Diagnostic-Code: x-local; {}\r\n", clean(&f.reply));
        }
    }
    m.push_str("\r\n");

    let _ = write!(m, "--{boundary}\r\nContent-Type: text/rfc822-headers\r\n\r\n");
    let mut out = m.into_bytes();
    let headers = original_headers(original);
    out.extend_from_slice(headers);
    if !headers.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dsn_names_every_failed_recipient_with_original_headers() {
        let original = b"Received: x\r\nFrom: a@s.test\r\nSubject: hello\r\n\r\nsecret body\r\n";
        let failed = vec![
            FailedRecipient {
                address: "x@d.test".into(),
                reply: "550 5.1.1 no such user".into(),
                remote_mta: Some("mx.d.test".into()),
            },
            FailedRecipient {
                address: "y@d.test".into(),
                reply: "552 mailbox full".into(),
                remote_mta: Some("mx.d.test".into()),
            },
        ];
        let dsn =
            String::from_utf8(build_dsn("mx.test", "ID1", "a@s.test", "Mon, 1 Jan 2024", &failed, original, false))
                .unwrap();
        assert!(dsn.contains("Content-Type: multipart/report; report-type=delivery-status"));
        assert!(dsn.contains("Final-Recipient: rfc822; x@d.test\r\nAction: failed\r\nStatus: 5.1.1"));
        assert!(dsn.contains("Final-Recipient: rfc822; y@d.test\r\nAction: failed\r\nStatus: 5.0.0"));
        assert!(dsn.contains("Subject: hello"));
        assert!(!dsn.contains("secret body"));
        assert!(dsn.contains("To: <a@s.test>"));
        assert!(!dsn.contains('\n') || dsn.matches('\n').count() == dsn.matches("\r\n").count());
    }
}
