//! Put, get, read, update, remove, aux keys: the basic life of a message in the spool.

mod common;

use bytes::Bytes;
use common::{open, open_small_segments, record, segment_files};
use mta_spool::{Op, RecipientState, SpoolError};

#[tokio::test]
async fn put_get_read_body_round_trip_and_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let spool = open(dir.path());
    let id = spool.next_id();
    let body = Bytes::from_static(b"Subject: hi\r\n\r\nhello\r\n");
    let stored = spool.put(record(id.clone()), body.clone()).await.unwrap();
    assert_eq!(stored.body.len, body.len() as u64);
    assert_ne!(stored.body.segment, 0);
    let got = spool.get(&id).await.unwrap().unwrap();
    assert_eq!(got, stored);
    assert_eq!(spool.read_body(&got).await.unwrap(), body);
    assert_eq!(spool.len(), 1);
    drop(spool);

    let spool = open(dir.path());
    assert_eq!(spool.len(), 1);
    let got = spool.get_blocking(&id).unwrap().unwrap();
    assert_eq!(spool.read_body_blocking(&got).unwrap(), body);
    assert!(spool.next_id() > id, "ids keep increasing across restarts");
    let mut seen = Vec::new();
    let report = spool.scan(|r| seen.push(r.id)).unwrap();
    assert_eq!(report.records, 1);
    assert!(report.quarantined.is_empty());
    assert_eq!(seen, vec![id]);
}

#[tokio::test]
async fn empty_body_is_stored() {
    let dir = tempfile::tempdir().unwrap();
    let spool = open(dir.path());
    let stored = spool.put(record(spool.next_id()), Bytes::new()).await.unwrap();
    assert_eq!(spool.read_body(&stored).await.unwrap(), Bytes::new());
}

#[tokio::test]
async fn update_keeps_the_body_and_refuses_missing_messages() {
    let dir = tempfile::tempdir().unwrap();
    let spool = open(dir.path());
    let id = spool.next_id();
    let stored = spool.put(record(id.clone()), Bytes::from_static(b"body")).await.unwrap();
    let mut changed = stored.clone();
    changed.recipients[0].state = RecipientState::Delivered;
    changed.schedule_mut("example.org").unwrap().next_attempt_ms = 42;
    changed.body = Default::default(); // whatever the caller says, the stored location is kept
    spool.update(changed).await.unwrap();
    let got = spool.get(&id).await.unwrap().unwrap();
    assert_eq!(got.recipients[0].state, RecipientState::Delivered);
    assert_eq!(got.schedules[1].next_attempt_ms, 42);
    assert_eq!(got.body, stored.body);
    assert_eq!(spool.read_body(&got).await.unwrap(), Bytes::from_static(b"body"));

    let missing = record(spool.next_id());
    match spool.update(missing.clone()).await {
        Err(SpoolError::NotFound(i)) => assert_eq!(i, missing.id),
        other => panic!("expected NotFound, got {other:?}"),
    }
}

#[tokio::test]
async fn remove_deletes_the_record_and_then_the_segment_file() {
    let dir = tempfile::tempdir().unwrap();
    // 24 KiB segments: 20 KB bodies (above the inline limit, so they go to segments) rotate on every put.
    let spool = open_small_segments(dir.path(), 24 * 1024);
    let mut ids = Vec::new();
    for _ in 0..4 {
        let id = spool.next_id();
        spool.put(record(id.clone()), Bytes::from(vec![7u8; 20_000])).await.unwrap();
        ids.push(id);
    }
    let before = segment_files(dir.path());
    assert!(before.len() >= 4, "expected rotation, got {before:?}");
    let first = spool.get(&ids[0]).await.unwrap().unwrap();
    let first_segment = format!("{:016x}.seg", first.body.segment);
    assert!(before.contains(&first_segment));

    spool.remove(&ids[0]).await.unwrap();
    assert!(spool.get(&ids[0]).await.unwrap().is_none());
    assert_eq!(spool.len(), 3);
    assert!(!segment_files(dir.path()).contains(&first_segment), "emptied segment deleted");
    // Removing again is a no-op.
    spool.remove(&ids[0]).await.unwrap();
    // The others are intact.
    for id in &ids[1..] {
        let r = spool.get(id).await.unwrap().unwrap();
        assert_eq!(spool.read_body(&r).await.unwrap().len(), 20_000);
    }
    for id in &ids[1..] {
        spool.remove(id).await.unwrap();
    }
    assert_eq!(spool.len(), 0);
    drop(spool);
    // After a restart only the new active segment is left.
    let spool = open_small_segments(dir.path(), 24 * 1024);
    assert!(spool.is_empty());
    assert_eq!(segment_files(dir.path()).len(), 1);
}

#[tokio::test]
async fn aux_keys_commit_in_the_same_round_as_a_put() {
    let dir = tempfile::tempdir().unwrap();
    let spool = open(dir.path());
    let id = spool.next_id();
    let stored = spool
        .commit_returning(vec![
            Op::Put { record: record(id.clone()), body: Bytes::from_static(b"x") },
            Op::AuxPut { key: b"idem/tenant1/key-1".to_vec(), value: id.as_str().as_bytes().to_vec() },
            Op::AuxPut { key: b"idem/tenant1/key-2".to_vec(), value: b"other".to_vec() },
            Op::AuxPut { key: b"idem/tenant2/key-1".to_vec(), value: b"t2".to_vec() },
        ])
        .await
        .unwrap();
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].id, id);
    assert_eq!(spool.aux_get(b"idem/tenant1/key-1").await.unwrap().unwrap(), id.as_str().as_bytes());
    let scanned = spool.aux_scan_prefix(b"idem/tenant1/").unwrap();
    assert_eq!(scanned.len(), 2);
    assert_eq!(scanned[0].0, b"idem/tenant1/key-1");
    spool.commit(vec![Op::AuxRemove { key: b"idem/tenant1/key-2".to_vec() }]).await.unwrap();
    drop(spool);
    let spool = open(dir.path());
    assert_eq!(spool.aux_scan_prefix(b"idem/").unwrap().len(), 2);
    assert!(spool.get_blocking(&id).unwrap().is_some());
}

