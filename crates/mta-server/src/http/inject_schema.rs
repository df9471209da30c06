//! The typed shape of the `POST /api/v1/messages` body, for its OpenAPI schema.
//!
//! [`super::request`] parses that body by hand rather than into these types: it streams a raw `content` string
//! straight into message bytes and names the field at fault in each refusal. These types say what it accepts;
//! a test checks that they read the bodies the parser accepts.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::status::PriorityName;

/// The body of `POST /api/v1/messages`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct InjectRequest {
    /// MAIL FROM; `""` is the null sender. Required with raw content; defaults to `content.from` with
    /// structured content.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub envelope_sender: Option<String>,
    /// Envelope recipients (at most `smtp.max_recipients`).
    #[schema(min_items = 1)]
    pub recipients: Vec<Recipient>,
    /// The message: raw RFC 5322 text, or structured fields the server builds into MIME.
    pub content: Content,
    /// Tenant, for per-tenant queues.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(max_length = 64, pattern = "^[A-Za-z0-9._-]+$")]
    pub tenant: Option<String>,
    /// Egress pool.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(max_length = 64, pattern = "^[A-Za-z0-9._-]+$")]
    pub pool: Option<String>,
    /// Dispatch priority: `transactional` before `bulk` (the default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(default = "bulk")]
    pub priority: Option<PriorityName>,
}

/// One envelope recipient: an address, or an object naming it.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum Recipient {
    /// `a@example.net`.
    #[schema(format = Email)]
    Address(String),
    /// `{"email": "a@example.net"}`.
    Object(RecipientObject),
}

/// A recipient given as an object.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RecipientObject {
    /// The address.
    #[schema(format = Email)]
    pub email: String,
}

/// The message of an injection.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum Content {
    /// An RFC 5322 message. A lone LF is converted to CRLF; a bare CR is refused (`bare_cr`), as are lines over
    /// 998 octets (`line_too_long`).
    Raw(String),
    /// Fields the server builds into a MIME message with Message-ID and Date.
    Structured(StructuredContent),
}

/// Structured content: the server builds a valid MIME message from it.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StructuredContent {
    /// `addr` or `Name <addr>`; also the default envelope sender.
    pub from: String,
    /// `To:` recipients (the envelope recipients are `recipients`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<AddressList>,
    /// `Cc:` recipients.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cc: Option<AddressList>,
    /// `Reply-To:`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<AddressList>,
    /// `Subject:`; no CR or LF.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// The text/plain part.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text_body: Option<String>,
    /// The text/html part.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub html_body: Option<String>,
    /// Extra headers; no CR/LF; From, To, Cc, Bcc, Reply-To, Subject, Content-Type, Content-Transfer-Encoding and
    /// MIME-Version are refused. Message-ID and Date given here replace the generated ones.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headers: Option<BTreeMap<String, String>>,
}

/// `addr` or `Name <addr>`, one or several.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum AddressList {
    /// One address.
    One(String),
    /// Several addresses.
    Many(Vec<String>),
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::request;

    /// Bodies the parser accepts; the schema types must read each of them.
    const ACCEPTED: &[&str] = &[
        r#"{"envelope_sender": "b@s.example", "recipients": ["a@d.example", {"email": "c@d.example"}], "content": "Subject: x\n\nhi", "tenant": "acme", "pool": "p-1", "priority": "transactional"}"#,
        r#"{"content":"x","recipients":[{"email":"a@d.example"}],"envelope_sender":"","priority":"bulk","tenant":"t","pool":null}"#,
        r#"{"recipients": ["a@d.example"], "content": {"from": "F <f@s.example>"}}"#,
        r#"{"recipients": ["a@d.example"], "content": {"from": "f@s.example", "to": "t@d.example", "cc": ["c@d.example", "C <c2@d.example>"], "reply_to": null, "subject": "s", "text_body": "hi\n", "html_body": "<p>hi</p>", "headers": {"X-B": "1"}}}"#,
    ];

    /// Bodies the parser refuses for their shape; the schema types must refuse them too.
    const REFUSED: &[&str] = &[
        r#"{"envelope_sender": "", "recipients": ["a@d.example"], "content": "x", "extra": 1}"#,
        r#"{"envelope_sender": "", "recipients": ["a@d.example"], "content": "x", "priority": "urgent"}"#,
        r#"{"envelope_sender": "", "recipients": ["a@d.example", 5], "content": "x"}"#,
        r#"{"envelope_sender": "", "recipients": [{"email": "a@d.example", "name": "A"}], "content": "x"}"#,
        r#"{"envelope_sender": "", "recipients": ["a@d.example"], "content": 5}"#,
        r#"{"recipients": ["a@d.example"], "content": {"from": "f@s.example", "bcc": "x@d.example"}}"#,
        r#"{"envelope_sender": "", "content": "x"}"#,
    ];

    #[test]
    fn the_schema_types_read_what_the_parser_accepts() {
        for body in ACCEPTED {
            assert!(request::parse(body.as_bytes(), "mx.example", false).is_ok(), "parser refuses {body}");
            let typed: Result<InjectRequest, _> = serde_json::from_str(body);
            assert!(typed.is_ok(), "schema types refuse {body}: {typed:?}");
        }
    }

    #[test]
    fn the_schema_types_refuse_what_the_parser_refuses_for_its_shape() {
        for body in REFUSED {
            assert!(request::parse(body.as_bytes(), "mx.example", false).is_err(), "parser accepts {body}");
            let typed: Result<InjectRequest, _> = serde_json::from_str(body);
            assert!(typed.is_err(), "schema types accept {body}");
        }
    }
}
