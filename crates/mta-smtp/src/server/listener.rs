//! The accept loop: connection caps, one task per session, graceful shutdown.
//!
//! Who the client is gets decided here, once: an IPv4-mapped IPv6 peer (`::ffff:192.0.2.1` on a dual-stack
//! socket) becomes the IPv4 address, and a PROXY header is believed only from a peer in the listener's trusted
//! proxies (anyone else is refused and logged: a header from an arbitrary client would let it claim an address
//! in the relay networks). Everything downstream (relay rules, per-IP caps, SPF, logs) sees that one address.
//!
//! When every connection slot is taken, a newcomer may take the slot of an idle session (it gets `421 4.7.0`
//! and is closed): first those that never sent a whole command, longest-waiting first, so clients that connect
//! and say nothing (or trickle) cannot lock out the ones that send mail, and churn among them does not evict
//! a real client between two of its commands.

use super::config::SessionConfig;
use super::handler::{Handler, ListenerMode};
use super::session::Session;
use crate::Reply;
use ipnet::IpNet;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;

/// How long a newcomer waits for the slot of the idle session it evicted.
const EVICTION_WAIT: Duration = Duration::from_secs(2);

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

/// Connection caps; share one between all listeners so the total is global.
#[derive(Debug)]
pub struct ConnectionLimits {
    total: Arc<Semaphore>,
    max_total: usize,
    max_per_ip: usize,
    per_ip: Mutex<HashMap<IpAddr, usize>>,
    /// Every open session's idle state, by session number. A session marks itself idle or busy with atomics
    /// (twice per command: no shared lock on that path); the map is locked only when a session opens or
    /// closes, and when a full listener looks for one to evict (a scan, rare).
    sessions: Mutex<HashMap<u64, Arc<SlotState>>>,
    next_session: AtomicU64,
    /// The origin of the `idle_since` timestamps.
    epoch: Instant,
}

/// What the listener knows of one session.
#[derive(Debug)]
struct SlotState {
    /// Nanoseconds after `epoch` (plus one) when the current wait for a command began; 0 while busy.
    idle_since: AtomicU64,
    /// The client has sent at least one whole command.
    spoke: AtomicBool,
    evict: Notify,
}

impl ConnectionLimits {
    /// At most `max_total` sessions at once, `max_per_ip` from one client address.
    pub fn new(max_total: usize, max_per_ip: usize) -> ConnectionLimits {
        ConnectionLimits {
            total: Arc::new(Semaphore::new(max_total.min(Semaphore::MAX_PERMITS))),
            max_total: max_total.min(Semaphore::MAX_PERMITS),
            max_per_ip,
            per_ip: Mutex::new(HashMap::new()),
            sessions: Mutex::new(HashMap::new()),
            next_session: AtomicU64::new(0),
            epoch: Instant::now(),
        }
    }

    /// A handle by which one session reports when it waits for a command (and so may be evicted).
    pub fn idle_slot(self: &Arc<Self>) -> IdleSlot {
        let number = self.next_session.fetch_add(1, Ordering::Relaxed);
        let state =
            Arc::new(SlotState { idle_since: AtomicU64::new(0), spoke: AtomicBool::new(false), evict: Notify::new() });
        self.sessions.lock().unwrap_or_else(|e| e.into_inner()).insert(number, Arc::clone(&state));
        IdleSlot { limits: Arc::clone(self), number, state }
    }

    /// Sessions waiting for a command right now.
    pub fn idle_sessions(&self) -> usize {
        let sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        sessions.values().filter(|s| s.idle_since.load(Ordering::Acquire) != 0).count()
    }

