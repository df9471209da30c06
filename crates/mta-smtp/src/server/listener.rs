//! The accept loop: connection caps, one task per session, graceful shutdown.
//!
//! Who the client is gets decided here, once: an IPv4-mapped IPv6 peer (`::ffff:192.0.2.1` on a dual-stack
//! socket) becomes the IPv4 address, and a PROXY header is believed only from a peer in the listener's trusted
//! proxies (anyone else is refused and logged: a header from an arbitrary client would let it claim an address
//! in the relay networks). Everything downstream (relay rules, per-IP caps, the per-network share of slots,
//! SPF, logs) sees that one address; so on a PROXY listener the header is read before a slot is taken.
//!
//! When every connection slot is taken, a newcomer may take the slot of an idle session (it gets `421 4.7.0`
//! and is closed); [`super::limits`] says which.

use super::config::SessionConfig;
use super::handler::{Handler, ListenerMode};
pub use super::limits::ConnectionLimits;
use super::limits::{Eviction, NetworkGuard};
use super::session::Session;
use crate::Reply;
use ipnet::IpNet;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit};
use tokio::task::JoinSet;

/// How long a newcomer waits for the slot of the idle session it evicted (or for one it may evict).
const EVICTION_WAIT: Duration = Duration::from_secs(2);
/// How often a newcomer that may evict looks again when no session is idle.
const EVICTION_RETRY: Duration = Duration::from_millis(20);

/// How one listener works.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerOptions {
    /// smtp, submission or smtps.
    pub mode: ListenerMode,
    /// Every connection starts with a PROXY v1/v2 header whose source address replaces the peer address (for
    /// relay control and the per-IP cap). Connections without a valid header are closed.
    pub proxy_protocol: bool,
    /// With `proxy_protocol`: the peers allowed to send the header (load balancers). A connection from any
    /// other address is refused with `421` and logged, never served as the address its header claims.
    pub trusted_proxies: Arc<[IpNet]>,
}

impl ListenerOptions {
    /// A listener of `mode` without PROXY protocol.
    pub fn new(mode: ListenerMode) -> ListenerOptions {
        ListenerOptions { mode, proxy_protocol: false, trusted_proxies: Arc::from([]) }
    }

    /// A listener of `mode` behind load balancers at `trusted` that send a PROXY header first.
    pub fn proxied(mode: ListenerMode, trusted: &[IpNet]) -> ListenerOptions {
        ListenerOptions { mode, proxy_protocol: true, trusted_proxies: Arc::from(trusted) }
    }

    fn trusts(&self, peer: IpAddr) -> bool {
        self.trusted_proxies.iter().any(|n| n.contains(&peer))
    }
}

/// The address as every rule should see it: IPv4-mapped IPv6 (`::ffff:a.b.c.d`) is the IPv4 address.
pub fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}

/// Accepts connections until `shutdown` turns `true`, then drains: new connections are answered
/// `421 4.3.2 Service shutting down`, open sessions end at their next command boundary (a message being
/// received finishes first), and this returns once every session has ended. Dropping the returned future
/// aborts the sessions still running (use that to enforce a shutdown deadline).
pub async fn serve<H: Handler>(
    listener: TcpListener,
    options: ListenerOptions,
    config: Arc<SessionConfig>,
    handler: Arc<H>,
    limits: Arc<ConnectionLimits>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut tasks = JoinSet::new();
    loop {
        tokio::select! {
            () = stop_signal(&mut shutdown) => break,
            Some(done) = tasks.join_next(), if !tasks.is_empty() => log_join(done),
            accepted = listener.accept() => match accepted {
                Ok((tcp, peer)) => {
                    let (options, config, handler) = (options.clone(), Arc::clone(&config), Arc::clone(&handler));
                    let (limits, shutdown) = (Arc::clone(&limits), shutdown.clone());
                    tasks.spawn(admit(tcp, canonical(peer), options, config, handler, limits, shutdown));
                }
                Err(e) => accept_error(e).await,
            },
        }
    }
    tracing::debug!(sessions = tasks.len(), "listener draining");
    loop {
        tokio::select! {
            done = tasks.join_next() => match done {
                Some(done) => log_join(done),
                None => return,
            },
            accepted = listener.accept() => match accepted {
                Ok((tcp, _)) => {
                    tasks.spawn(refuse(tcp, options.mode, Reply::SHUTTING_DOWN));
                }
                Err(e) => accept_error(e).await,
            },
        }
    }
}

fn too_many() -> Reply {
    Reply::fixed(421, 4, 7, 0, "Too many connections")
}

async fn stop_signal(rx: &mut watch::Receiver<bool>) {
    if rx.wait_for(|stop| *stop).await.is_err() {
        std::future::pending::<()>().await;
    }
}

