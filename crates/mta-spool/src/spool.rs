//! The public spool handle: open/recover, durable writes through the committer, reads off the runtime.

use std::fs::{File, OpenOptions};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use parking_lot::{Mutex, RwLock};
use sled::Transactional;
use tokio::sync::{mpsc, oneshot};

use crate::committer::{CommitReply, Committer, Op, Request};
use crate::error::SpoolError;
use crate::id::{IdGenerator, QueueId};
use crate::index::Index;
use crate::outbox::{self, OutboxState, OutboxStats, OUTBOX_PREFIX};
use crate::record::MessageRecord;
use crate::segment::{fsync_path, Segments};
use crate::staged::StagedBody;
use crate::stats::{SpoolStats, Stats};
use crate::store::Shared;

/// Default size at which a new body segment is started.
pub const DEFAULT_SEGMENT_SIZE: u64 = 64 << 20;
/// Default sled cache.
pub const DEFAULT_SLED_CACHE_BYTES: u64 = 64 << 20;
/// Default capacity of the committer's queue (callers wait for room beyond it: back-pressure).
pub const DEFAULT_CHANNEL_CAPACITY: usize = 4096;
/// Default cap on operations per commit round.
pub const DEFAULT_MAX_ROUND_OPS: usize = 1024;
/// Default cap on body bytes per commit round.
pub const DEFAULT_MAX_ROUND_BYTES: u64 = 64 << 20;

/// How to open a spool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpoolConfig {
    /// Spool directory: holds `lock`, `index/` (sled) and `bodies/` (segments).
    pub path: PathBuf,
    /// This node's id, the suffix of every queue id made here.
    pub node_id: String,
    /// A new body segment is started once the active one reaches this size.
    pub segment_size: u64,
    /// sled page cache size.
    pub sled_cache_bytes: u64,
    /// Requests queued for the committer before callers wait.
    pub channel_capacity: usize,
    /// Most operations in one commit round.
    pub max_round_ops: usize,
    /// Most body bytes in one commit round (a single larger body still gets a round of its own).
    pub max_round_bytes: u64,
    /// Group commit gathering: when the previous round served several writers, wait up to this long for the
    /// rest before syncing (a lone writer never waits). Zero turns it off.
    pub commit_delay: Duration,
}

impl SpoolConfig {
    /// A configuration with the defaults for everything but the path and node id.
    pub fn new(path: impl Into<PathBuf>, node_id: impl Into<String>) -> Self {
        SpoolConfig {
            path: path.into(),
            node_id: node_id.into(),
            segment_size: DEFAULT_SEGMENT_SIZE,
            sled_cache_bytes: DEFAULT_SLED_CACHE_BYTES,
            channel_capacity: DEFAULT_CHANNEL_CAPACITY,
            max_round_ops: DEFAULT_MAX_ROUND_OPS,
            max_round_bytes: DEFAULT_MAX_ROUND_BYTES,
            commit_delay: Duration::from_micros(1500),
        }
    }
}

/// Records per chunk handed from the sled walker to the decoder during a scan.
const SCAN_CHUNK: usize = 512;

/// One aux entry: (key, value).
pub type AuxEntry = (Vec<u8>, Vec<u8>);

/// What a recovery [`Spool::scan`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScanReport {
    /// Records handed to the callback.
    pub records: u64,
    /// Entries that could not be decoded and were moved to the quarantine tree: (printable key, reason).
    pub quarantined: Vec<(String, String)>,
}

/// A message read for delivery by [`Spool::get_many_with_body`].
#[derive(Debug)]
pub struct Fetched {
    /// The stored record.
    pub record: MessageRecord,
    /// The verified message bytes, unless left out to keep the batch within its memory budget.
    pub body: Option<Bytes>,
}

/// A durable message spool. Cheap to clone; every clone is the same spool.
///
/// Writes go through one committer thread that makes many of them durable with one fsync (group commit); an
/// async write returns only once its data is durable. Reads run on tokio's blocking pool. When the last clone
/// is dropped the committer finishes what is queued and stops (the drop waits for that, briefly).
#[derive(Clone)]
pub struct Spool {
    inner: Arc<Inner>,
}

