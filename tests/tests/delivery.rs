//! End to end: the real binary delivers to SMTP sinks on 127.0.0.x found through an in-process DNS server.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use mta_core::dns::testing::{TestDnsServer, TestZone};
use mta_tests::sink::{SinkConfig, SinkHandle};
use mta_tests::{queued_id, RawSmtp, TestServer};

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// A port free on 127.0.0.2 (the sinks of one test share it on different loopback addresses).
fn sink_port() -> u16 {
    mta_tests::free_port()
}

struct Env {
    _dns: TestDnsServer,
    server: TestServer,
    port: u16,
}

async fn start(zone: TestZone, port: u16, extra: &str) -> Env {
    let dns = TestDnsServer::start(vec![zone]).await.unwrap();
    let config = format!(
        "[dns]\nnameservers = [\"{}\"]\nmin_ttl = \"1s\"\nnegative_ttl = \"1s\"\n\
         [delivery]\nport = {port}\nretry_intervals = [\"1s\"]\nsmtp_timeout = \"5s\"\ncircuit_open_for = \"2s\"\n{extra}\n",
        dns.addr()
    );
    let server = tokio::task::block_in_place(|| TestServer::start(&config));
    Env { _dns: dns, server, port }
}

async fn sink(addr: &str, port: u16, config: SinkConfig) -> SinkHandle {
    SinkHandle::start(SocketAddr::new(ip(addr), port), config).await
}

/// Inject one message over SMTP; returns its queue id.
fn send(server: &TestServer, from: &str, rcpts: &[&str], body: &str) -> String {
    tokio::task::block_in_place(|| {
        let (mut c, _) = RawSmtp::connect(server.smtp);
        c.cmd("EHLO client.test", "250");
        c.cmd(&format!("MAIL FROM:<{from}>"), "250");
        for r in rcpts {
            c.cmd(&format!("RCPT TO:<{r}>"), "250");
        }
        c.cmd("DATA", "354");
        c.send(body.as_bytes());
        let r = c.cmd(".", "250");
        c.cmd("QUIT", "221");
        queued_id(&r).unwrap()
    })
}

fn body(subject: &str) -> String {
    format!("From: a@sender.test\r\nTo: b@dest.test\r\nSubject: {subject}\r\n\r\nHello.\r\n..dot line\r\n")
}

