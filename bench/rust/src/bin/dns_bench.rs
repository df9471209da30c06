//! Resolver pool benchmark (the 3 scenarios of issue 3) against an in-process DNS server.
//!
//! `cargo run --release -p mta-bench --bin dns_bench -- [--calls 1000000] [--servfail-secs 30] [--qps-secs 10]`

use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mta_core::dns::testing::{FaultyProxy, OverLimit, TestDnsServer, TestZone};
use mta_core::dns::{DnsConfig, Resolver};
use rand::{Rng, SeedableRng};

const DOMAINS: usize = 50_000;

fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Zipf(s = 1) over ranks 0..n: a cumulative table and a binary search.
struct Zipf(Vec<f64>);

impl Zipf {
    fn new(n: usize, s: f64) -> Self {
        let mut acc = 0.0;
        let mut cdf = Vec::with_capacity(n);
        for k in 1..=n {
            acc += 1.0 / (k as f64).powf(s);
            cdf.push(acc);
        }
        Self(cdf)
    }
    fn sample(&self, rng: &mut impl Rng) -> usize {
        let x = rng.random::<f64>() * self.0[self.0.len() - 1];
        self.0.partition_point(|c| *c < x).min(self.0.len() - 1)
    }
}

fn domain(i: usize) -> String {
    format!("d{i}.bench")
}

fn zone() -> TestZone {
    let mut z = TestZone::new("bench").ttl(300);
    for i in 0..DOMAINS {
        let ip = Ipv4Addr::new(127, 1 + (i >> 16) as u8, (i >> 8) as u8, i as u8);
        z = z.mail_domain(&domain(i), &[(10, &format!("mx.d{i}.bench"), IpAddr::V4(ip))]);
    }
    z
}

fn pct(v: &mut [u64], p: f64) -> u64 {
    v.sort_unstable();
    v[((v.len() as f64 * p) as usize).min(v.len() - 1)]
}

fn base(proxy: &FaultyProxy) -> DnsConfig {
    DnsConfig { nameservers: vec![proxy.addr()], ..DnsConfig::default() }
}

