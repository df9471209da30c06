//! The body of `POST /api/v1/messages` parsed into a checked [`Request`], with its idempotency fingerprint.
//!
//! Memory: the body is parsed into a map of raw (borrowed, unparsed) members. The small members become JSON
//! values; a raw `content` string is decoded straight into the message bytes ([`super::json_text`]); a
//! structured one is parsed and moved into the builder. So a raw message costs its body plus one buffer of
//! its size, and nothing else of that size; the caller drops the body as soon as this returns.
//!
//! CPU: a large body takes tens of milliseconds here; the caller runs it off the async workers.

use std::collections::BTreeMap;

use axum::http::StatusCode;
use mta_core::Priority;
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use super::content::Structured;
use super::error::ApiError;
use super::idempotency::Fingerprint;
use super::json_text::{decode_string, Normalizer};

/// Longest tenant or pool name.
const MAX_NAME: usize = 64;

/// The members an inject body may have.
const FIELDS: &[&str] = &["envelope_sender", "recipients", "content", "tenant", "pool", "priority"];

/// A checked inject request.
#[derive(Debug)]
pub struct Request {
    /// Envelope sender (`""` is the null sender).
    pub sender: String,
    /// Envelope recipients, as given.
    pub recipients: Vec<String>,
    /// The message bytes (CRLF line ends).
    pub content: Vec<u8>,
    /// Tenant for per-tenant queues.
    pub tenant: Option<String>,
    /// Egress pool.
    pub pool: Option<String>,
    /// Dispatch priority.
    pub priority: Priority,
}

/// A parsed body: the request, and its fingerprint when one was asked for (an `Idempotency-Key` is present).
#[derive(Debug)]
pub struct Parsed {
    /// The checked request.
    pub request: Request,
    /// Hex SHA-256 of the canonical body.
    pub fingerprint: Option<String>,
}

fn invalid_json(e: serde_json::Error) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, "invalid_json", format!("the body is not valid JSON: {e}"))
}

/// Parse and check an inject body; `hostname` names generated Message-IDs.
pub fn parse(body: &[u8], hostname: &str, want_fingerprint: bool) -> Result<Parsed, ApiError> {
    let members: BTreeMap<String, &RawValue> = serde_json::from_slice(body).map_err(|e| {
        if e.is_data() {
            ApiError::new(StatusCode::BAD_REQUEST, "invalid_json", "the body must be a JSON object")
        } else {
            invalid_json(e)
        }
    })?;
    for key in members.keys() {
        if !FIELDS.contains(&key.as_str()) {
            return Err(ApiError::bad_field("unknown_field", key.clone(), format!("unknown field {key}")));
        }
    }
    // Everything but `content` is small: plain JSON values.
    let mut obj = Map::new();
    for (key, raw) in &members {
        if key != "content" {
            obj.insert(key.clone(), serde_json::from_str(raw.get()).map_err(invalid_json)?);
        }
    }
    let recipients = recipients(&obj)?;
    // Sorted keys put `content` first among the accepted members (every other one sorts after it), so the
    // fingerprint can take it while it is decoded, then the small members in their (sorted) map order.
    let mut fingerprint = want_fingerprint.then(Fingerprint::object);
    let (content, default_sender) = match members.get("content") {
        Some(raw) => content(raw, hostname, fingerprint.as_mut())?,
        None => return Err(ApiError::bad_field("missing_field", "content", "content is required")),
    };
    let sender = match (obj.get("envelope_sender"), default_sender) {
        (Some(Value::String(s)), _) => s.clone(),
        (None | Some(Value::Null), Some(from)) => from,
        (None | Some(Value::Null), None) => {
            return Err(ApiError::bad_field(
                "missing_field",
                "envelope_sender",
                "envelope_sender is required with raw content (\"\" is the null sender)",
            ))
        }
        (Some(_), _) => {
            return Err(ApiError::bad_field("invalid_sender", "envelope_sender", "envelope_sender must be a string"))
        }
    };
    let priority = match obj.get("priority") {
        None | Some(Value::Null) => Priority::default(),
        Some(Value::String(p)) if p == "transactional" => Priority::Transactional,
        Some(Value::String(p)) if p == "bulk" => Priority::Bulk,
        Some(_) => {
            return Err(ApiError::bad_field("invalid_field", "priority", "priority is \"transactional\" or \"bulk\""))
        }
    };
    let request = Request {
        sender,
        recipients,
        content,
        tenant: opt_name(&obj, "tenant")?,
        pool: opt_name(&obj, "pool")?,
        priority,
    };
    let fingerprint = fingerprint.map(|mut f| {
        for (key, value) in &obj {
            f.key(key);
            f.value(value);
        }
        f.finish()
    });
    Ok(Parsed { request, fingerprint })
}

fn recipients(obj: &Map<String, Value>) -> Result<Vec<String>, ApiError> {
    match obj.get("recipients") {
        Some(Value::Array(items)) => items
            .iter()
            .enumerate()
            .map(|(i, item)| match item {
                Value::String(s) => Ok(s.clone()),
                Value::Object(o) if o.len() == 1 && o.get("email").is_some_and(Value::is_string) => {
                    Ok(o["email"].as_str().unwrap_or_default().to_string())
                }
                _ => Err(ApiError::bad_field(
                    "invalid_recipient",
                    format!("recipients[{i}]"),
                    "a recipient is an address string or {\"email\": address}",
                )),
            })
            .collect(),
        Some(_) => Err(ApiError::bad_field("invalid_field", "recipients", "recipients must be an array")),
        None => Err(ApiError::bad_field("missing_field", "recipients", "recipients is required")),
    }
}

