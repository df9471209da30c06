//! Complaints: an ARF feedback report (RFC 5965: `multipart/report; report-type=feedback-report`, a human
//! part, a `message/feedback-report` part, the original message or its headers) names the recipient who
//! complained; that recipient gets a `complaint` suppression entry.
//!
//! The recipient is the report's `Original-Rcpt-To` field (RFC 5965 §3.2) when present, else the `To:` of the
//! original message in the third part. The queue id of the original message (from our `Received:` header
//! in the third part) lets the caller find the tenant while the message is still spooled.

use mail_parser::{MessageParser, MimeHeaders};

/// Largest report parsed: a feedback report carries at most one message; beyond this it is not one.
pub const MAX_REPORT: usize = 10 << 20;

/// What a feedback report says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Complaint {
    /// The recipient who complained (lowercase, without angle brackets).
    pub recipient: String,
    /// `Feedback-Type` (`abuse`, `fraud`, ...), when given.
    pub feedback_type: Option<String>,
    /// The original message's queue id, when our `Received:` header is in the third part.
    pub original_id: Option<String>,
}

/// Why a message is not a usable feedback report.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ComplaintError {
    /// Not `multipart/report; report-type=feedback-report`, or no `message/feedback-report` part.
    #[error("not an ARF feedback report (RFC 5965)")]
    NotFeedbackReport,
    /// Neither `Original-Rcpt-To` nor a `To:` address in the original message.
    #[error("the feedback report names no original recipient")]
    NoRecipient,
    /// Larger than [`MAX_REPORT`].
    #[error("feedback report too large")]
    TooLarge,
}

/// Parse an ARF report (CPU work proportional to its size; call off the async workers when large).
pub fn parse_report(bytes: &[u8]) -> Result<Complaint, ComplaintError> {
    if bytes.len() > MAX_REPORT {
        return Err(ComplaintError::TooLarge);
    }
    let message = MessageParser::default().parse(bytes).ok_or(ComplaintError::NotFeedbackReport)?;
    let is_report = message.content_type().is_some_and(|ct| {
        ct.ctype().eq_ignore_ascii_case("multipart")
            && ct.subtype().is_some_and(|s| s.eq_ignore_ascii_case("report"))
            && ct.attribute("report-type").is_some_and(|t| t.eq_ignore_ascii_case("feedback-report"))
    });
    if !is_report {
        return Err(ComplaintError::NotFeedbackReport);
    }
    let mut report = None;
    let mut original: Option<String> = None;
    for part in message.parts.iter().skip(1) {
        let Some(ct) = part.content_type() else { continue };
        let (t, s) = (ct.ctype().to_ascii_lowercase(), ct.subtype().unwrap_or("").to_ascii_lowercase());
        match (t.as_str(), s.as_str()) {
            ("message", "feedback-report") => report = Some(String::from_utf8_lossy(part.contents()).into_owned()),
            ("message", "rfc822") | ("message", "global") | ("text", "rfc822-headers") if original.is_none() => {
                original = Some(String::from_utf8_lossy(part.contents()).into_owned())
            }
            _ => {}
        }
    }
    let report = report.ok_or(ComplaintError::NotFeedbackReport)?;
    let fields = unfolded_fields(&report);
    let field = |name: &str| fields.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.clone());
    let original_fields = original.as_deref().map(header_section).map(unfolded_fields).unwrap_or_default();
    let recipient = field("Original-Rcpt-To")
        .and_then(|v| address_in(&v))
        .or_else(|| original_fields.iter().find(|(n, _)| n.eq_ignore_ascii_case("To")).and_then(|(_, v)| address_in(v)))
        .ok_or(ComplaintError::NoRecipient)?;
    let original_id =
        original_fields.iter().filter(|(n, _)| n.eq_ignore_ascii_case("Received")).find_map(|(_, v)| queue_id_in(v));
    Ok(Complaint { recipient, feedback_type: field("Feedback-Type"), original_id })
}

/// The header section of a message (up to the first empty line).
fn header_section(message: &str) -> &str {
    let end = message.find("\r\n\r\n").or_else(|| message.find("\n\n")).unwrap_or(message.len());
    &message[..end]
}

/// `Name: value` fields with folded lines joined (RFC 5322 §2.2.3).
fn unfolded_fields(text: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for line in text.lines() {
        let line = line.trim_end_matches('\r');
        if line.starts_with([' ', '\t']) {
            if let Some((_, v)) = out.last_mut() {
                v.push(' ');
                v.push_str(line.trim());
            }
        } else if let Some((name, value)) = line.split_once(':') {
            out.push((name.trim().to_string(), value.trim().to_string()));
        }
        if out.len() > 1000 {
            break;
        }
    }
    out
}

