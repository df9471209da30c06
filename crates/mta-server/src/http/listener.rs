//! The axum listeners of the API, plain and TLS. Both give the peer address in canonical form: an IPv4-mapped
//! IPv6 peer (`::ffff:1.2.3.4`, what a dual-stack `[::]` listener reports for IPv4 clients) is its IPv4
//! address from the accept on, so the loopback rule, trusted proxies, logs and `Received:` see one address.
//!
//! TLS: TCP accepts in one task, each handshake in its own task (a slow client never holds up the others),
//! finished streams handed over on a channel. ALPN offers `h2` and `http/1.1`, so HTTPS clients get HTTP/2
//! when they ask for it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

/// Longest TLS handshake before the connection is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshaken connections waiting for the server to take them.
const BACKLOG: usize = 1024;

/// Wait after an accept error that is not about one connection (out of file descriptors and the like), so
/// the loop backs off instead of spinning.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// `peer` with an IPv4-mapped IPv6 address made the IPv4 address.
pub fn canonical(peer: SocketAddr) -> SocketAddr {
    SocketAddr::new(peer.ip().to_canonical(), peer.port())
}

/// Plain TCP connections, with `TCP_NODELAY` (small JSON answers go out at once) and canonical peers.
#[derive(Debug)]
pub struct TcpAccept {
    tcp: TcpListener,
}

impl TcpAccept {
    /// Accept on `tcp`.
    pub fn new(tcp: TcpListener) -> Self {
        TcpAccept { tcp }
    }
}

impl axum::serve::Listener for TcpAccept {
    type Io = TcpStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.tcp.accept().await {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    return (stream, canonical(peer));
                }
                Err(e) if is_connection_error(&e) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "HTTP accept failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.tcp.local_addr()
    }
}

/// An error about the one connection being accepted (the next accept may well succeed at once).
fn is_connection_error(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    matches!(e.kind(), ConnectionRefused | ConnectionAborted | ConnectionReset)
}

/// TLS connections, ready for HTTP.
#[derive(Debug)]
pub struct TlsListener {
    rx: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
    accept_task: JoinHandle<()>,
}

/// A rustls server config with ALPN for HTTP/2 and HTTP/1.1.
pub fn with_alpn(config: &rustls::ServerConfig) -> Arc<rustls::ServerConfig> {
    let mut config = config.clone();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Arc::new(config)
}

impl TlsListener {
    /// Accept on `tcp`, handshake with `acceptor`.
    pub fn new(tcp: TcpListener, acceptor: TlsAcceptor) -> std::io::Result<Self> {
        let local = tcp.local_addr()?;
        let (tx, rx) = mpsc::channel(BACKLOG);
        let accept_task = tokio::spawn(async move {
            loop {
                let (stream, peer) = match tcp.accept().await {
                    Ok((stream, peer)) => (stream, canonical(peer)),
                    Err(e) if is_connection_error(&e) => continue,
                    Err(e) => {
                        tracing::warn!(error = %e, "HTTPS accept failed");
                        tokio::time::sleep(ACCEPT_BACKOFF).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let acceptor = acceptor.clone();
                let tx = tx.clone();
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => {
                            let _ = tx.send((tls, peer)).await;
                        }
                        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                });
            }
        });
        Ok(TlsListener { rx, local, accept_task })
    }
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        self.accept_task.abort();
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.rx.recv().await {
            Some(conn) => conn,
            // The accept task is gone (only after drop): never yield again.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}
