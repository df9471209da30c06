//! Connection slots: the global and per-address caps, and which idle session gives up its slot when every
//! slot is taken.
//!
//! Eviction exists so that clients that connect and say nothing (or trickle) cannot lock out the ones that send
//! mail. Only sessions waiting for a command can be evicted (never one receiving a message), and among them:
//!
//! - A network (IPv4 /24, IPv6 /48 of the real client address) holding more than its share of the slots is
//!   over its share. Its idle sessions give way, whatever their age, to a newcomer from a network within its
//!   share; and its own newcomers may take only slots of over-share networks. So one network's flood cannot
//!   take the slots of the others, however fast it reconnects.
//! - Otherwise a session is safe for a grace: since it connected if it never sent a whole command, else since
//!   its last one. A new client gets time to send EHLO, and churn does not evict a real client between two of
//!   its commands. When no idle session may go, the newcomer is refused (`421`): that costs a flood a reconnect
//!   instead of costing a real client its session.
//! - Of those that may go: sessions of over-share networks first, then those that never spoke, then the
//!   longest-waiting (for the never-spoken, by connect time: a byte every few seconds does not make a session
//!   younger).

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

/// Percent of the slots one network may hold before its idle sessions give way to other networks' newcomers.
pub const DEFAULT_NETWORK_SHARE: u8 = 10;

/// How long a session is safe from eviction after it connected, or after its last command.
pub const DEFAULT_EVICTION_GRACE: Duration = Duration::from_secs(1);

/// IPv4 prefix that counts as one network for the share.
const NETWORK_V4: u8 = 24;
/// IPv6 prefix that counts as one network for the share (a site's allocation, not one host's /64).
const NETWORK_V6: u8 = 48;

/// Connection caps; share one between all listeners so the total is global.
#[derive(Debug)]
pub struct ConnectionLimits {
    pub(super) total: Arc<Semaphore>,
    max_total: usize,
    max_per_ip: usize,
    /// Sessions a network may hold before it is over its share.
    network_share: usize,
    grace: Duration,
    per_ip: Mutex<HashMap<IpAddr, usize>>,
    /// Every open session's idle state. A session marks itself idle or busy with atomics (twice per command: no
    /// shared lock on that path); the registry is locked only when a session opens or closes, and when a full
    /// listener looks for one to evict (a scan, rare).
    registry: Mutex<Registry>,
    next_session: AtomicU64,
    /// The origin of the `opened` and `idle_since` timestamps.
    epoch: Instant,
}

/// The open sessions, and how many connections each network has open or waiting for a slot.
#[derive(Debug, Default)]
struct Registry {
    sessions: HashMap<u64, Arc<SlotState>>,
    /// Counted from the moment a connection asks for a slot: a flood's newcomers waiting for the slots they
    /// claimed are part of its share, or it would look within its share while it churns.
    per_network: HashMap<IpNet, usize>,
}

impl Registry {
    fn held_by(&self, network: &IpNet) -> usize {
        self.per_network.get(network).copied().unwrap_or(0)
    }
}

/// What [`ConnectionLimits::evict_for`] did for a newcomer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Eviction {
    /// An idle session was asked to close: its slot frees within moments.
    Claimed,
    /// None may go right now, but the newcomer's network is within its share and another is over its own:
    /// ask again shortly.
    NotNow,
    /// None may go: refuse the newcomer.
    Refused,
}

/// What the limits know of one session.
#[derive(Debug)]
struct SlotState {
    /// Nanoseconds after `epoch` (plus one) when the current wait for a command began; 0 while busy.
    idle_since: AtomicU64,
    /// Nanoseconds after `epoch` (plus one) when the session opened.
    opened: u64,
    /// The client has sent at least one whole command.
    spoke: AtomicBool,
    /// The client's network, for the share.
    network: IpNet,
    evict: Notify,
}

impl ConnectionLimits {
    /// At most `max_total` sessions at once, `max_per_ip` from one client address; the default network share
    /// and eviction grace.
    pub fn new(max_total: usize, max_per_ip: usize) -> ConnectionLimits {
        let max_total = max_total.min(Semaphore::MAX_PERMITS);
        ConnectionLimits {
            total: Arc::new(Semaphore::new(max_total)),
            max_total,
            max_per_ip,
            network_share: share_of(max_total, DEFAULT_NETWORK_SHARE),
            grace: DEFAULT_EVICTION_GRACE,
            per_ip: Mutex::new(HashMap::new()),
            registry: Mutex::new(Registry::default()),
            next_session: AtomicU64::new(0),
            epoch: Instant::now(),
        }
    }

