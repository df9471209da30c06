//! The accept loop over real TCP: per-IP cap, PROXY protocol, shutdown drain.

mod common;

use common::{config, Client, TestHandler};
use mta_smtp::{serve, ConnectionLimits, ListenerMode, ListenerOptions};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

async fn connect(addr: std::net::SocketAddr) -> Client {
    Client::new(Box::new(TcpStream::connect(addr).await.expect("connect")))
}

#[tokio::test]
async fn caps_and_graceful_shutdown() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let handler = Arc::new(TestHandler::default());
    let limits = Arc::new(ConnectionLimits::new(100, 1));
    let (stop, rx) = watch::channel(false);
    let options = ListenerOptions::new(ListenerMode::Smtp);
    let server = tokio::spawn(serve(listener, options, Arc::new(config()), handler, Arc::clone(&limits), rx));

    let mut first = connect(addr).await;
    first.expect("220").await;
    let mut second = connect(addr).await;
    second.expect("421 4.7.0 Too many connections from your address").await;
    second.expect_closed().await;

    first.cmd("EHLO c", "250").await;
    first.cmd("MAIL FROM:<a@b.example>", "250").await;
    first.cmd("RCPT TO:<x@y.example>", "250").await;
    first.cmd("DATA", "354").await;
    let _ = stop.send(true);
    tokio::time::sleep(Duration::from_millis(50)).await;
    // Draining: new connections are told we are shutting down.
    let mut late = connect(addr).await;
    late.expect("421 4.3.2").await;
    // The message in flight finishes, then the session ends.
    first.send("x\r\n.\r\nNOOP\r\n").await;
    first.expect("250 2.0.0 Ok: queued").await;
    first.expect("421 4.3.2").await;
    first.expect_closed().await;
    tokio::time::timeout(Duration::from_secs(5), server).await.expect("serve returned").expect("join");
    assert_eq!(limits.active_from("127.0.0.1".parse().expect("ip")), 0);
}

#[tokio::test]
async fn proxy_protocol_replaces_the_peer() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let handler = Arc::new(TestHandler::default());
    let (_stop, rx) = watch::channel(false);
    let options = ListenerOptions::proxied(ListenerMode::Smtp, &["127.0.0.1/32".parse().expect("net")]);
    let limits = Arc::new(ConnectionLimits::new(100, 10));
    tokio::spawn(serve(listener, options, Arc::new(config()), Arc::clone(&handler), limits, rx));
    let mut c = connect(addr).await;
    c.send("PROXY TCP4 203.0.113.7 192.0.2.1 40000 25\r\n").await;
    c.expect("220").await;
    c.cmd("EHLO c", "250").await;
    c.cmd("MAIL FROM:<a@b.example>", "250").await;
    let infos = handler.infos.lock().map(|i| i.clone()).unwrap_or_default();
    assert_eq!(infos[0].peer, "203.0.113.7:40000".parse().expect("addr"));
    // Without a header: closed without a word.
    let mut bare = connect(addr).await;
    bare.send("EHLO c\r\n").await;
    bare.expect_closed().await;
}