struct Inner {
    /// Feeds the committer; `None` once dropped (which tells the committer to stop).
    tx: Option<mpsc::Sender<Request>>,
    committer: Mutex<Option<JoinHandle<()>>>,
    shared: Arc<Shared>,
    ids: IdGenerator,
    path: PathBuf,
    /// Commits submitted and not yet answered.
    in_flight: AtomicUsize,
    /// Our exclusive `flock` on `<path>/lock`; declared last so it is released after everything else.
    _lock: File,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.tx.take();
        if let Some(handle) = self.committer.lock().take() {
            let _ = handle.join();
        }
    }
}

impl std::fmt::Debug for Spool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Spool").field("path", &self.inner.path).finish_non_exhaustive()
    }
}

impl Spool {
    /// Open (creating if needed) the spool at `config.path`, recover its state and start the committer.
    ///
    /// Blocking (it walks every record once to rebuild segment counts): call it once at start-up, before the
    /// runtime serves traffic, or use [`Spool::open_async`]. Fails with [`SpoolError::Locked`] if the spool is
    /// open elsewhere.
    pub fn open(config: SpoolConfig) -> Result<Spool, SpoolError> {
        if config.segment_size == 0 || config.channel_capacity == 0 || config.max_round_ops == 0 {
            return Err(SpoolError::InvalidConfig(
                "segment_size, channel_capacity and max_round_ops must be above 0".into(),
            ));
        }
        let path = config.path.clone();
        std::fs::create_dir_all(&path).map_err(|e| SpoolError::io(format!("create {}", path.display()), e))?;
        let lock = lock_spool(&path)?;
        let stats = Arc::new(Stats::default());
        let index_dir = path.join("index");
        let index = Index::open(&index_dir, config.sled_cache_bytes, stats.clone())?;
        let survey = index.survey()?;
        let (segments, existing) = Segments::open(path.join("bodies"), config.segment_size, stats.clone())?;

        let mut live = survey.per_segment.clone();
        for s in &existing {
            live.entry(*s).or_insert(0);
        }
        for s in survey.per_segment.keys() {
            if existing.binary_search(s).is_err() {
                tracing::error!(segment = s, "records point into a missing body segment; their reads will fail");
            }
        }
        let active = live.keys().copied().max().unwrap_or(0) + 1;
        segments.set_live(live);
        segments.reserve_below(active + 1);
        let writer = segments.create_writer(active)?;
        if survey.unknown == 0 {
            segments.delete_empty(active);
        } else {
            tracing::warn!(
                undecodable = survey.unknown,
                "undecodable records found: keeping all body segments until they are quarantined by a scan"
            );
        }
        fsync_path(&path, &stats)?;

        let ids = IdGenerator::new(&config.node_id);
        if let Some(newest) = &survey.newest {
            ids.observe(newest);
        }
        stats.set_records(survey.records as i64);
        tracing::info!(path = %path.display(), records = survey.records, active_segment = active, "spool opened");

        let outbox = survey_outbox(&index)?;
        let shared = Arc::new(Shared {
            outbox,
            index: RwLock::new(Some(index)),
            index_dir,
            cache_bytes: config.sled_cache_bytes,
            segments,
            stats,
            flush_delay_us: AtomicU64::new(0),
        });
        let (tx, rx) = mpsc::channel(config.channel_capacity);
        let committer = Committer::new(shared.clone(), writer, rx, config.max_round_ops, config.max_round_bytes)
            .with_commit_delay(config.commit_delay);
        let handle = std::thread::Builder::new()
            .name("mta-spool-commit".into())
            .spawn(move || committer.run())
            .map_err(|e| SpoolError::io("spawn committer thread", e))?;
        Ok(Spool {
            inner: Arc::new(Inner {
                tx: Some(tx),
                committer: Mutex::new(Some(handle)),
                shared,
                ids,
                path,
                in_flight: AtomicUsize::new(0),
                _lock: lock,
            }),
        })
    }

    /// [`Spool::open`] on tokio's blocking pool.
    pub async fn open_async(config: SpoolConfig) -> Result<Spool, SpoolError> {
        tokio::task::spawn_blocking(move || Spool::open(config)).await.map_err(join_error)?
    }

    /// The spool directory.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// A fresh queue id, later than every id in the spool at open.
    pub fn next_id(&self) -> QueueId {
        self.inner.ids.next_id()
    }

