//! The sled index (records, aux keys, quarantine) and the fsyncs that make its flushes durable.
//!
//! sled's `flush()` ends in `sync_file_range`, which neither flushes the disk cache nor file metadata, so after
//! every flush we `fsync` sled's `db` file through our own handle (an fsync on any descriptor of an inode covers
//! all its written pages), plus any file that appeared in `blobs/` and any new snapshot file, with their
//! directories. sled runs with `flush_every_ms(None)`: only the committer (and recovery) flush.

use std::collections::{HashMap, HashSet};
use std::ffi::OsString;
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde::Deserialize;

use crate::error::SpoolError;
use crate::id::QueueId;
use crate::record::{BodyLocation, MessageRecord, INLINE_SEGMENT, RECORD_FORMAT_JSON, RECORD_FORMAT_VERSION};
use crate::segment::fsync_path;
use crate::stats::Stats;

/// sled log segment size: large enough that tree nodes never spill into `blobs/` files.
const SLED_SEGMENT_SIZE: usize = 8 << 20;

/// How long `open` retries when sled's own file lock is still held by a handle of this process being dropped.
const SLED_LOCK_RETRY: Duration = Duration::from_secs(5);

/// Names of the sled trees.
const RECORDS_TREE: &str = "records";
const AUX_TREE: &str = "aux";
const QUARANTINE_TREE: &str = "quarantine";
const BODIES_TREE: &str = "bodies";

/// The sled database of one spool and its trees.
pub(crate) struct Index {
    /// The database (kept for flushing).
    db: sled::Db,
    /// Queue id → encoded [`crate::MessageRecord`].
    pub(crate) records: sled::Tree,
    /// Caller-chosen keys committed in the same rounds as messages (idempotency keys).
    pub(crate) aux: sled::Tree,
    /// Records that failed to decode: original key → JSON with reason and raw bytes.
    pub(crate) quarantine: sled::Tree,
    /// Queue id → message bytes of small messages ([`crate::record::INLINE_SEGMENT`]).
    pub(crate) bodies: sled::Tree,
    /// State of the post-flush fsyncs; a mutex because recovery may flush from another thread.
    sync: Mutex<SledSync>,
    stats: Arc<Stats>,
}

/// Our handles on sled's files, and what we already made durable.
struct SledSync {
    dir: PathBuf,
    db_file: File,
    seen_blobs: HashSet<OsString>,
    seen_top: HashSet<OsString>,
}

/// What the start-up survey of the records found.
#[derive(Debug, Default)]
pub(crate) struct Survey {
    /// Number of records.
    pub(crate) records: u64,
    /// Records per body segment.
    pub(crate) per_segment: HashMap<u64, u64>,
    /// Records whose body location could not be read (they will be quarantined by `scan`).
    pub(crate) unknown: u64,
    /// The greatest key that is a valid queue id.
    pub(crate) newest: Option<QueueId>,
}

/// Just the body location of a record, decoded without building the rest.
#[derive(Deserialize)]
struct BodyOnly {
    #[serde(default)]
    body: BodyLocation,
}

