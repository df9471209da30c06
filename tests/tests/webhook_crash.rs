//! Event export across crashes: 500 messages with delivered, bounced and deferred recipients, a webhook receiver
//! that fails 30% of requests (some by hanging past the timeout), and the server `kill -9`ed twice. Every event
//! of every acknowledged message arrives (by `event_id`), duplicates are counted, no signature is bad.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mta_core::dns::testing::{TestDnsServer, TestZone};
use mta_tests::export_load::{inject, Acked};
use mta_tests::sink::{SinkConfig, SinkHandle};
use mta_tests::webhook::Receiver;
use mta_tests::TestServer;

const SECRET: &str = "test-secret";
const MESSAGES: usize = 500;

/// Inject from `from` in the background; kill the server once `kill_at` messages are acknowledged (delivery and
/// export are running by then). Returns where injection stopped.
async fn inject_and_kill(
    server: &mut TestServer,
    from: usize,
    kill_at: usize,
    acked: &Arc<Mutex<Vec<Acked>>>,
) -> usize {
    let smtp = server.smtp;
    let shared = acked.clone();
    let injector = std::thread::spawn(move || inject(smtp, from, MESSAGES, &shared));
    let deadline = Instant::now() + Duration::from_secs(60);
    while acked.lock().unwrap().len() < kill_at && !injector.is_finished() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    server.kill9();
    let stopped = tokio::task::block_in_place(|| injector.join().unwrap());
    assert!(stopped < MESSAGES, "the kill must come in the middle of injection");
    stopped
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn webhook_gets_every_event_across_two_kill9() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let receiver = Receiver::start(&dir, SECRET, 0.30, 0.05, 2.5);

    let port = mta_tests::free_port();
    let mut zone = TestZone::new("test");
    for i in 0..3 {
        zone = zone.mail_domain(
            &format!("d{i}.test"),
            &[(10, &format!("mx.d{i}.test"), "127.0.0.2".parse::<IpAddr>().unwrap())],
        );
    }
    let dns = TestDnsServer::start(vec![zone]).await.unwrap();
    let sink = SinkHandle::start(
        SocketAddr::new("127.0.0.2".parse().unwrap(), port),
        SinkConfig { response_delay: Duration::from_millis(2), ..Default::default() },
    )
    .await;
    sink.set_rcpt_rule(|r| {
        if r.starts_with("bad") {
            Some("550 5.1.1 no such user".to_string())
        } else if r.starts_with("later") {
            Some("451 4.3.0 try again later".to_string())
        } else {
            None
        }
    });
    let extra = format!(
        "[dns]\nnameservers = [\"{dns}\"]\n\
         [delivery]\nport = {port}\nretry_intervals = [\"3s\"]\nsmtp_timeout = \"5s\"\nconnections_per_domain = 4\n\
         [[webhook]]\nname = \"app\"\nurl = \"http://127.0.0.1:{hook}/events\"\nsecret = \"{SECRET}\"\n\
         batch_size = 50\nbatch_delay = \"100ms\"\ntimeout = \"1s\"\nconcurrency = 4\n",
        dns = dns.addr(),
        hook = receiver.port,
    );
    let acked = Arc::new(Mutex::new(Vec::<Acked>::new()));
    let mut server = tokio::task::block_in_place(|| TestServer::start_in(&dir, &extra, None, None));
    let (smtp_port, http_port) = (server.smtp.port(), server.http.port());
    let restart =
        || tokio::task::block_in_place(|| TestServer::start_in(&dir, &extra, Some(smtp_port), Some(http_port)));

    // Two crashes in the middle of injection, delivery and export.
    let first_kill = inject_and_kill(&mut server, 0, 150, &acked).await;
    let delivered_at_first_kill = sink.messages().len();
    let mut server = restart();
    let next = inject_and_kill(&mut server, first_kill, 330, &acked).await;
    assert!(delivered_at_first_kill > 0, "delivery was running at the first kill");
    let mut server = restart();
    let end = tokio::task::block_in_place(|| inject(server.smtp, next, MESSAGES, &acked));
    assert_eq!(end, MESSAGES, "the last injection runs to the end");
    let acked: Vec<Acked> = acked.lock().unwrap().clone();

    // What must arrive: per acknowledged recipient a reception, then delivered / bounced / deferred at least once.
    let mut expected: Vec<(String, String, &str)> = Vec::new();
    for (id, rcpts) in &acked {
        for r in rcpts {
            expected.push((id.clone(), r.clone(), "reception"));
            let outcome = if r.starts_with("bad") {
                "bounce"
            } else if r.starts_with("later") {
                "transient_failure"
            } else {
                "delivery"
            };
            expected.push((id.clone(), r.clone(), outcome));
        }
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    let missing = loop {
        let got: HashSet<(String, String, String)> = receiver
            .events()
            .iter()
            .map(|e| {
                let s = |k: &str| e[k].as_str().unwrap_or_default().to_string();
                (s("id"), s("recipient"), s("type"))
            })
            .collect();
        let missing: Vec<&(String, String, &str)> =
            expected.iter().filter(|(id, r, t)| !got.contains(&(id.clone(), r.clone(), t.to_string()))).collect();
        if missing.is_empty() || Instant::now() > deadline {
            break missing.len();
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(missing, 0, "events of acknowledged messages never arrived: {}\n{}", missing, server.stderr());

    // Every event the server logged (it logs only what is durable) arrives too, by event_id.
    let logged: Vec<String> =
        server.events().iter().filter_map(|e| e["event_id"].as_str().map(str::to_string)).collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    let (received, not_exported) = loop {
        let received = receiver.events();
        let ids: HashSet<&str> = received.iter().filter_map(|e| e["event_id"].as_str()).collect();
        let not_exported = logged.iter().filter(|id| !ids.contains(id.as_str())).count();
        if not_exported == 0 || Instant::now() > deadline {
            break (received.len(), not_exported);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(not_exported, 0, "logged events never exported");

    // Every recipient the receiving SMTP server accepted was reported delivered.
    let events = receiver.events();
    let delivered: HashSet<&str> =
        events.iter().filter(|e| e["type"] == "delivery").filter_map(|e| e["recipient"].as_str()).collect();
    let at_sink: HashSet<String> = sink.messages().into_iter().flat_map(|m| m.recipients).collect();
    let unreported: Vec<&String> = at_sink.iter().filter(|r| !delivered.contains(r.as_str())).collect();
    assert!(unreported.is_empty(), "delivered but never reported: {unreported:?}");

    let mut per_id: HashMap<&str, usize> = HashMap::new();
    for e in &events {
        *per_id.entry(e["event_id"].as_str().unwrap_or_default()).or_default() += 1;
    }
    let duplicates: usize = per_id.values().map(|n| n - 1).sum();
    let bad = receiver.bad_signatures();
    eprintln!(
        "kills after {first_kill} and {next} messages; acknowledged messages {} of {MESSAGES}; expected events {}; received {} ({} distinct, {duplicates} \
         duplicates); bad signatures {bad}",
        acked.len(),
        expected.len(),
        received,
        per_id.len()
    );
    assert_eq!(bad, 0, "bad signatures");
    server.sigterm();
    tokio::task::block_in_place(|| server.wait_exit(Duration::from_secs(30)));
}
