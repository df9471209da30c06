//! The fuzz targets' logic, shared by `fuzz/` (cargo-fuzz, nightly) and the property tests (stable, CI), so both
//! exercise exactly the same code. Not a stable API.

use mail_parser::MimeHeaders;

use crate::delivery::dsn::{build_dsn, FailedRecipient};
use crate::Response;

/// What a DSN is built from: everything a remote server, a sender or a stored message controls.
#[derive(Debug, Clone, Default)]
pub struct DsnInput {
    /// The original envelope sender (the DSN's recipient).
    pub sender: String,
    /// The failed recipients with the replies that failed them.
    pub failed: Vec<FailedRecipient>,
    /// The original message.
    pub original: Vec<u8>,
    /// An expiry report rather than a bounce.
    pub expired: bool,
    /// Reception time from the stored record (any value a corrupt record may hold).
    pub received_at_ms: u64,
}

impl DsnInput {
    /// Reads fuzzer bytes: `[flags][received_at_ms: 8 LE]` then NUL-separated fields `sender`, `original`,
    /// and `address`, `reply`, `remote_mta` (empty: none) per failed recipient.
    pub fn from_bytes(data: &[u8]) -> DsnInput {
        let flags = data.first().copied().unwrap_or(0);
        let mut ms = [0u8; 8];
        let head = data.get(1..9).unwrap_or(&[]);
        ms[..head.len()].copy_from_slice(head);
        let mut fields = data.get(9..).unwrap_or(&[]).split(|b| *b == 0);
        let text = |f: &[u8]| String::from_utf8_lossy(f).into_owned();
        let sender = fields.next().map(text).unwrap_or_default();
        let original = fields.next().unwrap_or(&[]).to_vec();
        let mut failed = Vec::new();
        while let Some(address) = fields.next().map(text) {
            let response = response_of(&fields.next().map(text).unwrap_or_default());
            let remote_mta = fields.next().map(text).filter(|m| !m.is_empty());
            failed.push(FailedRecipient { address, response, remote_mta, bounce_class: None });
        }
        DsnInput { sender, failed, original, expired: flags & 1 == 1, received_at_ms: u64::from_le_bytes(ms) }
    }

    /// The inverse of [`DsnInput::from_bytes`] for inputs without NUL in their fields (seed files).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = vec![u8::from(self.expired)];
        out.extend_from_slice(&self.received_at_ms.to_le_bytes());
        out.extend_from_slice(self.sender.as_bytes());
        out.push(0);
        out.extend_from_slice(&self.original);
        for f in &self.failed {
            let response = f.response.to_string();
            for field in [f.address.as_str(), response.as_str(), f.remote_mta.as_deref().unwrap_or("")] {
                out.push(0);
                out.extend_from_slice(field.as_bytes());
            }
        }
        out
    }
}

/// A response from arbitrary text, as the delivery client would have it: the text read by the SMTP client's
/// reply parser (any code, enhanced code and lines a hostile server can send), or, when that refuses it, the
/// text as our own `550` reason.
pub fn response_of(text: &str) -> Response {
    let mut parser = mta_smtp::client::ReplyParser::new();
    let wire = format!("{}\r\n", text.replace("\r\n", "\n").replace('\n', "\r\n"));
    match parser.feed(wire.as_bytes()) {
        Ok((n, Some(reply))) if n == wire.len() => Response::remote(&reply, mta_smtp::client::Stage::Rcpt),
        _ => Response { enhanced: None, ..Response::local(550, (5, 0, 0), text) },
    }
}

/// Builds a DSN from arbitrary replies, addresses, sender and original message: must never panic, and the DSN
/// must be mail any server accepts and any reader can take apart — CRLF line ends only, lines within 998
/// octets (RFC 5322 §2.1.1), a `multipart/report` of three parts, one `Final-Recipient` and one valid `Status`
/// (RFC 3463 `4.x.x` or `5.x.x`) per failed recipient.
pub fn dsn(input: &DsnInput) {
    let arrival = crate::reception::rfc5322_from_ms(input.received_at_ms);
    let dsn = build_dsn(
        "mx.example.net",
        "0006412c3b2a91f0.mx1",
        &input.sender,
        &arrival,
        &input.failed,
        &input.original,
        input.expired,
    );
    for (i, w) in dsn.windows(2).enumerate() {
        assert!(w[1] != b'\n' || w[0] == b'\r', "bare LF at {i}");
        assert!(w[0] != b'\r' || w[1] == b'\n', "bare CR at {i}");
    }
    assert!(dsn.ends_with(b"\r\n"), "the DSN does not end with CRLF");
    for line in dsn.split(|b| *b == b'\n') {
        assert!(line.len() <= 999, "line of {} octets: {:?}", line.len(), String::from_utf8_lossy(line));
    }

    let message = mail_parser::MessageParser::default().parse(&dsn);
    let Some(message) = message else { panic!("the DSN does not parse as a message") };
    let root = message.root_part();
    assert_eq!(
        (root.content_type().map(|c| c.ctype()), root.content_type().and_then(|c| c.subtype())),
        (Some("multipart"), Some("report")),
        "not a multipart/report"
    );
    match &root.body {
        mail_parser::PartType::Multipart(parts) => assert_eq!(parts.len(), 3, "a DSN has three parts"),
        other => panic!("the DSN root is not multipart: {other:?}"),
    }

    // The machine-readable part: the second of the parts the boundary (the last parameter of the last header)
    // separates. Found by splitting, since a reply may contain any text, "Content-Type: ..." included.
    let text = String::from_utf8_lossy(&dsn);
    let head = text.find("\r\n\r\n").map_or(&text[..], |end| &text[..end]);
    let boundary = head.rfind("boundary=\"").map(|at| &head[at + 10..]).and_then(|b| b.split('"').next());
    let Some(boundary) = boundary else { panic!("no boundary") };
    let parts: Vec<&str> = text.split(&format!("\r\n--{boundary}")).collect();
    assert_eq!(parts.len(), 5, "preamble, three parts, closing");
    let status = parts[2];
    assert!(status.starts_with("\r\nContent-Type: message/delivery-status\r\n\r\n"), "{status:?}");
    let finals = status.split("\r\n").filter(|l| l.starts_with("Final-Recipient: ")).count();
    assert_eq!(finals, input.failed.len(), "one Final-Recipient per failed recipient");
    let codes: Vec<&str> = status.split("\r\n").filter_map(|l| l.strip_prefix("Status: ")).collect();
    assert_eq!(codes.len(), input.failed.len(), "one Status per failed recipient");
    for code in codes {
        assert!(valid_status(code), "invalid Status: {code:?}");
    }
}

/// RFC 3463 `class.subject.detail` with class 4 or 5 (a failure) and at most three digits per number.
fn valid_status(code: &str) -> bool {
    let parts: Vec<&str> = code.split('.').collect();
    let number = |s: &str| !s.is_empty() && s.len() <= 3 && s.bytes().all(|b| b.is_ascii_digit());
    parts.len() == 3 && (parts[0] == "4" || parts[0] == "5") && number(parts[1]) && number(parts[2])
}
