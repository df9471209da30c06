//! Manual throughput check of the spool (not a test).
//!
//! `cargo run --release -p mta-bench --bin spool_bench -- [--count N] [--concurrency C] [--size BYTES]
//! [--batch B] [--dir PATH] [--scan 1] [--cache-mb MB]`
//!
//! Runs N puts of BYTES-byte bodies from C concurrent tokio tasks (each committing B puts per request, default 1)
//! and prints messages per second, fsyncs per message and commit rounds. With `--scan 1` it then reopens the spool
//! and times open and a full recovery scan. Without `--dir` it uses a temporary directory under the current one.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use mta_spool::{MessageRecord, Op, Spool, SpoolConfig};

fn arg(args: &[String], name: &str, default: u64) -> u64 {
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).and_then(|v| v.parse().ok()).unwrap_or(default)
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let count = arg(&args, "--count", 20_000);
    let concurrency = arg(&args, "--concurrency", 64);
    let size = arg(&args, "--size", 1024) as usize;
    let batch = arg(&args, "--batch", 1).max(1);
    let scan = arg(&args, "--scan", 0) == 1;
    let cache_mb = arg(&args, "--cache-mb", 64);
    let config = move |path: &std::path::Path| {
        let mut c = SpoolConfig::new(path, "bench");
        c.sled_cache_bytes = cache_mb << 20;
        c
    };
    let dir = args.iter().position(|a| a == "--dir").and_then(|i| args.get(i + 1)).cloned();
    let (_tmp, path) = match dir {
        Some(d) => (None, std::path::PathBuf::from(d)),
        None => {
            let t = tempfile::tempdir_in(".").expect("temp dir");
            let p = t.path().join("spool");
            (Some(t), p)
        }
    };
    let spool = Spool::open_async(config(&path)).await.expect("open spool");
    let body = Bytes::from(vec![b'x'; size]);
    let next = Arc::new(AtomicU64::new(0));
    let before = spool.stats();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (spool, body, next) = (spool.clone(), body.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let start = next.fetch_add(batch, Ordering::Relaxed);
                if start >= count {
                    break;
                }
                let ops = (start..(start + batch).min(count))
                    .map(|_| Op::Put {
                        record: MessageRecord::new(spool.next_id(), "s@example.com", &["r@example.net".to_string()], 0),
                        body: body.clone(),
                    })
                    .collect();
                spool.commit(ops).await.expect("commit");
            }
        }));
    }
    for t in tasks {
        t.await.expect("task");
    }
    let elapsed = started.elapsed();
    let s = spool.stats();
    let (fsyncs, rounds) = (s.fsyncs - before.fsyncs, s.rounds - before.rounds);
    println!(
        "{count} puts of {size} B, concurrency {concurrency}: {:.2} s, {:.0} msg/s, {rounds} rounds ({:.1} msg/round), \
         {fsyncs} fsyncs ({:.4} per msg), commit p50 {:?} p99 {:?}",
        elapsed.as_secs_f64(),
        count as f64 / elapsed.as_secs_f64(),
        count as f64 / rounds.max(1) as f64,
        fsyncs as f64 / count.max(1) as f64,
        s.commit_latency_percentile(0.5).unwrap_or_default(),
        s.commit_latency_percentile(0.99).unwrap_or_default(),
    );
    spool.close().await;
    drop(spool);
    if scan {
        let t = Instant::now();
        let spool = Spool::open_async(config(&path)).await.expect("reopen spool");
        let opened = t.elapsed();
        let t = Instant::now();
        let mut n = 0u64;
        let report = tokio::task::spawn_blocking(move || spool.scan(|_| n += 1).map(|r| (r, n)))
            .await
            .expect("scan task")
            .expect("scan");
        println!("reopen {:?} (records: {}), scan {:?}: {} records", opened, report.1, t.elapsed(), report.0.records);
    }
}