    /// Asks an idle session to close: the longest-waiting of those that never sent a whole command (silent or
    /// trickling clients), else the longest-waiting of all; `false` when none is waiting.
    pub fn evict_oldest_idle(&self) -> bool {
        let sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            let oldest = sessions
                .values()
                .filter_map(|s| {
                    let since = s.idle_since.load(Ordering::Acquire);
                    (since != 0).then(|| ((s.spoke.load(Ordering::Acquire), since), s))
                })
                .min_by_key(|(key, _)| *key);
            let Some(((_, since), state)) = oldest else { return false };
            // Claim it: a session that turned busy meanwhile is left alone and the next one is taken.
            if state.idle_since.compare_exchange(since, 0, Ordering::AcqRel, Ordering::Acquire).is_ok() {
                // `notify_one` keeps the permit if the session is between two awaits: it is never lost.
                state.evict.notify_one();
                return true;
            }
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

/// One session's entry in the listener's idle state: marked while it waits for a command.
#[derive(Debug)]
pub struct IdleSlot {
    limits: Arc<ConnectionLimits>,
    number: u64,
    state: Arc<SlotState>,
}

impl IdleSlot {
    /// The session starts waiting for a command (no-op if it already is).
    pub fn set_idle(&mut self) {
        let now = u64::try_from(self.limits.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX - 1) + 1;
        let _ = self.state.idle_since.compare_exchange(0, now, Ordering::AcqRel, Ordering::Acquire);
    }

    /// The client sent a whole command: from now on it is evicted only after those that never did.
    pub fn set_spoke(&mut self) {
        self.state.spoke.store(true, Ordering::Release);
    }

    /// The session got a command and works on it.
    pub fn set_busy(&mut self) {
        self.state.idle_since.store(0, Ordering::Release);
    }

    /// Resolves when the session was chosen for eviction.
    pub async fn evicted(&self) {
        self.state.evict.notified().await;
    }
}

impl Drop for IdleSlot {
    fn drop(&mut self) {
        self.limits.sessions.lock().unwrap_or_else(|e| e.into_inner()).remove(&self.number);
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
                    let peer = canonical(peer);
                    let (options, config, handler) = (options.clone(), Arc::clone(&config), Arc::clone(&handler));
                    let (limits, shutdown) = (Arc::clone(&limits), shutdown.clone());
                    match Arc::clone(&limits.total).try_acquire_owned() {
                        Ok(permit) => {
                            tasks.spawn(connection(tcp, peer, options, config, handler, limits, shutdown, permit));
                        }
                        Err(_) if limits.evict_oldest_idle() => {
                            tasks.spawn(async move {
                                let wait = Arc::clone(&limits.total).acquire_owned();
                                match tokio::time::timeout(EVICTION_WAIT, wait).await {
                                    Ok(Ok(permit)) => {
                                        connection(tcp, peer, options, config, handler, limits, shutdown, permit).await
                                    }
                                    _ => refuse(tcp, options.mode, too_many()).await,
                                }
                            });
                        }
                        Err(_) => {
                            tasks.spawn(refuse(tcp, options.mode, too_many()));
                        }
                    }
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
    let Ok(mut local) = tcp.local_addr().map(canonical) else {
        return;
    };
    if options.proxy_protocol {
        if !options.trusts(peer.ip()) {
            metrics::counter!("mta_smtp_proxy_untrusted_total").increment(1);
            tracing::warn!(%peer, "refusing connection: PROXY protocol listener, peer not in smtp.trusted_proxies");
            refuse(tcp, options.mode, Reply::fixed(421, 4, 7, 0, "Not a trusted proxy")).await;
            return;
        }
        match tokio::time::timeout(config.timeout_proxy_header, crate::proxy::read_header(&mut tcp)).await {
            Ok(Ok(header)) => {
                peer = header.source.map_or(peer, canonical);
                local = header.destination.map_or(local, canonical);
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
    let session =
        Session::new(tcp, peer, local, options.mode, config, handler, shutdown).with_idle_slot(limits.idle_slot());
    if let Err(e) = session.run().await {
        tracing::debug!(%peer, "SMTP session ended: {e}");
    }
}
