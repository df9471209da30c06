//! The outbox's owner in the engine: sets the byte bound (the spool's committer keeps it, in the very round
//! that would exceed it), forgets entries every endpoint confirmed, logs and counts what the bound dropped,
//! and publishes the outbox's size and each endpoint's backlog as metrics.
//!
//! Entries are removed by sequence range in one spool commit per pass, so forgetting costs one group-commit
//! round however many events were confirmed.

use std::sync::Arc;
use std::time::Duration;

use mta_spool::{Op, Spool};

use super::endpoint::{age_of, Endpoint};

/// How often the reaper looks.
const PASS: Duration = Duration::from_millis(250);
/// Metrics are refreshed every this many passes.
const METRICS_EVERY: u32 = 8;

/// Keep the outbox within `max_bytes` and remove confirmed entries, until the task is aborted.
pub(crate) async fn reap(spool: Spool, endpoints: Vec<Arc<Endpoint>>, max_bytes: u64) {
    spool.set_outbox_limit(max_bytes);
    let mut removed_through = 0u64;
    let mut pass = 0u32;
    let mut dropped = Dropped::default();
    loop {
        // Without endpoints nothing will ever confirm what an earlier configuration left: forget it all.
        let through = endpoints.iter().map(|e| e.done_through()).min().unwrap_or(u64::MAX);
        let stats = spool.outbox_stats();
        if through > removed_through && stats.entries > 0 {
            match spool.commit(vec![Op::OutboxRemoveThrough { seq: through }]).await {
                Ok(()) => removed_through = through,
                Err(e) => tracing::warn!(error = %e, "cannot remove confirmed events from the outbox"),
            }
        }
        dropped.report(&spool.outbox_stats());
        if pass.is_multiple_of(METRICS_EVERY) {
            publish(&spool, &endpoints).await;
        }
        pass = pass.wrapping_add(1);
        tokio::time::sleep(PASS).await;
    }
}

/// What the bound has dropped so far (reported as it grows).
#[derive(Default)]
struct Dropped {
    items: u64,
    bytes: u64,
}

impl Dropped {
    /// Log and count the events the committer dropped for space since the last call. They are lost for every
    /// endpoint that had not confirmed them: the outbox was full because an endpoint is far behind.
    fn report(&mut self, stats: &mta_spool::OutboxStats) {
        let items = stats.dropped_items.saturating_sub(self.items);
        if items == 0 {
            return;
        }
        let bytes = stats.dropped_bytes.saturating_sub(self.bytes);
        (self.items, self.bytes) = (stats.dropped_items, stats.dropped_bytes);
        tracing::warn!(events = items, bytes, "outbox full: oldest events dropped");
        metrics::counter!("mta_export_dropped_total", "endpoint" => "*", "reason" => "outbox_full").increment(items);
    }
}

/// Outbox size and age, and per endpoint its backlog (events not yet confirmed, counted up to 2^20) and
/// the age of its oldest.
async fn publish(spool: &Spool, endpoints: &[Arc<Endpoint>]) {
    let stats = spool.outbox_stats();
    metrics::gauge!("mta_export_outbox_entries").set(stats.entries as f64);
    metrics::gauge!("mta_export_outbox_bytes").set(stats.bytes as f64);
    metrics::gauge!("mta_export_outbox_peak_bytes").set(stats.peak_bytes as f64);
    metrics::gauge!("mta_export_outbox_oldest_age_seconds")
        .set(stats.oldest.map(|s| age_of(s).as_secs_f64()).unwrap_or(0.0));
    for e in endpoints {
        let name = e.settings().name.clone();
        let done = e.done_through();
        let (depth, oldest) = {
            let spool = spool.clone();
            tokio::task::spawn_blocking(move || spool.outbox_backlog(done, 1 << 20).unwrap_or((0, None)))
                .await
                .unwrap_or((0, None))
        };
        metrics::gauge!("mta_export_endpoint_outbox_depth", "endpoint" => name.clone()).set(depth as f64);
        metrics::gauge!("mta_export_endpoint_oldest_age_seconds", "endpoint" => name)
            .set(oldest.map(|s| age_of(s).as_secs_f64()).unwrap_or(0.0));
    }
}
