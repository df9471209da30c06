//! One export endpoint's loop: read the outbox after its cursor in batches, send each batch through its
//! [`Sink`] (at most `concurrency` batches at a time), retry failures with jittered exponential backoff until
//! `max_retry_age`, and publish how far everything is confirmed so the reaper may forget entries.
//!
//! An outbox entry holds the events of one spool commit round as JSON lines (at most 256 KiB); a batch is whole
//! entries, read until they hold at least `batch_size` events (sent as requests of at most `batch_size`).
//!
//! The loop never writes to the spool and holds at most `concurrency` batches in memory, each `batch_size`
//! events plus at most one entry: a slow or dead endpoint only lets the outbox grow (within its bounds), it
//! never slows injection or delivery.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::future::BoxFuture;
use mta_spool::Spool;
use parking_lot::Mutex;
use rand::Rng;
use serde::Deserialize;

use crate::events::{EventType, EventTypes};

/// Why a batch was not confirmed.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// The endpoint answered, but not with success.
    #[error("endpoint answered {0}")]
    Rejected(String),
    /// No answer: connection, TLS or protocol failure.
    #[error("endpoint unreachable: {0}")]
    Unreachable(String),
    /// No answer within the timeout.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
}

/// Where batches go (a webhook, a broker). `send` returns `Ok` only once the endpoint confirmed every event.
pub trait Sink: Send + Sync + 'static {
    /// Deliver `events` (each one JSON object) as one batch.
    fn send<'a>(&'a self, events: &'a [Vec<u8>]) -> BoxFuture<'a, Result<(), SinkError>>;
}

/// How an endpoint behaves (the sink-independent part of its config).
#[derive(Debug, Clone)]
pub struct EndpointSettings {
    /// Label in metrics, logs and health.
    pub name: String,
    /// Event types it receives.
    pub events: EventTypes,
    /// Events per batch at most.
    pub batch_size: usize,
    /// How long to wait for a batch to fill before sending what there is.
    pub batch_delay: Duration,
    /// Per-request time limit.
    pub timeout: Duration,
    /// Events still unconfirmed this long after they were written are dropped (counted and logged).
    pub max_retry_age: Duration,
    /// Batches in flight at once.
    pub concurrency: usize,
    /// First retry delay; doubles per failure up to [`EndpointSettings::max_backoff`].
    pub initial_backoff: Duration,
    /// Longest retry delay.
    pub max_backoff: Duration,
}

/// What the endpoint has read and what is still unconfirmed.
#[derive(Debug, Default)]
struct Progress {
    /// Highest sequence read from the outbox.
    cursor: u64,
    /// First sequence of every batch not yet confirmed (or dropped).
    in_flight: BTreeSet<u64>,
}

/// One endpoint's shared state: progress for the reaper, health for the API.
#[derive(Debug)]
pub struct Endpoint {
    settings: EndpointSettings,
    progress: Mutex<Progress>,
    /// Unix ms since which every request failed; 0 while the last one succeeded.
    failing_since_ms: AtomicU64,
    last_error: Mutex<Option<String>>,
}

/// An endpoint's health, for `GET /api/v1/health` and logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointStatus {
    /// The endpoint's name.
    pub name: String,
    /// How long every request has been failing (`None`: the last one succeeded).
    pub failing_for: Option<Duration>,
    /// The last failure, if it is still failing.
    pub last_error: Option<String>,
}

fn unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// Age of outbox entry `seq` (its sequence is its write time in µs).
pub(crate) fn age_of(seq: u64) -> Duration {
    Duration::from_micros((unix_ms() * 1000).saturating_sub(seq))
}

#[derive(Deserialize)]
struct TypeOnly {
    #[serde(rename = "type")]
    kind: EventType,
}

impl Endpoint {
    /// An endpoint that has read nothing yet.
    pub fn new(settings: EndpointSettings) -> Endpoint {
        Endpoint {
            settings,
            progress: Mutex::new(Progress::default()),
            failing_since_ms: AtomicU64::new(0),
            last_error: Mutex::new(None),
        }
    }

    /// Its settings.
    pub fn settings(&self) -> &EndpointSettings {
        &self.settings
    }