    /// One network (IPv4 /24, IPv6 /48) holding more than `percent` of the slots gives way first (1 to 100;
    /// 100 turns the share off).
    pub fn with_network_share(mut self, percent: u8) -> ConnectionLimits {
        self.network_share = share_of(self.max_total, percent);
        self
    }

    /// Sessions are safe from eviction for `grace` after they connect or finish a command (unless their network
    /// is over its share).
    pub fn with_eviction_grace(mut self, grace: Duration) -> ConnectionLimits {
        self.grace = grace;
        self
    }

    /// Counts a connection from `ip` against its network's share until dropped; take it before asking for a
    /// slot, and keep it for the whole session.
    pub fn count_network(self: &Arc<Self>, ip: IpAddr) -> NetworkGuard {
        let network = network_of(ip);
        *self.registry().per_network.entry(network).or_insert(0) += 1;
        NetworkGuard { limits: Arc::clone(self), network }
    }

    /// A handle by which one session from `ip` reports when it waits for a command (and so may be evicted).
    pub fn idle_slot(self: &Arc<Self>, ip: IpAddr) -> IdleSlot {
        let number = self.next_session.fetch_add(1, Ordering::Relaxed);
        let state = Arc::new(SlotState {
            idle_since: AtomicU64::new(0),
            opened: self.now(),
            spoke: AtomicBool::new(false),
            network: network_of(ip),
            evict: Notify::new(),
        });
        self.registry().sessions.insert(number, Arc::clone(&state));
        IdleSlot { limits: Arc::clone(self), number, state }
    }

    /// Sessions waiting for a command right now.
    pub fn idle_sessions(&self) -> usize {
        self.registry().sessions.values().filter(|s| s.idle_since.load(Ordering::Acquire) != 0).count()
    }

    /// Connections open or waiting for a slot right now from the network of `ip` (IPv4 /24, IPv6 /48).
    pub fn active_from_network(&self, ip: IpAddr) -> usize {
        self.registry().held_by(&network_of(ip))
    }