/// The first address in a field value: `<a@b>`, `Name <a@b>`, `rfc822; a@b` or a bare `a@b`.
fn address_in(value: &str) -> Option<String> {
    let v = value.rsplit_once(';').map(|(_, a)| a).unwrap_or(value);
    let v = match (v.find('<'), v.find('>')) {
        (Some(a), Some(b)) if a < b => &v[a + 1..b],
        _ => v.split([',', ' ']).find(|w| w.contains('@')).unwrap_or(""),
    };
    let v = v.trim();
    (v.contains('@') && !v.contains(char::is_whitespace) && v.len() <= 256).then(|| v.to_ascii_lowercase())
}

/// The queue id in our `Received:` header (`... id <ID> ...`; RFC 5321 §4.4 `ID` clause).
fn queue_id_in(received: &str) -> Option<String> {
    let mut words = received.split_whitespace();
    while let Some(w) = words.next() {
        if w.eq_ignore_ascii_case("id") {
            let id = words.next()?.trim_end_matches(';').trim_matches(['<', '>']);
            return (!id.is_empty() && id.len() <= 64).then(|| id.to_string());
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example of RFC 5965 Appendix B.1, with an Original-Rcpt-To and our Received header.
    const REPORT: &str = "From: <abusedesk@example.com>\r\n\
Date: Thu, 8 Mar 2005 17:40:36 EDT\r\n\
Subject: FW: Earn money\r\n\
To: <abuse@example.net>\r\n\
MIME-Version: 1.0\r\n\
Content-Type: multipart/report; report-type=feedback-report;\r\n\
\x20    boundary=\"part1_13d.2e68ed54_boundary\"\r\n\
\r\n\
--part1_13d.2e68ed54_boundary\r\n\
Content-Type: text/plain; charset=\"US-ASCII\"\r\n\
Content-Transfer-Encoding: 7bit\r\n\
\r\n\
This is an email abuse report for an email message received from IP\r\n\
192.0.2.1 on Thu, 8 Mar 2005 14:00:00 EDT.\r\n\
\r\n\
--part1_13d.2e68ed54_boundary\r\n\
Content-Type: message/feedback-report\r\n\
\r\n\
Feedback-Type: abuse\r\n\
User-Agent: SomeGenerator/1.0\r\n\
Version: 1\r\n\
Original-Mail-From: <somespammer@example.net>\r\n\
Original-Rcpt-To: <User@Example.com>\r\n\
\r\n\
--part1_13d.2e68ed54_boundary\r\n\
Content-Type: message/rfc822\r\n\
Content-Disposition: inline\r\n\
\r\n\
Received: from mailserver.example.net (mailserver.example.net [192.0.2.1])\r\n\
\x20       by mta.example.com with ESMTP id 0193F5C0A8E3B2D1-node; Thu, 8 Mar 2005 14:00:00 -0400\r\n\
From: <somespammer@example.net>\r\n\
To: <Undisclosed Recipients>\r\n\
Subject: Earn money\r\n\
\r\n\
Spam Spam Spam\r\n\
\r\n\
--part1_13d.2e68ed54_boundary--\r\n";

    #[test]
    fn the_rfc_example_names_recipient_type_and_queue_id() {
        let c = parse_report(REPORT.as_bytes()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.recipient, "user@example.com");
        assert_eq!(c.feedback_type.as_deref(), Some("abuse"));
        assert_eq!(c.original_id.as_deref(), Some("0193F5C0A8E3B2D1-node"));
    }

    #[test]
    fn without_original_rcpt_to_the_original_to_is_used() {
        let text = REPORT
            .replace("Original-Rcpt-To: <User@Example.com>\r\n", "")
            .replace("To: <Undisclosed Recipients>", "To: Jane <jane@example.org>");
        let c = parse_report(text.as_bytes()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.recipient, "jane@example.org");
    }

    #[test]
    fn other_messages_are_refused() {
        let plain = "From: a@b\r\nTo: c@d\r\nSubject: hi\r\n\r\nbody\r\n";
        assert_eq!(parse_report(plain.as_bytes()), Err(ComplaintError::NotFeedbackReport));
        let dsn = REPORT.replace("report-type=feedback-report", "report-type=delivery-status");
        assert_eq!(parse_report(dsn.as_bytes()), Err(ComplaintError::NotFeedbackReport));
        let none = REPORT.replace("Original-Rcpt-To: <User@Example.com>\r\n", "");
        assert_eq!(parse_report(none.as_bytes()), Err(ComplaintError::NoRecipient));
    }
}
