//! The state one spool's handles, its committer thread and blocking readers share: the index, the body
//! segments and the statistics. Its own module so the committer and the handle both depend on it and not
//! on each other.

use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::{MappedRwLockReadGuard, RwLock, RwLockReadGuard};

use crate::error::SpoolError;
use crate::id::QueueId;
use crate::index::Index;
use crate::record::{BodyLocation, INLINE_SEGMENT};
use crate::segment::Segments;
use crate::stats::Stats;

/// State shared by the handles, the committer thread and blocking readers.
pub(crate) struct Shared {
    /// The sled index; `None` only while [`Spool::release_scan_memory`] reopens it (or if that failed).
    pub(crate) index: RwLock<Option<Index>>,
    /// Where the index lives and its cache cap (to reopen it).
    pub(crate) index_dir: PathBuf,
    pub(crate) cache_bytes: u64,
    pub(crate) segments: Segments,
    pub(crate) stats: Arc<Stats>,
    /// Fault injection: the committer sleeps this long (µs) before each round; 0 = off.
    pub(crate) flush_delay_us: AtomicU64,
    /// The outbox's sequence, durable mark and size.
    pub(crate) outbox: crate::outbox::OutboxState,
}

impl Shared {
    /// The index, for the duration of the guard. Recursive read locks: a reader never waits behind the one
    /// writer (the reopen at start-up), so nested reads cannot deadlock.
    pub(crate) fn index(&self) -> Result<MappedRwLockReadGuard<'_, Index>, SpoolError> {
        RwLockReadGuard::try_map(self.index.read_recursive(), Option::as_ref)
            .map_err(|_| SpoolError::Poisoned("the index could not be reopened; restart the process".into()))
    }

    /// The verified bytes of message `id`: inline in the index or in a body segment.
    pub(crate) fn read_body(&self, id: &QueueId, loc: &BodyLocation) -> Result<Bytes, SpoolError> {
        if loc.segment == INLINE_SEGMENT {
            self.index()?.read_inline(id, loc)
        } else {
            self.segments.read(id, loc)
        }
    }
}
