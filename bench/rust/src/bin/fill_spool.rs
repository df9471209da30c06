//! Benchmark helper: write N queued 1 KiB messages to D domains (`d0.bench` ...) straight into a spool, due now,
//! so a server started on that spool has a backlog to drain.
//!
//! `cargo run --release -p mta-bench --bin fill_spool -- /tmp/spool 100000 100 [size] [node] [--delay-secs N]`
//!
//! `--delay-secs N` schedules every message's first attempt N seconds from now (queued, not yet due): the memory
//! benchmark measures what scheduled messages cost while none is being delivered.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use mta_spool::{MessageRecord, Spool, SpoolConfig};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args: Vec<String> = std::env::args().collect();
    let mut delay_ms: u64 = 0;
    if let Some(pos) = args.iter().position(|a| a == "--delay-secs") {
        let secs: u64 = args.get(pos + 1).and_then(|s| s.parse().ok()).ok_or("--delay-secs needs a number")?;
        delay_ms = secs * 1000;
        args.drain(pos..pos + 2);
    }
    let path = args.get(1).cloned().unwrap_or_else(|| "/tmp/mta-fill".into());
    let count: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(100_000);
    let domains: usize = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(100);
    let size: usize = args.get(4).and_then(|s| s.parse().ok()).unwrap_or(1024);
    let node = args.get(5).cloned().unwrap_or_else(|| "bench".into());
    let spool = Spool::open_async(SpoolConfig::new(&path, node)).await?;
    let mut body = b"From: bench@sender.bench\r\nTo: rcpt@dest.bench\r\nSubject: drain\r\n\r\n".to_vec();
    while body.len() + 2 < size {
        body.extend_from_slice(&[b'x'; 78][..(size - body.len() - 2).min(78)]);
        body.extend_from_slice(b"\r\n");
    }
    let body = Bytes::from(body);
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis() as u64;
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..128 {
        let (spool, next, body) = (spool.clone(), next.clone(), body.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= count {
                    break;
                }
                let rcpt = vec![format!("user{i}@d{}.bench", i % domains)];
                let mut record = MessageRecord::new(spool.next_id(), "bench@sender.bench", &rcpt, now);
                if delay_ms > 0 {
                    for schedule in &mut record.schedules {
                        schedule.next_attempt_ms = now + delay_ms;
                    }
                }
                if let Err(e) = spool.put(record, body.clone()).await {
                    eprintln!("put failed: {e}");
                    break;
                }
            }
        }));
    }
    for t in tasks {
        t.await?;
    }
    spool.close().await;
    println!("filled {count} messages to {domains} domains in {:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}
