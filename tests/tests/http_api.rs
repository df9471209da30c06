//! End to end: the HTTP API of the real `mta-server` binary over loopback — every route and every error status
//! of docs/http-api.md, spoken as raw HTTP/1.1 (and an HTTP/2 prior-knowledge handshake).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::Duration;

use mta_tests::{http_post_json, http_request, server_binary, strip_received, HttpResponse, TestServer};
use serde_json::{json, Value};

const MESSAGES: &str = "/api/v1/messages";

fn raw_message(to: &str) -> String {
    format!("From: a@sender.test\nTo: {to}\nSubject: hello\n\nbody line\n")
}

fn inject(server: &TestServer, headers: &[(&str, &str)], body: &Value) -> HttpResponse {
    http_post_json(server.http, MESSAGES, headers, body)
}

fn assert_error(r: &HttpResponse, status: u16, code: &str, field: Option<&str>) {
    assert_eq!(r.status, status, "{}", r.text());
    let v = r.json();
    assert_eq!(v["error"]["code"], code, "{v}");
    assert!(v["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
    if let Some(field) = field {
        assert_eq!(v["error"]["field"], field, "{v}");
    }
}

fn hash_key(key: &str) -> String {
    let mut child =
        Command::new(server_binary()).arg("hash-key").stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
    child.stdin.take().unwrap().write_all(key.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

#[test]
fn inject_raw_and_structured_then_status() {
    let mut server = TestServer::start("");
    let r = inject(
        &server,
        &[],
        &json!({
            "envelope_sender": "bounces@sender.test",
            "recipients": ["a@dest.test", {"email": "b@other.test"}],
            "content": raw_message("a@dest.test"),
            "tenant": "acme", "pool": "default", "priority": "transactional"
        }),
    );
    assert_eq!(r.status, 202, "{}", r.text());
    let v = r.json();
    assert_eq!(v["recipients"], 2);
    let raw_id = v["id"].as_str().unwrap().to_string();

    let s = http_request(server.http, "GET", &format!("{MESSAGES}/{raw_id}"), &[], b"");
    assert_eq!(s.status, 200, "{}", s.text());
    let st = s.json();
    assert_eq!(st["id"], raw_id.as_str());
    assert_eq!(st["envelope_sender"], "bounces@sender.test");
    assert_eq!(st["tenant"], "acme");
    assert_eq!(st["priority"], "transactional");
    let rcpts = st["recipients"].as_array().unwrap();
    assert_eq!(rcpts.len(), 2);
    assert_eq!(rcpts[0]["email"], "a@dest.test");
    assert_eq!(rcpts[1]["email"], "b@other.test");
    for r in rcpts {
        assert_eq!(r["state"], "queued");
        assert_eq!(r["attempts"], 0);
    }

    let missing = http_request(server.http, "GET", &format!("{MESSAGES}/00000000000000.nope"), &[], b"");
    assert_error(&missing, 404, "not_found", None);
    let garbage = http_request(server.http, "GET", &format!("{MESSAGES}/..%2F.."), &[], b"");
    assert_eq!(garbage.status, 404);

    let r = inject(
        &server,
        &[],
        &json!({
            "recipients": ["c@dest.test"],
            "content": {
                "from": "Alice <alice@sender.test>", "to": ["c@dest.test"], "subject": "Grüße",
                "text_body": "plain\n", "html_body": "<p>html</p>", "headers": {"X-Campaign": "spring"}
            }
        }),
    );
    assert_eq!(r.status, 202, "{}", r.text());
    let structured_id = r.json()["id"].as_str().unwrap().to_string();

    server.sigterm();
    assert_eq!(server.wait_exit(Duration::from_secs(20)), Some(0));
    let list = server.spool_list();
    assert_eq!(list.len(), 2);

    let stored = server.spool_raw(&raw_id);
    assert!(String::from_utf8_lossy(&stored).contains("with HTTP id"), "{}", String::from_utf8_lossy(&stored));
    assert_eq!(
        strip_received(&stored),
        b"From: a@sender.test\r\nTo: a@dest.test\r\nSubject: hello\r\n\r\nbody line\r\n"
    );

    let stored = String::from_utf8(server.spool_raw(&structured_id)).unwrap();
    for needle in [
        "From: \"Alice\" <alice@sender.test>",
        "X-Campaign: spring",
        "Message-ID: <",
        "@mx.test>",
        "Date: ",
        "MIME-Version: 1.0",
    ] {
        assert!(stored.contains(needle), "{needle} missing: {stored}");
    }
    assert!(!stored.replace("\r\n", "").contains('\n'), "every LF is part of a CRLF");
    let entry = list.iter().find(|m| m["id"] == structured_id.as_str()).unwrap();
    assert_eq!(entry["sender"], "alice@sender.test", "{entry}");
}

#[test]
fn every_request_error_has_its_status_and_nothing_is_stored() {
    let mut server = TestServer::start("[smtp]\nmax_recipients = 5\nmax_message_size = 4096\n");
    let good = json!({"envelope_sender": "s@sender.test", "recipients": ["a@dest.test"], "content": raw_message("a@dest.test")});

    let r = http_request(server.http, "POST", MESSAGES, &[("Content-Type", "application/json")], b"{\"recipients\": [");
    assert_error(&r, 400, "invalid_json", None);

    let r = http_request(server.http, "POST", MESSAGES, &[("Content-Type", "text/plain")], good.to_string().as_bytes());
    assert_error(&r, 415, "unsupported_media_type", None);
    let r = http_request(server.http, "POST", MESSAGES, &[], good.to_string().as_bytes());
    assert_error(&r, 415, "unsupported_media_type", None);

    let mut bad = good.clone();
    bad["envelope_sender"] = json!("not an address");
    assert_error(&inject(&server, &[], &bad), 400, "invalid_sender", Some("envelope_sender"));

    let mut bad = good.clone();
    bad["recipients"] = json!(["ok@dest.test", "ok2@dest.test", "ok3@dest.test", "broken@"]);
    assert_error(&inject(&server, &[], &bad), 400, "invalid_recipient", Some("recipients[3]"));
    bad["recipients"] = json!(["ok@dest.test", {"email": "x y@dest.test"}]);
    assert_error(&inject(&server, &[], &bad), 400, "invalid_recipient", Some("recipients[1]"));

    let mut bad = good.clone();
    bad["recipients"] = json!((0..6).map(|i| format!("r{i}@dest.test")).collect::<Vec<_>>());
    assert_error(&inject(&server, &[], &bad), 400, "too_many_recipients", Some("recipients"));

    let mut bad = good.clone();
    bad["content"] = json!(format!("Subject: big\n\n{}", "0123456789abcdef\n".repeat(300)));
    assert_error(&inject(&server, &[], &bad), 413, "too_large", Some("content"));
    // A body far over any message size is refused before it is parsed.
    let huge = format!("{{\"content\": \"{}\"}}", "x".repeat(128 << 10));
    let r = http_request(server.http, "POST", MESSAGES, &[("Content-Type", "application/json")], huge.as_bytes());
    assert_error(&r, 413, "too_large", None);

    let mut bad = good.clone();
    bad["content"] = json!({"from": "a@sender.test", "subject": "hi\r\nBcc: victim@dest.test"});
    assert_error(&inject(&server, &[], &bad), 400, "header_injection", Some("content.subject"));
    bad["content"] = json!({"from": "a@sender.test", "headers": {"X-Evil": "1\nBcc: victim@dest.test"}});
    assert_error(&inject(&server, &[], &bad), 400, "header_injection", Some("content.headers.X-Evil"));
    bad["content"] = json!({"from": "a@sender.test", "to": "b@dest.test\r\nBcc: v@dest.test"});
    assert_error(&inject(&server, &[], &bad), 400, "header_injection", Some("content.to"));

    let mut bad = good.clone();
    bad["content"] = json!("Subject: x\r\n\r\nbare\rcr\r\n");
    assert_error(&inject(&server, &[], &bad), 400, "bare_cr", Some("content"));

    let mut bad = good.clone();
    bad["priority"] = json!("urgent");
    assert_error(&inject(&server, &[], &bad), 400, "invalid_field", Some("priority"));

    let r = inject(&server, &[("Idempotency-Key", &"k".repeat(256))], &good);
    assert_error(&r, 400, "invalid_idempotency_key", None);

    let r = http_request(server.http, "PUT", "/api/v1/debug/faults", &[("Content-Type", "application/json")], b"{}");
    assert_error(&r, 404, "not_found", None);
    let r = http_request(server.http, "GET", "/api/v1/nothing-here", &[], b"");
    assert_eq!(r.status, 404);

    server.sigterm();
    assert_eq!(server.wait_exit(Duration::from_secs(20)), Some(0));
    assert!(server.spool_list().is_empty(), "a refused request stored something");
}

#[test]
fn api_keys_are_required_when_configured() {
    let key = "test-key-0123456789";
    // `extra` continues the `[http]` table of the test config.
    let server = TestServer::start(&format!("api_keys = [\"{}\"]\n", hash_key(key)));
    let body = json!({"envelope_sender": "s@sender.test", "recipients": ["a@dest.test"], "content": raw_message("a@dest.test")});

    assert_error(&inject(&server, &[], &body), 401, "unauthorized", None);
    assert_error(&inject(&server, &[("Authorization", "Basic eDp5")], &body), 401, "unauthorized", None);
    assert_error(&inject(&server, &[("Authorization", "Bearer wrong-key")], &body), 403, "invalid_api_key", None);
    let r = http_request(server.http, "GET", "/api/v1/openapi.json", &[], b"");
    assert_eq!(r.status, 401);

    let bearer = format!("Bearer {key}");
    let r = inject(&server, &[("Authorization", &bearer)], &body);
    assert_eq!(r.status, 202, "{}", r.text());
    let id = r.json()["id"].as_str().unwrap().to_string();
    let r = http_request(server.http, "GET", &format!("{MESSAGES}/{id}"), &[("Authorization", &bearer)], b"");
    assert_eq!(r.status, 200);

    // Health and metrics need no key.
    for path in ["/health/live", "/health/ready", "/metrics"] {
        assert_eq!(http_request(server.http, "GET", path, &[], b"").status, 200, "{path}");
    }
}

#[test]
fn idempotency_key_replays_conflicts_and_detects_other_bodies() {
    let mut server = TestServer::start("[debug]\nfault_injection = true\n");
    let body = json!({"envelope_sender": "s@sender.test", "recipients": ["a@dest.test"], "content": raw_message("a@dest.test")});
    let key = [("Idempotency-Key", "order-1")];

    let first = inject(&server, &key, &body);
    assert_eq!(first.status, 202, "{}", first.text());
    assert!(first.header("idempotent-replayed").is_none());
    // Same key, same body (keys reordered: same canonical request): the first answer, nothing queued.
    let reordered: Value = serde_json::from_str(&format!(
        "{{\"content\": {}, \"recipients\": [\"a@dest.test\"], \"envelope_sender\": \"s@sender.test\"}}",
        json!(raw_message("a@dest.test"))
    ))
    .unwrap();
    let again = inject(&server, &key, &reordered);
    assert_eq!(again.status, 202);
    assert_eq!(again.json(), first.json());
    assert_eq!(again.header("idempotent-replayed"), Some("true"));

    let mut other = body.clone();
    other["recipients"] = json!(["b@dest.test"]);
    assert_error(&inject(&server, &key, &other), 422, "idempotency_key_reused", None);

    // In flight: the first request with a key waits on a slow spool flush; a second one gets 409.
    let r = http_request(
        server.http,
        "PUT",
        "/api/v1/debug/faults",
        &[("Content-Type", "application/json")],
        br#"{"spool_flush_delay_ms": 1500}"#,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let addr = server.http;
    let slow_body = body.clone();
    let slow =
        std::thread::spawn(move || http_post_json(addr, MESSAGES, &[("Idempotency-Key", "order-2")], &slow_body));
    std::thread::sleep(Duration::from_millis(400));
    assert_error(&inject(&server, &[("Idempotency-Key", "order-2")], &body), 409, "idempotency_key_in_use", None);
    let slow = slow.join().unwrap();
    assert_eq!(slow.status, 202, "{}", slow.text());
    let r = http_request(
        server.http,
        "PUT",
        "/api/v1/debug/faults",
        &[("Content-Type", "application/json")],
        br#"{"spool_flush_delay_ms": 0}"#,
    );
    assert_eq!(r.status, 200);
    let replay = inject(&server, &[("Idempotency-Key", "order-2")], &body);
    assert_eq!(replay.json(), slow.json());
    assert_eq!(replay.header("idempotent-replayed"), Some("true"));

    server.sigterm();
    assert_eq!(server.wait_exit(Duration::from_secs(20)), Some(0));
    let ids: Vec<String> = server.spool_list().iter().map(|m| m["id"].as_str().unwrap().to_string()).collect();
    assert_eq!(ids.len(), 2, "one message per idempotency key: {ids:?}");
    assert!(ids.contains(&first.json()["id"].as_str().unwrap().to_string()));
    assert!(ids.contains(&slow.json()["id"].as_str().unwrap().to_string()));
}

#[test]
fn rate_limit_answers_429_with_retry_after() {
    let server = TestServer::start("rate_limit_per_key = 3\n");
    let statuses: Vec<HttpResponse> =
        (0..8).map(|_| http_request(server.http, "GET", &format!("{MESSAGES}/0000000000000a.t1"), &[], b"")).collect();
    let limited: Vec<&HttpResponse> = statuses.iter().filter(|r| r.status == 429).collect();
    assert!(!limited.is_empty(), "{:?}", statuses.iter().map(|r| r.status).collect::<Vec<_>>());
    assert_error(limited[0], 429, "rate_limited", None);
    let retry: u64 = limited[0].header("retry-after").expect("Retry-After").parse().unwrap();
    assert!((1..=2).contains(&retry), "{retry}");
    // Health is never limited.
    for _ in 0..10 {
        assert_eq!(http_request(server.http, "GET", "/health/live", &[], b"").status, 200);
    }
    std::thread::sleep(Duration::from_millis(1100));
    assert_eq!(http_request(server.http, "GET", &format!("{MESSAGES}/0000000000000a.t1"), &[], b"").status, 404);
}

#[test]
fn health_metrics_and_openapi() {
    let server = TestServer::start("");
    let r = http_request(server.http, "GET", "/health/live", &[], b"");
    assert_eq!(r.status, 200);
    let r = http_request(server.http, "GET", "/health/ready", &[], b"");
    assert_eq!((r.status, r.json()["state"].clone()), (200, json!("healthy")));

    let body = json!({"envelope_sender": "s@sender.test", "recipients": ["a@dest.test"], "content": raw_message("a@dest.test")});
    assert_eq!(inject(&server, &[], &body).status, 202);
    let m = http_request(server.http, "GET", "/metrics", &[], b"");
    assert_eq!(m.status, 200);
    assert!(m.header("content-type").unwrap_or_default().starts_with("text/plain"));
    let text = m.text();
    for metric in
        ["mta_spool_fsyncs_total", "mta_spool_commit_seconds", "mta_http_inject_seconds", "mta_http_requests_total"]
    {
        assert!(text.contains(metric), "{metric} missing in /metrics:\n{text}");
    }

    let r = http_request(server.http, "GET", "/api/v1/openapi.json", &[], b"");
    assert_eq!(r.status, 200);
    let doc = r.json();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let paths = doc["paths"].as_object().unwrap();
    for (path, method) in [
        ("/api/v1/messages", "post"),
        ("/api/v1/messages/{id}", "get"),
        ("/api/v1/openapi.json", "get"),
        ("/api/v1/debug/faults", "put"),
        ("/health/live", "get"),
        ("/health/ready", "get"),
        ("/metrics", "get"),
    ] {
        assert!(paths.get(path).and_then(|p| p.get(method)).is_some(), "{method} {path} not in openapi.json");
    }
}

#[test]
fn http2_prior_knowledge_is_served() {
    let server = TestServer::start("");
    let mut s = TcpStream::connect(server.http).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    // Connection preface + an empty SETTINGS frame; the server answers with its own SETTINGS frame.
    s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00").unwrap();
    let mut header = [0u8; 9];
    s.read_exact(&mut header).unwrap();
    assert_eq!(header[3], 0x04, "first frame is SETTINGS: {header:?}");
}

#[test]
fn graceful_stop_answers_503_while_injections_finish() {
    let mut server = TestServer::start("[debug]\nfault_injection = true\n");
    let body = json!({"envelope_sender": "s@sender.test", "recipients": ["a@dest.test"], "content": raw_message("a@dest.test")});
    let r = http_request(
        server.http,
        "PUT",
        "/api/v1/debug/faults",
        &[("Content-Type", "application/json")],
        br#"{"spool_flush_delay_ms": 2000}"#,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let (addr, slow_body) = (server.http, body.clone());
    let slow = std::thread::spawn(move || http_post_json(addr, MESSAGES, &[], &slow_body));
    std::thread::sleep(Duration::from_millis(300));
    server.sigterm();
    std::thread::sleep(Duration::from_millis(300));
    let refused = inject(&server, &[], &body);
    assert_error(&refused, 503, "shutting_down", None);
    assert!(refused.header("retry-after").is_some());
    let ready = http_request(server.http, "GET", "/health/ready", &[], b"");
    assert_eq!((ready.status, ready.json()["state"].clone()), (503, json!("shedding")));
    let slow = slow.join().unwrap();
    assert_eq!(slow.status, 202, "the in-flight injection finishes: {}", slow.text());
    assert_eq!(server.wait_exit(Duration::from_secs(20)), Some(0));
    let list = server.spool_list();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["id"], slow.json()["id"]);
}
