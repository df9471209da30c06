//! Many concurrent writers share fsyncs: far fewer commit rounds than puts.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::{open, record};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_puts_share_rounds() {
    let dir = tempfile::tempdir().unwrap();
    let spool = open(dir.path());
    spool.set_flush_delay(Duration::from_millis(5));
    let before = spool.stats();
    const PUTS: usize = 200;
    let mut tasks = Vec::new();
    for i in 0..PUTS {
        let spool = spool.clone();
        tasks.push(tokio::spawn(async move {
            let r = record(spool.next_id());
            spool.put(r, Bytes::from(vec![i as u8; 1024])).await.unwrap()
        }));
    }
    let mut stored = Vec::new();
    for t in tasks {
        stored.push(t.await.unwrap());
    }
    let after = spool.stats();
    let rounds = after.rounds - before.rounds;
    let fsyncs = after.fsyncs - before.fsyncs;
    assert_eq!(after.ops - before.ops, PUTS as u64);
    assert!(rounds < (PUTS / 4) as u64, "{rounds} rounds for {PUTS} puts");
    assert!(fsyncs < (PUTS / 2) as u64, "{fsyncs} fsyncs for {PUTS} puts");
    assert_eq!(spool.len(), PUTS);
    assert!(after.commit_latency_percentile(0.5).unwrap() >= Duration::from_millis(5));
    for (i, r) in stored.iter().enumerate().step_by(37) {
        assert_eq!(spool.read_body(r).await.unwrap(), Bytes::from(vec![i as u8; 1024]));
    }
}
