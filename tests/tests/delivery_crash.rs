//! kill -9 of the server during heavy delivery, then restart: every accepted recipient ends delivered (or
//! bounced); duplicates (at-least-once after a crash) are counted and reported, never losses.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use mta_core::dns::testing::{TestDnsServer, TestZone};
use mta_tests::sink::{SinkConfig, SinkHandle};
use mta_tests::{queued_id, RawSmtp, TestServer};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill9_during_delivery_loses_nothing() {
    let port = mta_tests::free_port();
    let mut zone = TestZone::new("test");
    for i in 0..5 {
        zone = zone.mail_domain(
            &format!("d{i}.test"),
            &[(10, &format!("mx.d{i}.test"), "127.0.0.2".parse::<IpAddr>().unwrap())],
        );
    }
    let dns = TestDnsServer::start(vec![zone]).await.unwrap();
    let sink = SinkHandle::start(
        SocketAddr::new("127.0.0.2".parse().unwrap(), port),
        SinkConfig { response_delay: Duration::from_millis(10), ..Default::default() },
    )
    .await;
    let extra = format!(
        "[dns]\nnameservers = [\"{}\"]\n[delivery]\nport = {port}\nretry_intervals = [\"1s\"]\nsmtp_timeout = \"5s\"\nconnections_per_domain = 4\n",
        dns.addr()
    );
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let mut server = tokio::task::block_in_place(|| TestServer::start_in(&dir, &extra, None, None));
    let (smtp_port, http_port) = (server.smtp.port(), server.http.port());

    // Inject in the background while delivery runs; remember every acknowledged recipient.
    let accepted_shared = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let smtp = server.smtp;
    let injector = {
        let accepted = accepted_shared.clone();
        std::thread::spawn(move || {
            let started = Instant::now();
            let Ok(stream) = std::net::TcpStream::connect(smtp) else { return };
            drop(stream);
            let (mut c, _) = RawSmtp::connect(smtp);
            c.send(b"EHLO load.test\r\n");
            if !c.reply().starts_with("250") {
                return;
            }
            for i in 0..2000 {
                let rcpts: Vec<String> = (0..3).map(|k| format!("m{i}r{k}@d{}.test", (i + k) % 5)).collect();
                let mut cmds = String::from("MAIL FROM:<load@sender.test>\r\n");
                for r in &rcpts {
                    cmds.push_str(&format!("RCPT TO:<{r}>\r\n"));
                }
                cmds.push_str("DATA\r\n");
                c.send(cmds.as_bytes());
                for _ in 0..5 {
                    if c.reply().is_empty() {
                        return;
                    }
                }
                c.send(format!("Subject: crash {i}\r\n\r\nbody {i}\r\n.\r\n").as_bytes());
                let reply = c.reply();
                if queued_id(&reply).is_none() || !reply.starts_with("250") {
                    return; // the server died: this message was not acknowledged
                }
                accepted.lock().unwrap().extend(rcpts);
                if started.elapsed() > Duration::from_secs(40) {
                    return;
                }
            }
        })
    };
    // Crash in the middle of injection and delivery.
    let deadline = Instant::now() + Duration::from_secs(30);
    while sink.messages().len() < 150 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    server.kill9();
    tokio::task::block_in_place(|| injector.join().unwrap());
    let accepted: Vec<String> = accepted_shared.lock().unwrap().clone();
    let delivered_before = sink.messages().iter().map(|m| m.recipients.len()).sum::<usize>();
    assert!(
        delivered_before > 0 && delivered_before < accepted.len(),
        "the crash must happen during delivery ({delivered_before} of {})",
        accepted.len()
    );

    let server = tokio::task::block_in_place(|| TestServer::start_in(&dir, &extra, Some(smtp_port), Some(http_port)));
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut seen: HashMap<String, usize> = HashMap::new();
        for m in sink.messages() {
            for r in m.recipients {
                *seen.entry(r).or_default() += 1;
            }
        }
        let missing: Vec<&String> = accepted.iter().filter(|r| !seen.contains_key(*r)).collect();
        if missing.is_empty() {
            let duplicates: usize = seen.values().map(|n| n - 1).sum();
            eprintln!(
                "accepted {} recipients; delivered before crash {}; duplicates after restart {}",
                accepted.len(),
                delivered_before,
                duplicates
            );
            // A duplicate is only possible for a 250 not yet durably recorded at the kill: the message on the
            // wire and results waiting for their commit round. With the sink's 10 ms per reply a message takes
            // tens of ms on the wire and a commit round a few, so at most about one result per connection waits:
            // 2-3 per connection, 4 connections per site, 5 sites (one recipient per domain of each message).
            assert!(duplicates <= 3 * 4 * 5, "too many duplicates: {duplicates}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{} accepted recipients never delivered, e.g. {:?}",
            missing.len(),
            &missing[..missing.len().min(5)]
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Everything delivered: the spool drains to empty.
    let mut server = server;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let events = server.events();
        let delivered = events.iter().filter(|e| e["type"] == "delivery").count();
        if delivered >= accepted.len() || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    server.sigterm();
    tokio::task::block_in_place(|| server.wait_exit(Duration::from_secs(30)));
    let left = tokio::task::block_in_place(|| server.spool_list());
    assert!(left.is_empty(), "spool should be empty after everything was delivered: {} left", left.len());
}