#[tokio::test]
async fn a_failing_request_fails_alone_and_atomically() {
    let dir = tempfile::tempdir().unwrap();
    let spool = open(dir.path());
    let missing = record(spool.next_id());
    let id = spool.next_id();
    // One request: a put plus an update of a missing message → the whole request fails, nothing stored.
    let err = spool
        .commit(vec![
            Op::Put { record: record(id.clone()), body: Bytes::from_static(b"x") },
            Op::AuxPut { key: b"k".to_vec(), value: b"v".to_vec() },
            Op::Update { record: missing },
        ])
        .await
        .unwrap_err();
    assert!(matches!(err, SpoolError::NotFound(_)));
    assert!(spool.get(&id).await.unwrap().is_none());
    assert!(spool.aux_get(b"k").await.unwrap().is_none());
    // Put then update of the same message inside one request works.
    let mut r = record(id.clone());
    let mut updated = r.clone();
    updated.recipients[1].state = RecipientState::Bounced;
    r.sender = "first@example.com".into();
    spool
        .commit(vec![Op::Put { record: r, body: Bytes::from_static(b"y") }, Op::Update { record: updated }])
        .await
        .unwrap();
    let got = spool.get(&id).await.unwrap().unwrap();
    assert_eq!(got.recipients[1].state, RecipientState::Bounced);
    assert_eq!(spool.read_body(&got).await.unwrap(), Bytes::from_static(b"y"));
    assert_eq!(spool.len(), 1);
}

#[tokio::test]
async fn close_finishes_queued_writes_then_refuses() {
    let dir = tempfile::tempdir().unwrap();
    let spool = open(dir.path());
    let id = spool.next_id();
    spool.put(record(id.clone()), Bytes::from_static(b"x")).await.unwrap();
    spool.close().await;
    let err = spool.put(record(spool.next_id()), Bytes::from_static(b"y")).await.unwrap_err();
    assert!(matches!(err, SpoolError::Closed));
    assert!(spool.get(&id).await.unwrap().is_some(), "reads still work after close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn index_reopened_after_the_recovery_scan_keeps_serving_reads_and_writes() {
    let dir = tempfile::tempdir().unwrap();
    let spool = open(dir.path());
    let mut ids = Vec::new();
    for i in 0..50 {
        let id = spool.next_id();
        spool.put(record(id.clone()), Bytes::from(format!("body {i}"))).await.unwrap();
        ids.push(id);
    }
    let scanner = spool.clone();
    let report = tokio::task::spawn_blocking(move || scanner.scan(|_| {})).await.unwrap().unwrap();
    assert_eq!(report.records, 50);

    // Writers keep committing while the index is reopened: they wait for it, none fails.
    let writer = spool.clone();
    let writes = tokio::spawn(async move {
        let mut more = Vec::new();
        for i in 0..50 {
            let id = writer.next_id();
            writer.put(record(id.clone()), Bytes::from(format!("later {i}"))).await.unwrap();
            more.push(id);
        }
        more
    });
    let reopener = spool.clone();
    tokio::task::spawn_blocking(move || reopener.release_scan_memory()).await.unwrap().unwrap();
    let more = writes.await.unwrap();

    let got = spool.get(&ids[7]).await.unwrap().unwrap();
    assert_eq!(spool.read_body(&got).await.unwrap(), Bytes::from_static(b"body 7"));
    spool.remove(&ids[0]).await.unwrap();
    assert_eq!(spool.len(), 99);
    drop(spool);

    let spool = open(dir.path());
    assert_eq!(spool.len(), 99);
    assert!(spool.get_blocking(&ids[0]).unwrap().is_none());
    let got = spool.get_blocking(&more[49]).unwrap().unwrap();
    assert_eq!(spool.read_body_blocking(&got).unwrap(), Bytes::from_static(b"later 49"));
}

#[tokio::test]
async fn batch_read_returns_records_in_order_and_bodies_within_the_budget() {
    let dir = tempfile::tempdir().unwrap();
    let spool = open(dir.path());
    let mut ids = Vec::new();
    for i in 0..4 {
        let id = spool.next_id();
        spool.put(record(id.clone()), Bytes::from(vec![b'a' + i; 100])).await.unwrap();
        ids.push(id);
    }
    let gone = spool.next_id();
    let mut asked = ids.clone();
    asked.insert(2, gone);
    // Budget for two bodies: the first always comes, then while the total stays within 200 bytes.
    let got = spool.get_many_with_body(asked, 200).await;
    assert_eq!(got.len(), 5);
    let fetched: Vec<_> = got.into_iter().map(|r| r.unwrap()).collect();
    assert!(fetched[2].is_none(), "a missing message is None, in its place");
    let present: Vec<_> = fetched.into_iter().flatten().collect();
    assert_eq!(present.iter().map(|f| f.record.id.clone()).collect::<Vec<_>>(), ids);
    assert_eq!(present[0].body.as_deref(), Some(&[b'a'; 100][..]));
    assert_eq!(present[1].body.as_deref(), Some(&[b'b'; 100][..]));
    assert!(present[2].body.is_none() && present[3].body.is_none(), "beyond the budget: read later");
    assert_eq!(spool.read_body(&present[3].record).await.unwrap(), Bytes::from(vec![b'd'; 100]));
}