    /// Start writing the body of message `id` to a file of its own while it arrives, with `head_room` octets
    /// free in front for headers known only at the end (see [`StagedBody`]). Blocking.
    pub fn stage_body(&self, id: &QueueId, head_room: u64) -> Result<StagedBody, SpoolError> {
        let shared = self.shared();
        StagedBody::create(&shared.segments, shared.stats.clone(), id, head_room)
    }

    /// Store a message durably; returns the stored record (with its body location).
    ///
    /// If the future is dropped after the request was queued, the message may still be stored.
    pub async fn put(&self, record: MessageRecord, body: Bytes) -> Result<MessageRecord, SpoolError> {
        let mut stored = self.submit(vec![Op::Put { record, body }]).await?;
        stored.pop().ok_or(SpoolError::Closed)
    }

    /// Commits submitted and not yet answered (a caller gone before its answer counts until then too).
    /// Tests under tokio's paused clock use it to let time advance only while no commit is pending: the
    /// committer is a thread the paused clock does not see.
    pub fn commits_in_flight(&self) -> usize {
        self.inner.in_flight.load(Ordering::Acquire)
    }

    /// Commit `ops` in one round: all durable together, in order, or an error for all.
    pub async fn commit(&self, ops: Vec<Op>) -> Result<(), SpoolError> {
        self.submit(ops).await.map(|_| ())
    }

    /// Like [`Spool::commit`], returning the records stored by the `Put` ops (with body locations), in order.
    pub async fn commit_returning(&self, ops: Vec<Op>) -> Result<Vec<MessageRecord>, SpoolError> {
        self.submit(ops).await
    }

    /// Replace a message's record durably (states, schedules); its body is kept.
    pub async fn update(&self, record: MessageRecord) -> Result<(), SpoolError> {
        self.commit(vec![Op::Update { record }]).await
    }

    /// Delete a message durably (no-op if it is already gone).
    pub async fn remove(&self, id: &QueueId) -> Result<(), SpoolError> {
        self.commit(vec![Op::Remove { id: id.clone() }]).await
    }

    async fn submit(&self, ops: Vec<Op>) -> CommitReply {
        if ops.is_empty() {
            return Ok(Vec::new());
        }
        let tx = self.inner.tx.as_ref().ok_or(SpoolError::Closed)?;
        let _in_flight = InFlight::enter(&self.inner.in_flight);
        let (reply, answer) = oneshot::channel();
        tx.send(Request::Commit { ops, reply, enqueued: Instant::now() }).await.map_err(|_| SpoolError::Closed)?;
        answer.await.map_err(|_| SpoolError::Closed)?
    }

    /// Up to `limit` records with ids after `after` (from the first when `None`), in id order, oldest first
    /// (blocking). For walking the spool online in pages; undecodable entries are skipped (a recovery scan
    /// quarantines them).
    pub fn records_after(&self, after: Option<&QueueId>, limit: usize) -> Result<Vec<MessageRecord>, SpoolError> {
        let shared = self.shared();
        let index = shared.index()?;
        let range = match after {
            Some(id) => index
                .records
                .range::<&[u8], _>((std::ops::Bound::Excluded(id.as_str().as_bytes()), std::ops::Bound::Unbounded)),
            None => index.records.iter(),
        };
        let mut out = Vec::with_capacity(limit.min(4096));
        for item in range {
            let (_, v) = item.map_err(|e| SpoolError::sled("read records", e))?;
            if let Ok(r) = MessageRecord::decode(&v) {
                out.push(r);
            }
            if out.len() >= limit {
                break;
            }
        }
        Ok(out)
    }

    /// The record of message `id`, if present.
    pub async fn get(&self, id: &QueueId) -> Result<Option<MessageRecord>, SpoolError> {
        let this = self.clone();
        let id = id.clone();
        tokio::task::spawn_blocking(move || this.get_blocking(&id)).await.map_err(join_error)?
    }

    /// [`Spool::get`] for threads that may block (CLI tools, recovery).
    pub fn get_blocking(&self, id: &QueueId) -> Result<Option<MessageRecord>, SpoolError> {
        let stored = self.shared().index()?.records.get(id.as_str()).map_err(|e| SpoolError::sled("read record", e))?;
        match stored {
            None => Ok(None),
            Some(v) => MessageRecord::decode(&v)
                .map(Some)
                .map_err(|e| SpoolError::Corrupt { key: id.to_string(), reason: e.to_string() }),
        }
    }

