//! The accept loop: connection caps, one task per session, graceful shutdown.

use super::config::SessionConfig;
use super::handler::{Handler, ListenerMode};
use super::session::Session;
use crate::Reply;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;

/// How one listener works.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListenerOptions {
    /// smtp, submission or smtps.
    pub mode: ListenerMode,
    /// Every connection starts with a PROXY v1/v2 header whose source address replaces the peer address (for
    /// relay control and the per-IP cap). Connections without a valid header are closed.
    pub proxy_protocol: bool,
}

/// Connection caps; share one between all listeners so the total is global.
#[derive(Debug)]
pub struct ConnectionLimits {
    total: Arc<Semaphore>,
    max_total: usize,
    max_per_ip: usize,
    per_ip: Mutex<HashMap<IpAddr, usize>>,
}

impl ConnectionLimits {
    /// At most `max_total` sessions at once, `max_per_ip` from one client address.
    pub fn new(max_total: usize, max_per_ip: usize) -> ConnectionLimits {
        ConnectionLimits {
            total: Arc::new(Semaphore::new(max_total.min(Semaphore::MAX_PERMITS))),
            max_total: max_total.min(Semaphore::MAX_PERMITS),
            max_per_ip,
            per_ip: Mutex::new(HashMap::new()),
        }
    }

    /// Sessions open right now, on every listener sharing these limits (for back-pressure caps).
    pub fn active(&self) -> usize {
        self.max_total.saturating_sub(self.total.available_permits())
    }

    /// Sessions from `ip` right now.
    pub fn active_from(&self, ip: IpAddr) -> usize {
        self.per_ip.lock().unwrap_or_else(|e| e.into_inner()).get(&ip).copied().unwrap_or(0)
    }

    fn try_ip(self: &Arc<Self>, ip: IpAddr) -> Option<IpGuard> {
        let mut map = self.per_ip.lock().unwrap_or_else(|e| e.into_inner());
        let n = map.entry(ip).or_insert(0);
        if *n >= self.max_per_ip {
            return None;
        }
        *n += 1;
        Some(IpGuard { limits: Arc::clone(self), ip })
    }
}

/// Counts one session against its address until dropped.
struct IpGuard {
    limits: Arc<ConnectionLimits>,
    ip: IpAddr,
}

impl Drop for IpGuard {
    fn drop(&mut self) {
        let mut map = self.limits.per_ip.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = map.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.ip);
            }
        }
    }
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
                    let Ok(permit) = Arc::clone(&limits.total).try_acquire_owned() else {
                        let reply = Reply::fixed(421, 4, 7, 0, "Too many connections");
                        tasks.spawn(refuse(tcp, options.mode, reply));
                        continue;
                    };
                    tasks.spawn(connection(
                        tcp, peer, options, Arc::clone(&config), Arc::clone(&handler), Arc::clone(&limits),
                        shutdown.clone(), permit,
                    ));
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

#[allow(clippy::too_many_arguments)]
async fn connection<H: Handler>(
    mut tcp: TcpStream,
    mut peer: SocketAddr,
    options: ListenerOptions,
    config: Arc<SessionConfig>,
    handler: Arc<H>,
    limits: Arc<ConnectionLimits>,
    shutdown: watch::Receiver<bool>,
    _permit: OwnedSemaphorePermit,
) {
    let _ = tcp.set_nodelay(true);
    let Ok(mut local) = tcp.local_addr() else {
        return;
    };
    if options.proxy_protocol {
        match tokio::time::timeout(config.timeout_proxy_header, crate::proxy::read_header(&mut tcp)).await {
            Ok(Ok(header)) => {
                peer = header.source.unwrap_or(peer);
                local = header.destination.unwrap_or(local);
            }
            Ok(Err(e)) => {
                tracing::debug!(%peer, "closing: {e}");
                return;
            }
            Err(_) => {
                tracing::debug!(%peer, "closing: no PROXY header in time");
                return;
            }
        }
    }
    let Some(_ip_guard) = limits.try_ip(peer.ip()) else {
        refuse(tcp, options.mode, Reply::fixed(421, 4, 7, 0, "Too many connections from your address")).await;
        return;
    };
    let session = Session::new(tcp, peer, local, options.mode, config, handler, shutdown);
    if let Err(e) = session.run().await {
        tracing::debug!(%peer, "SMTP session ended: {e}");
    }
}