    /// Every outbox entry up to this sequence is confirmed (or dropped) by this endpoint.
    pub fn done_through(&self) -> u64 {
        let p = self.progress.lock();
        match p.in_flight.first() {
            Some(first) => p.cursor.min(first.saturating_sub(1)),
            None => p.cursor,
        }
    }

    /// Its health now.
    pub fn status(&self) -> EndpointStatus {
        let since = self.failing_since_ms.load(Ordering::Relaxed);
        let failing_for = (since != 0).then(|| Duration::from_millis(unix_ms().saturating_sub(since)));
        EndpointStatus {
            name: self.settings.name.clone(),
            failing_for,
            last_error: failing_for.and_then(|_| self.last_error.lock().clone()),
        }
    }

    fn succeeded(&self) {
        self.failing_since_ms.store(0, Ordering::Relaxed);
    }

    fn failed(&self, error: &SinkError) {
        let _ = self.failing_since_ms.compare_exchange(0, unix_ms().max(1), Ordering::Relaxed, Ordering::Relaxed);
        *self.last_error.lock() = Some(error.to_string());
    }

    fn finish(&self, first: u64) {
        self.progress.lock().in_flight.remove(&first);
    }

    /// Read, batch and send until the task is aborted.
    pub(crate) async fn run(self: Arc<Self>, spool: Spool, sink: Arc<dyn Sink>) {
        let mut durable = spool.outbox_subscribe();
        let permits = Arc::new(tokio::sync::Semaphore::new(self.settings.concurrency.max(1)));
        let batch_size = self.settings.batch_size.max(1);
        loop {
            // The permit first: the cursor never runs ahead of what may be in flight.
            let Ok(permit) = permits.clone().acquire_owned().await else { return };
            let cursor = self.progress.lock().cursor;
            if *durable.borrow_and_update() <= cursor && durable.changed().await.is_err() {
                return;
            }
            let mark = *durable.borrow();
            // Batching: send at once when a batch is full, otherwise wait up to `batch_delay` for it to fill.
            let deadline = tokio::time::Instant::now() + self.settings.batch_delay;
            let entries = loop {
                let entries = match spool.outbox_read_async(cursor, batch_size).await {
                    Ok(e) => e,
                    Err(e) => {
                        tracing::warn!(endpoint = %self.settings.name, error = %e, "cannot read the outbox");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        continue;
                    }
                };
                let items: u64 = entries.iter().map(|(_, v)| mta_spool::outbox_items_in(v)).sum();
                if items >= batch_size as u64 || tokio::time::Instant::now() >= deadline {
                    break entries;
                }
                tokio::select! {
                    changed = durable.changed() => if changed.is_err() { return },
                    _ = tokio::time::sleep_until(deadline) => {}
                }
            };
            let (Some(&(first, _)), Some(&(last, _))) = (entries.first(), entries.last()) else {
                // Nothing left up to the mark (removed for space meanwhile): skip past it.
                let mut p = self.progress.lock();
                p.cursor = p.cursor.max(mark);
                continue;
            };
            let mut batch = Vec::with_capacity(entries.len());
            let mut expired = 0u64;
            for (seq, value) in &entries {
                let old = age_of(*seq) > self.settings.max_retry_age;
                for event in mta_spool::outbox_items(value) {
                    let wanted = serde_json::from_slice::<TypeOnly>(event)
                        .map(|t| self.settings.events.contains(t.kind))
                        .unwrap_or(false);
                    if !wanted {
                        continue;
                    }
                    if old {
                        expired += 1;
                    } else {
                        batch.push(event.to_vec());
                    }
                }
            }
            drop(entries);
            {
                let mut p = self.progress.lock();
                if !batch.is_empty() {
                    p.in_flight.insert(first);
                }
                p.cursor = last;
            }
            if expired > 0 {
                self.dropped(expired, "already older than max_retry_age when read");
            }
            if batch.is_empty() {
                continue;
            }
            let this = self.clone();
            let sink = sink.clone();
            tokio::spawn(async move {
                let _permit = permit;
                this.deliver(&*sink, first, batch).await;
                this.finish(first);
            });
        }
    }

