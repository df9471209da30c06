//! Hostile clients against the real binary: a spoofed PROXY header, an IPv4-mapped peer, a client that
//! trickles a command, slots hoarded by silent clients, and many large messages at once (memory).
//!
//! Each of these failed on the code before the "safe to expose" work: the spoofed header relayed, the
//! mapped peer was refused relaying, the trickle was never cut off, the newcomer was refused, and the
//! server held every message whole in memory.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use mta_tests::{free_port, queued_id, RawSmtp, TestServer};

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

#[test]
fn a_spoofed_proxy_header_from_an_untrusted_peer_never_relays() {
    let port = free_port();
    let server = TestServer::start(&format!(
        "[smtp]\nrelay_networks = [\"10.99.0.0/16\"]\n\
         [[smtp.listener]]\naddress = \"127.0.0.1:{port}\"\nmode = \"smtp\"\nproxy_protocol = true\n"
    ));
    for header in [b"PROXY TCP4 10.99.0.7 127.0.0.1 40000 25\r\n".to_vec(), {
        let mut v2 = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
        v2.extend_from_slice(&[0x21, 0x11, 0, 12, 10, 99, 0, 7, 127, 0, 0, 1, 0x9c, 0x40, 0, 25]);
        v2
    }] {
        let mut tcp = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        tcp.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
        tcp.write_all(&header).expect("header");
        // Pipelined like an attacker would: if the header were believed this would relay.
        let _ = tcp.write_all(b"EHLO x\r\nMAIL FROM:<spoof@outside.test>\r\nRCPT TO:<victim@elsewhere.test>\r\n");
        let mut got = Vec::new();
        let _ = tcp.read_to_end(&mut got);
        let text = String::from_utf8_lossy(&got);
        assert!(text.starts_with("421 4.7.0"), "untrusted proxy was served: {text:?}");
        assert!(!text.contains("250 2.1.5"), "relayed through a spoofed header: {text:?}");
    }
    drop(server);
}

#[test]
fn an_ipv4_mapped_peer_is_the_ipv4_address_for_relay_rules() {
    if std::net::TcpListener::bind("[::]:0").is_err() {
        eprintln!("SKIPPED: no IPv6 on this host");
        return;
    }
    let port = free_port();
    let server = TestServer::start(&format!(
        "[smtp]\nrelay_networks = [\"127.0.0.0/8\"]\n\
         [[smtp.listener]]\naddress = \"[::]:{port}\"\nmode = \"smtp\"\n"
    ));
    let (mut c, greeting) = RawSmtp::connect(format!("127.0.0.1:{port}").parse().expect("addr"));
    assert!(greeting.starts_with("220"), "{greeting}");
    c.cmd("EHLO mapped.test", "250");
    c.cmd("MAIL FROM:<a@sender.test>", "250");
    // 127.0.0.1 arrives as ::ffff:127.0.0.1 on the dual-stack socket; relay_networks names only 127.0.0.0/8.
    c.cmd("RCPT TO:<b@elsewhere.test>", "250");
    drop(server);
}

#[test]
fn a_command_trickled_one_byte_a_second_is_cut_off_at_the_command_deadline() {
    let server = TestServer::start("[smtp]\ntimeout_command = \"3s\"\n");
    let (c, _) = RawSmtp::connect(server.smtp);
    let mut tcp = c.into_stream();
    tcp.set_read_timeout(Some(Duration::from_millis(100))).expect("timeout");
    let started = Instant::now();
    let mut got = Vec::new();
    for b in b"EHLO a-client-that-never-finishes-its-line.test".iter() {
        if tcp.write_all(&[*b]).is_err() {
            break;
        }
        let mut buf = [0u8; 512];
        match tcp.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(_) => {}
        }
        if started.elapsed() > Duration::from_secs(15) {
            break;
        }
        std::thread::sleep(Duration::from_millis(900));
    }
    let text = String::from_utf8_lossy(&got);
    assert!(text.contains("421 4.4.2"), "never cut off: {text:?}");
    assert!(started.elapsed() < Duration::from_secs(8), "cut off after {:?}", started.elapsed());
    drop(server);
}

#[test]
fn a_full_server_closes_an_idle_session_to_serve_a_newcomer() {
    let server = TestServer::start("[smtp]\nmax_connections = 3\nmax_connections_per_ip = 10\n");
    let mut silent = Vec::new();
    for _ in 0..3 {
        let (c, greeting) = RawSmtp::connect(server.smtp);
        assert!(greeting.starts_with("220"), "{greeting}");
        silent.push(c);
        std::thread::sleep(Duration::from_millis(20));
    }
    // A session is safe for its first second (time to send EHLO); these have been silent for longer.
    std::thread::sleep(Duration::from_millis(1100));
    let started = Instant::now();
    let (mut c, greeting) = RawSmtp::connect(server.smtp);
    assert!(greeting.starts_with("220"), "the newcomer was refused: {greeting}");
    c.cmd("EHLO legit.test", "250");
    c.cmd("MAIL FROM:<a@sender.test>", "250");
    c.cmd("RCPT TO:<b@dest.test>", "250");
    c.cmd("DATA", "354");
    c.send(b"Subject: x\r\n\r\nhello\r\n.\r\n");
    assert!(queued_id(&c.reply()).is_some());
    assert!(started.elapsed() < Duration::from_secs(5));
    // The oldest silent one made room.
    let first = silent.remove(0).reply();
    assert!(first.starts_with("421 4.7.0"), "{first:?}");
}

#[test]
fn many_large_messages_in_flight_do_not_each_cost_their_size_in_memory() {
    let server = TestServer::start("");
    let pid = server.child.as_ref().map(|c| c.id()).expect("pid");
    const CLIENTS: usize = 16;
    const SIZE: usize = 8 << 20;
    let mut line =
        b"0123456789 abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ 0123456789 abcdefghij\r\n".to_vec();
    line.truncate(90);
    line.extend_from_slice(b"\r\n");
    let mut body = b"Subject: big\r\n\r\n".to_vec();
    while body.len() < SIZE {
        body.extend_from_slice(&line);
    }
    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        let (mut c, _) = RawSmtp::connect(server.smtp);
        c.cmd("EHLO big.test", "250");
        c.cmd("MAIL FROM:<a@sender.test>", "250");
        c.cmd("RCPT TO:<b@dest.test>", "250");
        c.cmd("DATA", "354");
        clients.push(c);
    }
    std::thread::sleep(Duration::from_millis(300));
    let baseline = rss_kib(pid);
    // Every message is in flight at once: all but its terminating dot sent.
    std::thread::scope(|s| {
        for c in clients.iter_mut() {
            let body = &body;
            s.spawn(move || c.send(body));
        }
    });
    std::thread::sleep(Duration::from_millis(1500));
    let peak = rss_kib(pid);
    for c in clients.iter_mut() {
        c.send(b".\r\n");
        let r = c.reply();
        assert!(r.starts_with("250"), "{r}");
    }
    let growth_mib = peak.saturating_sub(baseline) / 1024;
    // Held whole, these messages are 128 MiB; streamed, each costs at most its 256 KiB in-memory share.
    assert!(growth_mib < 64, "RSS grew {growth_mib} MiB with {CLIENTS} x {} MiB in flight", SIZE >> 20);
}
