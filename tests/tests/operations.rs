//! Operator-facing behaviour of the binary: config errors, the spool lock, log rotation, graceful stop with
//! deliveries in flight.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use mta_core::dns::testing::{TestDnsServer, TestZone};
use mta_tests::sink::{SinkConfig, SinkHandle};
use mta_tests::{queued_id, server_binary, RawSmtp, TestServer};

fn send(server: &TestServer, rcpt: &str) -> String {
    let (mut c, _) = RawSmtp::connect(server.smtp);
    c.cmd("EHLO ops.test", "250");
    c.cmd("MAIL FROM:<ops@sender.test>", "250");
    c.cmd(&format!("RCPT TO:<{rcpt}>"), "250");
    c.cmd("DATA", "354");
    c.send(b"Subject: ops\r\n\r\nbody\r\n");
    let r = c.cmd(".", "250");
    queued_id(&r).unwrap()
}

#[test]
fn check_config_names_the_bad_key_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, "[smtp]\nmax_recipients = 10\n\n[delivery]\nretry_intervalz = [\"1m\"]\n").unwrap();
    let out =
        std::process::Command::new(server_binary()).args(["check-config", "--config"]).arg(&path).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("retry_intervalz") && err.contains("line 5"), "{err}");

    std::fs::write(&path, "[smtp]\nmax_recipients = \"many\"\n").unwrap();
    let out =
        std::process::Command::new(server_binary()).args(["check-config", "--config"]).arg(&path).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("max_recipients"));

    std::fs::write(&path, "[delivery]\nmax_age = \"2d\"\n").unwrap();
    let out =
        std::process::Command::new(server_binary()).args(["check-config", "--config"]).arg(&path).output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains("max_age = \"2d\""));

    // MTA_CONFIG works like --config.
    let out =
        std::process::Command::new(server_binary()).arg("check-config").env("MTA_CONFIG", &path).output().unwrap();
    assert_eq!(out.status.code(), Some(0));
}

#[test]
fn offline_tools_refuse_a_spool_in_use_and_sighup_reopens_the_event_log() {
    let server = TestServer::start("[delivery]\nenabled = false\n");
    let out = server.run_cli(&["spool", "list"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.to_lowercase().contains("lock"), "a running server's spool is reported as locked: {err}");

    send(&server, "a@dest.test");
    let log = server.dir.join("events.jsonl");
    let rotated = server.dir.join("events.jsonl.1");
    let deadline = Instant::now() + Duration::from_secs(5);
    while std::fs::read_to_string(&log).unwrap_or_default().is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    std::fs::rename(&log, &rotated).unwrap();
    let pid = server.child.as_ref().unwrap().id() as i32;
    // SAFETY: kill(2) on our child.
    unsafe { libc::kill(pid, libc::SIGHUP) };
    std::thread::sleep(Duration::from_millis(300));
    send(&server, "b@dest.test");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !std::fs::read_to_string(&log).unwrap_or_default().contains("b@dest.test") && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(std::fs::read_to_string(&log).unwrap().contains("b@dest.test"), "new events go to the reopened file");
    assert!(std::fs::read_to_string(&rotated).unwrap().contains("a@dest.test"));
    assert!(!std::fs::read_to_string(&rotated).unwrap().contains("b@dest.test"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn graceful_stop_lets_in_flight_deliveries_finish_and_records_them() {
    let port = mta_tests::free_port();
    let zone = TestZone::new("test").mail_domain("slow.test", &[(10, "mx.slow.test", "127.0.0.2".parse().unwrap())]);
    let dns = TestDnsServer::start(vec![zone]).await.unwrap();
    let slow = SinkHandle::start(
        SocketAddr::new("127.0.0.2".parse().unwrap(), port),
        SinkConfig { response_delay: Duration::from_millis(400), ..Default::default() },
    )
    .await;
    let mut server = tokio::task::block_in_place(|| {
        TestServer::start(&format!(
            "[dns]\nnameservers = [\"{}\"]\n[delivery]\nport = {port}\nsmtp_timeout = \"10s\"\n",
            dns.addr()
        ))
    });
    let id = tokio::task::block_in_place(|| send(&server, "r@slow.test"));
    // Wait until the transaction is under way (the sink saw MAIL FROM), then stop.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !slow.commands().iter().any(|c| c.to_ascii_uppercase().starts_with("MAIL FROM")) && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    server.sigterm();
    let code = tokio::task::block_in_place(|| server.wait_exit(Duration::from_secs(30)));
    assert_eq!(code, Some(0));
    assert_eq!(slow.messages().len(), 1, "the in-flight delivery finished");
    // Its result was recorded before exit: nothing is left to deliver again.
    let left = tokio::task::block_in_place(|| server.spool_list());
    assert!(left.iter().all(|m| m["id"] != id.as_str()), "a delivered message must not stay queued: {left:?}");
    let events = server.events();
    assert!(events.iter().any(|e| e["type"] == "delivery" && e["id"] == id.as_str()));
}
