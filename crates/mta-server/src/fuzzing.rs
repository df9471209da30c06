//! The fuzz targets' logic, shared by `fuzz/` (cargo-fuzz, nightly) and the property tests (stable, CI), so both
//! exercise exactly the same code. Not a stable API.

use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use crate::config::Config;
use crate::http::content::Structured;
use crate::http::error::ApiError;
use crate::http::json_text::Normalizer;

/// Arbitrary bytes as a config file: parsing and validation return errors, never panic. A config that
/// validates prints (`check-config`) as TOML that parses and validates again to the same config.
pub fn config(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let path = Path::new("fuzz.toml");
    let mut config: Config = match toml::from_str(&text) {
        Ok(c) => c,
        Err(_) => {
            // The same error through the public entry point, with its message formatting.
            assert!(Config::parse(&text, path).is_err(), "Config::parse accepts what toml refuses");
            return;
        }
    };
    // Validation reads the files a config names (TLS and DKIM keys). Point them at a directory so the fuzzer
    // can never make it read a device or a fifo; the checks still run, on a path that exists.
    let here = PathBuf::from(".");
    for p in [&mut config.smtp.tls_cert, &mut config.smtp.tls_key, &mut config.http.tls_cert, &mut config.http.tls_key]
        .into_iter()
        .flatten()
    {
        p.clone_from(&here);
    }
    for k in &mut config.dkim.key {
        k.key_file.clone_from(&here);
    }
    if config.validate(path).is_err() {
        return;
    }
    let _ = config.dkim_keys();
    let _ = mta_core::EngineConfig::from(&config);
    let printed = config.to_toml();
    let again = match Config::parse(&printed, path) {
        Ok(c) => c,
        Err(e) => panic!("the printed config does not load: {e}\n{printed}"),
    };
    // Debug shows every value exactly (durations to the nanosecond), where the printed form could round.
    assert_eq!(
        format!("{again:?}"),
        format!("{config:?}"),
        "the printed config loads as a different config:\n{printed}"
    );
}

/// Arbitrary bytes as the body of `POST /api/v1/messages`: the content (raw or structured) is checked and built
/// as the handler does, never panicking. Raw content comes out CRLF-only, lines within 998 octets, ending in
/// CRLF, with no byte but line ends changed (and normalizing it again changes nothing). Structured content
/// builds a CRLF-only message that parses back with the given From and exactly the headers asked for: no field
/// can inject another header, and no line is longer than 998 octets (RFC 5322 §2.1.1), as raw content's.
pub fn http_inject(data: &[u8]) {
    let Ok(value) = serde_json::from_slice::<Value>(data) else { return };
    let Some(request) = value.as_object() else { return };
    match request.get("content") {
        Some(Value::String(raw)) => raw_content(raw),
        Some(Value::Object(o)) => structured_content(o),
        _ => {}
    }
}

/// Raw content through the line-end normalizer, as the inject route feeds it (in one piece here).
fn normalize_raw(raw: &str) -> Result<Vec<u8>, ApiError> {
    let mut n = Normalizer::with_capacity(raw.len() * 2 + 2);
    n.push(raw.as_bytes())?;
    n.finish()
}

fn raw_content(raw: &str) {
    let Ok(out) = normalize_raw(raw) else { return };
    assert_crlf_only(&out);
    assert!(out.ends_with(b"\r\n"), "no final CRLF");
    for line in out.split(|b| *b == b'\n') {
        assert!(line.len() <= 999, "line of {} octets", line.len());
    }
    let strip = |b: &[u8]| b.iter().copied().filter(|c| *c != b'\r' && *c != b'\n').collect::<Vec<u8>>();
    assert_eq!(strip(&out), strip(raw.as_bytes()), "bytes other than line ends changed");
    let text = String::from_utf8(out.clone()).unwrap_or_default();
    assert_eq!(normalize_raw(&text).ok(), Some(out), "normalizing twice changes the content");
}

fn structured_content(obj: &Map<String, Value>) {
    let Ok(s) = Structured::parse(obj.clone()) else { return };
    let from = s.author_address().to_string();
    let Ok(message) = s.build("mx.example.net") else { return };
    assert_crlf_only(&message);
    for line in message.split(|b| *b == b'\n') {
        assert!(line.len() <= 999, "line of {} octets: {:?}", line.len(), String::from_utf8_lossy(line));
    }
    let Some(parsed) = mail_parser::MessageParser::default().parse(&message) else {
        panic!("the built message does not parse");
    };
    let parsed_from = parsed.from().and_then(|a| a.first()).and_then(|a| a.address());
    assert_eq!(parsed_from, Some(from.as_str()), "From changed");

    // Exactly the headers the request asked for, each once, plus the ones the builder adds.
    let mut expected: Vec<String> = vec!["from".into(), "subject".into(), "mime-version".into(), "content-type".into()];
    for (field, header) in [("to", "to"), ("cc", "cc"), ("reply_to", "reply-to")] {
        let given = match obj.get(field) {
            Some(Value::String(_)) => true,
            Some(Value::Array(a)) => !a.is_empty(),
            _ => false,
        };
        if given {
            expected.push(header.into());
        }
    }
    if let Some(Value::Object(headers)) = obj.get("headers") {
        expected.extend(headers.keys().map(|k| k.to_ascii_lowercase()));
    }
    for added in ["message-id", "date"] {
        if !expected.iter().any(|h| h == added) {
            expected.push(added.into());
        }
    }
    // Read from the bytes, not from mail-parser: its lenient value parsers can swallow the next line (0.11.9
    // drops the header after `Date: ... +0000k`), which is not ours to check.
    let mut found = header_names(&message);
    // The builder may add a transfer encoding for the body; that is its choice, not the request's.
    found.retain(|h| h != "content-transfer-encoding");
    found.sort();
    expected.sort();
    assert_eq!(found, expected, "the message's headers are not the ones asked for");
}

/// The lowercased names of the header fields of `message`, by RFC 5322 structure: a line that does not start
/// with whitespace starts a field, and its name ends at the first colon.
fn header_names(message: &[u8]) -> Vec<String> {
    let text = String::from_utf8_lossy(message);
    let head = text.split("\r\n\r\n").next().unwrap_or("");
    assert!(!head.starts_with([' ', '\t']), "the header section starts with a continuation line");
    let mut names = Vec::new();
    for line in head.split("\r\n").filter(|l| !l.starts_with([' ', '\t'])) {
        let Some((name, _)) = line.split_once(':') else { panic!("header line without a colon: {line:?}") };
        names.push(name.to_ascii_lowercase());
    }
    names
}

fn assert_crlf_only(bytes: &[u8]) {
    for (i, w) in bytes.windows(2).enumerate() {
        assert!(w[1] != b'\n' || w[0] == b'\r', "bare LF at {i}");
        assert!(w[0] != b'\r' || w[1] == b'\n', "bare CR at {i}");
    }
    assert!(!bytes.starts_with(b"\n") && !bytes.ends_with(b"\r"), "bare line end at an edge");
}
