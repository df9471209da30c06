//! End to end: back-pressure on the real binary.
//!
//! - Slow flushes (`PUT /api/v1/debug/faults` `spool_flush_delay_ms`) while clients inject over HTTP and SMTP:
//!   the node goes degraded, then shedding, within the window; new work is refused (`421 4.3.2` at connect,
//!   `451 4.3.2` to `MAIL`, HTTP `503` + `Retry-After`, `/health/ready` `503` with the reasons) while a
//!   transaction already under way finishes; clearing the fault brings it back to healthy after the dwell time.
//! - Slow DNS upstreams (the tests' faulty proxy): shedding with `dns_action = "shed"`, only degraded with
//!   `"defer"`.
//! - Every message acknowledged before and during the episode is in the spool, and is delivered (once) to a
//!   sink afterwards; nothing refused is delivered.
//!
//! Timings are printed (`cargo test -- --nocapture`) for BENCHMARKS.md.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use mta_core::dns::testing::{FaultyProxy, TestDnsServer, TestZone};
use mta_tests::sink::{SinkConfig, SinkHandle};
use mta_tests::{http_post_json, http_request, queued_id, RawSmtp, TestServer};
use serde_json::{json, Value};

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn sink_port() -> u16 {
    mta_tests::free_port()
}

/// Marks that keep the signals not under test out of the way (shared CPUs, shared disk).
const QUIET: &str = "event_loop_lag_degraded_ms = 2000\nevent_loop_lag_shed_ms = 5000\nmin_free_disk_mb = 0\n";

/// `/health/ready`: status, body, `Retry-After`.
fn ready(http: SocketAddr) -> (u16, Value, Option<String>) {
    let r = http_request(http, "GET", "/health/ready", &[], b"");
    let retry = r.header("retry-after").map(str::to_string);
    (r.status, r.json(), retry)
}

