//! The outbox: entries committed with a message, read in order up to the durable mark, removed by range,
//! and kept (with growing sequences) across a reopen.

use bytes::Bytes;
use mta_spool::{MessageRecord, Op, Spool, SpoolConfig};

fn message(spool: &Spool) -> MessageRecord {
    MessageRecord::new(spool.next_id(), "a@sender.example", &["b@example.net".to_string()], 1)
}

#[tokio::test]
async fn entries_ride_in_the_commit_and_survive_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let first_seqs;
    {
        let spool = Spool::open(SpoolConfig::new(dir.path(), "t")).unwrap();
        let mut watch = spool.outbox_subscribe();
        let rec = message(&spool);
        let id = rec.id.clone();
        spool
            .commit(vec![
                Op::Put { record: rec, body: Bytes::from_static(b"Subject: x\r\n\r\nhi\r\n") },
                Op::OutboxAppend { value: b"one".to_vec() },
            ])
            .await
            .unwrap();
        spool.commit(vec![Op::OutboxAppend { value: b"two".to_vec() }]).await.unwrap();
        assert!(watch.has_changed().unwrap(), "the durable mark moved");
        let _ = watch.borrow_and_update();
        let read = spool.outbox_read(0, 10).unwrap();
        assert_eq!(read.iter().map(|(_, v)| v.as_slice()).collect::<Vec<_>>(), [b"one".as_slice(), b"two"]);
        assert!(read[0].0 < read[1].0);
        first_seqs = read.iter().map(|(s, _)| *s).collect::<Vec<_>>();
        // Reading after the first entry gives only the second; a limit is honoured.
        assert_eq!(spool.outbox_read(first_seqs[0], 10).unwrap().len(), 1);
        assert_eq!(spool.outbox_read(0, 1).unwrap().len(), 1);
        let stats = spool.outbox_stats();
        assert_eq!((stats.entries, stats.bytes, stats.oldest), (2, 6, Some(first_seqs[0])));
        assert!(spool.get(&id).await.unwrap().is_some());
        spool.close().await;
    }
    let spool = Spool::open(SpoolConfig::new(dir.path(), "t")).unwrap();
    let stats = spool.outbox_stats();
    assert_eq!((stats.entries, stats.bytes, stats.oldest), (2, 6, Some(first_seqs[0])));
    assert_eq!(spool.outbox_read(0, 10).unwrap().len(), 2, "readable again after the reopen");
    spool.commit(vec![Op::OutboxAppend { value: b"three".to_vec() }]).await.unwrap();
    let all = spool.outbox_read(0, 10).unwrap();
    assert_eq!(all.len(), 3);
    assert!(all[2].0 > first_seqs[1], "sequences keep growing across a reopen");

    spool.commit(vec![Op::OutboxRemoveThrough { seq: first_seqs[1] }]).await.unwrap();
    let left = spool.outbox_read(0, 10).unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].1, b"three");
    let stats = spool.outbox_stats();
    assert_eq!((stats.entries, stats.bytes, stats.oldest), (1, 5, Some(left[0].0)));
    spool.commit(vec![Op::OutboxRemoveThrough { seq: u64::MAX }]).await.unwrap();
    let stats = spool.outbox_stats();
    assert_eq!((stats.entries, stats.bytes, stats.oldest), (0, 0, None));
    // Other aux keys are never touched by outbox removals.
    spool.commit(vec![Op::AuxPut { key: b"idem/k".to_vec(), value: b"v".to_vec() }]).await.unwrap();
    spool.commit(vec![Op::OutboxRemoveThrough { seq: u64::MAX }]).await.unwrap();
    assert_eq!(spool.aux_get(b"idem/k").await.unwrap(), Some(b"v".to_vec()));
}

#[tokio::test]
async fn a_failed_request_appends_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(SpoolConfig::new(dir.path(), "t")).unwrap();
    // An update of a message that does not exist fails its check: its outbox entry must not appear.
    let rec = message(&spool);
    let err = spool.commit(vec![Op::Update { record: rec }, Op::OutboxAppend { value: b"x".to_vec() }]).await;
    assert!(err.is_err());
    assert!(spool.outbox_read(0, 10).unwrap().is_empty());
    assert_eq!(spool.outbox_stats().entries, 0);
}

