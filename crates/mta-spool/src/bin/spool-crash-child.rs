//! Crash-test child: writes to a spool as fast as it can until killed, printing one line per acknowledged write.
//!
//! Usage: `spool-crash-child <spool path> <seed>`. Lines (stdout, flushed each, printed only after the write
//! returned `Ok`):
//!
//! - `P <id> <seed> <counter> <len> <crc32>`: message stored; its body is `testing::crash_body(seed, counter)`;
//! - `U <id>`: its first recipient was durably marked `deferred`;
//! - `D <id>`: its removal is about to be asked (from now on it may be gone);
//! - `R <id>`: it was durably removed.
//!
//! The parent test kills it with SIGKILL at a random moment and checks every acknowledged write survived.

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use mta_spool::testing::crash_body;
use mta_spool::{MessageRecord, RecipientState, Spool, SpoolConfig};

/// Writer tasks running at once.
const TASKS: usize = 32;
/// The child stops by itself after this long (the parent kills it much sooner).
const MAX_RUN: Duration = Duration::from_secs(60);

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    // A closed pipe means the parent is gone: nothing left to do.
    if out.write_all(line.as_bytes()).and_then(|_| out.flush()).is_err() {
        std::process::exit(0);
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(path), Some(seed)) = (args.next(), args.next().and_then(|s| s.parse::<u64>().ok())) else {
        eprintln!("usage: spool-crash-child <spool path> <seed>");
        std::process::exit(2);
    };
    let mut config = SpoolConfig::new(path, "crash");
    config.segment_size = 4 << 20;
    let spool = match Spool::open_async(config).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("spool-crash-child: open failed: {e}");
            std::process::exit(1);
        }
    };
    let counter = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..TASKS {
        let spool = spool.clone();
        let counter = counter.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                let n = counter.fetch_add(1, Ordering::Relaxed);
                let body = crash_body(seed, n);
                let (len, crc) = (body.len(), crc32fast::hash(&body));
                let id = spool.next_id();
                let record = MessageRecord::new(id.clone(), "s@example.com", &["r@example.net".to_string()], 1);
                let mut stored = match spool.put(record, Bytes::from(body)).await {
                    Ok(r) => r,
                    Err(e) => {
                        eprintln!("spool-crash-child: put failed: {e}");
                        std::process::exit(3);
                    }
                };
                say(&format!("P {id} {seed} {n} {len} {crc}\n"));
                if n % 5 == 1 {
                    stored.recipients[0].state = RecipientState::Deferred;
                    if let Err(e) = spool.update(stored).await {
                        eprintln!("spool-crash-child: update failed: {e}");
                        std::process::exit(3);
                    }
                    say(&format!("U {id}\n"));
                } else if n % 5 == 3 {
                    say(&format!("D {id}\n"));
                    if let Err(e) = spool.remove(&id).await {
                        eprintln!("spool-crash-child: remove failed: {e}");
                        std::process::exit(3);
                    }
                    say(&format!("R {id}\n"));
                }
            }
        }));
    }
    tokio::time::sleep(MAX_RUN).await;
    std::process::exit(0);
}
