//! Message history: a compact, durable record of each finished message's final outcomes (per recipient: state,
//! attempts, last reply, bounce class, time), so `GET /api/v1/messages/{id}` keeps answering after the spool
//! record is gone.
//!
//! Entries live in the spool's aux tree and are written by the recorder in the same commit that removes the
//! message (so a crash leaves either the queued message or its history, never neither). `history/m/<id>` holds
//! the JSON record. The age index that pruning walks (oldest first, without decoding records) is one joined
//! entry per commit round (`history/j/`, [`mta_spool::joined`]): each item the record's size and id, the entry
//! ordered by the latest finish time among them, so a round of many finished messages adds one index key, not
//! one per message. Entries of the older layout (`history/t/<finished ms><id>`, one per message) are still
//! read and pruned. [`History::prune`] drops entries older than the retention and the oldest beyond the byte
//! bound.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use mta_spool::{MessageRecord, Op, Priority, QueueId, RecipientState, Spool, SpoolError};
use serde::{Deserialize, Serialize};

use crate::bounce::Classifier;

/// Default `history.retention`: 7 days.
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);
/// Default `history.max_bytes`: 1 GiB.
pub const DEFAULT_MAX_BYTES: u64 = 1 << 30;

const RECORD_PREFIX: &[u8] = b"history/m/";
/// One age entry per message (the layout before joined entries): read and pruned, no longer written.
const AGE_PREFIX: &[u8] = b"history/t/";
/// One joined age entry per commit round: items are the record's size (8 bytes, big-endian) then its id.
const JOINED_AGE_PREFIX: &[u8] = b"history/j/";
/// How often pruning runs.
const PRUNE_EVERY: Duration = Duration::from_secs(10);
/// Removals per pruning commit (bounds one round's size; a joined age entry is removed whole, with all of its
/// records, so one holding more goes alone).
const PRUNE_CHUNK: usize = 512;
/// Joined age entries read per pruning pass (each up to [`mta_spool::joined::ENTRY_MAX`] bytes).
const PRUNE_JOINED_READ: usize = 8;

/// How long and how much history is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryConfig {
    /// Entries older than this are dropped.
    pub retention: Duration,
    /// Beyond this many bytes of entries, the oldest are dropped.
    pub max_bytes: u64,
}

impl Default for HistoryConfig {
    fn default() -> Self {
        HistoryConfig { retention: DEFAULT_RETENTION, max_bytes: DEFAULT_MAX_BYTES }
    }
}

/// One recipient's final outcome.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecipientOutcome {
    /// The recipient address.
    pub address: String,
    /// Its destination domain.
    pub domain: String,
    /// `delivered` or `bounced` (expired recipients are bounced).
    pub state: RecipientState,
    /// Delivery attempts made.
    pub attempts: u32,
    /// The reply that decided it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_reply: Option<String>,
    /// Bounce class of that reply, for a bounced recipient.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bounce_class: Option<u8>,
}

/// A finished message as history keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryRecord {
    /// Queue id.
    pub id: String,
    /// Envelope sender (`""`: the null sender).
    pub sender: String,
    /// Reception time, ms since the epoch.
    pub received_at_ms: u64,
    /// When the last recipient became final, ms since the epoch.
    pub finished_at_ms: u64,
    /// Tenant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// Egress pool.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<String>,
    /// Dispatch priority.
    pub priority: Priority,
    /// Every recipient's outcome.
    pub recipients: Vec<RecipientOutcome>,
}

