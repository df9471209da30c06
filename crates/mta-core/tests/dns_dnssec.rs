//! `dns.dnssec = "trust-ad"`: queries ask for DNSSEC (AD and DO bits), the AD bit of an answer is kept in the
//! cache and reported as `Lookup::authenticated`; without the setting the bit means nothing.

mod dns_support;

use std::net::Ipv4Addr;

use dns_support::{config, fixture_with, resolver};
use mta_core::dns::testing::TestZone;
use mta_core::dns::{Dnssec, Source};

fn zone() -> Vec<TestZone> {
    vec![TestZone::new("test")
        .ttl(60)
        .mx("signed.test", 10, "mx.signed.test")
        .a("mx.signed.test", Ipv4Addr::new(127, 0, 0, 2))
        .tlsa("_25._tcp.mx.signed.test", 3, 1, 1, vec![7; 32])
        .tlsa("_25._tcp.mx.signed.test", 2, 0, 0, vec![1, 2, 3])
        .mx("plain.test", 10, "mx.signed.test")]
}

#[tokio::test]
async fn dns_trust_ad_keeps_the_ad_bit_of_answers_in_the_cache() {
    let f = fixture_with(zone()).await;
    f.proxy.set_authenticated_names(&["signed.test", "_25._tcp.mx.signed.test"]);
    let r = resolver(mta_core::dns::DnsConfig { dnssec: Dnssec::TrustAd, ..config(&f) });

    let mx = r.query_mx("signed.test").await.unwrap();
    assert!(mx.authenticated);
    let tlsa = r.query_tlsa("_25._tcp.mx.signed.test").await.unwrap();
    assert!(tlsa.authenticated);
    let mut records: Vec<_> = tlsa.records.iter().map(|t| (t.usage, t.selector, t.matching, t.data.len())).collect();
    records.sort();
    assert_eq!(records, vec![(2, 0, 0, 3), (3, 1, 1, 32)]);
    assert!(!r.query_mx("plain.test").await.unwrap().authenticated, "no AD bit: not authenticated");
    assert!(f.proxy.dnssec_asked() >= 3, "every query asks for DNSSEC");

    // From the cache, the flag stays.
    let again = r.query_mx("signed.test").await.unwrap();
    assert_eq!((again.source, again.authenticated), (Source::Cache, true));
}

#[tokio::test]
async fn dns_without_dnssec_the_ad_bit_is_ignored_and_not_asked_for() {
    let f = fixture_with(zone()).await;
    f.proxy.set_authenticated_names(&["signed.test"]);
    let r = resolver(config(&f));
    assert!(!r.query_mx("signed.test").await.unwrap().authenticated);
    assert_eq!(f.proxy.dnssec_asked(), 0);
}
