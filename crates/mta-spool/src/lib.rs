//! mta-spool: the durable message spool.
//!
//! A message is acknowledged only once its bytes and its envelope record are on disk behind a real fsync.
//! Message bytes go to append-only body segment files; a small record per message (envelope, recipient
//! states, schedules, body location) goes to a sled index. One committer thread makes many writes durable per
//! fsync (group commit). sled's own `flush()` is not durable, so the spool fsyncs sled's files itself.
//!
//! # Layout
//!
//! - [`record`]: [`MessageRecord`] and its versioned, checksummed encoding.
//! - [`id`]: time-ordered [`QueueId`]s.
//! - `error`: [`SpoolError`].
//! - `segment`: body segment files (frames, append, verified reads, live counts, deletion).
//! - `staged`: [`StagedBody`], a large body written to a segment of its own while it arrives.
//! - `index`: the sled trees and the fsyncs that make sled flushes durable.
//! - `committer`: the group-commit thread and [`Op`].
//! - [`outbox`]: the sequenced outbox of exported events, committed with the changes they report.
//! - `stats`: [`SpoolStats`] for the back-pressure monitor, and `metrics` names.
//! - `spool`: the public [`Spool`] handle.
//! - `fuzzing`: the `spool_record` fuzz target's logic, shared with the property tests (not a stable API).
//!
//! # On disk
//!
//! ```text
//! <path>/lock                      flock held while open
//! <path>/index/                    sled: trees `records`, `aux`, `quarantine`
//! <path>/bodies/<n:016x>.seg       body segments
//! ```

#![warn(missing_docs)]

mod committer;
mod error;
#[doc(hidden)]
pub mod fuzzing;
pub mod id;
mod index;
pub mod joined;
pub mod outbox;
pub mod record;
mod segment;
mod spool;
mod staged;
mod stats;
mod store;
#[doc(hidden)]
pub mod testing;

pub use committer::Op;
pub use error::SpoolError;
pub use id::{IdGenerator, QueueId};
pub use outbox::{items as outbox_items, items_in as outbox_items_in, OutboxStats, OUTBOX_PREFIX};
pub use record::{
    domain_of, BodyLocation, DomainSchedule, MessageKind, MessageRecord, Priority, RecipientRecord, RecipientState,
    RecordError, Source, INLINE_MAX, INLINE_SEGMENT,
};
pub use spool::{
    AuxEntry, Fetched, ScanReport, Spool, SpoolConfig, DEFAULT_CHANNEL_CAPACITY, DEFAULT_MAX_ROUND_BYTES,
    DEFAULT_MAX_ROUND_OPS, DEFAULT_SEGMENT_SIZE, DEFAULT_SLED_CACHE_BYTES,
};
pub use staged::{SealedBody, StagedBody};
pub use stats::{SpoolStats, LATENCY_RING_LEN};