impl Index {
    /// Open (creating) the sled database in `dir`.
    pub(crate) fn open(dir: &Path, cache_bytes: u64, stats: Arc<Stats>) -> Result<Index, SpoolError> {
        fs::create_dir_all(dir).map_err(|e| SpoolError::io(format!("create {}", dir.display()), e))?;
        let config = sled::Config::new()
            .path(dir)
            .cache_capacity(cache_bytes)
            .flush_every_ms(None)
            .segment_size(SLED_SEGMENT_SIZE);
        let started = Instant::now();
        let db = loop {
            match config.open() {
                Ok(db) => break db,
                // Our own lock file already excludes other processes, so a held sled lock is a handle of this
                // process that is still being dropped: wait for it.
                Err(sled::Error::Io(e))
                    if e.to_string().contains("could not acquire lock") && started.elapsed() < SLED_LOCK_RETRY =>
                {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => return Err(SpoolError::sled(format!("open index {}", dir.display()), e)),
            }
        };
        let tree = |name: &str| db.open_tree(name).map_err(|e| SpoolError::sled(format!("open tree {name}"), e));
        let records = tree(RECORDS_TREE)?;
        let aux = tree(AUX_TREE)?;
        let quarantine = tree(QUARANTINE_TREE)?;
        let bodies = tree(BODIES_TREE)?;
        let db_path = dir.join("db");
        let db_file = File::open(&db_path).map_err(|e| SpoolError::io(format!("open {}", db_path.display()), e))?;
        let index = Index {
            db,
            records,
            aux,
            quarantine,
            bodies,
            sync: Mutex::new(SledSync {
                dir: dir.to_path_buf(),
                db_file,
                seen_blobs: HashSet::new(),
                seen_top: HashSet::new(),
            }),
            stats,
        };
        // Make what sled created at open durable: its config, its files' directory entries.
        let conf = dir.join("conf");
        if conf.exists() {
            fsync_path(&conf, &index.stats)?;
        }
        index.flush_durable()?;
        fsync_path(dir, &index.stats)?;
        Ok(index)
    }

    /// Flush sled and fsync its files: on return, every write applied before the call is durable.
    pub(crate) fn flush_durable(&self) -> Result<(), SpoolError> {
        self.db.flush().map_err(|e| SpoolError::sled("flush index", e))?;
        let mut sync = self.sync.lock();
        sync.db_file.sync_all().map_err(|e| SpoolError::io("fsync index db file", e))?;
        self.stats.fsync();
        sync.sync_new_files(&self.stats)
    }

    /// Walk all records once, decoding only their body locations: count, per-segment live counts, newest id.
    pub(crate) fn survey(&self) -> Result<Survey, SpoolError> {
        let mut survey = Survey::default();
        for item in self.records.iter() {
            let (_, value) = item.map_err(|e| SpoolError::sled("read records", e))?;
            survey.records += 1;
            match body_of(&value) {
                Some(loc) if loc.segment != 0 && loc.segment != INLINE_SEGMENT => {
                    *survey.per_segment.entry(loc.segment).or_insert(0) += 1
                }
                Some(_) => {}
                None => survey.unknown += 1,
            }
        }
        if let Some(item) = self.records.last().map_err(|e| SpoolError::sled("read last record", e))?.map(|(k, _)| k) {
            survey.newest = std::str::from_utf8(&item).ok().and_then(QueueId::parse);
        }
        Ok(survey)
    }

    /// Read and verify the inline body of message `id` described by `loc`.
    pub(crate) fn read_inline(&self, id: &QueueId, loc: &BodyLocation) -> Result<bytes::Bytes, SpoolError> {
        let corrupt = |reason: String| SpoolError::Corrupt { key: id.to_string(), reason };
        let value = self
            .bodies
            .get(id.as_str().as_bytes())
            .map_err(|e| SpoolError::sled("read inline body", e))?
            .ok_or_else(|| corrupt("inline body missing from the index".into()))?;
        if value.len() as u64 != loc.len {
            return Err(corrupt(format!("inline body is {} bytes, the record says {}", value.len(), loc.len)));
        }
        let got = crc32fast::hash(&value);
        if got != loc.crc32 {
            return Err(corrupt(format!(
                "inline body checksum mismatch (stored {:08x}, computed {got:08x})",
                loc.crc32
            )));
        }
        Ok(bytes::Bytes::from(value.to_vec()))
    }

    /// Write raw bytes under `key` in `tree` and flush durably. Only for tests that need corrupt data on disk.
    pub(crate) fn insert_raw(&self, tree: &str, key: &[u8], value: &[u8]) -> Result<(), SpoolError> {
        let t = match tree {
            RECORDS_TREE => &self.records,
            AUX_TREE => &self.aux,
            QUARANTINE_TREE => &self.quarantine,
            BODIES_TREE => &self.bodies,
            other => return Err(SpoolError::InvalidConfig(format!("no tree named {other}"))),
        };
        t.insert(key, value).map_err(|e| SpoolError::sled("insert raw", e))?;
        self.flush_durable()
    }
}

/// The body location in an encoded record, if it can be read.
pub(crate) fn body_of(value: &[u8]) -> Option<BodyLocation> {
    if value.len() < 5 {
        return None;
    }
    if value[0] == RECORD_FORMAT_VERSION {
        return MessageRecord::decode(value).ok().map(|r| r.body);
    }
    if value[0] != RECORD_FORMAT_JSON {
        return None;
    }
    let payload = &value[5..];
    // Fast path: `body` is the last field written, and a quoted key cannot occur inside a JSON string (its
    // quotes would be escaped), so the last `"body":{` starts the location object.
    const KEY: &[u8] = b"\"body\":";
    if let Some(at) = payload.windows(KEY.len()).rposition(|w| w == KEY) {
        let tail = &payload[at + KEY.len()..];
        let tail = tail.strip_suffix(b"}").unwrap_or(tail);
        if let Ok(loc) = serde_json::from_slice::<BodyLocation>(tail) {
            return Some(loc);
        }
    }
    serde_json::from_slice::<BodyOnly>(payload).ok().map(|b| b.body)
}

impl SledSync {
    /// fsync files sled created since the last call: blob files and snapshots, with their directories.
    fn sync_new_files(&mut self, stats: &Stats) -> Result<(), SpoolError> {
        let blobs = self.dir.join("blobs");
        if let Some(names) = list(&blobs)? {
            let mut fresh = false;
            for name in &names {
                if !self.seen_blobs.contains(name) {
                    fsync_if_exists(&blobs.join(name), stats)?;
                    fresh = true;
                }
            }
            if fresh {
                fsync_path(&blobs, stats)?;
            }
            self.seen_blobs = names;
        }
        if let Some(names) = list(&self.dir)? {
            let mut fresh = false;
            for name in &names {
                if !self.seen_top.contains(name) {
                    if name.to_string_lossy().starts_with("snap.") {
                        fsync_if_exists(&self.dir.join(name), stats)?;
                    }
                    fresh = true;
                }
            }
            if fresh {
                fsync_path(&self.dir, stats)?;
            }
            self.seen_top = names;
        }
        Ok(())
    }
}

/// fsync `path` unless sled removed it meanwhile (blob and snapshot files come and go).
fn fsync_if_exists(path: &Path, stats: &Stats) -> Result<(), SpoolError> {
    match File::open(path) {
        Ok(f) => {
            f.sync_all().map_err(|e| SpoolError::io(format!("fsync {}", path.display()), e))?;
            stats.fsync();
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(SpoolError::io(format!("open {} for fsync", path.display()), e)),
    }
}

/// Names in directory `dir`, or `None` if it does not exist.
fn list(dir: &Path) -> Result<Option<HashSet<OsString>>, SpoolError> {
    let rd = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(SpoolError::io(format!("list {}", dir.display()), e)),
    };
    let mut names = HashSet::new();
    for entry in rd {
        let entry = entry.map_err(|e| SpoolError::io(format!("list {}", dir.display()), e))?;
        names.insert(entry.file_name());
    }
    Ok(Some(names))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::MessageRecord;

    #[test]
    fn body_of_reads_the_location_fast_and_slow() {
        let g = crate::id::IdGenerator::new("t");
        let mut r = MessageRecord::new(g.next_id(), "s@x", &["\"body\":{\"segment\":9}@y".to_string()], 1);
        r.body = BodyLocation { segment: 3, offset: 40, len: 7, crc32: 99 };
        assert_eq!(body_of(&r.encode()), Some(r.body));
        // A version-1 (JSON) record, as older spools hold.
        let payload = serde_json::to_vec(&r).unwrap();
        let mut v1 = vec![RECORD_FORMAT_JSON];
        v1.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
        v1.extend_from_slice(&payload);
        assert_eq!(body_of(&v1), Some(r.body));
        assert_eq!(MessageRecord::decode(&v1).unwrap(), r);
        assert_eq!(
            body_of(b"\x01\0\0\0\0{\"body\":{\"segment\":2,\"offset\":1,\"len\":0,\"crc32\":0},\"x\":1}")
                .map(|b| b.segment),
            Some(2)
        );
        assert_eq!(body_of(b"\x01\0\0\0\0not json"), None);
        assert_eq!(body_of(b"\x02"), None);
        assert_eq!(body_of(b"\x07\0\0\0\0xx"), None);
    }
}
