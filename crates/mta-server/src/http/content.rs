//! A structured `content` object of an inject request, checked and built into MIME with mail-builder (raw
//! content is decoded and normalized by [`super::json_text`]).
//!
//! CR or LF in any header field (from, to, cc, reply_to, subject, header names and values) is
//! `400 header_injection`; Message-ID and Date are added unless given in `headers`. The bodies are moved out of
//! the parsed JSON, not copied: a large `text_body` exists once before the builder encodes it.

use std::borrow::Cow;

use mail_builder::headers::address::Address;
use mail_builder::headers::raw::Raw;
use mail_builder::headers::text::Text;
use mail_builder::MessageBuilder;
use mta_core::reception::check_address;
use serde_json::{Map, Value};

use super::error::ApiError;

/// Longest line of raw content, CRLF excluded.
const MAX_LINE: usize = 998;

/// Longest name in `headers`. Once `Name: ` reaches 76 octets, mail-builder 0.4 starts the value on a new line
/// without folding whitespace, so the value would be read as a header of its own (header injection).
const MAX_HEADER_NAME: usize = 73;

/// Longest display name in an address field. mail-builder 0.4 writes a name as one encoded word on one line;
/// this keeps that line within 998 octets whatever the name's characters.
const MAX_DISPLAY_NAME: usize = 256;

/// Headers set through their own fields (or by the builder), refused in `headers`.
const RESERVED_HEADERS: &[&str] =
    &["from", "to", "cc", "bcc", "reply-to", "subject", "content-type", "content-transfer-encoding", "mime-version"];

/// A structured `content` object, checked.
#[derive(Debug)]
pub struct Structured {
    from: Mailbox,
    to: Vec<Mailbox>,
    cc: Vec<Mailbox>,
    reply_to: Vec<Mailbox>,
    subject: Option<String>,
    text_body: Option<String>,
    html_body: Option<String>,
    headers: Vec<(String, String)>,
}

/// `Name <addr>` or `addr`.
#[derive(Debug, Clone)]
struct Mailbox {
    name: Option<String>,
    address: String,
}

impl Mailbox {
    fn address(&self) -> Address<'static> {
        Address::new_address(self.name.clone(), self.address.clone())
    }
}

fn no_crlf(s: &str, field: &str) -> Result<(), ApiError> {
    if s.contains(['\r', '\n', '\0']) {
        return Err(ApiError::bad_field("header_injection", field, format!("{field} contains CR, LF or NUL")));
    }
    Ok(())
}

fn string_field<'v>(v: &'v Value, field: &str) -> Result<&'v str, ApiError> {
    v.as_str().ok_or_else(|| ApiError::bad_field("invalid_content", field, format!("{field} must be a string")))
}

fn parse_mailbox(s: &str, field: &str) -> Result<Mailbox, ApiError> {
    no_crlf(s, field)?;
    let s = s.trim();
    let (name, address) = match (s.rfind('<'), s.ends_with('>')) {
        (Some(lt), true) => {
            let name = s[..lt].trim().trim_matches('"').trim();
            (Some(name).filter(|n| !n.is_empty()).map(str::to_string), &s[lt + 1..s.len() - 1])
        }
        _ => (None, s),
    };
    if name.as_ref().is_some_and(|n| n.len() > MAX_DISPLAY_NAME) {
        let message = format!("{field}: display name longer than {MAX_DISPLAY_NAME} octets");
        return Err(ApiError::bad_field("invalid_address", field, message));
    }
    check_address(address)
        .map_err(|reason| ApiError::bad_field("invalid_address", field, format!("{field}: {reason}")))?;
    if !dot_atom_local_part(address) {
        let message = format!("{field}: the local part must be a dot-atom (letters, digits, !#$%&'*+-/=?^_`{{|}}~)");
        return Err(ApiError::bad_field("invalid_address", field, message));
    }
    Ok(Mailbox { name, address: address.to_string() })
}

/// The local part is an RFC 5322 dot-atom (UTF-8 allowed, RFC 6532). mail-builder writes it unquoted, so a
/// local part with specials such as `(`, `,` or `"` would be read back as a comment or another address.
fn dot_atom_local_part(address: &str) -> bool {
    let local = address.rsplit_once('@').map_or(address, |(l, _)| l);
    let atext = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~".contains(c) || !c.is_ascii();
    local.split('.').all(|atom| !atom.is_empty() && atom.chars().all(atext))
}

fn mailboxes(v: Option<&Value>, field: &str) -> Result<Vec<Mailbox>, ApiError> {
    match v {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::String(s)) => Ok(vec![parse_mailbox(s, field)?]),
        Some(Value::Array(items)) => items
            .iter()
            .enumerate()
            .map(|(i, item)| {
                let f = format!("{field}[{i}]");
                parse_mailbox(string_field(item, &f)?, &f)
            })
            .collect(),
        Some(_) => Err(ApiError::bad_field("invalid_content", field, format!("{field} must be a string or an array"))),
    }
}

