//! Hostile clients: spoofed PROXY headers, IPv4-mapped peers, trickling bytes, idle slot hoarding, floods that
//! churn through the slots.

mod common;

use common::{config, start, Client, TestHandler};
use mta_smtp::{serve, ConnectionLimits, ListenerMode, ListenerOptions, SessionConfig};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::watch;
use tokio::time::Instant;

/// Short, so the eviction tests need not wait a whole default second for sessions to leave their grace.
const GRACE: Duration = Duration::from_millis(200);

async fn connect(addr: std::net::SocketAddr) -> Client {
    Client::new(Box::new(TcpStream::connect(addr).await.expect("connect")))
}

/// A connection from loopback source address `from` (any of 127.0.0.0/8).
async fn connect_from(from: [u8; 4], addr: std::net::SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind((std::net::Ipv4Addr::from(from), 0).into())?;
    socket.connect(addr).await
}

/// Flood connections from `from` one after the other until `until` (at most `max` of them): each says nothing
/// and reconnects as soon as the server closes it.
async fn flood(from: [u8; 4], addr: std::net::SocketAddr, until: Instant, max: usize) {
    for _ in 0..max {
        if Instant::now() >= until {
            break;
        }
        let Ok(mut tcp) = connect_from(from, addr).await else { continue };
        let mut chunk = [0u8; 512];
        for _ in 0..8 {
            match tokio::time::timeout_at(until, tcp.read(&mut chunk)).await {
                Ok(Ok(n)) if n > 0 => {}
                _ => break,
            }
        }
    }
}

/// A connection from `from` and the server's first reply line.
async fn first_reply(from: [u8; 4], addr: std::net::SocketAddr) -> Option<(String, TcpStream)> {
    let mut tcp = connect_from(from, addr).await.ok()?;
    let mut said = Vec::new();
    let mut chunk = [0u8; 512];
    for _ in 0..8 {
        match tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => said.extend_from_slice(&chunk[..n]),
            _ => break,
        }
        if said.ends_with(b"\r\n") {
            break;
        }
    }
    Some((String::from_utf8_lossy(&said).into_owned(), tcp))
}

/// Sends one message through `c`, which has had its greeting.
async fn send_one(c: &mut Client) {
    c.cmd("EHLO legit.example", "250").await;
    c.cmd("MAIL FROM:<a@b.example>", "250").await;
    c.cmd("RCPT TO:<x@y.example>", "250").await;
    c.cmd("DATA", "354").await;
    c.send("Subject: x\r\n\r\nhello\r\n.\r\n").await;
    c.expect("250 2.0.0").await;
}

async fn listen(
    options: ListenerOptions,
    config: SessionConfig,
    limits: Arc<ConnectionLimits>,
) -> (std::net::SocketAddr, Arc<TestHandler>, watch::Sender<bool>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let handler = Arc::new(TestHandler::default());
    let (stop, rx) = watch::channel(false);
    tokio::spawn(serve(listener, options, Arc::new(config), Arc::clone(&handler), limits, rx));
    (addr, handler, stop)
}

#[tokio::test]
async fn proxy_header_from_an_untrusted_peer_is_refused() {
    // Only 10.0.0.0/8 may send headers; the test client is 127.0.0.1 and claims a relay-network address.
    let trusted: Vec<ipnet::IpNet> = vec!["10.0.0.0/8".parse().expect("net")];
    let options = ListenerOptions::proxied(ListenerMode::Smtp, &trusted);
    let (addr, handler, _stop) = listen(options, config(), Arc::new(ConnectionLimits::new(100, 10))).await;
    for header in [b"PROXY TCP4 10.99.0.7 127.0.0.1 40000 25\r\n".to_vec(), {
        let mut v2 = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
        v2.extend_from_slice(&[0x21, 0x11, 0, 12, 10, 99, 0, 7, 127, 0, 0, 1, 0x9c, 0x40, 0, 25]);
        v2
    }] {
        let mut c = connect(addr).await;
        c.send_bytes(&header).await;
        c.expect("421 4.7.0").await;
        c.expect_closed().await;
    }
    assert!(handler.infos.lock().map(|i| i.is_empty()).unwrap_or(false), "a session was served");
}

#[tokio::test]
async fn ipv4_mapped_peers_are_seen_as_ipv4() {
    let Ok(listener) = TcpListener::bind("[::]:0").await else {
        eprintln!("skipped: no IPv6 on this host");
        return;
    };
    let port = listener.local_addr().expect("addr").port();
    let handler = Arc::new(TestHandler::default());
    let (_stop, rx) = watch::channel(false);
    let limits = Arc::new(ConnectionLimits::new(100, 10));
    let options = ListenerOptions::new(ListenerMode::Smtp);
    tokio::spawn(serve(listener, options, Arc::new(config()), Arc::clone(&handler), Arc::clone(&limits), rx));
    let Ok(tcp) = TcpStream::connect(("127.0.0.1", port)).await else {
        eprintln!("skipped: the [::] listener is IPv6-only here");
        return;
    };
    let mut c = Client::new(Box::new(tcp));
    c.expect("220").await;
    c.cmd("EHLO c", "250").await;
    c.cmd("MAIL FROM:<a@b.example>", "250").await;
    let infos = handler.infos.lock().map(|i| i.clone()).unwrap_or_default();
    assert_eq!(infos[0].peer.ip(), "127.0.0.1".parse::<std::net::IpAddr>().expect("ip"));
    assert_eq!(infos[0].local.ip(), "127.0.0.1".parse::<std::net::IpAddr>().expect("ip"));
    // The per-IP count is kept under the IPv4 address too.
    assert_eq!(limits.active_from("127.0.0.1".parse().expect("ip")), 1);
}

