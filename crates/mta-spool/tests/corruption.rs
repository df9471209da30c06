//! Corrupt data on disk is reported with its key and quarantined; it never panics or hides other records.

mod common;

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;

use bytes::Bytes;
use common::{open, record};
use mta_spool::SpoolError;

#[tokio::test]
async fn undecodable_records_are_quarantined_and_good_ones_kept() {
    let dir = tempfile::tempdir().unwrap();
    let spool = open(dir.path());
    let good = spool.next_id();
    spool.put(record(good.clone()), Bytes::from_static(b"good body")).await.unwrap();
    let bad = spool.next_id();
    spool.debug_insert_raw("records", bad.as_str().as_bytes(), b"\x01garbage that is not a record").unwrap();
    spool.debug_insert_raw("records", b"\xff\xfe-not-utf8", &record(spool.next_id()).encode()).unwrap();
    spool.debug_insert_raw("records", b"", b"").unwrap();
    drop(spool);

    let spool = open(dir.path());
    assert_eq!(spool.len(), 4);
    let mut seen = Vec::new();
    let report = spool.scan(|r| seen.push(r.id)).unwrap();
    assert_eq!(seen, vec![good.clone()]);
    assert_eq!(report.records, 1);
    assert_eq!(report.quarantined.len(), 3, "{:?}", report.quarantined);
    let keys: Vec<&str> = report.quarantined.iter().map(|(k, _)| k.as_str()).collect();
    assert!(keys.contains(&bad.as_str()));
    assert!(keys.contains(&"hex:fffe2d6e6f742d75746638"));
    assert!(keys.contains(&""));
    assert_eq!(spool.len(), 1);
    // get of a corrupt record is an error, not a panic — it is gone from records now though.
    assert!(spool.get(&bad).await.unwrap().is_none());
    drop(spool);

    // Durable: after another restart the bad entries stay in quarantine, out of the records.
    let spool = open(dir.path());
    let report = spool.scan(|_| {}).unwrap();
    assert_eq!(report.records, 1);
    assert!(report.quarantined.is_empty());
    assert_eq!(spool.quarantined().unwrap().len(), 3);
    let r = spool.get(&good).await.unwrap().unwrap();
    assert_eq!(spool.read_body(&r).await.unwrap(), Bytes::from_static(b"good body"));
}

#[tokio::test]
async fn get_of_a_corrupt_record_is_reported_with_its_key() {
    let dir = tempfile::tempdir().unwrap();
    let spool = open(dir.path());
    let id = spool.next_id();
    let mut bytes = record(id.clone()).encode();
    let last = bytes.len() - 2;
    bytes[last] ^= 0x20;
    spool.debug_insert_raw("records", id.as_str().as_bytes(), &bytes).unwrap();
    match spool.get(&id).await {
        Err(SpoolError::Corrupt { key, reason }) => {
            assert_eq!(key, id.as_str());
            assert!(reason.contains("checksum"), "{reason}");
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
}

#[tokio::test]
async fn a_flipped_body_byte_is_reported_as_corrupt() {
    let dir = tempfile::tempdir().unwrap();
    let spool = open(dir.path());
    let id = spool.next_id();
    // Larger than the inline limit: the body lives in a segment file.
    let stored = spool.put(record(id.clone()), Bytes::from(vec![b'a'; 40_000])).await.unwrap();
    assert_ne!(stored.body.segment, mta_spool::INLINE_SEGMENT);
    let seg = dir.path().join("bodies").join(format!("{:016x}.seg", stored.body.segment));
    let f = OpenOptions::new().write(true).open(&seg).unwrap();
    f.write_all_at(b"Z", stored.body.offset + 1234).unwrap();
    f.sync_all().unwrap();
    match spool.read_body(&stored).await {
        Err(SpoolError::Corrupt { key, reason }) => {
            assert_eq!(key, id.as_str());
            assert!(reason.contains("checksum"), "{reason}");
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
    // A record pointing past the end, or at another message's frame, is corrupt too.
    let mut wrong = stored.clone();
    wrong.body.offset += 1 << 30;
    assert!(matches!(spool.read_body(&wrong).await, Err(SpoolError::Corrupt { .. })));
    let mut other = stored.clone();
    other.id = spool.next_id();
    assert!(matches!(spool.read_body(&other).await, Err(SpoolError::Corrupt { .. })));
    let mut none = stored;
    none.body = Default::default();
    assert!(matches!(spool.read_body(&none).await, Err(SpoolError::Corrupt { .. })));
}

#[tokio::test]
async fn a_damaged_inline_body_is_reported_as_corrupt() {
    let dir = tempfile::tempdir().unwrap();
    let spool = open(dir.path());
    let id = spool.next_id();
    let stored = spool.put(record(id.clone()), Bytes::from(vec![b'a'; 500])).await.unwrap();
    assert_eq!(stored.body.segment, mta_spool::INLINE_SEGMENT, "small bodies are kept inline in the index");
    assert_eq!(spool.read_body(&stored).await.unwrap().len(), 500);
    let mut damaged = vec![b'a'; 500];
    damaged[100] = b'Z';
    spool.debug_insert_raw("bodies", id.as_str().as_bytes(), &damaged).unwrap();
    match spool.read_body(&stored).await {
        Err(SpoolError::Corrupt { key, reason }) => {
            assert_eq!(key, id.as_str());
            assert!(reason.contains("checksum"), "{reason}");
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
    spool.debug_insert_raw("bodies", id.as_str().as_bytes(), b"short").unwrap();
    assert!(matches!(spool.read_body(&stored).await, Err(SpoolError::Corrupt { .. })));
}