fn valid_header_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= MAX_HEADER_NAME && name.bytes().all(|b| (33..=126).contains(&b) && b != b':')
}

impl Structured {
    /// Check the structured `content` object (taken apart: its bodies move into the result).
    pub fn parse(mut obj: Map<String, Value>) -> Result<Structured, ApiError> {
        for key in obj.keys() {
            if !matches!(
                key.as_str(),
                "from" | "to" | "cc" | "reply_to" | "subject" | "text_body" | "html_body" | "headers"
            ) {
                return Err(ApiError::bad_field(
                    "unknown_field",
                    format!("content.{key}"),
                    format!("unknown field content.{key}"),
                ));
            }
        }
        let from = match obj.get("from") {
            Some(v) => parse_mailbox(string_field(v, "content.from")?, "content.from")?,
            None => return Err(ApiError::bad_field("missing_field", "content.from", "content.from is required")),
        };
        let to = mailboxes(obj.get("to"), "content.to")?;
        let cc = mailboxes(obj.get("cc"), "content.cc")?;
        let reply_to = mailboxes(obj.get("reply_to"), "content.reply_to")?;
        let mut opt_string = |name: &str| -> Result<Option<String>, ApiError> {
            match obj.remove(name) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) => Ok(Some(s)),
                Some(_) => {
                    let field = format!("content.{name}");
                    Err(ApiError::bad_field("invalid_content", field.clone(), format!("{field} must be a string")))
                }
            }
        };
        let subject = opt_string("subject")?;
        if let Some(s) = &subject {
            no_crlf(s, "content.subject")?;
        }
        let text_body = opt_string("text_body")?;
        let html_body = opt_string("html_body")?;
        // mail-builder turns a lone LF into CRLF but writes a lone CR as it is: refuse it, as in raw content.
        for (field, body) in [("content.text_body", &text_body), ("content.html_body", &html_body)] {
            let text = body.as_deref().unwrap_or("");
            if text.match_indices('\r').any(|(i, _)| text.as_bytes().get(i + 1) != Some(&b'\n')) {
                return Err(ApiError::bad_field("bare_cr", field, format!("{field} contains a CR not followed by LF")));
            }
        }
        let mut headers = Vec::new();
        match obj.get("headers") {
            None | Some(Value::Null) => {}
            Some(Value::Object(map)) => {
                for (name, value) in map {
                    let field = format!("content.headers.{name}");
                    no_crlf(name, &field)?;
                    if !valid_header_name(name) {
                        return Err(ApiError::bad_field("invalid_header", field, "invalid header name"));
                    }
                    if RESERVED_HEADERS.contains(&name.to_ascii_lowercase().as_str()) {
                        return Err(ApiError::bad_field(
                            "invalid_header",
                            field,
                            format!("{name} is set by its own content field or by the server"),
                        ));
                    }
                    let value = string_field(value, &field)?;
                    no_crlf(value, &field)?;
                    // These two are written as given, folded only at spaces: too long a value is a line
                    // receivers refuse, as raw content's would be.
                    let raw = name.eq_ignore_ascii_case("message-id") || name.eq_ignore_ascii_case("date");
                    if raw && name.len() + 2 + value.len() > MAX_LINE {
                        return Err(ApiError::bad_field(
                            "line_too_long",
                            field,
                            format!("{name} is longer than a {MAX_LINE}-octet line"),
                        ));
                    }
                    headers.push((name.clone(), value.to_string()));
                }
            }
            Some(_) => {
                return Err(ApiError::bad_field(
                    "invalid_content",
                    "content.headers",
                    "content.headers must be an object",
                ))
            }
        }
        Ok(Structured { from, to, cc, reply_to, subject, text_body, html_body, headers })
    }

    /// The `From:` address (default envelope sender).
    pub fn author_address(&self) -> &str {
        &self.from.address
    }

    /// Build the MIME message; `hostname` is the right side of a generated Message-ID.
    pub fn build(self, hostname: &str) -> Result<Vec<u8>, ApiError> {
        let mut b = MessageBuilder::new().from(self.from.address());
        let list = |m: Vec<Mailbox>| Address::new_list(m.iter().map(Mailbox::address).collect());
        if !self.to.is_empty() {
            b = b.to(list(self.to));
        }
        if !self.cc.is_empty() {
            b = b.cc(list(self.cc));
        }
        if !self.reply_to.is_empty() {
            b = b.reply_to(list(self.reply_to));
        }
        b = b.subject(self.subject.unwrap_or_default());
        let mut has_id = false;
        let mut has_date = false;
        for (name, value) in self.headers {
            // mail-builder looks for these names exactly; store them in its spelling so it adds no second one.
            let name: Cow<'static, str> = if name.eq_ignore_ascii_case("message-id") {
                has_id = true;
                "Message-ID".into()
            } else if name.eq_ignore_ascii_case("date") {
                has_date = true;
                "Date".into()
            } else {
                name.into()
            };
            if name == "Message-ID" || name == "Date" {
                b = b.header(name, Raw::new(value));
            } else {
                b = b.header(name, Text::new(value));
            }
        }
        if !has_id {
            b = b.message_id(format!("{}@{}", random_token(), hostname));
        }
        if !has_date {
            b = b.date(mail_builder::headers::date::Date::now());
        }
        // Bodies reach the builder with LF line ends only: it makes each LF a CRLF, but its quoted-printable
        // encoder leaves the LF of `\r\n\n` bare (found by the `http_inject` fuzz target).
        let lf_only = |body: String| if body.contains('\r') { body.replace("\r\n", "\n") } else { body };
        match (self.text_body.map(lf_only), self.html_body.map(lf_only)) {
            (None, None) => b = b.text_body(""),
            (text, html) => {
                if let Some(t) = text {
                    b = b.text_body(t);
                }
                if let Some(h) = html {
                    b = b.html_body(h);
                }
            }
        }
        b.write_to_vec()
            .map_err(|e| ApiError::bad_field("invalid_content", "content", format!("cannot build the message: {e}")))
    }
}

