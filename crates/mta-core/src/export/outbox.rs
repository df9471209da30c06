//! The outbox's owner in the engine: forgets entries every endpoint confirmed, enforces the byte bound, and
//! publishes the outbox's size and each endpoint's backlog as metrics.
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

/// Remove confirmed entries and keep the outbox within `max_bytes`, until the task is aborted.
pub(crate) async fn reap(spool: Spool, endpoints: Vec<Arc<Endpoint>>, max_bytes: u64) {
    let mut removed_through = 0u64;
    let mut pass = 0u32;
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
        let stats = spool.outbox_stats();
        if stats.bytes > max_bytes {
            shed(&spool, stats.bytes - max_bytes).await;
        }
        if pass.is_multiple_of(METRICS_EVERY) {
            publish(&spool, &endpoints).await;
        }
        pass = pass.wrapping_add(1);
        tokio::time::sleep(PASS).await;
    }
}

/// Drop the oldest entries until at least `excess` bytes are gone (the outbox is full: an endpoint is far
/// behind). Counted and logged: these events are lost for every endpoint that had not confirmed them.
async fn shed(spool: &Spool, excess: u64) {
    let (mut freed, mut count, mut after, mut last) = (0u64, 0u64, 0u64, None);
    while freed < excess {
        let chunk = match spool.outbox_read_async(after, 1024).await {
            Ok(c) if !c.is_empty() => c,
            _ => break,
        };
        for (seq, value) in chunk {
            freed += value.len() as u64;
            count += 1;
            after = seq;
            last = Some(seq);
            if freed >= excess {
                break;
            }
        }
    }
    let Some(seq) = last else { return };
    match spool.commit(vec![Op::OutboxRemoveThrough { seq }]).await {
        Ok(()) => {
            tracing::warn!(events = count, bytes = freed, "outbox full: oldest events dropped");
            metrics::counter!("mta_export_dropped_total", "endpoint" => "*", "reason" => "outbox_full")
                .increment(count);
        }
        Err(e) => tracing::warn!(error = %e, "cannot drop events from the full outbox"),
    }
}

/// Outbox size and age, and per endpoint its backlog (entries not yet confirmed, counted up to 2^20) and
/// the age of its oldest.
async fn publish(spool: &Spool, endpoints: &[Arc<Endpoint>]) {
    let stats = spool.outbox_stats();
    metrics::gauge!("mta_export_outbox_entries").set(stats.entries as f64);
    metrics::gauge!("mta_export_outbox_bytes").set(stats.bytes as f64);
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
