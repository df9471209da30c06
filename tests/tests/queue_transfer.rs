//! Queue transfer (`POST /api/v1/queue/transfer`, `mta-server queue transfer`) between two real servers:
//! 10,000 queued messages move from A to B through `kill -9` of A and then of B mid-transfer, and B delivers
//! every one exactly once to a counting SMTP sink; a domain filter moves only that domain's recipients.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use mta_spool::{MessageRecord, Spool, SpoolConfig};
use mta_tests::sink::{SinkConfig, SinkHandle};
use mta_tests::{http_post_json, http_request, TestServer};

/// A's config: it keeps what it has (delivery off), so the queue stays for the transfer.
const HOLD: &str = "[delivery]\nenabled = false\n";

/// Write `count` queued messages straight into the spool at `dir/spool` (server stopped), to the domains
/// `recipients(i)` returns; each body carries `Subject: transfer <i>`. Returns their ids.
async fn fill(dir: &Path, count: usize, recipients: impl Fn(usize) -> Vec<String> + Send + Sync + 'static) {
    let spool = Spool::open_async(SpoolConfig::new(dir.join("spool"), "src")).await.unwrap();
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64;
    let next = Arc::new(AtomicUsize::new(0));
    let recipients = Arc::new(recipients);
    let mut tasks = Vec::new();
    for _ in 0..64 {
        let (spool, next, recipients) = (spool.clone(), next.clone(), recipients.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= count {
                    break;
                }
                let mut record = MessageRecord::new(spool.next_id(), "bulk@sender.test", &recipients(i), now - 5_000);
                record.tenant = Some("acme".into());
                record.recipients[0].attempts = 2;
                record.schedules[0].attempts = 2;
                let body = format!(
                    "From: bulk@sender.test\r\nTo: someone@dest.test\r\nSubject: transfer {i}\r\n\r\nbody {i}\r\n{}\r\n",
                    "x".repeat(700)
                );
                spool.put(record, Bytes::from(body)).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    spool.close().await;
}

/// Start a transfer on `from` towards `to`; the transfer id.
fn start(from: SocketAddr, to: SocketAddr, domain: Option<&str>) -> String {
    let body = serde_json::json!({"to": format!("http://{to}"), "token": "peer-key", "domain": domain});
    let resp = http_post_json(from, "/api/v1/queue/transfer", &[], &body);
    assert_eq!(resp.status, 202, "{}", resp.text());
    resp.json()["transfer_id"].as_str().unwrap().to_string()
}

fn status(from: SocketAddr, id: &str) -> serde_json::Value {
    let resp = http_request(from, "GET", &format!("/api/v1/queue/transfer/{id}"), &[], b"");
    assert_eq!(resp.status, 200, "{}", resp.text());
    resp.json()
}

/// Poll until `moved` reaches `at_least` or the transfer ends; the last status.
fn wait_moved(from: SocketAddr, id: &str, at_least: u64, limit: Duration) -> serde_json::Value {
    let deadline = Instant::now() + limit;
    loop {
        let s = status(from, id);
        if s["moved"].as_u64().unwrap_or(0) >= at_least || s["state"] != "running" || Instant::now() > deadline {
            return s;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Stop `server` gracefully and read its spool offline.
fn stop_and_list(server: &mut TestServer) -> Vec<serde_json::Value> {
    server.sigterm();
    assert_eq!(server.wait_exit(Duration::from_secs(30)), Some(0), "{}", server.stderr());
    server.spool_list()
}

fn subject_of(data: &[u8]) -> String {
    let text = String::from_utf8_lossy(data);
    text.lines().find_map(|l| l.strip_prefix("Subject: ")).unwrap_or_default().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ten_thousand_messages_survive_kill9_of_either_side() {
    const N: usize = 10_000;
    let sink_port = mta_tests::free_port();
    let a_dir = tempfile::tempdir().unwrap();
    let b_dir = tempfile::tempdir().unwrap();
    fill(a_dir.path(), N, |i| vec![format!("user{i}@d{}.test", i % 4)]).await;

    let (a_smtp, a_http) = (mta_tests::free_port(), mta_tests::free_port());
    let (b_smtp, b_http) = (mta_tests::free_port(), mta_tests::free_port());
    let start_a = || TestServer::start_in(a_dir.path(), HOLD, Some(a_smtp), Some(a_http));
    // B takes messages in with delivery off (a crash of B while delivering would send some twice, which is
    // delivery's at-least-once, not the transfer's); it delivers once everything is across.
    let start_b = |extra: &str| TestServer::start_in(b_dir.path(), extra, Some(b_smtp), Some(b_http));
    let mut a = tokio::task::block_in_place(start_a);
    let mut b = tokio::task::block_in_place(|| start_b(HOLD));

    // 1. kill -9 of A mid-transfer, restart, and move on.
    let started = Instant::now();
    let id = start(a.http, b.http, None);
    let s = tokio::task::block_in_place(|| wait_moved(a.http, &id, 2_000, Duration::from_secs(60)));
    assert_eq!(s["state"], "running", "the transfer ended before the crash: {s}");
    a.kill9();
    a = tokio::task::block_in_place(start_a);

    // 2. kill -9 of B mid-transfer (second run), restart B.
    let id = start(a.http, b.http, None);
    let s = tokio::task::block_in_place(|| wait_moved(a.http, &id, 2_000, Duration::from_secs(60)));
    assert_eq!(s["state"], "running", "the transfer ended before the crash: {s}");
    b.kill9();
    let s = tokio::task::block_in_place(|| wait_moved(a.http, &id, u64::MAX, Duration::from_secs(60)));
    assert_eq!(s["state"], "failed", "B is down: the transfer must fail: {s}");
    assert!(s["error"].as_str().is_some_and(|e| !e.is_empty()), "{s}");
    b = tokio::task::block_in_place(|| start_b(HOLD));

    // 3. Finish with the CLI (it waits and prints the final status).
    let out = tokio::task::block_in_place(|| {
        a.run_cli(&[
            "queue",
            "transfer",
            "--to",
            &format!("http://{}", b.http),
            "--to-token",
            "peer-key",
            "--http",
            &format!("http://{}", a.http),
        ])
    });
    assert!(out.status.success(), "queue transfer failed: {}", String::from_utf8_lossy(&out.stderr));
    let last: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(last["state"], "done", "{last}");
    assert_eq!(last["failed"], 0, "{last}");
    eprintln!("three transfer runs with two crashes took {:.1} s", started.elapsed().as_secs_f64());

    // A is empty; B holds each message exactly once, with what A had kept.
    let left = tokio::task::block_in_place(|| stop_and_list(&mut a));
    assert!(left.is_empty(), "A still holds {} messages", left.len());
    let on_b = tokio::task::block_in_place(|| stop_and_list(&mut b));
    assert_eq!(on_b.len(), N, "B must hold every message once");
    let first = &on_b[0];
    assert_eq!(first["tenant"], "acme", "{first}");
    assert!(first["id"].as_str().unwrap().ends_with("src"), "the source id is kept: {first}");
    assert_eq!(first["recipients"][0]["attempts"], 2, "attempts are kept: {first}");
    let received = first["received_at"].as_u64().unwrap();
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64;
    assert!(now - received > 5_000, "the first reception time is kept: {first}");

    // B delivers all, once each.
    let sink = SinkHandle::start(format!("127.0.0.1:{sink_port}").parse().unwrap(), SinkConfig::default()).await;
    let deliver = format!(
        "[delivery]\nconnections_per_domain = 8\n[[route]]\ndomain = \"*\"\nrelay = \"127.0.0.1:{sink_port}\"\n"
    );
    let mut b = tokio::task::block_in_place(|| start_b(&deliver));
    assert!(sink.wait_for_messages(N, Duration::from_secs(120)).await, "B delivered {} of {N}", sink.messages().len());
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut seen: HashMap<String, usize> = HashMap::new();
    for m in sink.messages() {
        *seen.entry(subject_of(&m.data)).or_default() += 1;
    }
    let twice: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "delivered more than once: {twice:?}");
    assert_eq!(seen.len(), N, "every message delivered");
    let left = tokio::task::block_in_place(|| stop_and_list(&mut b));
    assert!(left.is_empty(), "B still holds {} messages", left.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn domain_filter_moves_only_that_domain() {
    let a_dir = tempfile::tempdir().unwrap();
    // 40 messages to x.test only, 40 to y.test only, 20 to both.
    fill(a_dir.path(), 100, |i| match i % 5 {
        0 | 1 => vec![format!("u{i}@x.test")],
        2 | 3 => vec![format!("u{i}@y.test")],
        _ => vec![format!("u{i}@x.test"), format!("u{i}@y.test")],
    })
    .await;
    let mut a = tokio::task::block_in_place(|| TestServer::start_in(a_dir.path(), HOLD, None, None));
    let mut b = tokio::task::block_in_place(|| TestServer::start(HOLD));
    let id = start(a.http, b.http, Some("X.test"));
    let s = tokio::task::block_in_place(|| wait_moved(a.http, &id, u64::MAX, Duration::from_secs(60)));
    assert_eq!(s["state"], "done", "{s}");
    assert_eq!(s["moved"], 60, "{s}");
    // A second run finds nothing more to move.
    let id = start(a.http, b.http, Some("x.test"));
    let s = tokio::task::block_in_place(|| wait_moved(a.http, &id, u64::MAX, Duration::from_secs(60)));
    assert_eq!((s["state"].as_str(), s["moved"].as_u64()), (Some("done"), Some(0)), "{s}");

    let rcpts = |list: &[serde_json::Value]| -> Vec<String> {
        list.iter()
            .flat_map(|m| {
                m["recipients"].as_array().unwrap().iter().map(|r| r["address"].as_str().unwrap().to_string())
            })
            .collect()
    };
    let on_a = tokio::task::block_in_place(|| stop_and_list(&mut a));
    let on_b = tokio::task::block_in_place(|| stop_and_list(&mut b));
    let (ra, rb) = (rcpts(&on_a), rcpts(&on_b));
    assert_eq!(on_a.len(), 60, "y.test-only and mixed messages stay on A");
    assert!(ra.iter().all(|r| r.ends_with("@y.test")) && ra.len() == 60, "A keeps its y.test recipients: {ra:?}");
    assert_eq!(on_b.len(), 60);
    assert!(rb.iter().all(|r| r.ends_with("@x.test")) && rb.len() == 60, "B has the x.test recipients: {rb:?}");
}
