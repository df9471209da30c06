//! The outbox's bounds with an endpoint that never confirms: `outbox.max_bytes` caps it at every instant (the
//! commit that would exceed it drops the oldest events first, counted in
//! `mta_export_dropped_total{reason="outbox_full"}` and logged; its peak is published), and events unconfirmed
//! at `max_retry_age` are dropped (counted with `reason="max_retry_age"`, logged), while injection goes on.

use std::net::{SocketAddr, TcpListener};
use std::time::{Duration, Instant};

use mta_tests::{http_post_json, http_request, TestServer};

/// The value of the first sample of `name` whose labels contain every one of `labels`.
fn metric(http: SocketAddr, name: &str, labels: &[&str]) -> Option<f64> {
    let text = http_request(http, "GET", "/metrics", &[], b"").text();
    text.lines()
        .filter(|l| l.starts_with(name) && !l.starts_with('#'))
        .filter(|l| labels.iter().all(|want| l.contains(want)))
        .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
        .next()
}

fn inject_many(http: SocketAddr, n: usize) {
    for i in 0..n {
        let body = serde_json::json!({
            "envelope_sender": "app@sender.test",
            "recipients": [format!("r{i}@d.test"), format!("s{i}@d.test")],
            "content": format!("From: app@sender.test\r\nTo: r{i}@d.test\r\nSubject: {i}\r\n\r\nbody\r\n"),
        });
        let r = http_post_json(http, "/api/v1/messages", &[], &body);
        assert_eq!(r.status, 202, "injection goes on while the endpoint is down: {}", r.text());
    }
}

fn wait_for(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

#[test]
fn outbox_max_bytes_drops_the_oldest_counted_and_logged() {
    // Accepts TCP, never answers: every batch times out.
    let dead = TcpListener::bind("127.0.0.1:0").unwrap();
    let max_bytes = 20_000u64;
    let extra = format!(
        "[delivery]\nenabled = false\n[outbox]\nmax_bytes = {max_bytes}\n\
         [[webhook]]\nname = \"dead\"\nurl = \"http://{}/hook\"\nsecret = \"s\"\ntimeout = \"1s\"\nbatch_size = 10\n",
        dead.local_addr().unwrap()
    );
    let server = TestServer::start(&extra);
    // ~400 bytes per reception event, 2 per message: 200 messages are ~160 kB of events, 8× the bound.
    inject_many(server.http, 200);
    let dropped = || metric(server.http, "mta_export_dropped_total", &["reason=\"outbox_full\""]).unwrap_or(0.0);
    assert!(wait_for(Duration::from_secs(20), || dropped() > 0.0), "nothing dropped: {}", server.stderr());
    // Within its bound once the reaper has passed (it runs every 250 ms).
    assert!(
        wait_for(Duration::from_secs(10), || {
            metric(server.http, "mta_export_outbox_bytes", &[]).is_some_and(|b| b <= max_bytes as f64)
        }),
        "outbox over its bound: {:?}",
        metric(server.http, "mta_export_outbox_bytes", &[])
    );
    // Never above it, not even between the reaper's passes: the commit that would exceed it drops first.
    let peak = metric(server.http, "mta_export_outbox_peak_bytes", &[]).unwrap_or(f64::MAX);
    assert!(peak <= max_bytes as f64, "the outbox held {peak} bytes at its peak, bound {max_bytes}");
    assert!(server.stderr().contains("outbox full: oldest events dropped"), "{}", server.stderr());
    eprintln!("dropped for space: {}", dropped());
}

#[test]
fn events_unconfirmed_at_max_retry_age_are_dropped_counted_and_logged() {
    let dead = TcpListener::bind("127.0.0.1:0").unwrap();
    let extra = format!(
        "[delivery]\nenabled = false\n\
         [[webhook]]\nname = \"dead\"\nurl = \"http://{}/hook\"\nsecret = \"s\"\ntimeout = \"500ms\"\n\
         batch_size = 20\nbatch_delay = \"50ms\"\nmax_retry_age = \"2s\"\n",
        dead.local_addr().unwrap()
    );
    let server = TestServer::start(&extra);
    inject_many(server.http, 20);
    let dropped = || {
        metric(server.http, "mta_export_dropped_total", &["endpoint=\"dead\"", "reason=\"max_retry_age\""])
            .unwrap_or(0.0)
    };
    assert!(
        wait_for(Duration::from_secs(30), || dropped() >= 40.0),
        "40 reception events must be dropped at max_retry_age, got {}: {}",
        dropped(),
        server.stderr()
    );
    let log = server.stderr();
    assert!(log.contains("export events dropped") && log.contains("max_retry_age"), "{log}");
    // Given up on by the only endpoint, they leave the outbox.
    assert!(
        wait_for(Duration::from_secs(10), || metric(server.http, "mta_export_outbox_entries", &[]) == Some(0.0)),
        "outbox not emptied: {:?}",
        metric(server.http, "mta_export_outbox_entries", &[])
    );
    drop(dead);
}
