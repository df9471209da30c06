//! The cluster task: owns the Redis connection and answers every request in order — from Redis when
//! connected, from this node's share of the limits when not — and heartbeats, reconnects with backoff, and
//! re-sends what this node holds when Redis is back.

use std::sync::atomic::Ordering;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, FromRedisValue, Script, ScriptInvocation};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use super::ledger::bucket_capacity;
use super::{scripts, ClusterConfig, NodeView, RedisState, Request, Shared, StatusFn};

static ACQUIRE: LazyLock<Script> = LazyLock::new(scripts::acquire);
static SYNC: LazyLock<Script> = LazyLock::new(scripts::sync);
static HEARTBEAT: LazyLock<Script> = LazyLock::new(scripts::heartbeat);
static TOKENS: LazyLock<Script> = LazyLock::new(scripts::tokens);

/// First and longest wait between connection attempts.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(2);
/// Longest wait for a TCP connection to Redis (in its own task: requests are answered meanwhile).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

struct Actor {
    cfg: ClusterConfig,
    shared: Arc<Shared>,
    status: StatusFn,
    conn: Option<MultiplexedConnection>,
}

/// Run until `stop` (or every handle is gone).
pub(super) async fn run(
    cfg: ClusterConfig,
    client: redis::Client,
    shared: Arc<Shared>,
    mut rx: mpsc::Receiver<Request>,
    status: StatusFn,
    mut stop: watch::Receiver<bool>,
) {
    let mut actor = Actor { cfg, shared, status, conn: None };
    let (conn_tx, mut conn_rx) = mpsc::channel(1);
    let mut connecting = false;
    let mut backoff = BACKOFF_MIN;
    let mut next_connect = Instant::now();
    let mut beat = tokio::time::interval(actor.cfg.heartbeat);
    beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            _ = stop.changed() => break,
            conn = conn_rx.recv() => {
                connecting = false;
                if let Some(Some(conn)) = conn {
                    actor.conn = Some(conn);
                    if actor.rejoin().await {
                        backoff = BACKOFF_MIN;
                        continue;
                    }
                }
                next_connect = Instant::now() + backoff;
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
            req = rx.recv() => match req {
                Some(req) => actor.handle(req).await,
                None => break,
            },
            _ = actor.shared.released.notified() => actor.sync(false).await,
            _ = beat.tick() => {
                if actor.conn.is_some() {
                    actor.heartbeat().await;
                    actor.sync(true).await;
                } else if !connecting && Instant::now() >= next_connect {
                    connecting = true;
                    let (client, tx, timeout) = (client.clone(), conn_tx.clone(), actor.cfg.op_timeout);
                    tokio::spawn(async move {
                        let config = AsyncConnectionConfig::new()
                            .set_connection_timeout(Some(CONNECT_TIMEOUT))
                            .set_response_timeout(Some(timeout));
                        let conn = client.get_multiplexed_async_connection_with_config(&config).await.ok();
                        let _ = tx.send(conn).await;
                    });
                }
            }
        }
    }
    actor.leave().await;
}

impl Actor {
    /// Run one script call within the time limit; a failure means Redis is away (local limits from now on).
    async fn call<T: FromRedisValue>(&mut self, inv: ScriptInvocation<'static>) -> Option<T> {
        let conn = self.conn.as_mut()?;
        let started = std::time::Instant::now();
        let result = tokio::time::timeout(self.cfg.op_timeout, inv.invoke_async::<T>(conn)).await;
        match result {
            Ok(Ok(v)) => {
                metrics::histogram!("mta_cluster_redis_seconds").record(started.elapsed().as_secs_f64());
                Some(v)
            }
            Ok(Err(e)) => {
                self.lost(&e.to_string());
                None
            }
            Err(_) => {
                self.lost("no answer in time");
                None
            }
        }
    }

    fn lost(&mut self, why: &str) {
        metrics::counter!("mta_cluster_redis_errors_total").increment(1);
        if self.conn.take().is_some() {
            tracing::warn!(error = why, "Redis unreachable: local limits (this node's share) until it is back");
            self.shared.set_redis(RedisState::Unreachable);
        }
    }

    /// Connected again: heartbeat and re-send every count before fleet limits apply again.
    async fn rejoin(&mut self) -> bool {
        self.heartbeat().await;
        self.sync(true).await;
        if self.conn.is_none() {
            return false;
        }
        tracing::info!("Redis reached: fleet-wide limits apply");
        self.shared.set_redis(RedisState::Connected);
        true
    }

    async fn handle(&mut self, req: Request) {
        match req {
            Request::Acquire { site, limit, want, reply } => {
                let granted = self.acquire(&site, limit, want).await;
                let mut ledger = self.shared.ledger.lock();
                if reply.send(granted).is_ok() {
                    ledger.grant(&site, granted);
                    metrics::counter!("mta_cluster_lease_grants_total").increment(granted as u64);
                } else if granted > 0 {
                    // The asker gave up: Redis counts leases nobody holds until the next sync.
                    self.shared.released.notify_one();
                }
                metrics::gauge!("mta_cluster_leases_held").set(ledger.total_held() as f64);
            }
            Request::Tokens { site, rate, want, reply } => {
                let (granted, wait) = self.tokens(&site, rate, want).await;
                metrics::counter!("mta_cluster_token_grants_total").increment(granted as u64);
                let _ = reply.send((granted, wait));
            }
        }
    }