#[tokio::test(start_paused = true)]
async fn a_command_line_trickled_byte_by_byte_still_times_out() {
    let cfg = SessionConfig { timeout_command: Duration::from_secs(10), ..config() };
    let mut h = start(cfg, ListenerMode::Smtp, TestHandler::default());
    h.client.timeout = Duration::from_secs(3600);
    h.client.expect("220").await;
    let started = tokio::time::Instant::now();
    // One byte every 3 s, never a full line: each read alone is well inside the 10 s timeout.
    // Writes fail once the server has closed; the whole line would take 93 s.
    for b in b"EHLO a-very-slow-client.example".iter() {
        if h.client.io.write_all(&[*b]).await.is_err() || h.task.is_finished() {
            break;
        }
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    h.client.expect("421 4.4.2").await;
    h.client.expect_closed().await;
    assert!(started.elapsed() <= Duration::from_secs(12), "closed after {:?}", started.elapsed());
}

#[tokio::test(start_paused = true)]
async fn message_content_below_the_minimum_rate_is_cut_off() {
    let cfg = SessionConfig { min_data_rate: 1024, data_rate_grace: Duration::from_secs(20), ..config() };
    let mut h = start(cfg, ListenerMode::Smtp, TestHandler::default());
    h.client.timeout = Duration::from_secs(3600);
    h.client.expect("220").await;
    h.client.cmd("EHLO c", "250").await;
    h.client.cmd("MAIL FROM:<a@b.example>", "250").await;
    h.client.cmd("RCPT TO:<x@y.example>", "250").await;
    h.client.cmd("DATA", "354").await;
    let started = tokio::time::Instant::now();
    for _ in 0..1000 {
        if h.client.io.write_all(b"x").await.is_err() || h.task.is_finished() {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let reply = h.client.expect("421 4.4.2").await;
    assert!(reply.contains("too slow"), "{reply}");
    h.client.expect_closed().await;
    // 20 s of grace plus the ~20 bytes' worth of credit, nowhere near the 10-minute per-read timeout.
    assert!(started.elapsed() <= Duration::from_secs(25), "closed after {:?}", started.elapsed());
    assert!(h.handler.queued().is_empty());
}

#[tokio::test]
async fn a_full_listener_evicts_its_longest_idle_session_for_a_newcomer() {
    let limits = Arc::new(ConnectionLimits::new(2, 10).with_eviction_grace(GRACE));
    let options = ListenerOptions::new(ListenerMode::Smtp);
    let (addr, handler, _stop) = listen(options, config(), Arc::clone(&limits)).await;
    let mut silent = connect(addr).await;
    silent.expect("220").await;
    tokio::time::sleep(GRACE + Duration::from_millis(50)).await;
    let mut busy = connect(addr).await;
    busy.expect("220").await;
    busy.cmd("EHLO busy", "250").await;
    // Both slots are taken; the newcomer gets the slot of the one that said nothing for longest.
    let mut newcomer = connect(addr).await;
    newcomer.expect("220").await;
    silent.expect("421 4.7.0").await;
    silent.expect_closed().await;
    newcomer.cmd("EHLO new", "250").await;
    newcomer.cmd("MAIL FROM:<a@b.example>", "250").await;
    newcomer.cmd("RCPT TO:<x@y.example>", "250").await;
    newcomer.cmd("DATA", "354").await;
    newcomer.send("Subject: x\r\n\r\nhello\r\n.\r\n").await;
    newcomer.expect("250 2.0.0").await;
    busy.cmd("NOOP", "250").await;
    assert_eq!(handler.queued().len(), 1);
}

#[tokio::test]
async fn clients_that_never_spoke_are_evicted_before_one_that_did() {
    let limits = Arc::new(ConnectionLimits::new(2, 10).with_eviction_grace(GRACE));
    let options = ListenerOptions::new(ListenerMode::Smtp);
    let (addr, _handler, _stop) = listen(options, config(), Arc::clone(&limits)).await;
    // The real client came first and has waited longest, but it has spoken.
    let mut real = connect(addr).await;
    real.expect("220").await;
    real.cmd("EHLO real", "250").await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut silent = connect(addr).await;
    silent.expect("220").await;
    // Both past their grace: the order alone decides.
    tokio::time::sleep(GRACE + Duration::from_millis(50)).await;
    let mut newcomer = connect(addr).await;
    newcomer.expect("220").await;
    silent.expect("421 4.7.0").await;
    real.cmd("MAIL FROM:<a@b.example>", "250").await;
}

#[tokio::test]
async fn a_new_client_keeps_its_slot_through_churn_until_it_speaks() {
    // The race of the flood benchmark, on one network: a newcomer's session is the youngest never-spoken one,
    // and the connections right behind it must not take its slot before its (slow) EHLO.
    let limits = Arc::new(ConnectionLimits::new(2, 100).with_eviction_grace(Duration::from_secs(2)));
    let options = ListenerOptions::new(ListenerMode::Smtp);
    let (addr, handler, _stop) = listen(options, config(), Arc::clone(&limits)).await;
    let mut squatters = Vec::new();
    for _ in 0..2 {
        let mut c = connect(addr).await;
        c.expect("220").await;
        squatters.push(c);
    }
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let mut legit = connect(addr).await;
    legit.expect("220").await;
    // 30 connections right behind it: one takes the other squatter's slot, the rest are refused.
    let behind: Vec<_> = (0..30).map(|_| tokio::spawn(first_reply([127, 0, 0, 1], addr))).collect();
    let mut held = Vec::new();
    let mut refused = 0;
    for b in behind {
        match b.await {
            Ok(Some((reply, tcp))) if reply.starts_with("220") => held.push(tcp),
            Ok(Some((reply, _))) if reply.starts_with("421 4.7.0 Too many") => refused += 1,
            other => panic!("unexpected: {:?}", other.map(|o| o.map(|(r, _)| r))),
        }
    }
    assert_eq!((held.len(), refused), (1, 29));
    tokio::time::sleep(Duration::from_millis(300)).await;
    send_one(&mut legit).await;
    assert_eq!(handler.queued().len(), 1);
    for mut s in squatters {
        s.expect("421 4.7.0").await;
    }
}

#[tokio::test]
async fn one_networks_flood_cannot_evict_a_client_of_another_network() {
    // 20 slots, so a network's share is 2; the flood (127.0.0.2, one /24) takes every slot and churns through
    // them as fast as it can reconnect, its sessions past their 20 ms grace within a round or two.
    let limits = Arc::new(ConnectionLimits::new(20, 1000).with_eviction_grace(Duration::from_millis(20)));
    let options = ListenerOptions::new(ListenerMode::Smtp);
    let (addr, handler, _stop) = listen(options, config(), Arc::clone(&limits)).await;
    let until = Instant::now() + Duration::from_secs(3);
    let floods: Vec<_> = (0..60).map(|_| tokio::spawn(flood([127, 0, 0, 2], addr, until, 2000))).collect();
    for _ in 0..100 {
        if limits.active() == 20 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(limits.active(), 20, "the flood did not fill the slots");
    // A client from 127.0.1.1 (another /24) takes a flood session's slot and keeps it however slow it is.
    for round in 0..3 {
        let Ok(tcp) = connect_from([127, 0, 1, 1], addr).await else { panic!("connect") };
        let mut legit = Client::new(Box::new(tcp));
        legit.expect("220").await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        send_one(&mut legit).await;
        assert_eq!(handler.queued().len(), round + 1);
        legit.cmd("QUIT", "221").await;
        legit.expect_closed().await;
    }
    for f in floods {
        let _ = f.await;
    }
}

#[tokio::test]
async fn behind_a_proxy_the_share_counts_the_real_client_network() {
    // Every connection comes from the load balancer (127.0.0.1); only the PROXY header tells the networks apart.
    let trusted: Vec<ipnet::IpNet> = vec!["127.0.0.0/8".parse().expect("net")];
    let options = ListenerOptions::proxied(ListenerMode::Smtp, &trusted);
    let limits = Arc::new(ConnectionLimits::new(10, 100).with_eviction_grace(Duration::from_secs(3600)));
    let (addr, handler, _stop) = listen(options, config(), Arc::clone(&limits)).await;
    let proxied = |client: &str| format!("PROXY TCP4 {client} 127.0.0.1 40000 25\r\n");
    let mut flood = Vec::new();
    for i in 0..10 {
        let mut c = connect(addr).await;
        c.send(&proxied(&format!("192.0.2.{}", i + 1))).await;
        c.expect("220").await;
        flood.push(c);
    }
    // The flood's network holds every slot, all within their grace: its next connection is refused ...
    let mut more = connect(addr).await;
    more.send(&proxied("192.0.2.77")).await;
    more.expect("421 4.7.0").await;
    // ... and a client of another network takes one of its slots.
    let mut legit = connect(addr).await;
    legit.send(&proxied("198.51.100.7")).await;
    legit.expect("220").await;
    send_one(&mut legit).await;
    let infos = handler.infos.lock().map(|i| i.clone()).unwrap_or_default();
    assert_eq!(infos.last().map(|i| i.peer.ip()), Some("198.51.100.7".parse().expect("ip")));
    assert_eq!(limits.active_from_network("192.0.2.1".parse().expect("ip")), 9);
}
