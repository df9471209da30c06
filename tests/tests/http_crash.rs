//! Crash test of HTTP injection: messages injected with `Idempotency-Key`s, the server killed with SIGKILL right
//! after a `202`, restarted on the same spool. Every acknowledged message must be in the spool, and every key
//! must still replay the id it was first answered with (no key lost, none pointing at a lost message).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use mta_tests::{free_port, http_post_json, TestServer};
use serde_json::{json, Value};

const ROUNDS: usize = 20;
const PER_ROUND: usize = 1;

fn body(n: usize) -> Value {
    json!({
        "envelope_sender": "s@sender.test",
        "recipients": [format!("r{n}@dest.test"), format!("x{n}@other.test")],
        "content": format!("From: s@sender.test\r\nTo: r{n}@dest.test\r\nSubject: crash {n}\r\n\r\nmessage {n}\r\n"),
    })
}

fn key(n: usize) -> String {
    format!("crash-key-{n}")
}

#[test]
fn acknowledged_messages_and_keys_survive_sigkill() {
    let started = Instant::now();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let (smtp_port, http_port) = (free_port(), free_port());
    let mut acked: BTreeMap<usize, String> = BTreeMap::new();
    let mut n = 0;
    for round in 0..ROUNDS {
        let mut server = TestServer::start_in(&dir, "", Some(smtp_port), Some(http_port));
        // The key acknowledged just before the last kill replays its id after the restart.
        if let Some((&last, id)) = acked.iter().next_back() {
            let r = http_post_json(server.http, "/api/v1/messages", &[("Idempotency-Key", &key(last))], &body(last));
            assert_eq!(r.status, 202, "round {round}: {}", r.text());
            assert_eq!(r.json()["id"], id.as_str(), "round {round}: key {last} lost its answer");
            assert_eq!(r.header("idempotent-replayed"), Some("true"));
        }
        for i in 0..PER_ROUND {
            let r = http_post_json(server.http, "/api/v1/messages", &[("Idempotency-Key", &key(n))], &body(n));
            assert_eq!(r.status, 202, "{}", r.text());
            acked.insert(n, r.json()["id"].as_str().unwrap().to_string());
            n += 1;
            if i + 1 == PER_ROUND {
                server.kill9();
            }
        }
    }

    // Every acknowledged message is in the spool (read offline by the real tool).
    let server = TestServer::start_in(&dir, "", Some(smtp_port), Some(http_port));
    let mut offline = server;
    offline.kill9();
    let listed: Vec<String> = offline.spool_list().iter().map(|m| m["id"].as_str().unwrap().to_string()).collect();
    for (n, id) in &acked {
        assert!(listed.contains(id), "acknowledged message {n} ({id}) lost");
    }
    assert_eq!(listed.len(), acked.len(), "no message stored twice");

    // Every key replays its first answer and queues nothing new.
    let mut server = TestServer::start_in(&dir, "", Some(smtp_port), Some(http_port));
    for (n, id) in &acked {
        let r = http_post_json(server.http, "/api/v1/messages", &[("Idempotency-Key", &key(*n))], &body(*n));
        assert_eq!(r.status, 202, "{}", r.text());
        assert_eq!(r.json()["id"], id.as_str(), "key {n} lost");
        assert_eq!(r.header("idempotent-replayed"), Some("true"));
    }
    server.sigterm();
    assert_eq!(server.wait_exit(Duration::from_secs(20)), Some(0));
    assert_eq!(server.spool_list().len(), acked.len(), "a replay queued a message");
    assert!(started.elapsed() < Duration::from_secs(60), "crash test too slow: {:?}", started.elapsed());
}