fn random_token() -> String {
    let n: u128 = rand::random();
    format!("{n:032x}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn structured(v: Value) -> Result<Structured, ApiError> {
        match v {
            Value::Object(map) => Structured::parse(map),
            _ => panic!("not an object"),
        }
    }

    #[test]
    fn crlf_in_any_header_field_is_injection() {
        for (v, field) in [
            (json!({"from": "a@b.example", "subject": "hi\r\nBcc: x@y"}), "content.subject"),
            (json!({"from": "a@b.example\nBcc: x@y"}), "content.from"),
            (json!({"from": "a@b.example", "to": ["c@d.example", "e@f\r\n"]}), "content.to[1]"),
            (json!({"from": "a@b.example", "headers": {"X-A": "1\nBcc: x@y"}}), "content.headers.X-A"),
            (json!({"from": "a@b.example", "headers": {"X-A\r\nBcc": "1"}}), "content.headers.X-A\r\nBcc"),
        ] {
            let e = structured(v).unwrap_err();
            assert_eq!((e.code, e.field.as_deref()), ("header_injection", Some(field)));
        }
    }

    #[test]
    fn builds_mime_with_message_id_and_date() {
        let s = structured(json!({
            "from": "Alice <alice@sender.example>",
            "to": "bob@dest.example",
            "subject": "Grüße",
            "text_body": "hello\n",
            "html_body": "<p>hello</p>",
            "headers": {"X-Campaign": "c1"}
        }))
        .unwrap();
        assert_eq!(s.author_address(), "alice@sender.example");
        let msg = String::from_utf8(s.build("mx.example").unwrap()).unwrap();
        for needle in [
            "From: \"Alice\" <alice@sender.example>",
            "To: <bob@dest.example>",
            "X-Campaign: c1",
            "Message-ID: <",
            "@mx.example>",
            "Date: ",
            "MIME-Version: 1.0",
            "multipart/alternative",
        ] {
            assert!(msg.contains(needle), "{needle} missing in {msg}");
        }
        assert!(!msg.contains("Grüße"), "non-ASCII subject must be encoded");
        assert!(!msg.replace("\r\n", "").contains('\n'), "LF only as part of CRLF");
    }

    /// Found by the `http_inject` fuzz logic: a header name of 74 to 76 octets made mail-builder start the value
    /// on a line of its own, so `{"X-…": "Bcc: victim@example.org"}` added a Bcc header.
    #[test]
    fn long_header_name_cannot_inject_a_header() {
        let name = format!("X-{}", "A".repeat(72));
        let s = structured(json!({"from": "a@b.example", "headers": {name.clone(): "Bcc: victim@example.org"}}));
        assert_eq!(s.unwrap_err().code, "invalid_header");
        let name = format!("X-{}", "A".repeat(71));
        let s = structured(json!({"from": "a@b.example", "headers": {name.clone(): "Bcc: victim@example.org"}}));
        let msg = String::from_utf8(s.unwrap().build("mx.example").unwrap()).unwrap();
        // Folded, the value stays a continuation of its header.
        assert!(msg.contains(&format!("{name}: Bcc:\r\n\t victim@example.org\r\n")), "{msg}");
        assert!(!msg.contains("\nBcc:"), "{msg}");
    }

    /// Found by the `http_inject` fuzz logic: a Message-ID (or Date) of ~1000 octets without spaces was written
    /// on one line longer than 998 octets, which raw content refuses as `line_too_long`.
    #[test]
    fn overlong_message_id_is_refused() {
        let id = format!("<{}@x.test>", "a".repeat(1000));
        let e = structured(json!({"from": "a@b.example", "headers": {"Message-ID": id}})).unwrap_err();
        assert_eq!((e.code, e.field.as_deref()), ("line_too_long", Some("content.headers.Message-ID")));
        let id = format!("<{}@x.test>", "a".repeat(970));
        let msg = structured(json!({"from": "a@b.example", "headers": {"message-id": id}})).unwrap();
        let msg = msg.build("mx.example").unwrap();
        assert!(msg.split(|b| *b == b'\n').all(|l| l.len() <= 999));
    }

    /// Found by the `http_inject` fuzz logic's line-length check: a display name of 1,200 octets was written as
    /// one encoded word on a 1,224-octet From line.
    #[test]
    fn overlong_display_name_is_refused() {
        let e = structured(json!({"from": format!("{} <a@b.example>", "A".repeat(1200))})).unwrap_err();
        assert_eq!((e.code, e.field.as_deref()), ("invalid_address", Some("content.from")));
        let to = format!("{} <c@d.example>", "Grüße ".repeat(42));
        let e = structured(json!({"from": "a@b.example", "to": ["x@y.example", to]})).unwrap_err();
        assert_eq!((e.code, e.field.as_deref()), ("invalid_address", Some("content.to[1]")));
        let name = "Grüße ".repeat(30);
        let msg = structured(json!({"from": format!("{name} <a@b.example>"), "to": format!("{name} <c@d.example>")}));
        let msg = msg.unwrap().build("mx.example").unwrap();
        assert!(msg.split(|b| *b == b'\n').all(|l| l.len() <= 999), "{}", String::from_utf8_lossy(&msg));
    }

    /// Found by the `http_inject` fuzz logic's From check: `(x@y.test` was written unquoted, and read back the
    /// parenthesis opens a comment, so the message's From was not the address given.
    #[test]
    fn local_part_with_specials_is_refused() {
        for from in ["(x@y.test", "a,b@y.test", "\"q\"@y.test", "a..b@y.test", ".a@y.test"] {
            let e = structured(json!({"from": from})).unwrap_err();
            assert_eq!((e.code, e.field.as_deref()), ("invalid_address", Some("content.from")), "{from}");
        }
        for from in ["a.b+tag@y.test", "o'brien@y.test", "jörg@bücher.example", "x@[192.0.2.1]"] {
            assert!(structured(json!({"from": from})).is_ok(), "{from}");
        }
    }

    /// Found by the `http_inject` fuzz target: `\r\n\n` in a body that needs quoted-printable (a DEL, a
    /// non-ASCII letter) came out with a bare LF.
    #[test]
    fn crlf_then_lf_in_a_quoted_printable_body() {
        for field in ["text_body", "html_body"] {
            let body = "<p>a\u{7f}\\\"\r\n\n<<p>l\u{1cf}>line</p>";
            let msg = structured(json!({"from": "a@b.example", field: body})).unwrap().build("mx.test").unwrap();
            let msg = String::from_utf8(msg).unwrap();
            assert_eq!(msg.matches('\n').count(), msg.matches("\r\n").count(), "{msg}");
        }
    }

    /// Found by the `http_inject` fuzz logic's CRLF check: a text body of one CR came out as a message ending in
    /// a bare CR (a lone LF is made CRLF by the builder, a lone CR was not).
    #[test]
    fn bare_cr_in_a_body_is_refused() {
        for body in ["\r", "a\rb", "a\r\r\nb"] {
            for field in ["text_body", "html_body"] {
                let e = structured(json!({"from": "a@b.example", field: body})).unwrap_err();
                assert_eq!((e.code, e.field), ("bare_cr", Some(format!("content.{field}"))), "{body:?}");
            }
        }
        let msg = structured(json!({"from": "a@b.example", "text_body": "a\r\nb\nc"})).unwrap();
        let msg = String::from_utf8(msg.build("mx.example").unwrap()).unwrap();
        assert_eq!(msg.matches('\r').count(), msg.matches("\r\n").count(), "{msg}");
    }

    #[test]
    fn given_message_id_is_kept() {
        let s = structured(json!({"from": "a@b.example", "headers": {"message-id": "<x@y>"}})).unwrap();
        let msg = String::from_utf8(s.build("mx.example").unwrap()).unwrap();
        assert_eq!(msg.matches("Message-ID:").count(), 1, "{msg}");
        assert!(msg.contains("Message-ID: <x@y>"), "{msg}");
    }
}
