//! Crash test of HTTP injection: messages injected with `Idempotency-Key`s, the server killed with SIGKILL right
//! after a `202` (while other clients still have requests in flight), restarted on the same spool. Every
//! acknowledged message must be in the spool, and every acknowledged key must still replay the id it was first
//! answered with (no key lost, none pointing at a lost message).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mta_tests::{free_port, http_request, TestServer};
use serde_json::{json, Value};

/// Restarts (each ended by a SIGKILL right after a 202).
const ROUNDS: usize = 20;
/// Background clients injecting while the kill happens.
const BACKGROUND_CLIENTS: usize = 2;

/// key → (request body, acknowledged id)
type Acked = Arc<Mutex<BTreeMap<String, (Value, String)>>>;

fn body(key: &str) -> Value {
    json!({
        "envelope_sender": "s@sender.test",
        "recipients": [format!("{key}@dest.test"), format!("{key}@other.test")],
        "content": format!("From: s@sender.test\r\nTo: {key}@dest.test\r\nSubject: crash {key}\r\n\r\nmessage {key}\r\n"),
    })
}

/// POST with a key; `Some(id)` only for a complete `202` (a reset connection is not an acknowledgement).
fn post(addr: std::net::SocketAddr, key: &str, body: &Value) -> Option<(u16, Value, Option<String>)> {
    let addr_body = body.to_string();
    let result = std::panic::catch_unwind(|| {
        http_request(
            addr,
            "POST",
            "/api/v1/messages",
            &[("Content-Type", "application/json"), ("Idempotency-Key", key)],
            addr_body.as_bytes(),
        )
    })
    .ok()?;
    let json = serde_json::from_slice(&result.body).ok()?;
    Some((result.status, json, result.header("idempotent-replayed").map(str::to_string)))
}

#[test]
fn acknowledged_messages_and_keys_survive_sigkill() {
    let started = Instant::now();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let (smtp_port, http_port) = (free_port(), free_port());
    let acked: Acked = Arc::default();
    let mut last_key: Option<String> = None;
    // Background clients' panics on reset connections (caught, not acknowledgements) are expected noise.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if !std::thread::current().name().is_some_and(|n| n.starts_with("bg-")) {
            default_hook(info);
        }
    }));
    for round in 0..ROUNDS {
        let mut server = TestServer::start_in(&dir, "", Some(smtp_port), Some(http_port));
        // The key acknowledged just before the last kill replays its id after the restart.
        if let Some(key) = &last_key {
            let (b, id) = acked.lock().unwrap()[key].clone();
            let (status, v, replayed) = post(server.http, key, &b).expect("replay answered");
            assert_eq!(status, 202, "round {round}: {v}");
            assert_eq!(v["id"], id.as_str(), "round {round}: key {key} lost its answer");
            assert_eq!(replayed.as_deref(), Some("true"));
        }
        let stop = Arc::new(AtomicBool::new(false));
        let clients: Vec<_> = (0..BACKGROUND_CLIENTS)
            .map(|c| {
                let (stop, acked, addr) = (stop.clone(), acked.clone(), server.http);
                std::thread::Builder::new()
                    .name(format!("bg-{c}"))
                    .spawn(move || {
                        let mut i = 0;
                        while !stop.load(Ordering::Relaxed) {
                            let key = format!("bg-{round}-{c}-{i}");
                            let b = body(&key);
                            if let Some((202, v, _)) = post(addr, &key, &b) {
                                acked.lock().unwrap().insert(key, (b, v["id"].as_str().unwrap().to_string()));
                            }
                            i += 1;
                        }
                    })
                    .unwrap()
            })
            .collect();
        std::thread::sleep(Duration::from_millis(30));
        let key = format!("main-{round}");
        let b = body(&key);
        let (status, v, _) = post(server.http, &key, &b).expect("answered");
        assert_eq!(status, 202, "{v}");
        acked.lock().unwrap().insert(key.clone(), (b, v["id"].as_str().unwrap().to_string()));
        server.kill9();
        stop.store(true, Ordering::Relaxed);
        for c in clients {
            c.join().unwrap();
        }
        last_key = Some(key);
    }
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() > ROUNDS, "background clients got acknowledgements too");

    // Every acknowledged message is in the spool (read offline by the real tool).
    let mut server = TestServer::start_in(&dir, "", Some(smtp_port), Some(http_port));
    server.kill9();
    let listed: Vec<String> = server.spool_list().iter().map(|m| m["id"].as_str().unwrap().to_string()).collect();
    for (key, (_, id)) in &acked {
        assert!(listed.contains(id), "acknowledged message {key} ({id}) lost");
    }
    let stored_before = listed.len();

    // Every acknowledged key replays its first answer and queues nothing new.
    let mut server = TestServer::start_in(&dir, "", Some(smtp_port), Some(http_port));
    for (key, (b, id)) in &acked {
        let (status, v, replayed) = post(server.http, key, b).expect("answered");
        assert_eq!(status, 202, "{v}");
        assert_eq!(v["id"], id.as_str(), "key {key} lost");
        assert_eq!(replayed.as_deref(), Some("true"));
    }
    server.sigterm();
    assert_eq!(server.wait_exit(Duration::from_secs(20)), Some(0));
    assert_eq!(server.spool_list().len(), stored_before, "a replay queued a message");
    assert!(started.elapsed() < Duration::from_secs(60), "crash test too slow: {:?}", started.elapsed());
}