    /// The message bytes of `record`, checked against the stored checksum ([`SpoolError::Corrupt`] if not).
    pub async fn read_body(&self, record: &MessageRecord) -> Result<Bytes, SpoolError> {
        let this = self.clone();
        let id = record.id.clone();
        let loc = record.body;
        tokio::task::spawn_blocking(move || this.shared().read_body(&id, &loc)).await.map_err(join_error)?
    }

    /// [`Spool::read_body`] for threads that may block.
    pub fn read_body_blocking(&self, record: &MessageRecord) -> Result<Bytes, SpoolError> {
        self.shared().read_body(&record.id, &record.body)
    }

    /// Several messages' records and bytes in one blocking call, in the order of `ids` (a delivery connection
    /// prefetches a few at a time: one trip to the blocking pool for all of them).
    ///
    /// Bodies are read while their total stays within `body_budget` bytes (the first one always), so a batch of
    /// large messages does not pull them all into memory ahead of sending; the others come back as `None` and
    /// are read when needed with [`Spool::read_body`].
    pub async fn get_many_with_body(
        &self,
        ids: Vec<QueueId>,
        body_budget: u64,
    ) -> Vec<Result<Option<Fetched>, SpoolError>> {
        let this = self.clone();
        let n = ids.len();
        let joined = tokio::task::spawn_blocking(move || {
            let mut used = 0u64;
            ids.iter()
                .enumerate()
                .map(|(i, id)| {
                    let Some(record) = this.get_blocking(id)? else { return Ok(None) };
                    let body = if i == 0 || used + record.body.len <= body_budget {
                        used += record.body.len;
                        Some(this.shared().read_body(&record.id, &record.body)?)
                    } else {
                        None
                    };
                    Ok(Some(Fetched { record, body }))
                })
                .collect::<Vec<_>>()
        })
        .await;
        match joined {
            Ok(v) => v,
            Err(e) => {
                let e = join_error(e);
                (0..n).map(|_| Err(e.clone())).collect()
            }
        }
    }

    /// The value of aux key `key`, if present.
    pub async fn aux_get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, SpoolError> {
        let this = self.clone();
        let key = key.to_vec();
        tokio::task::spawn_blocking(move || this.aux_get_blocking(&key)).await.map_err(join_error)?
    }

    /// [`Spool::aux_get`] for threads that may block.
    pub fn aux_get_blocking(&self, key: &[u8]) -> Result<Option<Vec<u8>>, SpoolError> {
        let v = self.shared().index()?.aux.get(key).map_err(|e| SpoolError::sled("read aux key", e))?;
        Ok(v.map(|v| v.to_vec()))
    }

    /// Visit the aux entries whose key starts with `prefix` and is above `after` (all when `None`), in key
    /// order, without collecting them, until `visit` returns false (blocking). For large key sets (the
    /// suppression list): one entry in memory at a time, and a page starts at its cursor, not at the front.
    pub fn aux_visit_prefix(
        &self,
        prefix: &[u8],
        after: Option<&[u8]>,
        mut visit: impl FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), SpoolError> {
        let index = self.shared().index()?;
        let iter = match after {
            Some(a) if a >= prefix => {
                index.aux.range::<&[u8], _>((std::ops::Bound::Excluded(a), std::ops::Bound::Unbounded))
            }
            _ => index.aux.range::<&[u8], _>(prefix..),
        };
        for item in iter {
            let (k, v) = item.map_err(|e| SpoolError::sled("scan aux keys", e))?;
            if !k.starts_with(prefix) || !visit(&k, &v) {
                break;
            }
        }
        Ok(())
    }

    /// Every aux entry whose key starts with `prefix`, in key order (blocking).
    pub fn aux_scan_prefix(&self, prefix: &[u8]) -> Result<Vec<AuxEntry>, SpoolError> {
        self.shared()
            .index()?
            .aux
            .scan_prefix(prefix)
            .map(|item| item.map(|(k, v)| (k.to_vec(), v.to_vec())).map_err(|e| SpoolError::sled("scan aux keys", e)))
            .collect()
    }

