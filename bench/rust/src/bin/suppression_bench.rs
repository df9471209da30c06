//! Injection with a large suppression list vs none, same run, and the list's memory (not a test).
//!
//! `cargo run --release -p mta-bench --bin suppression_bench -- [--entries N] [--messages M] [--concurrency C]
//! [--rounds R]`
//!
//! Builds two spools under a temporary directory: one empty, one holding N suppression entries (written through
//! the spool's group commit, 10,000 per commit, as `mta-server suppression import` does). Then, in alternating
//! rounds (none, list, none, list, ...), opens an engine on each (delivery off: injection only) and injects M
//! one-recipient messages from C tasks the way the HTTP handler does: the suppression check of every
//! recipient, then the durable injection. Prints messages per second per round and the median of each side,
//! the index's bytes per entry (table size and the process's resident-memory growth while loading it), the
//! index load time, and the cost of one check (hits and misses) on the full list.

use std::sync::Arc;
use std::time::Instant;

use mta_core::suppression::{Entry, Reason, Suppressions};
use mta_core::{Engine, EngineConfig, Injection};
use mta_spool::{Spool, SpoolConfig};

fn arg(args: &[String], name: &str, default: u64) -> u64 {
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Resident memory of this process, bytes (Linux `/proc/self/statm`).
fn rss() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm.split_whitespace().nth(1).and_then(|p| p.parse().ok()).unwrap_or(0);
    pages * 4096
}

fn listed(n: u64) -> String {
    format!("user{n}@listed{}.example", n % 1000)
}

async fn fill(path: &std::path::Path, entries: u64) {
    let spool = Spool::open_async(SpoolConfig::new(path, "bench")).await.expect("open spool");
    let list = Suppressions::empty(spool.clone());
    let started = Instant::now();
    let mut batch = Vec::with_capacity(10_000);
    for n in 0..entries {
        let tenant = (n % 4 == 0).then(|| format!("tenant{}", n % 16));
        batch.push(Entry::new(listed(n), Reason::HardBounce, tenant));
        if batch.len() == 10_000 {
            list.put_many(&batch).await.expect("store entries");
            batch.clear();
        }
    }
    list.put_many(&batch).await.expect("store entries");
    spool.close().await;
    drop((list, spool));
    println!("stored {entries} entries in {:.1} s", started.elapsed().as_secs_f64());
}

/// One round: open an engine on `path`, inject `messages` from `concurrency` tasks; messages per second.
async fn round(path: &std::path::Path, messages: u64, concurrency: u64, tag: &str) -> (f64, usize) {
    let mut config = EngineConfig::new(path);
    config.delivery.enabled = false;
    let (engine, _) = Engine::open(config).await.expect("open engine");
    let entries = engine.suppressions().len();
    let body =
        bytes::Bytes::from_static(b"From: a@sender.example\r\nTo: b@x.example\r\nSubject: bench\r\n\r\nHello.\r\n");
    let started = Instant::now();
    let per_task = messages / concurrency;
    let mut tasks = Vec::new();
    for t in 0..concurrency {
        let (engine, body, tag) = (engine.clone(), body.clone(), tag.to_string());
        tasks.push(tokio::spawn(async move {
            for i in 0..per_task {
                let rcpt = format!("r{t}-{i}-{tag}@dest{}.example", i % 100);
                let (kept, _) =
                    engine.remove_suppressed("a@sender.example", Some("tenant1"), vec![rcpt], "bench").await;
                let injection = Injection::new("a@sender.example", kept, body.clone());
                engine.inject(injection).await.expect("inject");
            }
        }));
    }
    for t in tasks {
        t.await.expect("task");
    }
    let rate = (per_task * concurrency) as f64 / started.elapsed().as_secs_f64();
    engine.shutdown().await;
    (rate, entries)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let entries = arg(&args, "--entries", 1_000_000);
    let messages = arg(&args, "--messages", 20_000);
    let concurrency = arg(&args, "--concurrency", 64).max(1);
    let rounds = arg(&args, "--rounds", 3).max(1);
    let dir = tempfile::tempdir_in(".").expect("temp dir");
    let (none_path, list_path) = (dir.path().join("none"), dir.path().join("list"));
    fill(&list_path, entries).await;

    // Memory and load time of the index alone.
    let spool = Spool::open_async(SpoolConfig::new(&list_path, "bench")).await.expect("open spool");
    let before = rss();
    let started = Instant::now();
    let load_spool = spool.clone();
    let list = Arc::new(tokio::task::spawn_blocking(move || Suppressions::load(load_spool)).await.unwrap().unwrap());
    let load = started.elapsed();
    let grown = rss().saturating_sub(before);
    let n = list.len().max(1);
    println!(
        "index: {} entries loaded in {:.2} s; table {} bytes = {:.1} bytes/entry; RSS grew {} bytes = {:.1} bytes/entry \
         (includes sled's page cache warmed by the walk)",
        list.len(),
        load.as_secs_f64(),
        list.index_bytes(),
        list.index_bytes() as f64 / n as f64,
        grown,
        grown as f64 / n as f64
    );
    let probes = 1_000_000u64;
    let started = Instant::now();
    let mut hits = 0u64;
    for i in 0..probes {
        hits += u64::from(list.is_suppressed(Some("tenant1"), &listed(i * 7 % entries.max(1))));
    }
    let hit_ns = started.elapsed().as_nanos() as f64 / probes as f64;
    let started = Instant::now();
    for i in 0..probes {
        hits += u64::from(list.is_suppressed(Some("tenant1"), &format!("nobody{i}@dest.example")));
    }
    let miss_ns = started.elapsed().as_nanos() as f64 / probes as f64;
    println!(
        "check: {hit_ns:.0} ns per listed address, {miss_ns:.0} ns per unlisted one (incl. formatting; {hits} hits)"
    );
    drop(list);
    spool.close().await;
    // The spool's lock goes with its last handle.
    drop(spool);

    let (mut none, mut full) = (Vec::new(), Vec::new());
    for r in 0..rounds {
        let (a, _) = round(&none_path, messages, concurrency, &format!("n{r}")).await;
        let (b, listed_entries) = round(&list_path, messages, concurrency, &format!("l{r}")).await;
        println!(
            "round {r}: no list {a:.0} msg/s; {listed_entries} entries {b:.0} msg/s ({:+.1}%)",
            (b / a - 1.0) * 100.0
        );
        none.push(a);
        full.push(b);
    }
    let (a, b) = (median(none), median(full));
    println!(
        "median: no list {a:.0} msg/s, with {entries} entries {b:.0} msg/s: {:+.1}% ({messages} one-recipient messages, \
         {concurrency} tasks, {rounds} rounds each)",
        (b / a - 1.0) * 100.0
    );
}
