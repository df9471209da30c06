//! Cache behaviour: TTL, negative caching, serve-stale, background refresh, coalescing, bound.

mod dns_support;

use std::time::Duration;

use dns_support::{config, fixture, resolver};
use mta_core::dns::{DnsConfig, DnsError, Source};

#[tokio::test]
async fn dns_short_ttl_is_requeried_after_expiry() {
    let f = fixture().await;
    let r = resolver(DnsConfig { refresh_before_expiry: 0.0, ..config(&f) });
    r.lookup_a("mx.short.test").await.unwrap();
    r.lookup_a("mx.short.test").await.unwrap();
    assert_eq!(f.proxy.received_for("mx.short.test"), 1, "second lookup from cache");
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let l = r.query_a("mx.short.test").await.unwrap();
    assert_eq!(l.source, Source::Upstream);
    assert_eq!(f.proxy.received_for("mx.short.test"), 2, "re-queried after TTL");
}

#[tokio::test]
async fn dns_min_ttl_clamps_short_ttls() {
    let f = fixture().await;
    let r = resolver(DnsConfig { min_ttl: Duration::from_secs(30), ..config(&f) });
    r.lookup_a("mx.short.test").await.unwrap();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let l = r.query_a("mx.short.test").await.unwrap();
    assert_eq!(l.source, Source::Cache);
    assert!(l.ttl > Duration::from_secs(25));
    assert_eq!(f.proxy.received_for("mx.short.test"), 1);
}

#[tokio::test]
async fn dns_negative_answers_are_cached() {
    let f = fixture().await;
    let r = resolver(config(&f));
    for _ in 0..5 {
        assert_eq!(r.lookup_a("nx.test").await.unwrap_err(), DnsError::NxDomain);
        assert_eq!(r.lookup_mx("implicit.test").await.unwrap_err(), DnsError::NoData);
    }
    assert_eq!(f.proxy.received_for("nx.test"), 1);
    assert_eq!(f.proxy.received_for("implicit.test"), 1);
}

#[tokio::test]
async fn dns_stale_answer_served_when_upstream_fails() {
    let f = fixture().await;
    let r = resolver(DnsConfig { refresh_before_expiry: 0.0, ..config(&f) });
    let fresh = r.lookup_a("mx.short.test").await.unwrap();
    f.proxy.set_servfail_ratio(1.0);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let l = r.query_a("mx.short.test").await.unwrap();
    assert_eq!(l.source, Source::Stale);
    assert_eq!(l.records, fresh);
    // the failure is memoized: the next caller gets the stale answer without a new query
    let before = f.proxy.received();
    assert_eq!(r.query_a("mx.short.test").await.unwrap().source, Source::Stale);
    assert_eq!(f.proxy.received(), before);
    // a name never seen fails transiently (not cached as negative)
    let e = r.lookup_a("mx1.multi.test").await.unwrap_err();
    assert!(!e.is_permanent());
    f.proxy.heal();
    tokio::time::sleep(Duration::from_millis(2100)).await; // failure memo (2 s) expires
    assert!(r.lookup_a("mx1.multi.test").await.is_ok());
}

#[tokio::test]
async fn dns_stale_answer_served_when_upstream_times_out() {
    let f = fixture().await;
    let r = resolver(DnsConfig { refresh_before_expiry: 0.0, query_timeout: Duration::from_millis(300), ..config(&f) });
    r.lookup_a("mx.short.test").await.unwrap();
    f.proxy.set_drop_ratio(1.0);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let t0 = std::time::Instant::now();
    let l = r.query_a("mx.short.test").await.unwrap();
    assert_eq!(l.source, Source::Stale);
    assert!(t0.elapsed() < Duration::from_millis(800), "{:?}", t0.elapsed());
}

#[tokio::test]
async fn dns_hot_names_refreshed_before_expiry() {
    let f = fixture().await;
    let r = resolver(DnsConfig { refresh_before_expiry: 0.5, ..config(&f) });
    r.lookup_a("mx.short.test").await.unwrap(); // TTL 1 s
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(r.query_a("mx.short.test").await.unwrap().source, Source::Cache);
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(r.stats().refreshes, 1);
    assert_eq!(f.proxy.received_for("mx.short.test"), 2, "refreshed in background");
    // past the first answer's expiry, still a fresh cache hit
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(r.query_a("mx.short.test").await.unwrap().source, Source::Cache);
}

#[tokio::test]
async fn dns_concurrent_lookups_share_one_query() {
    let f = fixture().await;
    f.proxy.set_delay(Duration::from_millis(100));
    let r = resolver(config(&f));
    let tasks: Vec<_> = (0..100)
        .map(|_| {
            let r = r.clone();
            tokio::spawn(async move { r.lookup_a("mx1.multi.test").await })
        })
        .collect();
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    assert_eq!(f.proxy.received_for("mx1.multi.test"), 1);
    assert_eq!(r.stats().coalesced, 99);
}

#[tokio::test]
async fn dns_cache_is_bounded() {
    let f = fixture().await;
    let r = resolver(DnsConfig { cache_entries: 100, ..config(&f) });
    for i in 0..600 {
        let _ = r.lookup_a(&format!("n{i}.test")).await;
    }
    let n = r.stats().cache_entries;
    assert!(n <= 110, "cache holds {n} entries");
}