    /// Up to `limit` aux entries whose key starts with `prefix` and sorts after `after` (or from the first when
    /// `None`), in key order (blocking). Lets a caller walk a large prefix in bounded steps.
    pub fn aux_range(&self, prefix: &[u8], after: Option<&[u8]>, limit: usize) -> Result<Vec<AuxEntry>, SpoolError> {
        let index = self.shared().index()?;
        let start = match after {
            Some(a) => std::ops::Bound::Excluded(a.to_vec()),
            None => std::ops::Bound::Included(prefix.to_vec()),
        };
        let mut out = Vec::with_capacity(limit.min(1024));
        for item in index.aux.range::<Vec<u8>, _>((start, std::ops::Bound::Unbounded)) {
            let (k, v) = item.map_err(|e| SpoolError::sled("scan aux keys", e))?;
            if !k.starts_with(prefix) || out.len() >= limit {
                break;
            }
            out.push((k.to_vec(), v.to_vec()));
        }
        Ok(out)
    }

    /// Durable outbox entries with a sequence above `after`, oldest first, until they hold at least `limit`
    /// items (whole entries: the last may take the count past `limit`) (blocking).
    pub fn outbox_read(&self, after: u64, limit: usize) -> Result<Vec<(u64, Vec<u8>)>, SpoolError> {
        let shared = self.shared();
        let durable = shared.outbox.durable();
        if after >= durable || limit == 0 {
            return Ok(Vec::new());
        }
        let index = shared.index()?;
        let mut out = Vec::with_capacity(limit.min(1024));
        let mut items = 0u64;
        for item in index.aux.range(outbox::key(after.saturating_add(1))..=outbox::key(durable)) {
            let (k, v) = item.map_err(|e| SpoolError::sled("read outbox", e))?;
            if let Some(seq) = outbox::seq_of(&k) {
                items += outbox::items_in(&v).max(1);
                out.push((seq, v.to_vec()));
            }
            if items >= limit as u64 {
                break;
            }
        }
        Ok(out)
    }

    /// How many items the durable outbox entries with a sequence above `after` hold (counting stops at
    /// `cap`), and the oldest of those entries (blocking; values are not copied).
    pub fn outbox_backlog(&self, after: u64, cap: u64) -> Result<(u64, Option<u64>), SpoolError> {
        let shared = self.shared();
        let durable = shared.outbox.durable();
        if after >= durable {
            return Ok((0, None));
        }
        let index = shared.index()?;
        let (mut count, mut oldest) = (0u64, None);
        for item in index.aux.range(outbox::key(after.saturating_add(1))..=outbox::key(durable)) {
            let (k, v) = item.map_err(|e| SpoolError::sled("read outbox", e))?;
            oldest = oldest.or_else(|| outbox::seq_of(&k));
            count += outbox::items_in(&v);
            if count >= cap {
                break;
            }
        }
        Ok((count, oldest))
    }

