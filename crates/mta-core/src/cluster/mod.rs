//! A fleet that acts as one: per-site connection caps and rates shared by every node through Redis, and a
//! heartbeat per node (the cluster view).
//!
//! # Layout
//! - [`Cluster`]: the handle. It implements [`FleetLimits`] (delivery's seam) by sending requests to one
//!   background task over a bounded channel; a request that cannot be answered in time gets nothing, and the
//!   caller asks again later.
//! - `actor`: that task — it owns the Redis connection, so every write reaches Redis in the order it was
//!   decided, and counts are sent as absolute values (no lost or doubled increments across reconnects).
//!   Redis down or slow (a call over a few tens of milliseconds): it answers from local limits at once —
//!   this node's share of each total, the total divided by the nodes last seen alive — and reconnects with
//!   backoff; back in touch, it re-sends what it holds and fleet limits apply again.
//! - `ledger`: what this node holds, whatever Redis knows, and the local buckets of the fallback.
//! - `scripts`: the server-side scripts, one round trip per operation.

mod actor;
mod ledger;
mod scripts;

use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use serde::Serialize;
use tokio::sync::{mpsc, oneshot, watch, Notify};

use crate::delivery::{FleetFuture, FleetLimits};
use ledger::Ledger;

/// How long a caller waits for the cluster task's answer (it answers locally once Redis is known away).
const REPLY_TIMEOUT: Duration = Duration::from_secs(1);
/// Requests waiting for the cluster task; beyond that a request gets nothing at once (asked again later).
const QUEUE: usize = 1024;

/// Where the fleet's shared state lives.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// `redis://host:port/db`.
    pub redis_url: String,
    /// Prefix of every key (several fleets can share one Redis).
    pub name: String,
    /// This node's id (unique in the fleet).
    pub node_id: String,
    /// Longest wait for one Redis call before this node falls back to local limits.
    pub op_timeout: Duration,
    /// Heartbeat period.
    pub heartbeat: Duration,
    /// A node (and the leases it holds) counts as gone this long after its last heartbeat.
    pub node_ttl: Duration,
}

impl ClusterConfig {
    /// A config with the default timings.
    pub fn new(redis_url: impl Into<String>, name: impl Into<String>, node_id: impl Into<String>) -> ClusterConfig {
        ClusterConfig {
            redis_url: redis_url.into(),
            name: name.into(),
            node_id: node_id.into(),
            op_timeout: Duration::from_millis(100),
            heartbeat: Duration::from_millis(500),
            node_ttl: Duration::from_secs(3),
        }
    }
}

/// Whether this node reaches the fleet's Redis.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum RedisState {
    /// Fleet limits apply.
    Connected,
    /// Local limits apply (this node's share); reconnecting.
    Unreachable,
    /// No cluster configured: a single node.
    Off,
}

/// One node as its last heartbeat described it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct NodeView {
    /// `server.node_id`.
    pub node_id: String,
    /// Health state: `healthy`, `degraded` or `shedding`.
    pub state: String,
    /// Messages queued (scheduled, ready, in flight or held).
    pub queued: u64,
    /// When the heartbeat was sent (RFC 3339, UTC).
    pub last_seen: String,
}

/// The cluster as this node sees it (`GET /api/v1/cluster`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ClusterView {
    /// Reachability of Redis from this node.
    pub redis: RedisState,
    /// Nodes alive at the last heartbeat (kept as last seen while Redis is unreachable).
    pub nodes: Vec<NodeView>,
}

impl ClusterView {
    /// The view of a single node (no cluster configured).
    pub fn off() -> ClusterView {
        ClusterView { redis: RedisState::Off, nodes: Vec::new() }
    }
}

/// What this node reports in its heartbeat.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeStatus {
    /// Health state name.
    pub state: String,
    /// Messages queued.
    pub queued: u64,
}

/// Reads this node's status for each heartbeat (cheap; called every heartbeat period).
pub type StatusFn = Arc<dyn Fn() -> NodeStatus + Send + Sync>;

/// A cluster that could not be started.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClusterError {
    /// `cluster.redis_url` does not parse: fix the configuration.
    #[error("invalid cluster.redis_url: {0}")]
    Url(String),
}

/// A request to the cluster task.
enum Request {
    Acquire { site: String, limit: usize, want: usize, reply: oneshot::Sender<usize> },
    Tokens { site: String, rate: f64, want: usize, reply: oneshot::Sender<(usize, Duration)> },
}

