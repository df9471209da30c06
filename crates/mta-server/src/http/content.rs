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
    check_address(address)
        .map_err(|reason| ApiError::bad_field("invalid_address", field, format!("{field}: {reason}")))?;
    Ok(Mailbox { name, address: address.to_string() })
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
    !name.is_empty() && name.len() <= 76 && name.bytes().all(|b| (33..=126).contains(&b) && b != b':')
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
        match (self.text_body, self.html_body) {
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

    #[test]
    fn given_message_id_is_kept() {
        let s = structured(json!({"from": "a@b.example", "headers": {"message-id": "<x@y>"}})).unwrap();
        let msg = String::from_utf8(s.build("mx.example").unwrap()).unwrap();
        assert_eq!(msg.matches("Message-ID:").count(), 1, "{msg}");
        assert!(msg.contains("Message-ID: <x@y>"), "{msg}");
    }
}