    /// [`Spool::outbox_read`] on tokio's blocking pool.
    pub async fn outbox_read_async(&self, after: u64, limit: usize) -> Result<Vec<(u64, Vec<u8>)>, SpoolError> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.outbox_read(after, limit)).await.map_err(join_error)?
    }

    /// Watch the highest durable outbox sequence (it moves after each round that appended entries).
    pub fn outbox_subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.shared().outbox.subscribe()
    }

    /// Keep the outbox within `bytes`: from the next commit round on, a round that would exceed it first drops
    /// the oldest entries (counted in [`OutboxStats`]). `u64::MAX`: unbounded (the default).
    pub fn set_outbox_limit(&self, bytes: u64) {
        self.shared().outbox.set_limit(bytes);
    }

    /// Entries, bytes and oldest sequence of the outbox.
    pub fn outbox_stats(&self) -> OutboxStats {
        self.shared().outbox.stats()
    }

    /// Hand every record to `f`, oldest id first, for rebuilding the queues at start-up (blocking: run it on a
    /// blocking thread).
    ///
    /// An entry that cannot be decoded (bad checksum, unknown version, key not UTF-8 or not its record's id) is
    /// logged with its key, moved durably to the quarantine tree and listed in the report; the other records are
    /// still handed over. Records are streamed, never collected.
    pub fn scan(&self, mut f: impl FnMut(MessageRecord)) -> Result<ScanReport, SpoolError> {
        let guard = self.shared().index()?;
        let index = &*guard;
        let mut report = ScanReport::default();
        let mut bad: Vec<(sled::IVec, sled::IVec, String)> = Vec::new();
        // One thread walks sled (page faults, node decoding) while this one decodes records and calls `f`:
        // the two halves of the work overlap. Chunks keep the channel cheap and memory bounded.
        let (tx, rx) = std::sync::mpsc::sync_channel::<Result<Vec<(sled::IVec, sled::IVec)>, sled::Error>>(8);
        std::thread::scope(|scope| {
            scope.spawn(move || {
                let mut chunk = Vec::with_capacity(SCAN_CHUNK);
                for item in index.records.iter() {
                    match item {
                        Ok(kv) => chunk.push(kv),
                        Err(e) => {
                            let _ = tx.send(Err(e));
                            return;
                        }
                    }
                    if chunk.len() == SCAN_CHUNK
                        && tx.send(Ok(std::mem::replace(&mut chunk, Vec::with_capacity(SCAN_CHUNK)))).is_err()
                    {
                        return;
                    }
                }
                if !chunk.is_empty() {
                    let _ = tx.send(Ok(chunk));
                }
            });
            for chunk in rx {
                let chunk = chunk.map_err(|e| SpoolError::sled("read records", e))?;
                for (key, value) in chunk {
                    let checked = match std::str::from_utf8(&key) {
                        Err(_) => Err("key is not valid UTF-8".to_string()),
                        Ok(k) => match MessageRecord::decode(&value) {
                            Err(e) => Err(e.to_string()),
                            Ok(r) if r.id.as_str() != k => Err(format!("record id {} does not match its key", r.id)),
                            Ok(r) => Ok(r),
                        },
                    };
                    match checked {
                        Ok(r) => {
                            report.records += 1;
                            f(r);
                        }
                        Err(reason) => bad.push((key, value, reason)),
                    }
                }
            }
            Ok::<(), SpoolError>(())
        })?;
        for (key, value, reason) in bad {
            let printable = printable_key(&key);
            tracing::error!(key = %printable, %reason, "quarantining undecodable spool record");
            if self.quarantine(&key, &value, &reason)? {
                report.quarantined.push((printable, reason));
            }
        }
        if !report.quarantined.is_empty() {
            index.flush_durable()?;
            self.shared().stats.add_records(-(report.quarantined.len() as i64));
        }
        Ok(report)
    }

    /// Move `key` from records to quarantine if it still holds `value`; true if moved.
    fn quarantine(&self, key: &[u8], value: &[u8], reason: &str) -> Result<bool, SpoolError> {
        let index = self.shared().index()?;
        let now_ms = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0);
        let entry = serde_json::json!({
            "reason": reason,
            "quarantined_at_ms": now_ms,
            "raw_hex": hex(value),
        })
        .to_string();
        let moved: Result<bool, sled::transaction::TransactionError<()>> = (&index.records, &index.quarantine)
            .transaction(|(records, quarantine)| {
                if records.get(key)?.as_deref() != Some(value) {
                    return Ok(false);
                }
                records.remove(key)?;
                quarantine.insert(key, entry.as_bytes())?;
                Ok(true)
            });
        moved.map_err(|e| match e {
            sled::transaction::TransactionError::Storage(e) => SpoolError::sled("quarantine record", e),
            sled::transaction::TransactionError::Abort(()) => {
                SpoolError::Corrupt { key: printable_key(key), reason: "quarantine aborted".into() }
            }
        })
    }

    /// The quarantined entries: (printable key, reason).
    pub fn quarantined(&self) -> Result<Vec<(String, String)>, SpoolError> {
        self.shared()
            .index()?
            .quarantine
            .iter()
            .map(|item| {
                let (k, v) = item.map_err(|e| SpoolError::sled("read quarantine", e))?;
                let reason = serde_json::from_slice::<serde_json::Value>(&v)
                    .ok()
                    .and_then(|j| j.get("reason").and_then(|r| r.as_str()).map(str::to_string))
                    .unwrap_or_else(|| "unreadable quarantine entry".into());
                Ok((printable_key(&k), reason))
            })
            .collect()
    }

    /// Number of messages in the spool.
    pub fn len(&self) -> usize {
        self.shared().stats.records() as usize
    }

    /// True when the spool holds no message.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Reopen the index so that the tree nodes a full walk decoded are freed (blocking; call it once, after the
    /// start-up [`Spool::scan`]).
    ///
    /// sled 0.34 keeps every node it deserialised resident, beyond its `cache_capacity`, so after the recovery
    /// walk a large spool would hold most of its index in memory for the life of the process. Writes and reads
    /// wait while it runs; everything is flushed durably first, so nothing is lost if the reopen fails (the
    /// spool then refuses work until restarted).
    pub fn release_scan_memory(&self) -> Result<(), SpoolError> {
        let shared = self.shared();
        let mut slot = shared.index.write();
        if let Some(old) = slot.take() {
            if let Err(e) = old.flush_durable() {
                *slot = Some(old);
                return Err(e);
            }
            drop(old);
        }
        *slot = Some(Index::open(&shared.index_dir, shared.cache_bytes, shared.stats.clone())?);
        Ok(())
    }

    /// A snapshot of the counters (fsyncs, rounds, recent commit latencies) for the health monitor.
    pub fn stats(&self) -> SpoolStats {
        self.shared().stats.snapshot()
    }

    /// Fault injection for tests: the committer sleeps `delay` before each round (zero turns it off).
    pub fn set_flush_delay(&self, delay: Duration) {
        self.shared().flush_delay_us.store(delay.as_micros().min(u64::MAX as u128) as u64, Ordering::Relaxed);
    }

    /// Finish every write queued so far (durably), then stop the committer: later writes fail with
    /// [`SpoolError::Closed`]. Reads keep working; files are released when the last clone is dropped.
    pub async fn close(&self) {
        if let Some(tx) = &self.inner.tx {
            let (reply, done) = oneshot::channel();
            if tx.send(Request::Shutdown { reply }).await.is_ok() {
                let _ = done.await;
            }
        }
        let handle = self.inner.committer.lock().take();
        if let Some(handle) = handle {
            let _ = tokio::task::spawn_blocking(move || handle.join()).await;
        }
    }

    /// Write raw bytes into one of the index trees (`records`, `aux`, `quarantine`), durably, bypassing every
    /// check. Only for tests that need corrupt data on disk.
    #[doc(hidden)]
    pub fn debug_insert_raw(&self, tree: &str, key: &[u8], value: &[u8]) -> Result<(), SpoolError> {
        self.shared().index()?.insert_raw(tree, key, value)
    }

    /// Live count of a body segment as the spool tracks it. Only for tests.
    #[doc(hidden)]
    pub fn debug_segment_live(&self, segment: u64) -> Option<u64> {
        self.shared().segments.live_count(segment)
    }

    fn shared(&self) -> &Shared {
        &self.inner.shared
    }
}