/// What the handle and the task share.
struct Shared {
    ledger: Mutex<Ledger>,
    /// [`RedisState`] as a number (`state_of`).
    redis: AtomicU8,
    nodes: Mutex<Vec<NodeView>>,
    /// Nodes alive at the last heartbeat (at least 1): the fallback shares totals among them.
    alive: AtomicUsize,
    /// Leases were given back: the task tells Redis.
    released: Notify,
}

impl Shared {
    fn set_redis(&self, state: RedisState) {
        let n = match state {
            RedisState::Connected => 0,
            RedisState::Unreachable => 1,
            RedisState::Off => 2,
        };
        self.redis.store(n, Ordering::Release);
        metrics::gauge!("mta_cluster_fallback").set(if state == RedisState::Connected { 0.0 } else { 1.0 });
    }

    fn redis(&self) -> RedisState {
        match self.redis.load(Ordering::Acquire) {
            0 => RedisState::Connected,
            1 => RedisState::Unreachable,
            _ => RedisState::Off,
        }
    }
}

/// This node's membership in a fleet on Redis; cheap to share (`Arc`).
pub struct Cluster {
    tx: mpsc::Sender<Request>,
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster").field("redis", &self.shared.redis()).finish()
    }
}

impl Cluster {
    /// Join the fleet (inside a tokio runtime): the background task connects, and keeps reconnecting, by
    /// itself; until it is connected the node runs on local limits.
    pub fn start(config: ClusterConfig, status: StatusFn) -> Result<Arc<Cluster>, ClusterError> {
        let client = redis::Client::open(config.redis_url.as_str()).map_err(|e| ClusterError::Url(e.to_string()))?;
        let shared = Arc::new(Shared {
            ledger: Mutex::new(Ledger::default()),
            redis: AtomicU8::new(1),
            nodes: Mutex::new(Vec::new()),
            alive: AtomicUsize::new(1),
            released: Notify::new(),
        });
        shared.set_redis(RedisState::Unreachable);
        let (tx, rx) = mpsc::channel(QUEUE);
        let (stop, stop_rx) = watch::channel(false);
        let task = tokio::spawn(actor::run(config, client, shared.clone(), rx, status, stop_rx));
        Ok(Arc::new(Cluster { tx, shared, stop, task: Mutex::new(Some(task)) }))
    }

    /// The cluster as this node sees it now.
    pub fn view(&self) -> ClusterView {
        ClusterView { redis: self.shared.redis(), nodes: self.shared.nodes.lock().clone() }
    }

    /// Leave the fleet: this node's heartbeat is removed (its leases stop counting at once).
    pub async fn shutdown(&self) {
        let _ = self.stop.send(true);
        let task = self.task.lock().take();
        if let Some(task) = task {
            let _ = tokio::time::timeout(Duration::from_secs(2), task).await;
        }
    }
}

impl FleetLimits for Cluster {
    fn acquire(&self, site: &str, limit: usize, want: usize) -> FleetFuture<usize> {
        let (reply, answer) = oneshot::channel();
        let sent = self.tx.try_send(Request::Acquire { site: site.to_string(), limit, want, reply }).is_ok();
        Box::pin(async move {
            if !sent {
                return 0;
            }
            tokio::time::timeout(REPLY_TIMEOUT, answer).await.ok().and_then(Result::ok).unwrap_or(0)
        })
    }

    fn release(&self, site: &str, n: usize) {
        let held = {
            let mut ledger = self.shared.ledger.lock();
            ledger.release(site, n);
            ledger.total_held()
        };
        metrics::gauge!("mta_cluster_leases_held").set(held as f64);
        self.shared.released.notify_one();
    }

    fn tokens(&self, site: &str, rate: f64, want: usize) -> FleetFuture<(usize, Duration)> {
        let (reply, answer) = oneshot::channel();
        let sent = self.tx.try_send(Request::Tokens { site: site.to_string(), rate, want, reply }).is_ok();
        let retry = Duration::from_millis(50);
        Box::pin(async move {
            if !sent {
                return (0, retry);
            }
            tokio::time::timeout(REPLY_TIMEOUT, answer).await.ok().and_then(Result::ok).unwrap_or((0, retry))
        })
    }
}