impl HistoryRecord {
    /// The history of `rec` (every recipient final) finished at `now_ms`; `classifier` names bounce classes.
    pub fn of(rec: &MessageRecord, now_ms: u64, classifier: &Classifier) -> HistoryRecord {
        HistoryRecord {
            id: rec.id.as_str().to_string(),
            sender: rec.sender.clone(),
            received_at_ms: rec.received_at_ms,
            finished_at_ms: now_ms,
            tenant: rec.tenant.clone(),
            pool: rec.pool.clone(),
            priority: rec.priority,
            recipients: rec
                .recipients
                .iter()
                .map(|r| RecipientOutcome {
                    address: r.address.clone(),
                    domain: r.domain.clone(),
                    state: r.state,
                    attempts: r.attempts,
                    last_reply: r.last_reply.clone(),
                    bounce_class: (r.state == RecipientState::Bounced)
                        .then(|| r.last_reply.as_deref().and_then(|l| classifier.classify_line(l)))
                        .flatten()
                        .map(|c| c.code()),
                })
                .collect(),
        }
    }
}

fn record_key(id: &str) -> Vec<u8> {
    [RECORD_PREFIX, id.as_bytes()].concat()
}

/// A key of the older layout (tests of the upgrade path write them).
#[cfg(test)]
fn age_key(finished_ms: u64, id: &str) -> Vec<u8> {
    [AGE_PREFIX, &finished_ms.to_be_bytes()[..], id.as_bytes()].concat()
}

/// (finished ms, id) of an age key.
fn parse_age_key(key: &[u8]) -> Option<(u64, &[u8])> {
    let rest = key.strip_prefix(AGE_PREFIX)?;
    let (ms, id) = rest.split_at_checked(8)?;
    Some((u64::from_be_bytes(ms.try_into().ok()?), id))
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// The history's owner: writes entries (as ops for the recorder's commit), reads them, prunes them, and keeps
/// the byte count.
#[derive(Debug)]
pub struct History {
    config: HistoryConfig,
    /// Bytes of stored entries (records and age keys), counted at open and kept up to date since.
    bytes: AtomicU64,
}

impl History {
    /// Open the history kept in `spool` (blocking: counts the stored entries' bytes).
    pub fn open_blocking(spool: &Spool, config: HistoryConfig) -> Result<History, SpoolError> {
        let mut bytes = 0u64;
        for prefix in [AGE_PREFIX, JOINED_AGE_PREFIX] {
            let mut after = None::<Vec<u8>>;
            loop {
                let chunk = spool.aux_range(prefix, after.as_deref(), 4096)?;
                let Some(last) = chunk.last() else { break };
                after = Some(last.0.clone());
                bytes += chunk.iter().map(|(k, v)| age_entry(k, v).size).sum::<u64>();
            }
        }
        Ok(History { config, bytes: AtomicU64::new(bytes) })
    }

    /// Its bounds.
    pub fn config(&self) -> HistoryConfig {
        self.config
    }

    /// Bytes of stored entries.
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    /// Whether entries are kept at all (`retention = "0s"` keeps none: nothing is written, so finished
    /// messages cost no history writes and no pruning).
    pub fn keeps_any(&self) -> bool {
        !self.config.retention.is_zero()
    }

    /// The ops that store `record` (commit them with the removal of the message), and the bytes they add
    /// (pass to [`History::added`] once the commit is durable). None when [`History::keeps_any`] is false.
    pub fn record_ops(&self, record: &HistoryRecord) -> (Vec<Op>, u64) {
        if !self.keeps_any() {
            return (Vec::new(), 0);
        }
        let Ok(value) = serde_json::to_vec(record) else { return (Vec::new(), 0) };
        let key = record_key(&record.id);
        let size = (key.len() + value.len()) as u64;
        let item = [&size.to_be_bytes()[..], record.id.as_bytes()].concat();
        let total = size + mta_spool::joined::item_size(&item);
        let age = Op::AuxJoin { prefix: JOINED_AGE_PREFIX.to_vec(), order: record.finished_at_ms, item };
        (vec![Op::AuxPut { key, value }, age], total)
    }

    /// Account for entries made durable.
    pub fn added(&self, bytes: u64) {
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
        metrics::gauge!("mta_history_bytes").set(self.bytes() as f64);
    }

    /// The history of message `id`, if kept.
    pub async fn get(&self, spool: &Spool, id: &QueueId) -> Result<Option<HistoryRecord>, SpoolError> {
        let Some(value) = spool.aux_get(&record_key(id.as_str())).await? else { return Ok(None) };
        Ok(serde_json::from_slice(&value).ok())
    }

    /// Prune now: drop entries older than the retention, then the oldest while over the byte bound (entries of
    /// the older one-key-per-message layout first: they are the oldest). Returns how many messages' entries
    /// were dropped.
    pub async fn prune_once(&self, spool: &Spool) -> Result<u64, SpoolError> {
        let cutoff = now_ms().saturating_sub(self.config.retention.as_millis() as u64);
        let mut dropped = 0u64;
        for prefix in [AGE_PREFIX, JOINED_AGE_PREFIX] {
            loop {
                let over = self.bytes().saturating_sub(self.config.max_bytes);
                // A joined entry holds a round's messages: fewer of them per pass.
                let limit = if prefix == AGE_PREFIX { PRUNE_CHUNK } else { PRUNE_JOINED_READ };
                let chunk = {
                    let spool = spool.clone();
                    tokio::task::spawn_blocking(move || spool.aux_range(prefix, None, limit))
                        .await
                        .map_err(|e| SpoolError::io("history prune", std::io::Error::other(e.to_string())))??
                };
                let (mut ops, mut freed, mut n) = (Vec::new(), 0u64, 0u64);
                let mut done = chunk.len() < limit;
                for (k, v) in &chunk {
                    if ops.len() >= PRUNE_CHUNK {
                        // This commit is full: the next pass reads on from here.
                        done = false;
                        break;
                    }
                    let entry = age_entry(k, v);
                    let Some(finished) = entry.finished else {
                        ops.push(Op::AuxRemove { key: k.clone() });
                        continue;
                    };
                    if finished >= cutoff && freed >= over {
                        done = true;
                        break;
                    }
                    freed += entry.size;
                    n += entry.ids.len() as u64;
                    ops.extend(entry.ids.into_iter().map(|id| Op::AuxRemove { key: [RECORD_PREFIX, id].concat() }));
                    ops.push(Op::AuxRemove { key: k.clone() });
                }
                if ops.is_empty() {
                    break;
                }
                spool.commit(ops).await?;
                let _ =
                    self.bytes.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| Some(b.saturating_sub(freed)));
                dropped += n;
                metrics::counter!("mta_history_pruned_total").increment(n);
                metrics::gauge!("mta_history_bytes").set(self.bytes() as f64);
                if done {
                    break;
                }
            }
        }
        Ok(dropped)
    }

    /// Prune every few seconds until the task is aborted.
    pub async fn prune(self: Arc<Self>, spool: Spool) {
        metrics::gauge!("mta_history_bytes").set(self.bytes() as f64);
        loop {
            match self.prune_once(&spool).await {
                Ok(0) => {}
                Ok(n) => tracing::debug!(entries = n, bytes = self.bytes(), "message history pruned"),
                Err(e) => tracing::warn!(error = %e, "cannot prune the message history"),
            }
            tokio::time::sleep(PRUNE_EVERY).await;
        }
    }
}

