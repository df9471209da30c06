//! End to end: on a dual-stack HTTP listener (`[::]`), an IPv4 client is its IPv4 address, not the mapped
//! IPv6 form `::ffff:127.0.0.1` — for the loopback rule, trusted proxies and the stored `Received:` header.

use std::io::Write;
use std::process::{Command, Stdio};

use mta_tests::{http_post_json, server_binary, TestServer};
use serde_json::json;

fn inject(server: &TestServer, headers: &[(&str, &str)]) -> String {
    let body = json!({
        "envelope_sender": "a@sender.test",
        "recipients": ["b@dest.test"],
        "content": "From: a@sender.test\nTo: b@dest.test\nSubject: hi\n\nbody\n"
    });
    let r = http_post_json(server.http, "/api/v1/messages", headers, &body);
    assert_eq!(r.status, 202, "{}", r.text());
    r.json()["id"].as_str().expect("an id").to_string()
}

/// The `Received:` header of a stored message (the server must be stopped).
fn received(server: &TestServer, id: &str) -> String {
    let raw = String::from_utf8_lossy(&server.spool_raw(id)).into_owned();
    raw.split("\r\n\r\n").next().unwrap_or_default().to_string()
}

#[test]
fn an_ipv4_client_of_a_dual_stack_listener_is_its_ipv4_address() {
    // No API keys: only loopback clients are served, and 127.0.0.1 arriving as ::ffff:127.0.0.1 is one.
    let mut server = TestServer::start_http_on("[::]", "");
    let id = inject(&server, &[]);
    server.kill9();
    let head = received(&server, &id);
    assert!(head.contains("from [127.0.0.1] ([127.0.0.1])"), "{head}");
    assert!(!head.contains("::ffff:"), "{head}");
}

#[test]
fn a_trusted_proxy_reached_over_ipv4_on_a_dual_stack_listener_is_believed() {
    let key = "limits-test-key";
    let mut child =
        Command::new(server_binary()).arg("hash-key").stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
    child.stdin.take().unwrap().write_all(key.as_bytes()).unwrap();
    let hash = String::from_utf8(child.wait_with_output().unwrap().stdout).unwrap().trim().to_string();
    let mut server =
        TestServer::start_http_on("[::]", &format!("api_keys = [\"{hash}\"]\ntrusted_proxies = [\"127.0.0.0/8\"]\n"));
    let bearer = format!("Bearer {key}");
    let id = inject(&server, &[("Authorization", &bearer), ("X-Forwarded-For", "203.0.113.7")]);
    server.kill9();
    let head = received(&server, &id);
    assert!(head.contains("from [203.0.113.7]"), "the proxy's X-Forwarded-For was not believed: {head}");
}