async fn wait_events(
    server: &TestServer,
    limit: Duration,
    pred: impl Fn(&[serde_json::Value]) -> bool,
) -> Vec<serde_json::Value> {
    let deadline = Instant::now() + limit;
    loop {
        let events = server.events();
        if pred(&events) || Instant::now() > deadline {
            return events;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn count(events: &[serde_json::Value], kind: &str, rcpt: &str) -> usize {
    events.iter().filter(|e| e["type"] == kind && e["recipient"] == rcpt).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn delivers_byte_exact_with_mx_preference_failover_and_implicit_mx() {
    let port = sink_port();
    let zone = TestZone::new("test")
        .mail_domain("dest.test", &[(10, "mx.dest.test", ip("127.0.0.2"))])
        // Preference 10 refuses at the greeting; 20 must be used.
        .mail_domain("pref.test", &[(10, "mx1.pref.test", ip("127.0.0.3")), (20, "mx2.pref.test", ip("127.0.0.4"))])
        .a("implicit.test", "127.0.0.5".parse().unwrap());
    let dest = sink("127.0.0.2", port, SinkConfig::default()).await;
    let refusing =
        sink("127.0.0.3", port, SinkConfig { greeting: Some("554 5.3.2 not here".into()), ..Default::default() }).await;
    let backup = sink("127.0.0.4", port, SinkConfig::default()).await;
    let implicit = sink("127.0.0.5", port, SinkConfig::default()).await;
    let env = start(zone, port, "").await;
    let original = body("exact");
    let id = send(&env.server, "a@sender.test", &["b@dest.test", "c@pref.test", "d@implicit.test"], &original);
    assert!(dest.wait_for_messages(1, Duration::from_secs(15)).await);
    assert!(backup.wait_for_messages(1, Duration::from_secs(15)).await);
    assert!(implicit.wait_for_messages(1, Duration::from_secs(15)).await);
    let got = &dest.messages()[0];
    assert_eq!(got.sender, "a@sender.test");
    assert_eq!(got.recipients, vec!["b@dest.test".to_string()]);
    assert!(got.data.starts_with(b"Received: "), "our Received: header first");
    let unstuffed = original.replace("\r\n..dot", "\r\n.dot");
    assert!(got.data.ends_with(unstuffed.as_bytes()), "byte-exact content");
    assert_eq!(backup.messages()[0].data, got.data, "the same stored bytes to every destination");
    assert!(refusing.messages().is_empty());
    let events = wait_events(&env.server, Duration::from_secs(5), |e| {
        ["b@dest.test", "c@pref.test", "d@implicit.test"].iter().all(|r| count(e, "delivery", r) == 1)
    })
    .await;
    let d = events.iter().find(|e| e["type"] == "delivery" && e["recipient"] == "c@pref.test").unwrap();
    assert_eq!(d["mx"], "mx2.pref.test");
    assert_eq!(d["id"], id.as_str());
    let _ = env.port;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn null_mx_and_5xx_bounce_with_one_dsn_naming_every_failed_recipient() {
    let port = sink_port();
    let zone = TestZone::new("test")
        .mail_domain("dest.test", &[(10, "mx.dest.test", ip("127.0.0.2"))])
        .mail_domain("sender.test", &[(10, "mx.sender.test", ip("127.0.0.3"))])
        .null_mx("nullmx.test");
    let dest = sink("127.0.0.2", port, SinkConfig::default()).await;
    dest.set_rcpt_rule(|r| r.starts_with("bad").then(|| "550 5.1.1 no such user".to_string()));
    let sender_mx = sink("127.0.0.3", port, SinkConfig::default()).await;
    let env = start(zone, port, "").await;
    send(&env.server, "a@sender.test", &["bad1@dest.test", "good@dest.test", "bad2@dest.test"], &body("five"));
    assert!(dest.wait_for_messages(1, Duration::from_secs(15)).await);
    assert_eq!(dest.messages()[0].recipients, vec!["good@dest.test".to_string()]);
    assert!(sender_mx.wait_for_messages(1, Duration::from_secs(15)).await, "a DSN arrives at the sender's domain");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let dsns = sender_mx.messages();
    assert_eq!(dsns.len(), 1, "one DSN per message and attempt");
    let dsn = String::from_utf8_lossy(&dsns[0].data).to_string();
    assert_eq!(dsns[0].sender, "", "DSNs come from the null sender");
    assert_eq!(dsns[0].recipients, vec!["a@sender.test".to_string()]);
    assert!(dsn.contains("report-type=delivery-status"));
    assert!(dsn.contains("Final-Recipient: rfc822; bad1@dest.test"));
    assert!(dsn.contains("Final-Recipient: rfc822; bad2@dest.test"));
    assert!(!dsn.contains("Final-Recipient: rfc822; good@dest.test"));
    assert!(dsn.contains("Subject: five"), "original headers included");

    // Null MX: an immediate bounce.
    send(&env.server, "a@sender.test", &["x@nullmx.test"], &body("nullmx"));
    assert!(sender_mx.wait_for_messages(2, Duration::from_secs(15)).await);
    let dsn = String::from_utf8_lossy(&sender_mx.messages()[1].data).to_string();
    assert!(dsn.contains("x@nullmx.test") && dsn.contains("5.1.10"), "{dsn}");

    // A null sender never gets a DSN.
    send(&env.server, "", &["bad3@dest.test"], &body("nullsender"));
    let events = wait_events(&env.server, Duration::from_secs(10), |e| count(e, "bounce", "bad3@dest.test") == 1).await;
    assert_eq!(count(&events, "bounce", "bad3@dest.test"), 1);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(sender_mx.messages().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn transient_failures_are_retried_then_delivered_and_expire_with_a_dsn() {
    let port = sink_port();
    let zone = TestZone::new("test")
        .mail_domain("dest.test", &[(10, "mx.dest.test", ip("127.0.0.2"))])
        .mail_domain("never.test", &[(10, "mx.never.test", ip("127.0.0.4"))])
        .mail_domain("sender.test", &[(10, "mx.sender.test", ip("127.0.0.3"))]);
    let dest = sink("127.0.0.2", port, SinkConfig::default()).await;
    // The first two DATA attempts fail with 451, the third succeeds.
    dest.set_data_rule(|n| (n < 2).then(|| "451 4.3.0 try again".to_string()));
    let never = sink("127.0.0.4", port, SinkConfig::default()).await;
    never.set_rcpt_rule(|_| Some("450 4.2.1 mailbox busy".to_string()));
    let sender_mx = sink("127.0.0.3", port, SinkConfig::default()).await;
    let env = start(zone, port, "max_age = \"4s\"\n").await;
    send(&env.server, "a@sender.test", &["b@dest.test"], &body("retry"));
    let events = wait_events(&env.server, Duration::from_secs(20), |e| count(e, "delivery", "b@dest.test") == 1).await;
    assert_eq!(count(&events, "transient_failure", "b@dest.test"), 2, "{events:#?}");
    assert_eq!(count(&events, "delivery", "b@dest.test"), 1);
    assert_eq!(dest.messages().len(), 1);

    send(&env.server, "a@sender.test", &["c@never.test"], &body("expires"));
    let events =
        wait_events(&env.server, Duration::from_secs(20), |e| count(e, "expiration", "c@never.test") == 1).await;
    assert_eq!(count(&events, "expiration", "c@never.test"), 1, "{events:#?}");
    assert!(count(&events, "transient_failure", "c@never.test") >= 1);
    assert!(sender_mx.wait_for_messages(1, Duration::from_secs(10)).await, "expiry DSN");
    let dsn = String::from_utf8_lossy(&sender_mx.messages()[0].data).to_string();
    assert!(dsn.contains("c@never.test") && dsn.contains("4.4.7"), "{dsn}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn site_limits_hold_across_domains_and_connections_are_reused() {
    let port = sink_port();
    let mut zone = TestZone::new("test");
    // Twenty domains hosted by one provider: one site, one connection budget.
    for i in 0..20 {
        zone = zone.mx(&format!("d{i}.test"), 10, "mx.provider.test");
    }
    zone = zone.a("mx.provider.test", "127.0.0.2".parse().unwrap());
    let provider =
        sink("127.0.0.2", port, SinkConfig { response_delay: Duration::from_millis(20), ..Default::default() }).await;
    let env = start(zone, port, "connections_per_domain = 3\nmessages_per_connection = 1000\n").await;
    let mut rcpts = Vec::new();
    for i in 0..60 {
        let r = format!("u{i}@d{}.test", i % 20);
        send(&env.server, "a@sender.test", &[&r], &body("limit"));
        rcpts.push(r);
    }
    assert!(provider.wait_for_messages(60, Duration::from_secs(60)).await, "got {}", provider.messages().len());
    assert!(provider.max_concurrent() <= 3, "site limit exceeded: {}", provider.max_concurrent());
    assert!(provider.connections() <= 20, "connections should be reused: {} for 60 messages", provider.connections());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn blackholed_and_failing_domains_do_not_delay_healthy_ones() {
    let port = sink_port();
    let zone = TestZone::new("test")
        .mail_domain("dead.test", &[(10, "mx.dead.test", ip("127.0.0.3"))])
        .mail_domain("ok1.test", &[(10, "mx.ok1.test", ip("127.0.0.2"))])
        .mail_domain("ok2.test", &[(10, "mx.ok2.test", ip("127.0.0.4"))])
        .mail_domain("bad.test", &[(10, "mx.bad.test", ip("127.0.0.5"))]);
    let _dead = sink("127.0.0.3", port, SinkConfig { blackhole: true, ..Default::default() }).await;
    let ok1 = sink("127.0.0.2", port, SinkConfig::default()).await;
    let ok2 = sink("127.0.0.4", port, SinkConfig::default()).await;
    let bad = sink("127.0.0.5", port, SinkConfig::default()).await;
    bad.set_rcpt_rule(|_| Some("451 4.3.0 not now".to_string()));
    let env = start(zone, port, "").await;
    for i in 0..10 {
        send(&env.server, "a@sender.test", &[&format!("x{i}@dead.test")], &body("dead"));
    }
    let started = Instant::now();
    // One message to three domains, one of them failing.
    send(&env.server, "a@sender.test", &["a@ok1.test", "b@ok2.test", "c@bad.test"], &body("three"));
    assert!(ok1.wait_for_messages(1, Duration::from_secs(10)).await);
    assert!(ok2.wait_for_messages(1, Duration::from_secs(10)).await);
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "healthy domains waited for the blackhole: {:?}",
        started.elapsed()
    );
    let events =
        wait_events(&env.server, Duration::from_secs(10), |e| count(e, "transient_failure", "c@bad.test") >= 2).await;
    assert!(count(&events, "transient_failure", "c@bad.test") >= 2, "the failing domain is retried");
    assert_eq!(ok1.messages().len(), 1, "delivered domains are not retried");
    assert_eq!(ok2.messages().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn throttling_replies_lower_connections() {
    let port = sink_port();
    let zone = TestZone::new("test").mail_domain("busy.test", &[(10, "mx.busy.test", ip("127.0.0.2"))]);
    let busy =
        sink("127.0.0.2", port, SinkConfig { response_delay: Duration::from_millis(30), ..Default::default() }).await;
    // A 421 storm: the first 8 messages are refused with 421, then the receiver recovers.
    busy.set_data_rule(|n| (n < 8).then(|| "421 4.7.0 too many connections, slow down".to_string()));
    let env = start(zone, port, "connections_per_domain = 8\nthrottle_for = \"30s\"\n").await;
    for i in 0..40 {
        send(&env.server, "a@sender.test", &[&format!("u{i}@busy.test")], &body("busy"));
    }
    let events = wait_events(&env.server, Duration::from_secs(40), |e| {
        e.iter().filter(|x| x["type"] == "delivery").count() >= 40
    })
    .await;
    assert_eq!(events.iter().filter(|x| x["type"] == "delivery").count(), 40);
    let metrics = tokio::task::block_in_place(|| http_get(env.server.http, "/metrics"));
    let throttled: f64 = metrics
        .lines()
        .find(|l| l.starts_with("mta_delivery_throttled_total"))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    assert!(throttled >= 1.0, "421 must lower the site's connections");
}

/// A tiny HTTP GET for tests (loopback, no keys).
pub fn http_get(addr: SocketAddr, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn suspend_holds_resume_releases_and_max_age_applies_while_suspended() {
    let port = sink_port();
    let zone = TestZone::new("test")
        .mail_domain("held.test", &[(10, "mx.held.test", ip("127.0.0.2"))])
        .mail_domain("sender.test", &[(10, "mx.sender.test", ip("127.0.0.3"))]);
    let held = sink("127.0.0.2", port, SinkConfig::default()).await;
    let sender_mx = sink("127.0.0.3", port, SinkConfig::default()).await;
    let env = start(zone, port, "max_age = \"6s\"\n").await;
    let http = env.server.http;
    let r = tokio::task::block_in_place(|| {
        mta_tests::http_request(http, "POST", "/api/v1/queue/held.test/suspend", &[], b"")
    });
    assert_eq!(r.status, 200);
    send(&env.server, "a@sender.test", &["one@held.test"], &body("held"));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(held.messages().is_empty(), "a suspended domain gets nothing");
    let q = tokio::task::block_in_place(|| mta_tests::http_request(http, "GET", "/api/v1/queue", &[], b""));
    let v: serde_json::Value = serde_json::from_slice(&q.body).unwrap();
    let row = v["queues"].as_array().unwrap().iter().find(|r| r["domain"] == "held.test").cloned().unwrap();
    assert_eq!(row["suspended"], true);
    assert_eq!(row["held"].as_u64().unwrap() + row["scheduled"].as_u64().unwrap(), 1, "{row}");
    // The CLI shows the same, through the admin API.
    let out = tokio::task::block_in_place(|| {
        std::process::Command::new(mta_tests::server_binary())
            .args(["queue", "--http", &format!("http://{http}")])
            .output()
            .unwrap()
    });
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && table.contains("held.test") && table.contains("yes"), "{table}");
    let r = tokio::task::block_in_place(|| {
        mta_tests::http_request(http, "POST", "/api/v1/queue/held.test/resume", &[], b"")
    });
    assert_eq!(r.status, 200);
    assert!(held.wait_for_messages(1, Duration::from_secs(10)).await, "resume releases held work");

    // max_age holds while suspended: the message expires and bounces without ever being sent.
    tokio::task::block_in_place(|| mta_tests::http_request(http, "POST", "/api/v1/queue/held.test/suspend", &[], b""));
    send(&env.server, "a@sender.test", &["two@held.test"], &body("expires while held"));
    let events =
        wait_events(&env.server, Duration::from_secs(20), |e| count(e, "expiration", "two@held.test") == 1).await;
    assert_eq!(count(&events, "expiration", "two@held.test"), 1, "{events:#?}");
    assert_eq!(held.messages().len(), 1, "nothing sent while suspended");
    assert!(sender_mx.wait_for_messages(1, Duration::from_secs(10)).await, "expiry DSN");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn messages_read_ahead_by_a_connection_that_fails_are_given_back_and_delivered_once() {
    let port = sink_port();
    let zone = TestZone::new("test")
        .mail_domain("deep.test", &[(10, "mx.deep.test", ip("127.0.0.2"))])
        .mail_domain("sender.test", &[(10, "mx.sender.test", ip("127.0.0.3"))]);
    let deep = sink("127.0.0.2", port, SinkConfig::default()).await;
    // The fourth message ends the session with 421: the connection had read several more ahead of it.
    deep.set_data_rule(|n| (n == 3).then(|| "421 4.3.2 service shutting down".to_string()));
    let env = start(zone, port, "connections_per_domain = 1\nmessages_per_connection = 100\n").await;
    let http = env.server.http;
    // Let a deep ready queue build up while the domain is held, then release it all at once.
    tokio::task::block_in_place(|| mta_tests::http_request(http, "POST", "/api/v1/queue/deep.test/suspend", &[], b""));
    let rcpts: Vec<String> = (0..40).map(|i| format!("u{i}@deep.test")).collect();
    for r in &rcpts {
        send(&env.server, "a@sender.test", &[r], &body("deep"));
    }
    tokio::task::block_in_place(|| mta_tests::http_request(http, "POST", "/api/v1/queue/deep.test/resume", &[], b""));
    let events = wait_events(&env.server, Duration::from_secs(30), |e| {
        e.iter().filter(|x| x["type"] == "delivery").count() >= 40
    })
    .await;
    assert_eq!(events.iter().filter(|x| x["type"] == "delivery").count(), 40, "every message delivered");
    let transient: Vec<_> = events.iter().filter(|x| x["type"] == "transient_failure").collect();
    assert_eq!(transient.len(), 1, "only the refused message is retried: {transient:#?}");
    let mut received: Vec<String> = deep.messages().into_iter().flat_map(|m| m.recipients).collect();
    received.sort();
    let mut want = rcpts.clone();
    want.sort();
    assert_eq!(received, want, "each recipient exactly once");
    assert!(deep.connections() >= 2, "the 421 closed the first connection");
}

/// Many transactions over one SMTP session (one message each).
fn send_many(server: &TestServer, msgs: &[(String, String)]) {
    tokio::task::block_in_place(|| {
        let (mut c, _) = RawSmtp::connect(server.smtp);
        c.cmd("EHLO client.test", "250");
        for (rcpt, subject) in msgs {
            c.cmd("MAIL FROM:<a@sender.test>", "250");
            c.cmd(&format!("RCPT TO:<{rcpt}>"), "250");
            c.cmd("DATA", "354");
            c.send(body(subject).as_bytes());
            c.cmd(".", "250");
        }
        c.cmd("QUIT", "221");
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn connections_open_for_queued_work_not_up_to_the_limit() {
    let port = sink_port();
    let mut zone = TestZone::new("test");
    // 300 domains with one message each, each its own MX host (its own site), all on 127.0.0.3.
    for i in 0..300 {
        zone = zone.mx(&format!("one{i}.test"), 10, &format!("mx.one{i}.test"));
        zone = zone.a(&format!("mx.one{i}.test"), "127.0.0.3".parse().unwrap());
    }
    zone = zone.mx("busy.test", 10, "mx.busy.test").a("mx.busy.test", "127.0.0.4".parse().unwrap());
    let singles = sink("127.0.0.3", port, SinkConfig::default()).await;
    let busy =
        sink("127.0.0.4", port, SinkConfig { response_delay: Duration::from_millis(50), ..Default::default() }).await;
    let env = start(zone, port, "messages_per_connection = 1000\n").await;
    let busy_msgs: Vec<(String, String)> = (0..200).map(|i| (format!("u{i}@busy.test"), format!("busy {i}"))).collect();
    send_many(&env.server, &busy_msgs);
    let singles_msgs: Vec<(String, String)> =
        (0..300).map(|i| (format!("u@one{i}.test"), format!("single {i}"))).collect();
    send_many(&env.server, &singles_msgs);
    assert!(singles.wait_for_messages(300, Duration::from_secs(90)).await, "got {}", singles.messages().len());
    assert!(busy.wait_for_messages(200, Duration::from_secs(90)).await, "got {}", busy.messages().len());
    // One connection per one-message domain (a few more only if a connection failed and was retried).
    assert!(singles.connections() <= 310, "{} connections for 300 one-message domains", singles.connections());
    // The busy domain still spreads its queue over several connections, within its limit of 16.
    let spread = busy.max_concurrent();
    assert!((2..=16).contains(&spread), "busy domain used {spread} concurrent connections");
}