/// Poll `/health/ready` until its state is `want`; how long it took.
fn wait_state(http: SocketAddr, want: &str, limit: Duration) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if ready(http).1["state"] == want {
            return Some(start.elapsed());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

fn set_faults(http: SocketAddr, faults: Value) {
    let r = http_request(http, "PUT", "/api/v1/debug/faults", &[], faults.to_string().as_bytes());
    assert_eq!(r.status, 200, "{}", r.text());
}

/// What a client was told for one message (identified by its `X-Seq` header).
#[derive(Debug, Clone)]
struct Outcome {
    seq: u64,
    /// `202`, `503`, `250`, `421`, `451`, ...
    code: u16,
    id: Option<String>,
}

/// A client injecting until told to stop.
struct Client {
    stop: Arc<AtomicBool>,
    handle: JoinHandle<Vec<Outcome>>,
}

impl Client {
    fn finish(self) -> Vec<Outcome> {
        self.stop.store(true, Ordering::SeqCst);
        self.handle.join().unwrap()
    }
}

fn message(seq: u64, to: &str) -> String {
    format!("From: a@sender.test\r\nTo: {to}\r\nSubject: bp {seq}\r\nX-Seq: {seq}\r\n\r\nbody {seq}\r\n")
}

/// HTTP injections, one after another, with `X-Seq` from `first`; `rcpt(seq)` gives the recipient.
fn http_client(http: SocketAddr, first: u64, rcpt: fn(u64) -> String, pause: Duration) -> Client {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let handle = std::thread::spawn(move || {
        let mut out = Vec::new();
        let mut seq = first;
        while !flag.load(Ordering::SeqCst) {
            let to = rcpt(seq);
            let body = json!({"envelope_sender": "a@sender.test", "recipients": [to], "content": message(seq, &to)});
            let r = http_post_json(http, "/api/v1/messages", &[], &body);
            if r.status == 503 {
                assert!(r.header("retry-after").is_some(), "503 without Retry-After");
            }
            let id = (r.status == 202).then(|| r.json()["id"].as_str().unwrap().to_string());
            out.push(Outcome { seq, code: r.status, id });
            seq += 1;
            std::thread::sleep(pause);
        }
        out
    });
    Client { stop, handle }
}

/// One SMTP transaction per connection, one after another, with `X-Seq` from `first`.
fn smtp_client(smtp: SocketAddr, first: u64, rcpt: fn(u64) -> String, pause: Duration) -> Client {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let handle = std::thread::spawn(move || {
        let mut out = Vec::new();
        let mut seq = first;
        while !flag.load(Ordering::SeqCst) {
            let code = |r: &str| r.get(..3).and_then(|c| c.parse().ok()).unwrap_or(0u16);
            let (mut c, greeting) = RawSmtp::connect(smtp);
            let outcome = if !greeting.starts_with("220") {
                assert!(greeting.starts_with("421 4.3.2"), "{greeting}");
                Outcome { seq, code: 421, id: None }
            } else {
                c.cmd("EHLO client.test", "250");
                let r = c.cmd("MAIL FROM:<a@sender.test>", "");
                if !r.starts_with("250") {
                    assert!(r.starts_with("451 4.3.2"), "{r}");
                    Outcome { seq, code: 451, id: None }
                } else {
                    let to = rcpt(seq);
                    c.cmd(&format!("RCPT TO:<{to}>"), "250");
                    c.cmd("DATA", "354");
                    c.send(message(seq, &to).as_bytes());
                    let r = c.cmd(".", "");
                    let _ = c.cmd("QUIT", "");
                    Outcome { seq, code: code(&r), id: queued_id(&r).filter(|_| r.starts_with("250")) }
                }
            };
            out.push(outcome);
            seq += 1;
            std::thread::sleep(pause);
        }
        out
    });
    Client { stop, handle }
}

fn seq_of(data: &[u8]) -> u64 {
    let text = String::from_utf8_lossy(data);
    let line = text.lines().find(|l| l.starts_with("X-Seq: ")).expect("X-Seq header");
    line["X-Seq: ".len()..].trim().parse().unwrap()
}

/// Wait until the sink holds every sequence number in `acked`; returns how many times it got each.
async fn delivered(sink: &SinkHandle, acked: &BTreeSet<u64>, limit: Duration) -> BTreeMap<u64, usize> {
    let deadline = Instant::now() + limit;
    loop {
        let mut got = BTreeMap::new();
        for m in sink.messages() {
            *got.entry(seq_of(&m.data)).or_insert(0) += 1;
        }
        if acked.iter().all(|s| got.contains_key(s)) || Instant::now() > deadline {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn summarize(name: &str, outcomes: &[Outcome]) -> BTreeSet<u64> {
    let mut by_code = BTreeMap::new();
    for o in outcomes {
        *by_code.entry(o.code).or_insert(0) += 1;
    }
    println!("{name}: {} attempts, by reply {by_code:?}", outcomes.len());
    outcomes.iter().filter(|o| o.id.is_some()).map(|o| o.seq).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn slow_flushes_degrade_then_shed_then_recover_and_nothing_acknowledged_is_lost() {
    let port = sink_port();
    let sink = SinkHandle::start(SocketAddr::new(ip("127.0.0.2"), port), SinkConfig::default()).await;
    // Deliveries are deferred during the episode, so what was acknowledged stays in the spool to be looked at.
    sink.set_rcpt_rule(|_| Some("451 4.3.0 come back later".to_string()));
    let dns = TestDnsServer::start(vec![
        TestZone::new("test").mail_domain("dest.test", &[(10, "mx.dest.test", ip("127.0.0.2"))])
    ])
    .await
    .unwrap();
    let config = format!(
        "[dns]\nnameservers = [\"{}\"]\n\
         [delivery]\nport = {port}\nretry_intervals = [\"1s\"]\nsmtp_timeout = \"5s\"\n\
         [debug]\nfault_injection = true\n\
         [backpressure]\nwindow = \"2s\"\nmin_dwell = \"2s\"\ncommit_p99_degraded_ms = 100\ncommit_p99_shed_ms = 600\n\
         retry_after_secs = 1\ndegraded_greeting_delay = \"100ms\"\n{QUIET}",
        dns.addr()
    );
    let server = tokio::task::block_in_place(|| TestServer::start(&config));
    let (http, smtp) = (server.http, server.smtp);

    let (acked, refused) = tokio::task::block_in_place(|| {
        assert_eq!(ready(http).1, json!({"state": "healthy"}));
        let health = http_request(http, "GET", "/api/v1/health", &[], b"").json();
        assert_eq!(health["state"], "healthy");
        let p99 = health["signals"].as_array().unwrap().iter().find(|s| s["signal"] == "spool_commit_p99").unwrap();
        assert_eq!(p99["shed_mark"], 600.0);
        assert_eq!(p99["shed_low_mark"], 300.0);

        // Clients inject all along; one idle session is kept open from the start.
        let to_dest = |_| "b@dest.test".to_string();
        let web = http_client(http, 1, to_dest, Duration::from_millis(20));
        let mail = smtp_client(smtp, 1_000_000, to_dest, Duration::from_millis(20));
        let (mut idle, greeting) = RawSmtp::connect(smtp);
        assert!(greeting.starts_with("220"), "{greeting}");
        idle.cmd("EHLO idle.test", "250");
        std::thread::sleep(Duration::from_millis(1500));
        assert_eq!(ready(http).1["state"], "healthy", "healthy under normal load");

        // Slow flushes: 200 ms per commit round → degraded (p99 >= 100 ms).
        let t_fault = Instant::now();
        set_faults(http, json!({"spool_flush_delay_ms": 200}));
        let to_degraded = wait_state(http, "degraded", Duration::from_secs(10)).expect("degraded within the window");
        let (code, body, _) = ready(http);
        assert_eq!(code, 200, "degraded stays ready: {body}");
        assert!(body["reasons"][0].as_str().unwrap_or("").contains("spool_commit_p99"), "{body}");

        // A transaction under way when shedding starts: DATA begun now, finished once shedding.
        let (mut inflight, greeting) = RawSmtp::connect(smtp);
        assert!(greeting.starts_with("220"), "{greeting}");
        inflight.cmd("EHLO inflight.test", "250");
        inflight.cmd("MAIL FROM:<a@sender.test>", "250");
        inflight.cmd("RCPT TO:<b@dest.test>", "250");
        inflight.cmd("DATA", "354");
        inflight.send(message(999, "b@dest.test").as_bytes());

        // Slower: 1 s per round → shedding (p99 >= 600 ms).
        let t_shed_fault = Instant::now();
        set_faults(http, json!({"spool_flush_delay_ms": 1000}));
        let to_shed = wait_state(http, "shedding", Duration::from_secs(10)).expect("shedding within the window");
        let (code, body, retry) = ready(http);
        assert_eq!(code, 503, "{body}");
        assert_eq!(retry.as_deref(), Some("1"), "Retry-After on /health/ready");
        assert!(body["reasons"][0].as_str().unwrap().contains("spool_commit_p99"), "{body}");

        // New work is refused with temporary codes...
        let r = http_post_json(
            http,
            "/api/v1/messages",
            &[],
            &json!({"envelope_sender": "a@sender.test", "recipients": ["b@dest.test"], "content": message(0, "b@dest.test")}),
        );
        assert_eq!(r.status, 503, "{}", r.text());
        assert_eq!(r.json()["error"]["code"], "overloaded");
        assert!(r.header("retry-after").is_some());
        let (_, greeting) = RawSmtp::connect(smtp);
        assert!(greeting.starts_with("421 4.3.2"), "new connection while shedding: {greeting}");
        let r = idle.cmd("MAIL FROM:<a@sender.test>", "451");
        assert!(r.starts_with("451 4.3.2"), "{r}");
        // ...while the transaction under way finishes and is acknowledged (durably: the commit is slow).
        let r = inflight.cmd(".", "250");
        let inflight_id = queued_id(&r).unwrap();
        let health = http_request(http, "GET", "/api/v1/health", &[], b"").json();
        assert_eq!(health["state"], "shedding");
        assert!(health["transitions"].as_u64().unwrap() >= 2, "{health}");

        // The fault goes away: healthy again once the slow rounds leave the window and the dwell time passed.
        std::thread::sleep(Duration::from_secs(1));
        let t_clear = Instant::now();
        set_faults(http, json!({"spool_flush_delay_ms": 0}));
        let to_healthy = wait_state(http, "healthy", Duration::from_secs(15)).expect("healthy after the fault");
        std::thread::sleep(Duration::from_millis(1500));
        let web = web.finish();
        let mail = mail.finish();
        let http_acked = summarize("HTTP client", &web);
        let smtp_acked = summarize("SMTP client", &mail);
        println!(
            "slow flushes: degraded {:.2}s after 200 ms/round, shedding {:.2}s after 1 s/round, healthy {:.2}s after \
             clearing (window 2s, dwell 2s); episode {:.1}s",
            to_degraded.as_secs_f64(),
            to_shed.as_secs_f64(),
            to_healthy.as_secs_f64(),
            t_fault.elapsed().as_secs_f64()
        );
        let _ = (t_shed_fault, t_clear);
        assert!(web.iter().any(|o| o.code == 503), "the HTTP client saw the shedding");
        assert!(mail.iter().any(|o| o.code == 421 || o.code == 451), "the SMTP client saw the shedding");
        assert!(web.iter().all(|o| o.code == 202 || o.code == 503), "only 202 or 503");
        assert!(mail.iter().all(|o| matches!(o.code, 250 | 421 | 451)), "only 250, 421 or 451");

        // Every acknowledged message is in the spool (deferred by the sink).
        let mut ids: Vec<&str> = web.iter().chain(&mail).filter_map(|o| o.id.as_deref()).collect();
        ids.push(&inflight_id);
        for id in &ids {
            let r = http_request(http, "GET", &format!("/api/v1/messages/{id}"), &[], b"");
            assert_eq!(r.status, 200, "acknowledged {id} not in the spool: {}", r.text());
        }
        let metrics = http_request(http, "GET", "/metrics", &[], b"").text();
        assert!(metrics.contains("mta_backpressure_transitions_total{"), "transitions counted");
        assert!(
            metrics.lines().any(|l| l.starts_with("mta_backpressure_transitions_total{")
                && l.contains("to=\"shedding\"")
                && l.contains("reason=\"spool_commit_p99\"")),
            "{metrics}"
        );
        assert!(metrics.lines().any(|l| l.starts_with("mta_backpressure_state ")), "state gauge");
        let log = server.stderr();
        assert!(
            log.contains("back-pressure: degraded -> shedding") || log.contains("back-pressure: healthy -> shedding")
        );
        assert!(log.contains("-> healthy"), "recovery logged");
        let mut acked: BTreeSet<u64> = http_acked.union(&smtp_acked).copied().collect();
        acked.insert(999);
        let refused: BTreeSet<u64> = web.iter().chain(&mail).filter(|o| o.id.is_none()).map(|o| o.seq).collect();
        (acked, refused)
    });

    // Delivery resumes: every acknowledged message arrives exactly once, nothing refused arrives.
    sink.set_rcpt_rule(|_| None);
    let got = delivered(&sink, &acked, Duration::from_secs(60)).await;
    let missing: Vec<_> = acked.iter().filter(|s| !got.contains_key(s)).collect();
    assert!(missing.is_empty(), "acknowledged but not delivered: {missing:?}");
    let duplicated: Vec<_> = got.iter().filter(|(_, n)| **n > 1).collect();
    assert!(duplicated.is_empty(), "delivered more than once: {duplicated:?}");
    let phantom: Vec<_> = got.keys().filter(|s| refused.contains(s) || !acked.contains(s)).collect();
    assert!(phantom.is_empty(), "refused but delivered: {phantom:?}");
    println!("slow flushes: {} acknowledged, {} refused, all acknowledged delivered once", acked.len(), refused.len());
    drop(server);
    drop(dns);
}

/// Recipients on 300 distinct domains: each new one costs MX and A lookups upstream.
fn distinct_domain(seq: u64) -> String {
    format!("u{seq}@d{}.test", seq % 300)
}

/// Slow DNS upstreams (600 ms per query at the faulty proxy) while a client injects to ever new domains.
/// Returns the states seen while the fault was on.
async fn slow_dns_episode(dns_action: &str) -> BTreeSet<String> {
    let port = sink_port();
    let sink = SinkHandle::start(SocketAddr::new(ip("127.0.0.2"), port), SinkConfig::default()).await;
    let mut zone = TestZone::new("test");
    for i in 0..300 {
        zone = zone.mail_domain(&format!("d{i}.test"), &[(10, &format!("mx.d{i}.test"), ip("127.0.0.2"))]);
    }
    let dns = TestDnsServer::start(vec![zone]).await.unwrap();
    let proxy = FaultyProxy::start(dns.addr()).await.unwrap();
    let config = format!(
        "[dns]\nnameservers = [\"{}\"]\n\
         [delivery]\nport = {port}\nretry_intervals = [\"1s\"]\nsmtp_timeout = \"5s\"\n\
         [backpressure]\nwindow = \"2s\"\nmin_dwell = \"2s\"\ndns_rtt_degraded_ms = 100\ndns_rtt_shed_ms = 250\n\
         dns_action = \"{dns_action}\"\ncommit_p99_degraded_ms = 2000\ncommit_p99_shed_ms = 5000\n\
         retry_after_secs = 1\ndegraded_greeting_delay = \"100ms\"\n{QUIET}",
        proxy.addr()
    );
    let server = tokio::task::block_in_place(|| TestServer::start(&config));
    let (http, smtp) = (server.http, server.smtp);
    let (acked, refused, seen) = tokio::task::block_in_place(|| {
        let web = http_client(http, 0, distinct_domain, Duration::from_millis(50));
        std::thread::sleep(Duration::from_millis(1500));
        assert_eq!(ready(http).1["state"], "healthy", "healthy while DNS is fast");

        proxy.set_delay(Duration::from_millis(600));
        let mut seen = BTreeSet::new();
        let want = if dns_action == "shed" { "shedding" } else { "degraded" };
        let start = Instant::now();
        let took = loop {
            let (_, body, _) = ready(http);
            seen.insert(body["state"].as_str().unwrap().to_string());
            if body["state"] == want {
                assert!(body["reasons"][0].as_str().unwrap().contains("dns_rtt"), "{body}");
                break start.elapsed();
            }
            assert!(start.elapsed() < Duration::from_secs(20), "not {want} 20 s into the DNS fault: {body}");
            std::thread::sleep(Duration::from_millis(50));
        };
        if dns_action == "shed" {
            let (_, greeting) = RawSmtp::connect(smtp);
            assert!(greeting.starts_with("421 4.3.2"), "{greeting}");
        } else {
            // Deferral: DNS never sheds intake; watch for a while.
            let until = Instant::now() + Duration::from_secs(3);
            while Instant::now() < until {
                let (code, body, _) = ready(http);
                seen.insert(body["state"].as_str().unwrap().to_string());
                assert_eq!(code, 200, "{body}");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        let health = http_request(http, "GET", "/api/v1/health", &[], b"").json();
        assert_eq!(health["dns_action"], dns_action);
        let rtt = health["signals"].as_array().unwrap().iter().find(|s| s["signal"] == "dns_rtt").unwrap().clone();
        proxy.heal();
        let recovered = wait_state(http, "healthy", Duration::from_secs(30)).expect("healthy after DNS heals");
        std::thread::sleep(Duration::from_millis(1000));
        let web = web.finish();
        println!(
            "slow DNS ({dns_action}): {want} {:.2}s after 600 ms upstream delay (dns_rtt {}), healthy {:.2}s after heal",
            took.as_secs_f64(),
            rtt["value"],
            recovered.as_secs_f64()
        );
        let acked = summarize(&format!("HTTP client, slow DNS ({dns_action})"), &web);
        if dns_action == "defer" {
            assert!(web.iter().all(|o| o.code == 202), "deferral never refuses intake");
        } else {
            assert!(web.iter().any(|o| o.code == 503), "shedding refused some");
        }
        let refused: BTreeSet<u64> = web.iter().filter(|o| o.id.is_none()).map(|o| o.seq).collect();
        (acked, refused, seen)
    });
    let got = delivered(&sink, &acked, Duration::from_secs(60)).await;
    let missing: Vec<_> = acked.iter().filter(|s| !got.contains_key(s)).collect();
    assert!(missing.is_empty(), "acknowledged but not delivered: {missing:?}");
    assert!(got.keys().all(|s| !refused.contains(s)), "refused but delivered");
    assert!(got.values().all(|n| *n == 1), "delivered more than once");
    drop(server);
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn slow_dns_upstreams_shed_intake() {
    let seen = slow_dns_episode("shed").await;
    assert!(seen.contains("shedding"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn slow_dns_upstreams_with_defer_only_degrade() {
    let seen = slow_dns_episode("defer").await;
    assert!(!seen.contains("shedding"), "{seen:?}");
    assert!(seen.contains("degraded"));
}