    /// Send what was read (in requests of at most `batch_size` events: an outbox entry may hold more) until
    /// each is confirmed or too old.
    async fn deliver(&self, sink: &dyn Sink, first: u64, events: Vec<Vec<u8>>) {
        for batch in events.chunks(self.settings.batch_size.max(1)) {
            self.deliver_batch(sink, first, batch).await;
        }
    }

    /// Send one batch until it is confirmed or too old.
    async fn deliver_batch(&self, sink: &dyn Sink, first: u64, batch: &[Vec<u8>]) {
        let name = self.settings.name.as_str();
        let n = batch.len() as u64;
        let mut attempt = 0u32;
        loop {
            let result = match tokio::time::timeout(self.settings.timeout, sink.send(batch)).await {
                Ok(r) => r,
                Err(_) => Err(SinkError::Timeout(self.settings.timeout)),
            };
            match result {
                Ok(()) => {
                    self.succeeded();
                    metrics::counter!("mta_export_sent_total", "endpoint" => name.to_string()).increment(n);
                    return;
                }
                Err(e) => {
                    self.failed(&e);
                    metrics::counter!("mta_export_failed_total", "endpoint" => name.to_string()).increment(1);
                    tracing::debug!(endpoint = name, error = %e, events = n, attempt, "export batch failed");
                }
            }
            let delay = backoff(self.settings.initial_backoff, self.settings.max_backoff, attempt);
            if age_of(first) + delay > self.settings.max_retry_age {
                self.dropped(n, "unconfirmed at max_retry_age");
                return;
            }
            tokio::time::sleep(delay).await;
            attempt = attempt.saturating_add(1);
            metrics::counter!("mta_export_retried_total", "endpoint" => name.to_string()).increment(n);
        }
    }

    fn dropped(&self, n: u64, why: &str) {
        let name = self.settings.name.clone();
        tracing::warn!(endpoint = %name, events = n, reason = why, "export events dropped");
        metrics::counter!("mta_export_dropped_total", "endpoint" => name, "reason" => "max_retry_age").increment(n);
    }
}

/// The delay before retry number `attempt + 1`: `initial × 2^attempt`, capped at `max`, with "equal jitter"
/// (half fixed, half random) so many failing batches do not retry in step.
pub(crate) fn backoff(initial: Duration, max: Duration, attempt: u32) -> Duration {
    let full = initial.saturating_mul(1u32 << attempt.min(20)).min(max);
    let half = full / 2;
    half + rand::rng().random_range(Duration::ZERO..=half)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_within_its_cap_with_jitter() {
        let (i, m) = (Duration::from_millis(100), Duration::from_secs(10));
        for attempt in 0..40 {
            let d = backoff(i, m, attempt);
            let full = i.saturating_mul(1u32 << attempt.min(20)).min(m);
            assert!(d >= full / 2 && d <= full, "attempt {attempt}: {d:?}");
        }
    }

    fn settings() -> EndpointSettings {
        EndpointSettings {
            name: "t".into(),
            events: EventTypes::all(),
            batch_size: 10,
            batch_delay: Duration::from_millis(1),
            timeout: Duration::from_secs(1),
            max_retry_age: Duration::from_secs(3600),
            concurrency: 2,
            initial_backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(1),
        }
    }

    #[test]
    fn done_through_stops_below_the_oldest_batch_in_flight() {
        let e = Endpoint::new(settings());
        assert_eq!(e.done_through(), 0);
        {
            let mut p = e.progress.lock();
            p.cursor = 30;
            p.in_flight.insert(11);
            p.in_flight.insert(21);
        }
        assert_eq!(e.done_through(), 10);
        e.finish(11);
        assert_eq!(e.done_through(), 20);
        e.finish(21);
        assert_eq!(e.done_through(), 30);
    }

    #[test]
    fn health_shows_failures_until_a_success() {
        let e = Endpoint::new(settings());
        assert_eq!(e.status().failing_for, None);
        e.failed(&SinkError::Rejected("500".into()));
        let s = e.status();
        assert!(s.failing_for.is_some());
        assert_eq!(s.last_error.as_deref(), Some("endpoint answered 500"));
        e.succeeded();
        assert_eq!(e.status().failing_for, None);
    }
}