#[tokio::main]
async fn main() {
    let calls = arg("--calls", 1_000_000) as usize;
    let servfail_secs = arg("--servfail-secs", 30);
    let qps_secs = arg("--qps-secs", 10);
    // 0 = all scenarios, else only that one
    let only = arg("--only", 0);
    let t = Instant::now();
    let server = TestDnsServer::start(vec![zone()]).await.unwrap();
    println!("zone of {DOMAINS} domains built in {:?}", t.elapsed());
    let zipf = Arc::new(Zipf::new(DOMAINS, 1.0));

    // 1. Zipf workload: upstream queries / distinct (name, type) pairs; cached p99.
    if only == 0 || only == 1 {
        let proxy = FaultyProxy::start(server.addr()).await.unwrap();
        let r = Resolver::new(DnsConfig { max_qps_per_upstream: 100_000, ..base(&proxy) }).unwrap();
        let workers = 64;
        let seen = Arc::new(parking_lot::Mutex::new(vec![false; DOMAINS]));
        let t = Instant::now();
        let tasks: Vec<_> = (0..workers)
            .map(|_| {
                let (r, zipf, seen) = (r.clone(), zipf.clone(), seen.clone());
                tokio::spawn(async move {
                    let mut lat = Vec::with_capacity(calls / workers);
                    let mut mine = Vec::new();
                    for _ in 0..calls / workers {
                        let i = zipf.sample(&mut rand::rng());
                        mine.push(i);
                        let t = Instant::now();
                        r.resolve_mx(&domain(i)).await.unwrap();
                        lat.push(t.elapsed().as_nanos() as u64);
                    }
                    let mut s = seen.lock();
                    for i in mine {
                        s[i] = true;
                    }
                    lat
                })
            })
            .collect();
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.unwrap());
        }
        let elapsed = t.elapsed();
        let distinct = seen.lock().iter().filter(|b| **b).count();
        let pairs = distinct * 2; // MX of the domain + A of its MX host
        let packets = proxy.received();
        println!("\n[1] {calls} resolve_mx over {DOMAINS} Zipf(1.0) domains, TTL 300 s, 64 callers, {elapsed:?}");
        println!("    distinct domains {distinct}, (name,type) pairs {pairs}, upstream queries {packets}");
        println!("    ratio queries / pairs = {:.4}", packets as f64 / pairs as f64);
        println!("    coalesced lookups {}", r.stats().coalesced);
        println!(
            "    all calls (64 concurrent, 2 cores): p50 {} µs, p99 {} µs",
            pct(&mut all, 0.5) / 1000,
            pct(&mut all, 0.99) / 1000
        );
        // cached: one caller, every domain already cached
        let mut lat = Vec::with_capacity(200_000);
        let mut rng = rand::rng();
        for _ in 0..200_000 {
            let i = zipf.sample(&mut rng);
            if !seen.lock()[i] {
                continue;
            }
            let t = Instant::now();
            r.resolve_mx(&domain(i)).await.unwrap();
            lat.push(t.elapsed().as_nanos() as u64);
        }
        println!(
            "    cached resolve_mx (single caller, {} calls): p50 {:.2} µs, p99 {:.2} µs, p99.9 {:.2} µs",
            lat.len(),
            pct(&mut lat, 0.5) as f64 / 1000.0,
            pct(&mut lat, 0.99) as f64 / 1000.0,
            pct(&mut lat, 0.999) as f64 / 1000.0
        );
    }

    // 2. 50% SERVFAIL: packets vs a healthy run of the same caller workload; max caller wait.
    // The qps cap is lifted so that it does not make both runs send the same.
    //
    // Both runs make the very same calls: 16 callers, each pacing one resolve_mx per ms
    // (~16,000 calls/s offered) over Zipf domains from its own seeded generator, until it has
    // made `--servfail-secs` x 1,000 calls. (The callers used to stop after 30 s of wall time:
    // a caller waiting on the upstream asks less, so the healthy run, whose misses wait for
    // answers, made ~330,000 calls against ~420,000 in the failing run, whose failures return
    // at once; the denominator came from a smaller workload with fewer distinct names.)
    if only == 0 || only == 2 {
        let mut results = Vec::new();
        for servfail in [0.0, 0.5] {
            let proxy = FaultyProxy::start(server.addr()).await.unwrap();
            proxy.set_servfail_ratio(servfail);
            let r = Resolver::new(DnsConfig { max_qps_per_upstream: 100_000, ..base(&proxy) }).unwrap();
            let deadline = r.config().lookup_timeout;
            let failures = Arc::new(AtomicU64::new(0));
            let max_wait = Arc::new(AtomicU64::new(0));
            let per_caller = servfail_secs * 1000;
            let t = Instant::now();
            let tasks: Vec<_> = (0..16u64)
                .map(|c| {
                    let (r, zipf, failures, max_wait) = (r.clone(), zipf.clone(), failures.clone(), max_wait.clone());
                    tokio::spawn(async move {
                        let mut rng = rand::rngs::StdRng::seed_from_u64(c);
                        let mut tick = tokio::time::interval(Duration::from_millis(1));
                        for _ in 0..per_caller {
                            tick.tick().await;
                            let i = zipf.sample(&mut rng);
                            let t = Instant::now();
                            if r.resolve_mx(&domain(i)).await.is_err() {
                                failures.fetch_add(1, Ordering::Relaxed);
                            }
                            max_wait.fetch_max(t.elapsed().as_micros() as u64, Ordering::Relaxed);
                        }
                    })
                })
                .collect();
            for t in tasks {
                t.await.unwrap();
            }
            let elapsed = t.elapsed();
            let packets = proxy.received();
            let retries = r.stats().retries;
            println!(
                "\n[2] SERVFAIL {:.0}%: {} calls in {elapsed:.1?}, {} failed, upstream packets {packets}, max caller wait {:.1} ms (deadline {deadline:?})",
                servfail * 100.0,
                per_caller * 16,
                failures.load(Ordering::Relaxed),
                max_wait.load(Ordering::Relaxed) as f64 / 1000.0
            );
            println!(
                "    retries {retries} = {:.3} of first attempts (budget 0.1)",
                retries as f64 / (packets - retries) as f64
            );
            results.push(packets);
        }
        println!("    packets ratio 50% SERVFAIL / healthy = {:.3}", results[1] as f64 / results[0] as f64);
    }

    // 3. Upstream capped at 1,000 qps (drops above); pool max_qps 1,000; cached lookups.
    if only == 0 || only == 3 {
        let proxy = FaultyProxy::start(server.addr()).await.unwrap();
        proxy.set_rate_limit(1000, OverLimit::Drop);
        let r = Resolver::new(DnsConfig { max_qps_per_upstream: 1000, ..base(&proxy) }).unwrap();
        r.resolve_mx(&domain(0)).await.unwrap();
        let mut idle = Vec::new();
        for _ in 0..50_000 {
            let t = Instant::now();
            r.resolve_mx(&domain(0)).await.unwrap();
            idle.push(t.elapsed().as_nanos() as u64);
        }
        proxy.reset_counts();
        let stop = Arc::new(AtomicBool::new(false));
        let overloaded = Arc::new(AtomicU64::new(0));
        let next = Arc::new(AtomicU64::new(1));
        // 200 callers asking uncached domains as fast as they can: far more than 1,000 qps
        let tasks: Vec<_> = (0..200)
            .map(|_| {
                let (r, stop, overloaded, next) = (r.clone(), stop.clone(), overloaded.clone(), next.clone());
                tokio::spawn(async move {
                    while !stop.load(Ordering::Relaxed) {
                        let i = next.fetch_add(1, Ordering::Relaxed) as usize % DOMAINS;
                        if let Err(e) = r.resolve_mx(&domain(i)).await {
                            if !e.is_permanent() {
                                overloaded.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(500)).await;
        let mut busy = Vec::new();
        let until = Instant::now() + Duration::from_secs(qps_secs);
        while Instant::now() < until {
            let t = Instant::now();
            r.resolve_mx(&domain(0)).await.unwrap();
            busy.push(t.elapsed().as_nanos() as u64);
            if busy.len() % 64 == 0 {
                tokio::task::yield_now().await;
            }
        }
        stop.store(true, Ordering::Relaxed);
        for t in tasks {
            let _ = t.await;
        }
        println!(
            "\n[3] pool max_qps 1000, upstream drops above 1000 qps, {qps_secs} s of 200 callers on uncached names"
        );
        println!(
            "    upstream packets {} ({:.0}/s), max in any sliding second {}, forwarded {} (dropped {}), transient failures {}",
            proxy.received(),
            proxy.received() as f64 / (qps_secs as f64 + 0.5),
            proxy.max_per_second(),
            proxy.forwarded(),
            proxy.received() - proxy.forwarded(),
            overloaded.load(Ordering::Relaxed)
        );
        println!(
            "    cached resolve_mx: idle p50 {:.2} µs p99 {:.2} µs; under load ({} calls) p50 {:.2} µs p99 {:.2} µs",
            pct(&mut idle, 0.5) as f64 / 1000.0,
            pct(&mut idle, 0.99) as f64 / 1000.0,
            busy.len(),
            pct(&mut busy, 0.5) as f64 / 1000.0,
            pct(&mut busy, 0.99) as f64 / 1000.0
        );
    }
}