/// Take the exclusive lock on `<path>/lock`, or fail with [`SpoolError::Locked`].
fn lock_spool(path: &Path) -> Result<File, SpoolError> {
    let lock_path = path.join("lock");
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&lock_path)
        .map_err(|e| SpoolError::io(format!("open {}", lock_path.display()), e))?;
    // SAFETY: flock on a descriptor we own; no memory is involved.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
            return Err(SpoolError::Locked(path.to_path_buf()));
        }
        return Err(SpoolError::io(format!("lock {}", lock_path.display()), err));
    }
    Ok(file)
}

/// A key for logs and reports: itself if UTF-8, else `hex:<bytes>`.
fn printable_key(key: &[u8]) -> String {
    match std::str::from_utf8(key) {
        Ok(s) => s.to_string(),
        Err(_) => format!("hex:{}", hex(key)),
    }
}

/// Lowercase hex of `bytes`.
fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// A blocking task that panicked or was cancelled.
fn join_error(e: tokio::task::JoinError) -> SpoolError {
    SpoolError::io("blocking spool task", std::io::Error::other(e.to_string()))
}

/// Counts one commit as in flight while alive.
struct InFlight<'a>(&'a AtomicUsize);

impl<'a> InFlight<'a> {
    fn enter(count: &'a AtomicUsize) -> InFlight<'a> {
        count.fetch_add(1, Ordering::AcqRel);
        InFlight(count)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Count the outbox's entries and bytes at open, and find its oldest and newest sequence.
fn survey_outbox(index: &Index) -> Result<OutboxState, SpoolError> {
    let (mut entries, mut bytes, mut oldest, mut newest) = (0u64, 0u64, None, None);
    for item in index.aux.scan_prefix(OUTBOX_PREFIX) {
        let (k, v) = item.map_err(|e| SpoolError::sled("survey outbox", e))?;
        if let Some(seq) = outbox::seq_of(&k) {
            entries += 1;
            bytes += v.len() as u64;
            oldest = oldest.or(Some(seq));
            newest = Some(seq);
        }
    }
    Ok(OutboxState::new(entries, bytes, oldest, newest))
}
