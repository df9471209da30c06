//! Hostile clients: spoofed PROXY headers, IPv4-mapped peers, trickling bytes, idle slot hoarding.

mod common;

use common::{config, start, Client, TestHandler};
use mta_smtp::{serve, ConnectionLimits, ListenerMode, ListenerOptions, SessionConfig};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

async fn connect(addr: std::net::SocketAddr) -> Client {
    Client::new(Box::new(TcpStream::connect(addr).await.expect("connect")))
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
    let limits = Arc::new(ConnectionLimits::new(2, 10));
    let options = ListenerOptions::new(ListenerMode::Smtp);
    let (addr, handler, _stop) = listen(options, config(), Arc::clone(&limits)).await;
    let mut silent = connect(addr).await;
    silent.expect("220").await;
    tokio::time::sleep(Duration::from_millis(50)).await;
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
    let limits = Arc::new(ConnectionLimits::new(2, 10));
    let options = ListenerOptions::new(ListenerMode::Smtp);
    let (addr, _handler, _stop) = listen(options, config(), Arc::clone(&limits)).await;
    // The real client came first and has waited longest, but it has spoken.
    let mut real = connect(addr).await;
    real.expect("220").await;
    real.cmd("EHLO real", "250").await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut silent = connect(addr).await;
    silent.expect("220").await;
    let mut newcomer = connect(addr).await;
    newcomer.expect("220").await;
    silent.expect("421 4.7.0").await;
    real.cmd("MAIL FROM:<a@b.example>", "250").await;
}
