//! Joined aux entries: a round's `AuxJoin` items under one prefix become one aux key, ordered by the largest
//! order among them, committed with the rest of the round and kept across a reopen.

use bytes::Bytes;
use mta_spool::{joined, MessageRecord, Op, Spool, SpoolConfig};

const PREFIX: &[u8] = b"test/j/";

fn entries(spool: &Spool) -> Vec<(Vec<u8>, Vec<u8>)> {
    spool.aux_range(PREFIX, None, 10_000).unwrap()
}

fn join(order: u64, item: &[u8]) -> Op {
    Op::AuxJoin { prefix: PREFIX.to_vec(), order, item: item.to_vec() }
}

#[tokio::test]
async fn a_rounds_items_share_one_entry_keyed_by_their_largest_order() {
    let dir = tempfile::tempdir().unwrap();
    {
        let spool = Spool::open(SpoolConfig::new(dir.path(), "t")).unwrap();
        let rec = MessageRecord::new(spool.next_id(), "a@sender.example", &["b@example.net".to_string()], 1);
        spool
            .commit(vec![
                Op::Put { record: rec, body: Bytes::from_static(b"Subject: x\r\n\r\nhi\r\n") },
                join(7, b"first"),
                join(9, b"second"),
                join(8, b""),
                Op::AuxJoin { prefix: b"other/".to_vec(), order: 1, item: b"elsewhere".to_vec() },
            ])
            .await
            .unwrap();
        spool.commit(vec![join(3, b"later, but a smaller order")]).await.unwrap();
        let stored = entries(&spool);
        assert_eq!(stored.len(), 2, "one entry per round");
        // Ordered by order, not by commit: the second round's entry (order 3) comes first.
        assert_eq!(joined::order_of(&stored[0].0, PREFIX), Some(3));
        assert_eq!(joined::order_of(&stored[1].0, PREFIX), Some(9));
        let items: Vec<&[u8]> = joined::items(&stored[1].1).collect();
        assert_eq!(items, vec![&b"first"[..], b"second", b""]);
        assert_eq!(spool.aux_range(b"other/", None, 10).unwrap().len(), 1, "each prefix its own entry");
        spool.close().await;
    }
    let spool = Spool::open(SpoolConfig::new(dir.path(), "t")).unwrap();
    assert_eq!(entries(&spool).len(), 2, "durable with their rounds");
    // A restarted committer never reuses a key, even for the same order.
    spool.commit(vec![join(3, b"again")]).await.unwrap();
    assert_eq!(entries(&spool).len(), 3);
}

#[tokio::test]
async fn concurrent_commits_keep_every_item_and_large_rounds_split_entries() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(SpoolConfig::new(dir.path(), "t")).unwrap();
    let mut tasks = Vec::new();
    for i in 0..64u64 {
        let spool = spool.clone();
        tasks.push(tokio::spawn(async move { spool.commit(vec![join(i, &i.to_be_bytes())]).await }));
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    let mut seen: Vec<u64> = entries(&spool)
        .iter()
        .flat_map(|(_, v)| joined::items(v).map(|i| u64::from_be_bytes(i.try_into().unwrap())).collect::<Vec<_>>())
        .collect();
    seen.sort_unstable();
    assert_eq!(seen, (0..64).collect::<Vec<_>>(), "every item once");

    // One round holding more than an entry takes: closed at ENTRY_MAX, nothing lost.
    let big = vec![b'x'; joined::ENTRY_MAX / 3];
    let before = entries(&spool).len();
    spool.commit((0..5).map(|_| join(1_000, &big)).collect()).await.unwrap();
    let after = entries(&spool);
    let new: Vec<_> = after.iter().filter(|(k, _)| joined::order_of(k, PREFIX) == Some(1_000)).collect();
    assert!(new.len() >= 2 && after.len() == before + new.len(), "{} entries", new.len());
    assert!(new.iter().all(|(_, v)| v.len() <= joined::ENTRY_MAX));
    assert_eq!(new.iter().map(|(_, v)| joined::items(v).count()).sum::<usize>(), 5);
}