fn log_join(done: Result<(), tokio::task::JoinError>) {
    if let Err(e) = done {
        if e.is_panic() {
            tracing::error!("SMTP session task panicked: {e}");
        }
    }
}

/// Out of file descriptors and the like: back off a little instead of spinning.
async fn accept_error(e: std::io::Error) {
    tracing::warn!("accept failed: {e}");
    tokio::time::sleep(Duration::from_millis(50)).await;
}

/// Sends one reply and closes (not on smtps: the client expects TLS and could not read it).
async fn refuse(mut tcp: TcpStream, mode: ListenerMode, reply: Reply) {
    if mode != ListenerMode::Smtps {
        let mut out = Vec::new();
        reply.write_to(&mut out);
        let _ = tokio::time::timeout(Duration::from_secs(5), tcp.write_all(&out)).await;
    }
    let _ = tcp.shutdown().await;
}

/// The client's address and the address it reached (from the PROXY header on such listeners, whose peer is
/// trusted); `None` when the header did not come.
async fn addresses(
    tcp: &mut TcpStream,
    peer: SocketAddr,
    options: &ListenerOptions,
    config: &SessionConfig,
) -> Option<(SocketAddr, SocketAddr)> {
    let local = tcp.local_addr().map(canonical).ok()?;
    if !options.proxy_protocol {
        return Some((peer, local));
    }
    // Read without a slot: only trusted load balancers get here, and they send the header as they connect.
    match tokio::time::timeout(config.timeout_proxy_header, crate::proxy::read_header(tcp)).await {
        Ok(Ok(header)) => Some((header.source.map_or(peer, canonical), header.destination.map_or(local, canonical))),
        Ok(Err(e)) => {
            tracing::debug!(%peer, "closing: {e}");
            None
        }
        Err(_) => {
            tracing::debug!(%peer, "closing: no PROXY header in time");
            None
        }
    }
}

/// Finds out who the client is, gets it a slot (free, or an evicted idle session's) and runs its session.
async fn admit<H: Handler>(
    mut tcp: TcpStream,
    peer: SocketAddr,
    options: ListenerOptions,
    config: Arc<SessionConfig>,
    handler: Arc<H>,
    limits: Arc<ConnectionLimits>,
    shutdown: watch::Receiver<bool>,
) {
    let _ = tcp.set_nodelay(true);
    if options.proxy_protocol && !options.trusts(peer.ip()) {
        metrics::counter!("mta_smtp_proxy_untrusted_total").increment(1);
        tracing::warn!(%peer, "refusing connection: PROXY protocol listener, peer not in smtp.trusted_proxies");
        return refuse(tcp, options.mode, Reply::fixed(421, 4, 7, 0, "Not a trusted proxy")).await;
    }
    let Some((peer, local)) = addresses(&mut tcp, peer, &options, &config).await else { return };
    let network = limits.count_network(peer.ip());
    let Some(permit) = slot(&limits, peer.ip()).await else {
        return refuse(tcp, options.mode, too_many()).await;
    };
    connection(tcp, peer, local, options.mode, config, handler, limits, shutdown, (permit, network)).await;
}

/// A slot for a client from `ip`: a free one, or that of an idle session it evicts.
async fn slot(limits: &Arc<ConnectionLimits>, ip: IpAddr) -> Option<OwnedSemaphorePermit> {
    let deadline = tokio::time::Instant::now() + EVICTION_WAIT;
    for _ in 0..EVICTION_WAIT.as_millis() / EVICTION_RETRY.as_millis() {
        if let Some(permit) = limits.try_slot() {
            return Some(permit);
        }
        match limits.evict_for(ip) {
            Eviction::Claimed => break,
            Eviction::NotNow => tokio::time::sleep(EVICTION_RETRY).await,
            Eviction::Refused => return None,
        }
    }
    let wait = Arc::clone(&limits.total).acquire_owned();
    tokio::time::timeout_at(deadline, wait).await.ok()?.ok()
}

#[allow(clippy::too_many_arguments)]
async fn connection<H: Handler>(
    tcp: TcpStream,
    peer: SocketAddr,
    local: SocketAddr,
    mode: ListenerMode,
    config: Arc<SessionConfig>,
    handler: Arc<H>,
    limits: Arc<ConnectionLimits>,
    shutdown: watch::Receiver<bool>,
    _slot: (OwnedSemaphorePermit, NetworkGuard),
) {
    let Some(_ip_guard) = limits.try_ip(peer.ip()) else {
        refuse(tcp, mode, Reply::fixed(421, 4, 7, 0, "Too many connections from your address")).await;
        return;
    };
    let session =
        Session::new(tcp, peer, local, mode, config, handler, shutdown).with_idle_slot(limits.idle_slot(peer.ip()));
    if let Err(e) = session.run().await {
        tracing::debug!(%peer, "SMTP session ended: {e}");
    }
}
