//! Recovery benchmark: fill a spool with N queued messages (if it has fewer), then time how long a restart
//! takes until the engine is open and its queues are rebuilt.
//!
//! `cargo run --release -p mta-bench --bin recovery_bench -- /tmp/mta-recovery 1000000`

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use mta_core::{Engine, EngineConfig};
use mta_spool::{MessageRecord, Spool, SpoolConfig};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let path = args.get(1).cloned().unwrap_or_else(|| "/tmp/mta-recovery".into());
    let want: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(1_000_000);

    let spool = Spool::open_async(SpoolConfig::new(&path, "bench")).await?;
    let have = spool.len();
    if have < want {
        let missing = want - have;
        println!("filling {missing} messages into {path} ...");
        let started = Instant::now();
        let next = Arc::new(AtomicUsize::new(0));
        let body = Bytes::from(vec![b'x'; 1024]);
        let mut tasks = Vec::new();
        for _ in 0..256 {
            let (spool, next, body) = (spool.clone(), next.clone(), body.clone());
            tasks.push(tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= missing {
                        break;
                    }
                    let rcpt = vec![format!("user{i}@domain{}.test", i % 1000)];
                    let mut record = MessageRecord::new(spool.next_id(), "sender@bench.test", &rcpt, 0);
                    // Scheduled in the future: queued, not yet due.
                    record.schedules[0].next_attempt_ms = u64::MAX / 2;
                    spool.put(record, body.clone()).await.expect("put");
                }
            }));
        }
        for t in tasks {
            t.await?;
        }
        println!("filled in {:.1} s", started.elapsed().as_secs_f64());
    }
    spool.close().await;
    drop(spool);

    let started = Instant::now();
    let mut config = EngineConfig::new(&path);
    config.node_id = "bench".into();
    // Measure the rebuild only: no delivery, and never a query to the system resolver.
    config.delivery.enabled = false;
    config.dns.nameservers = vec!["127.0.0.1:9".parse()?];
    let (engine, report) = Engine::open(config).await?;
    println!(
        "recovery: {} messages, {} quarantined, engine open in {:.2} s",
        report.messages,
        report.quarantined.len(),
        started.elapsed().as_secs_f64()
    );
    engine.shutdown().await;
    Ok(())
}
