//! Helpers shared by the spool's integration tests.
#![allow(dead_code)]

use mta_spool::{MessageRecord, QueueId, Spool, SpoolConfig};

/// A record for `id` with recipients in two domains.
pub fn record(id: QueueId) -> MessageRecord {
    MessageRecord::new(
        id,
        "sender@example.com",
        &["a@example.net".to_string(), "b@example.org".to_string()],
        1_700_000_000_000,
    )
}

/// Open a spool at `dir` with node id `test`.
pub fn open(dir: &std::path::Path) -> Spool {
    Spool::open(SpoolConfig::new(dir, "test")).expect("open spool")
}

/// Open a spool at `dir` with a small segment size (to exercise rotation).
pub fn open_small_segments(dir: &std::path::Path, segment_size: u64) -> Spool {
    let mut c = SpoolConfig::new(dir, "test");
    c.segment_size = segment_size;
    Spool::open(c).expect("open spool")
}

/// Names of the body segment files.
pub fn segment_files(dir: &std::path::Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir.join("bodies"))
        .expect("bodies dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}