#[tokio::test]
async fn the_commit_that_would_exceed_the_bound_drops_the_oldest_first() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(SpoolConfig::new(dir.path(), "t")).unwrap();
    spool.set_outbox_limit(160);
    // 20-byte entries of two items each, one commit at a time: never more than 160 bytes stored.
    for i in 0..40u32 {
        let value = format!("{{\"n\":{i:07}}}\n{{\"m\":{i:07}}}").into_bytes();
        assert_eq!(value.len(), 27);
        spool.commit(vec![Op::OutboxAppend { value }]).await.unwrap();
        let stats = spool.outbox_stats();
        assert!(stats.bytes <= 160, "after commit {i}: {stats:?}");
    }
    let stats = spool.outbox_stats();
    assert!(stats.peak_bytes <= 160, "{stats:?}");
    assert_eq!(stats.dropped_items, stats.dropped_entries * 2);
    assert_eq!(stats.dropped_entries + stats.entries, 40, "{stats:?}");
    assert_eq!(stats.dropped_bytes, stats.dropped_entries * 27);
    // What is left is the newest, in order, and the oldest sequence is the first left.
    let left = spool.outbox_read(0, 100).unwrap();
    assert_eq!(left.len() as u64, stats.entries);
    assert_eq!(stats.oldest, Some(left[0].0));
    let last = String::from_utf8(left.last().unwrap().1.clone()).unwrap();
    assert!(last.contains("0000039"), "{last}");
    let items: Vec<&[u8]> = mta_spool::outbox_items(&left[0].1).collect();
    assert_eq!(items.len(), 2);
}

#[tokio::test]
async fn concurrent_writers_and_removals_keep_the_bound() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(SpoolConfig::new(dir.path(), "t")).unwrap();
    spool.set_outbox_limit(4_000);
    let mut tasks = Vec::new();
    for t in 0..16u32 {
        let spool = spool.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..50u32 {
                let mut ops = vec![Op::OutboxAppend { value: vec![b'x'; 90 + (t + i) as usize % 20] }];
                if i % 10 == 9 {
                    // A reaper's removal landing in the same rounds as appends and drops.
                    let through = spool.outbox_stats().oldest.unwrap_or(0).saturating_add(50);
                    ops.push(Op::OutboxRemoveThrough { seq: through });
                }
                spool.commit(ops).await.unwrap();
                assert!(spool.outbox_stats().bytes <= 4_000);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let stats = spool.outbox_stats();
    assert!(stats.peak_bytes <= 4_000, "{stats:?}");
    assert!(stats.dropped_entries > 0);
    // The counters agree with what is stored.
    let stored = spool.outbox_read(0, 10_000).unwrap();
    assert_eq!(stored.len() as u64, stats.entries);
    assert_eq!(stored.iter().map(|(_, v)| v.len() as u64).sum::<u64>(), stats.bytes);
    assert_eq!(stats.oldest, stored.first().map(|(s, _)| *s));
    spool.close().await;
    drop(spool);
    let spool = Spool::open(SpoolConfig::new(dir.path(), "t")).unwrap();
    let reopened = spool.outbox_stats();
    assert_eq!((reopened.entries, reopened.bytes), (stats.entries, stats.bytes));
}

#[tokio::test]
async fn a_rounds_appends_share_one_entry() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(SpoolConfig::new(dir.path(), "t")).unwrap();
    spool
        .commit(vec![Op::OutboxAppend { value: b"a".to_vec() }, Op::OutboxAppend { value: b"b\nc".to_vec() }])
        .await
        .unwrap();
    // Concurrent commits gathered into one round also share it (how many rounds they take is up to timing).
    let mut tasks = Vec::new();
    for i in 0..32u8 {
        let spool = spool.clone();
        tasks.push(tokio::spawn(
            async move { spool.commit(vec![Op::OutboxAppend { value: vec![b'0' + i % 10] }]).await },
        ));
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    let entries = spool.outbox_read(0, 1000).unwrap();
    assert_eq!(entries[0].1, b"a\nb\nc");
    let items: u64 = entries.iter().map(|(_, v)| mta_spool::outbox_items_in(v)).sum();
    assert_eq!(items, 35, "every item kept");
    assert!(entries.len() <= 33);
    let stats = spool.outbox_stats();
    assert_eq!(stats.entries, entries.len() as u64);
    assert_eq!(stats.bytes, entries.iter().map(|(_, v)| v.len() as u64).sum::<u64>());
}