/// The message bytes of `content` and, for structured content, its author (the default envelope sender).
fn content(
    raw: &RawValue,
    hostname: &str,
    mut fingerprint: Option<&mut Fingerprint>,
) -> Result<(Vec<u8>, Option<String>), ApiError> {
    let text = raw.get();
    if let Some(f) = fingerprint.as_deref_mut() {
        f.key("content");
    }
    match text.as_bytes().first() {
        Some(b'"') => {
            // The output never outgrows the literal (see json_text), so this buffer is allocated once.
            let mut normalizer = Normalizer::with_capacity(text.len());
            if let Some(f) = fingerprint.as_deref_mut() {
                f.string_start();
            }
            decode_string(text.as_bytes(), |piece| {
                if let Some(f) = fingerprint.as_deref_mut() {
                    f.string_piece(piece);
                }
                normalizer.push(piece)
            })?;
            if let Some(f) = fingerprint {
                f.string_end();
            }
            Ok((normalizer.finish()?, None))
        }
        Some(b'{') => {
            let map: Map<String, Value> = serde_json::from_str(text).map_err(invalid_json)?;
            let map = match fingerprint {
                Some(f) => {
                    let value = Value::Object(map);
                    f.value(&value);
                    match value {
                        Value::Object(map) => map,
                        _ => Map::new(),
                    }
                }
                None => map,
            };
            let s = Structured::parse(map)?;
            let from = s.author_address().to_string();
            Ok((s.build(hostname)?, Some(from)))
        }
        _ => Err(ApiError::bad_field("invalid_content", "content", "content must be a string or an object")),
    }
}

fn opt_name(obj: &Map<String, Value>, field: &'static str) -> Result<Option<String>, ApiError> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s))
            if !s.is_empty()
                && s.len() <= MAX_NAME
                && s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_')) =>
        {
            Ok(Some(s.clone()))
        }
        Some(_) => Err(ApiError::bad_field(
            "invalid_field",
            field,
            format!("{field} must be 1 to {MAX_NAME} characters of letters, digits, '.', '-', '_'"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::http::idempotency::fingerprint;

    fn parse_value(v: &Value) -> Result<Parsed, ApiError> {
        parse(v.to_string().as_bytes(), "mx.example", true)
    }

    #[test]
    fn request_fields_are_checked_with_their_names() {
        let ok = parse_value(&json!({
            "envelope_sender": "b@s.example",
            "recipients": ["a@d.example", {"email": "c@d.example"}],
            "content": "Subject: x\n\nhi",
            "tenant": "acme", "priority": "transactional"
        }))
        .unwrap()
        .request;
        assert_eq!(ok.recipients, ["a@d.example", "c@d.example"]);
        assert_eq!(ok.priority, Priority::Transactional);
        assert_eq!(ok.content, b"Subject: x\r\n\r\nhi\r\n");
        let e =
            parse_value(&json!({"envelope_sender": "", "recipients": ["a@d.example", 5], "content": "x"})).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("recipients[1]"));
        let e = parse_value(&json!({"recipients": [], "content": "x"})).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("envelope_sender"));
        let e = parse_value(&json!({"envelope_sender": "", "recipients": [], "content": "x", "extra": 1})).unwrap_err();
        assert_eq!(e.code, "unknown_field");
        let e = parse_value(&json!({"envelope_sender": "", "recipients": [], "content": "x", "priority": "urgent"}))
            .unwrap_err();
        assert_eq!(e.field.as_deref(), Some("priority"));
        let s = parse_value(&json!({"recipients": ["a@d.example"], "content": {"from": "F <f@s.example>"}}))
            .unwrap()
            .request;
        assert_eq!(s.sender, "f@s.example");
        for bad in [&b"[1]"[..], b"{", b"{\"content\": \"x\"} x", b"\"x\""] {
            assert_eq!(parse(bad, "mx.example", false).unwrap_err().code, "invalid_json");
        }
        let e = parse(br#"{"content": 5, "recipients": [], "envelope_sender": ""}"#, "mx.example", false).unwrap_err();
        assert_eq!(e.code, "invalid_content");
    }

    #[test]
    fn streamed_fingerprint_equals_the_fingerprint_of_the_parsed_body() {
        for body in [
            r#"{"recipients": ["a@d.example"], "envelope_sender": "", "content": "A: b\n\n\u00e9\ud83d\ude00 \"q\" \\ \/ \u0001\t\r\n"}"#,
            r#"{"content":"x","recipients":[{"email":"a@d.example"}],"envelope_sender":"b@s.example","priority":"bulk","tenant":"t","pool":null}"#,
            r#"{"recipients": ["a@d.example"], "content": {"from": "f@s.example", "text_body": "hi\n", "headers": {"X-B": "1", "X-A": "2"}}}"#,
            r#"{"\u0063ontent": "x", "recipients": ["a@d.example"], "envelope_sender": "", "content": "last wins"}"#,
        ] {
            let value: Value = serde_json::from_str(body).unwrap();
            let parsed = parse(body.as_bytes(), "mx.example", true).unwrap();
            assert_eq!(parsed.fingerprint.as_deref(), Some(fingerprint(&value).as_str()), "{body}");
        }
    }
}
