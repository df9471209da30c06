//! Caps and faults: in-flight cap, qps cap, bounded queue, deadlines, retry budget, upstream
//! choice.

mod dns_support;

use std::time::{Duration, Instant};

use dns_support::{config, fixture, resolver};
use mta_core::dns::testing::{standard_zones, FaultyProxy, TestDnsServer};
use mta_core::dns::{DnsConfig, DnsError, Resolver, TransientKind};

async fn lookups(r: &Resolver, prefix: &str, n: usize) -> Vec<Result<(), DnsError>> {
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let r = r.clone();
            let name = format!("{prefix}{i}.test");
            tokio::spawn(async move {
                match r.lookup_a(&name).await {
                    Ok(_) | Err(DnsError::NxDomain) => Ok(()),
                    Err(e) => Err(e),
                }
            })
        })
        .collect();
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

#[tokio::test]
async fn dns_in_flight_is_capped() {
    let f = fixture().await;
    f.proxy.set_delay(Duration::from_millis(100));
    let r = resolver(DnsConfig { max_in_flight: 4, lookup_timeout: Duration::from_secs(5), ..config(&f) });
    let watcher = {
        let r = r.clone();
        tokio::spawn(async move {
            let mut max = 0;
            for _ in 0..300 {
                max = max.max(r.stats().in_flight);
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            max
        })
    };
    let res = lookups(&r, "inflight", 20).await;
    assert!(res.iter().all(|r| r.is_ok()), "{res:?}");
    let max = watcher.await.unwrap();
    assert!((1..=4).contains(&max), "max in flight {max}");
}

#[tokio::test]
async fn dns_qps_per_upstream_is_capped() {
    let f = fixture().await;
    let r = resolver(DnsConfig { max_qps_per_upstream: 50, lookup_timeout: Duration::from_secs(10), ..config(&f) });
    let t0 = Instant::now();
    let res = lookups(&r, "qps", 150).await;
    assert!(res.iter().all(|r| r.is_ok()), "{res:?}");
    assert!(t0.elapsed() >= Duration::from_millis(2500), "{:?}", t0.elapsed());
    let max = f.proxy.max_per_second();
    assert!(max <= 52, "proxy saw {max} packets in one second (cap 50)");
    // Cached names are not slowed by the saturated bucket: 100 uncached names need at least two seconds of
    // tokens, and 1,000 cached lookups all finish while those are still waiting, without a packet upstream.
    // (Compared with the saturated batch itself rather than a wall-clock bound, so a loaded machine cannot fail it.)
    r.lookup_a("mx1.multi.test").await.unwrap();
    let busy = {
        let r = r.clone();
        tokio::spawn(async move { lookups(&r, "qps2", 100).await })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    let cached_before = f.proxy.received_for("mx1.multi.test");
    for _ in 0..1000 {
        r.lookup_a("mx1.multi.test").await.unwrap();
    }
    assert!(!busy.is_finished(), "cached lookups waited for the saturated upstream bucket");
    assert_eq!(f.proxy.received_for("mx1.multi.test"), cached_before, "a cached name went upstream");
    busy.abort();
}

#[tokio::test]
async fn dns_queue_is_bounded_then_overloaded() {
    let f = fixture().await;
    f.proxy.set_delay(Duration::from_millis(300));
    let r = resolver(DnsConfig { max_in_flight: 1, queue_capacity: 2, ..config(&f) });
    let t0 = Instant::now();
    let tasks: Vec<_> = (0..10)
        .map(|i| {
            let r = r.clone();
            tokio::spawn(async move {
                let t = Instant::now();
                let res = r.lookup_a(&format!("q{i}.test")).await;
                (res, t.elapsed())
            })
        })
        .collect();
    let mut overloaded = 0;
    for t in tasks {
        let (res, took) = t.await.unwrap();
        if let Err(DnsError::Transient { kind: TransientKind::Overloaded }) = res {
            overloaded += 1;
            assert!(took < Duration::from_millis(100), "overloaded at once, took {took:?}");
        }
    }
    assert!(overloaded >= 6, "only {overloaded} overloaded");
    assert!(t0.elapsed() < Duration::from_secs(2));
    assert_eq!(r.stats().queued, 0);
}

#[tokio::test]
async fn dns_deadline_respected_under_slow_upstream() {
    let f = fixture().await;
    f.proxy.set_delay(Duration::from_secs(3));
    let r = resolver(DnsConfig {
        lookup_timeout: Duration::from_millis(500),
        query_timeout: Duration::from_millis(400),
        ..config(&f)
    });
    let tasks: Vec<_> = (0..20)
        .map(|i| {
            let r = r.clone();
            tokio::spawn(async move {
                let t = Instant::now();
                let res = r.resolve_mx(&format!("slow{}.test", i % 5)).await;
                (res, t.elapsed())
            })
        })
        .collect();
    for t in tasks {
        let (res, took) = t.await.unwrap();
        assert!(!res.unwrap_err().is_permanent());
        assert!(took < Duration::from_millis(650), "waited {took:?}");
    }
}

#[tokio::test]
async fn dns_set_delay_injects_latency() {
    let f = fixture().await;
    let r = resolver(config(&f));
    r.set_delay(Duration::from_millis(200));
    let t = Instant::now();
    r.lookup_a("mx1.multi.test").await.unwrap();
    assert!(t.elapsed() >= Duration::from_millis(200));
    r.set_delay(Duration::ZERO);
    let t = Instant::now();
    r.lookup_a("mx2.multi.test").await.unwrap();
    assert!(t.elapsed() < Duration::from_millis(200));
}

#[tokio::test]
async fn dns_retry_budget_bounds_amplification() {
    let f = fixture().await;
    let cfg = DnsConfig { max_in_flight: 32, ..config(&f) };
    let healthy = resolver(cfg.clone());
    lookups(&healthy, "healthy", 300).await;
    let healthy_packets = f.proxy.received();
    assert_eq!(healthy_packets, 300);

    f.proxy.reset_counts();
    f.proxy.set_servfail_ratio(0.5);
    let faulty = resolver(cfg);
    let res = lookups(&faulty, "faulty", 300).await;
    let packets = f.proxy.received();
    let failed = res.iter().filter(|r| r.is_err()).count();
    assert!(packets as f64 <= healthy_packets as f64 * 1.2, "{packets} packets vs {healthy_packets} healthy");
    assert!(failed > 0 && failed < 300, "{failed} failed");
    let h = &faulty.upstream_health()[0];
    assert_eq!(h.queries, packets);
    assert!(h.servfail_rate > 0.2, "{h:?}");
}

#[tokio::test]
async fn dns_traffic_moves_to_healthy_upstream() {
    let server = TestDnsServer::start(standard_zones()).await.unwrap();
    let good = FaultyProxy::start(server.addr()).await.unwrap();
    let bad = FaultyProxy::start(server.addr()).await.unwrap();
    bad.set_servfail_ratio(1.0);
    let r = resolver(DnsConfig {
        nameservers: vec![bad.addr(), good.addr()],
        min_ttl: Duration::ZERO,
        max_in_flight: 8,
        ..DnsConfig::default()
    });
    let res = lookups(&r, "two", 400).await;
    let ok = res.iter().filter(|r| r.is_ok()).count();
    // the first few lookups may hit the bad upstream before its health is known, and the
    // retry budget (10 tokens at start) bounds how many of them are retried elsewhere
    assert!(ok >= 360, "only {ok} succeeded");
    let (b, g) = (bad.received(), good.received());
    assert!(b * 10 < g, "bad upstream got {b}, good {g}");
    let health = r.upstream_health();
    let hb = health.iter().find(|h| h.addr == bad.addr()).unwrap();
    let hg = health.iter().find(|h| h.addr == good.addr()).unwrap();
    assert!(hb.servfail_rate > 0.1 && hg.servfail_rate < 0.01, "{health:?}");
    assert_eq!(hb.queries, b);
    assert_eq!(hg.queries, g);
}

#[tokio::test]
async fn dns_rate_limited_upstream_is_not_hammered() {
    // the upstream drops above 100 qps; our cap is 80: nothing is dropped
    let f = fixture().await;
    f.proxy.set_rate_limit(100, mta_core::dns::testing::OverLimit::Drop);
    let r = resolver(DnsConfig { max_qps_per_upstream: 80, lookup_timeout: Duration::from_secs(5), ..config(&f) });
    let res = lookups(&r, "rl", 200).await;
    assert!(res.iter().all(|r| r.is_ok()), "{res:?}");
    assert_eq!(f.proxy.received(), f.proxy.forwarded());
}