    /// Asks an idle session to close so a newcomer from `ip` (already counted by [`Self::count_network`]) can
    /// have its slot; see the module docs for which.
    pub fn evict_for(&self, ip: IpAddr) -> Eviction {
        let registry = self.registry();
        let newcomer_within_share = registry.held_by(&network_of(ip)) <= self.network_share;
        let grace = u64::try_from(self.grace.as_nanos()).unwrap_or(u64::MAX);
        // Each pass either claims a session or sees one turn busy under it; a few passes are plenty.
        for _ in 0..8 {
            let now = self.now();
            let victim = registry
                .sessions
                .values()
                .filter_map(|s| {
                    let since = s.idle_since.load(Ordering::Acquire);
                    if since == 0 {
                        return None;
                    }
                    let spoke = s.spoke.load(Ordering::Acquire);
                    let waiting_from = if spoke { since } else { s.opened };
                    let over_share = registry.held_by(&s.network) > self.network_share;
                    let past_grace = now.saturating_sub(waiting_from) >= grace;
                    let evictable = match newcomer_within_share {
                        true => over_share || past_grace,
                        false => over_share && past_grace,
                    };
                    evictable.then_some(((!over_share, spoke, waiting_from), since, s))
                })
                .min_by_key(|(key, ..)| *key);
            let Some((_, since, state)) = victim else { break };
            // Claim it: a session that turned busy meanwhile is left alone and the next one is taken.
            if state.idle_since.compare_exchange(since, 0, Ordering::AcqRel, Ordering::Acquire).is_ok() {
                // `notify_one` keeps the permit if the session is between two awaits: it is never lost.
                state.evict.notify_one();
                return Eviction::Claimed;
            }
        }
        // Under a flood every over-share session may be busy, or claimed by the flood's own newcomers, for a
        // moment; one of them will be idle again within a round trip.
        let over_share_exists = registry.per_network.values().any(|n| *n > self.network_share);
        match newcomer_within_share && over_share_exists {
            true => Eviction::NotNow,
            false => Eviction::Refused,
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

    /// A free slot, if there is one.
    pub(super) fn try_slot(&self) -> Option<OwnedSemaphorePermit> {
        Arc::clone(&self.total).try_acquire_owned().ok()
    }

    /// Counts one more session from `ip`, unless it already has `max_per_ip`.
    pub(super) fn try_ip(self: &Arc<Self>, ip: IpAddr) -> Option<IpGuard> {
        let mut map = self.per_ip.lock().unwrap_or_else(|e| e.into_inner());
        let n = map.entry(ip).or_insert(0);
        if *n >= self.max_per_ip {
            return None;
        }
        *n += 1;
        Some(IpGuard { limits: Arc::clone(self), ip })
    }

    fn registry(&self) -> MutexGuard<'_, Registry> {
        self.registry.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Nanoseconds since `epoch`, plus one (0 means "not waiting").
    fn now(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX - 1) + 1
    }
}

/// `percent` of `max_total` sessions, rounded up, at least one.
fn share_of(max_total: usize, percent: u8) -> usize {
    let percent = usize::from(percent.clamp(1, 100));
    (max_total.saturating_mul(percent).div_ceil(100)).max(1)
}

/// The network `ip` counts against for the share.
fn network_of(ip: IpAddr) -> IpNet {
    let network = match ip {
        IpAddr::V4(v4) => Ipv4Net::new(v4, NETWORK_V4).map(|n| IpNet::V4(n.trunc())),
        IpAddr::V6(v6) => Ipv6Net::new(v6, NETWORK_V6).map(|n| IpNet::V6(n.trunc())),
    };
    // The prefixes are valid constants; the address alone is the fallback all the same.
    network.unwrap_or_else(|_| IpNet::from(ip))
}

/// One session's entry in the limits' registry: marked while it waits for a command.
#[derive(Debug)]
pub struct IdleSlot {
    limits: Arc<ConnectionLimits>,
    number: u64,
    state: Arc<SlotState>,
}

impl IdleSlot {
    /// The session starts waiting for a command (no-op if it already is).
    pub fn set_idle(&mut self) {
        let now = self.limits.now();
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
        self.limits.registry().sessions.remove(&self.number);
    }
}

/// Counts one connection against its network's share until dropped.
#[derive(Debug)]
pub struct NetworkGuard {
    limits: Arc<ConnectionLimits>,
    network: IpNet,
}

impl Drop for NetworkGuard {
    fn drop(&mut self) {
        let mut registry = self.limits.registry();
        if let Some(n) = registry.per_network.get_mut(&self.network) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                registry.per_network.remove(&self.network);
            }
        }
    }
}

