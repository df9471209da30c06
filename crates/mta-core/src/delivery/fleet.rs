//! The seam to limits shared by a fleet of nodes: per-site connection leases and send tokens.
//!
//! Without one (a single node), sites enforce their limits alone. With one ([`crate::cluster::Cluster`] on
//! Redis), a site's connection cap and rate are fleet totals: each outbound connection holds a lease taken
//! from the fleet, and each send spends a token granted by the fleet in batches. Delivery tasks never wait on
//! the fleet for a connection: dispatch asks for leases in a background task and opens connections when they
//! come. Only a rate-limited connection that ran out of tokens waits for the next grant (it has nothing else
//! to send meanwhile).

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use tokio::time::Instant;

/// A boxed future (the seam is object-safe).
pub type FleetFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// Limits shared with the other nodes of a fleet. Implementations answer within a bounded time whatever
/// happens to their backend (falling back to a local share of the limit when it is away).
pub trait FleetLimits: Send + Sync + 'static {
    /// Up to `want` more connection leases on `site`, whose fleet-wide cap is `limit`: resolves to how many
    /// were granted (`0..=want`). The caller holds them until it gives them back with [`FleetLimits::release`].
    fn acquire(&self, site: &str, limit: usize, want: usize) -> FleetFuture<usize>;
    /// Give back `n` leases of `site` (connections closed, or grants no longer needed). Never waits.
    fn release(&self, site: &str, n: usize);
    /// Up to `want` sends on `site` under the fleet-wide `rate` (messages per second): resolves to the number
    /// granted and, when none was, how long to wait before asking again.
    fn tokens(&self, site: &str, rate: f64, want: usize) -> FleetFuture<(usize, Duration)>;
}

/// Sends asked for in one token grant: about a tenth of a second of the fleet's rate, so a busy node pays one
/// round trip per batch, not per message, while no node sits on much of the fleet's budget.
pub(crate) fn token_batch(rate: f64) -> usize {
    ((rate / 10.0).ceil() as usize).clamp(1, 64)
}

/// A site's share of fleet state, kept with its ready queue.
#[derive(Debug)]
pub(crate) struct SiteFleet {
    /// Limits come from the fleet (else the site enforces them alone).
    pub(crate) on: bool,
    /// Leases granted and not yet taken by a connection (each open connection holds one more).
    pub(crate) spare_leases: usize,
    /// A lease request is out (one at a time per site).
    pub(crate) asking_leases: bool,
    /// Sends granted and not yet spent.
    pub(crate) tokens: usize,
    /// A token request is out.
    pub(crate) asking_tokens: bool,
    /// No token request before this (the fleet's bucket was empty).
    pub(crate) next_ask: Option<Instant>,
}

impl SiteFleet {
    /// Fleet state for a new site (`on`: a fleet is configured).
    pub(crate) fn new(on: bool) -> SiteFleet {
        SiteFleet { on, spare_leases: 0, asking_leases: false, tokens: 0, asking_tokens: false, next_ask: None }
    }
}