    fn key(&self, kind: &str, site: &str) -> String {
        format!("{}:{kind}:{site}", self.cfg.name)
    }

    fn ttl_ms(&self) -> u64 {
        self.cfg.node_ttl.as_millis() as u64
    }

    async fn acquire(&mut self, site: &str, limit: usize, want: usize) -> usize {
        if self.conn.is_some() {
            let held = self.shared.ledger.lock().held(site);
            let mut inv = ACQUIRE.prepare_invoke();
            inv.key(self.key("leases", site)).key(format!("{}:alive", self.cfg.name));
            inv.arg(&self.cfg.node_id).arg(held).arg(limit).arg(want).arg(self.ttl_ms());
            if let Some((granted, _total)) = self.call::<(usize, usize)>(inv).await {
                self.shared.ledger.lock().synced(site, held + granted);
                return granted.min(want);
            }
        }
        let nodes = self.shared.alive.load(Ordering::Acquire);
        self.shared.ledger.lock().fallback_grant(site, limit, want, nodes)
    }

    async fn tokens(&mut self, site: &str, rate: f64, want: usize) -> (usize, Duration) {
        if self.conn.is_some() {
            let mut inv = TOKENS.prepare_invoke();
            inv.key(self.key("rate", site)).arg(rate).arg(want).arg(bucket_capacity(rate));
            if let Some((granted, wait_ms)) = self.call::<(usize, u64)>(inv).await {
                return (granted.min(want), Duration::from_millis(wait_ms.min(60_000)));
            }
        }
        let nodes = self.shared.alive.load(Ordering::Acquire);
        self.shared.ledger.lock().fallback_tokens(site, rate, want, nodes, Instant::now())
    }

    /// Tell Redis the lease counts it has wrong (every count when `all`, which also renews the keys).
    async fn sync(&mut self, all: bool) {
        if self.conn.is_none() {
            return;
        }
        let counts = self.shared.ledger.lock().out_of_sync(all);
        if counts.is_empty() {
            return;
        }
        let mut inv = SYNC.prepare_invoke();
        inv.arg(&self.cfg.node_id).arg(self.ttl_ms());
        for (site, n) in &counts {
            inv.key(self.key("leases", site)).arg(*n);
        }
        if self.call::<usize>(inv).await.is_some() {
            let mut ledger = self.shared.ledger.lock();
            for (site, n) in counts {
                ledger.synced(&site, n);
            }
        }
    }

    /// Say this node is alive (with its state and queue) and read who else is.
    async fn heartbeat(&mut self) {
        let status = (self.status)();
        let at = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let info = serde_json::json!({"state": status.state, "queued": status.queued, "at": at}).to_string();
        let mut inv = HEARTBEAT.prepare_invoke();
        inv.key(format!("{}:alive", self.cfg.name)).key(format!("{}:nodes", self.cfg.name));
        inv.arg(&self.cfg.node_id).arg(self.ttl_ms()).arg(info);
        let Some(pairs) = self.call::<Vec<String>>(inv).await else { return };
        let nodes: Vec<NodeView> = pairs.chunks(2).filter_map(|p| node_view(p.first()?, p.get(1)?)).collect();
        self.shared.alive.store(nodes.len().max(1), Ordering::Release);
        *self.shared.nodes.lock() = nodes;
    }

    /// Stopping: drop this node's heartbeat so its leases stop counting now rather than at expiry.
    async fn leave(&mut self) {
        let Some(conn) = self.conn.as_mut() else { return };
        let mut pipe = redis::pipe();
        pipe.cmd("ZREM").arg(format!("{}:alive", self.cfg.name)).arg(&self.cfg.node_id).ignore();
        pipe.cmd("HDEL").arg(format!("{}:nodes", self.cfg.name)).arg(&self.cfg.node_id).ignore();
        let _ = tokio::time::timeout(self.cfg.op_timeout, pipe.query_async::<()>(conn)).await;
    }
}

/// A node's heartbeat JSON as the cluster view shows it.
fn node_view(node: &str, info: &str) -> Option<NodeView> {
    let v: serde_json::Value = serde_json::from_str(info).ok()?;
    let at = v.get("at").and_then(|a| a.as_u64()).unwrap_or(0);
    let last_seen = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(at) * 1_000_000)
        .ok()
        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_default();
    Some(NodeView {
        node_id: node.to_string(),
        state: v.get("state").and_then(|s| s.as_str()).unwrap_or("unknown").to_string(),
        queued: v.get("queued").and_then(|q| q.as_u64()).unwrap_or(0),
        last_seen,
    })
}