/// Counts one session against its address until dropped.
pub(super) struct IpGuard {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap_or(IpAddr::from([0, 0, 0, 0]))
    }

    /// A session from `addr` waiting for a command, as the listener would have admitted it.
    fn idle(limits: &Arc<ConnectionLimits>, addr: &str) -> (NetworkGuard, IdleSlot) {
        let guard = limits.count_network(ip(addr));
        let mut slot = limits.idle_slot(ip(addr));
        slot.set_idle();
        (guard, slot)
    }

    /// Asks for a slot as a newcomer from `addr` would (counted while it asks).
    fn newcomer(limits: &Arc<ConnectionLimits>, addr: &str) -> Eviction {
        let _counted = limits.count_network(ip(addr));
        limits.evict_for(ip(addr))
    }

    #[test]
    fn networks_are_v4_slash_24_and_v6_slash_48() {
        assert_eq!(network_of(ip("192.0.2.77")), network_of(ip("192.0.2.1")));
        assert_ne!(network_of(ip("192.0.2.77")), network_of(ip("192.0.3.77")));
        assert_eq!(network_of(ip("2001:db8:1:2::1")), network_of(ip("2001:db8:1:ffff::9")));
        assert_ne!(network_of(ip("2001:db8:1::1")), network_of(ip("2001:db8:2::1")));
    }

    #[test]
    fn the_share_rounds_up_and_is_at_least_one() {
        assert_eq!(share_of(100, 10), 10);
        assert_eq!(share_of(3, 10), 1);
        assert_eq!(share_of(15, 10), 2);
        assert_eq!(share_of(100, 0), 1);
        assert_eq!(share_of(100, 200), 100);
    }

    #[test]
    fn a_session_within_its_grace_is_not_evicted_but_an_over_share_one_is() {
        let limits = Arc::new(ConnectionLimits::new(10, 10).with_eviction_grace(Duration::from_secs(3600)));
        // Two sessions from one network: over its share of 1 (10 % of 10).
        let _flood = [idle(&limits, "192.0.2.1"), idle(&limits, "192.0.2.2")];
        let legit = idle(&limits, "198.51.100.1");
        // The flood's own newcomer finds everyone within the grace.
        assert_eq!(newcomer(&limits, "192.0.2.3"), Eviction::Refused);
        // A newcomer from a third network takes a flood session's slot, not the legitimate one's.
        assert_eq!(newcomer(&limits, "203.0.113.1"), Eviction::Claimed);
        assert_eq!(limits.idle_sessions(), 2);
        assert_ne!(legit.1.state.idle_since.load(Ordering::Acquire), 0, "the legitimate session was evicted");
    }

    #[test]
    fn a_newcomer_over_its_share_takes_only_slots_of_networks_over_theirs() {
        let limits = Arc::new(ConnectionLimits::new(10, 10).with_eviction_grace(Duration::ZERO));
        let legit = idle(&limits, "198.51.100.1");
        let _flood = [idle(&limits, "192.0.2.1"), idle(&limits, "192.0.2.2")];
        assert_eq!(newcomer(&limits, "192.0.2.3"), Eviction::Claimed);
        assert_eq!(newcomer(&limits, "192.0.2.3"), Eviction::Claimed);
        // Both flood sessions are claimed; the legitimate one, though it has waited longest, is not.
        assert_eq!(newcomer(&limits, "192.0.2.3"), Eviction::Refused);
        assert_ne!(legit.1.state.idle_since.load(Ordering::Acquire), 0, "the legitimate session was evicted");
        // A newcomer from a network within its share may take it, past its grace.
        assert_eq!(newcomer(&limits, "203.0.113.1"), Eviction::Claimed);
    }

    #[test]
    fn a_newcomer_within_its_share_is_told_to_look_again_when_the_flood_is_busy() {
        let limits = Arc::new(ConnectionLimits::new(10, 10).with_eviction_grace(Duration::from_secs(3600)));
        // The flood holds two sessions and has three newcomers waiting for slots they claimed.
        let mut flood = [idle(&limits, "192.0.2.1"), idle(&limits, "192.0.2.2")];
        let _waiting: Vec<_> = (0..3).map(|_| limits.count_network(ip("192.0.2.9"))).collect();
        for (_, slot) in &mut flood {
            slot.set_busy();
        }
        assert_eq!(newcomer(&limits, "198.51.100.1"), Eviction::NotNow);
        // The flood's own newcomers are refused.
        assert_eq!(newcomer(&limits, "192.0.2.3"), Eviction::Refused);
        assert_eq!(limits.active_from_network(ip("192.0.2.200")), 5);
    }

    #[test]
    fn the_never_spoken_go_first_by_connect_time_however_they_trickle() {
        let limits = ConnectionLimits::new(10, 100).with_network_share(100).with_eviction_grace(Duration::ZERO);
        let limits = Arc::new(limits);
        let mut trickler = idle(&limits, "192.0.2.1");
        trickler.1.set_busy();
        let mut spoken = idle(&limits, "192.0.2.2");
        spoken.1.set_spoke();
        let silent = idle(&limits, "192.0.2.3");
        // The trickler opened first; its latest byte came last.
        trickler.1.set_idle();
        let state = |s: &(NetworkGuard, IdleSlot)| s.1.state.idle_since.load(Ordering::Acquire);
        assert_eq!(newcomer(&limits, "192.0.2.9"), Eviction::Claimed);
        assert_eq!(state(&trickler), 0, "the oldest never-spoken goes first");
        assert_eq!(newcomer(&limits, "192.0.2.9"), Eviction::Claimed);
        assert_eq!(state(&silent), 0);
        assert_eq!(newcomer(&limits, "192.0.2.9"), Eviction::Claimed);
        assert_eq!(state(&spoken), 0);
        assert_eq!(newcomer(&limits, "192.0.2.9"), Eviction::Refused);
    }
}