/// What an age-index entry says: when its messages finished (`None`: not an entry of ours, removed as junk),
/// their ids, and the bytes they cost (records and index).
struct AgeEntry<'a> {
    finished: Option<u64>,
    ids: Vec<&'a [u8]>,
    size: u64,
}

/// Read an age-index entry of either layout.
fn age_entry<'a>(key: &'a [u8], value: &'a [u8]) -> AgeEntry<'a> {
    if let Some((finished, id)) = parse_age_key(key) {
        let record = value.try_into().map(u64::from_be_bytes).unwrap_or(0);
        return AgeEntry { finished: Some(finished), ids: vec![id], size: (key.len() + value.len()) as u64 + record };
    }
    let finished = mta_spool::joined::order_of(key, JOINED_AGE_PREFIX);
    let (mut ids, mut size) = (Vec::new(), 0u64);
    for item in mta_spool::joined::items(value) {
        let Some((record, id)) = item.split_at_checked(8) else { continue };
        size += record.try_into().map(u64::from_be_bytes).unwrap_or(0) + mta_spool::joined::item_size(item);
        ids.push(id);
    }
    AgeEntry { finished, ids, size }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn age_keys_sort_by_time_and_parse_back() {
        let a = age_key(1_000, "zzz");
        let b = age_key(2_000, "aaa");
        assert!(a < b);
        assert_eq!(parse_age_key(&b), Some((2_000, &b"aaa"[..])));
        assert_eq!(parse_age_key(b"history/t/x"), None);
    }

    fn finished(i: u64, at_ms: u64) -> HistoryRecord {
        HistoryRecord {
            id: format!("id{i}"),
            sender: "s@x.test".into(),
            received_at_ms: at_ms.saturating_sub(10),
            finished_at_ms: at_ms,
            tenant: None,
            pool: None,
            priority: Priority::default(),
            recipients: vec![RecipientOutcome {
                address: "r@y.test".into(),
                domain: "y.test".into(),
                state: RecipientState::Delivered,
                attempts: 1,
                last_reply: Some("250 ok".into()),
                bounce_class: None,
            }],
        }
    }

    async fn kept(spool: &Spool, i: u64) -> bool {
        spool.aux_get(&record_key(&format!("id{i}"))).await.unwrap().is_some()
    }

    #[tokio::test]
    async fn a_zero_retention_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open_async(mta_spool::SpoolConfig::new(dir.path(), "n")).await.unwrap();
        let h =
            History::open_blocking(&spool, HistoryConfig { retention: Duration::ZERO, max_bytes: u64::MAX }).unwrap();
        assert!(!h.keeps_any());
        let (ops, bytes) = h.record_ops(&finished(1, now_ms()));
        assert!(ops.is_empty() && bytes == 0);
        let kept = History::open_blocking(&spool, HistoryConfig::default()).unwrap();
        assert!(kept.keeps_any() && !kept.record_ops(&finished(1, now_ms())).0.is_empty());
    }

    #[tokio::test]
    async fn prunes_by_age_then_the_oldest_beyond_the_byte_bound() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open_async(mta_spool::SpoolConfig::new(dir.path(), "n")).await.unwrap();
        let hour = Duration::from_secs(3600);
        let h = History::open_blocking(&spool, HistoryConfig { retention: hour, max_bytes: u64::MAX }).unwrap();
        let now = now_ms();
        // Three finished two hours ago, five a second ago (oldest first).
        for i in 0..8 {
            let at = if i < 3 { now - 2 * 3600 * 1000 + i } else { now - 1000 + i };
            let (ops, bytes) = h.record_ops(&finished(i, at));
            spool.commit(ops).await.unwrap();
            h.added(bytes);
        }
        assert_eq!(h.prune_once(&spool).await.unwrap(), 3, "older than the retention");
        assert!(!kept(&spool, 2).await && kept(&spool, 3).await);
        assert_eq!(h.prune_once(&spool).await.unwrap(), 0, "nothing more to prune");

        // Reopened: the byte count is rebuilt from what is stored; a bound of two entries keeps the newest two.
        let per_entry = h.bytes() / 5;
        let h2 = History::open_blocking(&spool, HistoryConfig { retention: hour, max_bytes: per_entry * 2 }).unwrap();
        assert_eq!(h2.bytes(), h.bytes());
        assert_eq!(h2.prune_once(&spool).await.unwrap(), 3, "oldest beyond the byte bound");
        assert!(!kept(&spool, 5).await && kept(&spool, 6).await && kept(&spool, 7).await);
        assert_eq!(h2.bytes(), per_entry * 2);
        let got = h2.get(&spool, &QueueId::parse("id7").unwrap()).await.unwrap().unwrap();
        assert_eq!(got, finished(7, got.finished_at_ms));
        spool.close().await;
    }

    /// More old entries than one pruning commit takes: every one goes, over several commits.
    #[tokio::test]
    async fn pruning_many_rounds_takes_several_commits_and_misses_none() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open_async(mta_spool::SpoolConfig::new(dir.path(), "n")).await.unwrap();
        let h =
            History::open_blocking(&spool, HistoryConfig { retention: Duration::from_secs(3600), max_bytes: u64::MAX })
                .unwrap();
        let old = now_ms() - 2 * 3600 * 1000;
        for i in 0..(PRUNE_JOINED_READ as u64 * 3 + 1) {
            let (ops, bytes) = h.record_ops(&finished(i, old + i));
            spool.commit(ops).await.unwrap();
            h.added(bytes);
        }
        let total = PRUNE_JOINED_READ as u64 * 3 + 1;
        assert_eq!(h.prune_once(&spool).await.unwrap(), total);
        assert!(spool.aux_range(JOINED_AGE_PREFIX, None, 100).unwrap().is_empty());
        assert!(spool.aux_range(RECORD_PREFIX, None, 100).unwrap().is_empty());
        assert_eq!(h.bytes(), 0);
        spool.close().await;
    }

    /// A round's finished messages share one age-index key.
    #[tokio::test]
    async fn one_age_entry_per_round() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open_async(mta_spool::SpoolConfig::new(dir.path(), "n")).await.unwrap();
        let h = History::open_blocking(&spool, HistoryConfig::default()).unwrap();
        let (mut ops, mut bytes) = (Vec::new(), 0);
        for i in 0..10 {
            let (o, b) = h.record_ops(&finished(i, now_ms()));
            ops.extend(o);
            bytes += b;
        }
        spool.commit(ops).await.unwrap();
        h.added(bytes);
        assert_eq!(spool.aux_range(JOINED_AGE_PREFIX, None, 100).unwrap().len(), 1);
        assert_eq!(spool.aux_range(RECORD_PREFIX, None, 100).unwrap().len(), 10);
        let reopened = History::open_blocking(&spool, HistoryConfig::default()).unwrap();
        assert_eq!(reopened.bytes(), h.bytes(), "the byte count is rebuilt from the joined entry");
        spool.close().await;
    }

    /// Entries of the one-key-per-message layout (written before joined entries) are counted and pruned, first.
    #[tokio::test]
    async fn entries_of_the_older_layout_are_counted_and_pruned_first() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open_async(mta_spool::SpoolConfig::new(dir.path(), "n")).await.unwrap();
        let now = now_ms();
        let mut legacy_bytes = 0;
        for i in 0..2 {
            let record = finished(i, now - 2 * 3600 * 1000 + i);
            let value = serde_json::to_vec(&record).unwrap();
            let key = record_key(&record.id);
            let size = ((key.len() + value.len()) as u64).to_be_bytes().to_vec();
            let age = age_key(record.finished_at_ms, &record.id);
            legacy_bytes += age_entry(&age, &size).size;
            spool.commit(vec![Op::AuxPut { key, value }, Op::AuxPut { key: age, value: size }]).await.unwrap();
        }
        let hour = Duration::from_secs(3600);
        let h = History::open_blocking(&spool, HistoryConfig { retention: hour, max_bytes: u64::MAX }).unwrap();
        assert_eq!(h.bytes(), legacy_bytes);
        let (ops, bytes) = h.record_ops(&finished(2, now - 2 * 3600 * 1000 + 5));
        spool.commit(ops).await.unwrap();
        h.added(bytes);
        let (ops, bytes) = h.record_ops(&finished(3, now));
        spool.commit(ops).await.unwrap();
        h.added(bytes);
        assert_eq!(History::open_blocking(&spool, HistoryConfig::default()).unwrap().bytes(), h.bytes());
        assert_eq!(h.prune_once(&spool).await.unwrap(), 3, "two old-layout entries and one joined, all too old");
        assert!(!kept(&spool, 0).await && !kept(&spool, 1).await && !kept(&spool, 2).await && kept(&spool, 3).await);
        assert!(spool.aux_range(AGE_PREFIX, None, 10).unwrap().is_empty());
        assert_eq!(h.bytes(), bytes, "what is left is the newest message");
        spool.close().await;
    }
}
