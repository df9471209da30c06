//! resolve_mx and typed lookups against a real (in-process) DNS server.

mod dns_support;

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr};

use dns_support::{config, fixture, fixture_with, resolver};
use mta_core::dns::testing::{standard_zones, TestZone};
use mta_core::dns::{DnsConfig, DnsError, Source};

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[tokio::test]
async fn dns_mx_hosts_ordered_by_preference_with_addresses() {
    let f = fixture().await;
    let r = resolver(config(&f));
    let plan = r.resolve_mx("Multi.Test.").await.unwrap();
    assert_eq!(plan.domain, "multi.test");
    assert!(!plan.implicit);
    let names: Vec<_> = plan.hosts.iter().map(|h| (h.preference, h.name.as_str())).collect();
    assert_eq!(names, vec![(10, "mx1.multi.test"), (20, "mx2.multi.test"), (30, "mx3.multi.test")]);
    assert_eq!(plan.hosts[0].addresses, vec![ip("127.0.1.1")]);
    let targets: Vec<_> = plan.targets().map(|(_, a)| a).collect();
    assert_eq!(targets, vec![ip("127.0.1.1"), ip("127.0.1.2"), ip("127.0.1.3")]);
}

#[tokio::test]
async fn dns_equal_preferences_are_randomised() {
    let f = fixture().await;
    let r = resolver(config(&f));
    let mut orders = HashSet::new();
    for _ in 0..64 {
        let plan = r.resolve_mx("equal.test").await.unwrap();
        let names: Vec<_> = plan.hosts.iter().map(|h| h.name.clone()).collect();
        assert_eq!(names[2], "c.equal.test", "preference 20 always last");
        orders.insert(names[0].clone());
    }
    assert_eq!(orders.len(), 2, "both equal-preference hosts come first sometimes");
}

#[tokio::test]
async fn dns_implicit_mx_when_no_mx() {
    let f = fixture().await;
    let r = resolver(config(&f));
    let plan = r.resolve_mx("implicit.test").await.unwrap();
    assert!(plan.implicit);
    assert_eq!(plan.hosts.len(), 1);
    assert_eq!(plan.hosts[0].name, "implicit.test");
    assert_eq!(plan.hosts[0].preference, 0);
    assert_eq!(plan.hosts[0].addresses, vec![ip("127.0.3.1")]);
    assert_eq!(r.lookup_mx("implicit.test").await.unwrap_err(), DnsError::NoData);
}

#[tokio::test]
async fn dns_null_mx_is_permanent() {
    let f = fixture().await;
    let r = resolver(config(&f));
    let e = r.resolve_mx("nullmx.test").await.unwrap_err();
    assert_eq!(e, DnsError::NullMx);
    assert!(e.is_permanent());
}

#[tokio::test]
async fn dns_nxdomain_is_permanent_not_implicit() {
    let f = fixture().await;
    let r = resolver(config(&f));
    let e = r.resolve_mx("nx.test").await.unwrap_err();
    assert_eq!(e, DnsError::NxDomain);
    assert!(e.is_permanent());
    assert_eq!(r.lookup_a("nx.test").await.unwrap_err(), DnsError::NxDomain);
}

#[tokio::test]
async fn dns_cnames_followed_for_domain_and_mx_target() {
    let f = fixture().await;
    let r = resolver(config(&f));
    let plan = r.resolve_mx("alias.test").await.unwrap();
    assert_eq!(plan.hosts[0].name, "mx.target.test");
    assert_eq!(plan.hosts[0].addresses, vec![ip("127.0.4.1")]);
    let plan = r.resolve_mx("cnamemx.test").await.unwrap();
    assert_eq!(plan.hosts[0].name, "mxalias.cnamemx.test");
    assert_eq!(plan.hosts[0].addresses, vec![ip("127.0.5.1")]);
}

#[tokio::test]
async fn dns_ipv6_only_when_enabled() {
    let f = fixture().await;
    let r = resolver(config(&f));
    let plan = r.resolve_mx("v6.test").await.unwrap();
    assert_eq!(plan.hosts[0].addresses, vec![ip("127.0.6.1")]);
    let r6 = resolver(DnsConfig { enable_ipv6: true, ..config(&f) });
    let plan = r6.resolve_mx("v6.test").await.unwrap();
    assert_eq!(plan.hosts[0].addresses, vec![ip("127.0.6.1"), ip("::1")]);
    let plan = r6.resolve_mx("implicit.test").await.unwrap();
    assert_eq!(plan.hosts[0].addresses, vec![ip("127.0.3.1"), ip("::1")]);
}

#[tokio::test]
async fn dns_mx_host_without_address_is_skipped() {
    let f = fixture().await;
    let r = resolver(config(&f));
    let plan = r.resolve_mx("badhost.test").await.unwrap();
    assert_eq!(plan.hosts.len(), 1);
    assert_eq!(plan.hosts[0].name, "ok.badhost.test");
}

#[tokio::test]
async fn dns_max_mx_hosts_bounds_the_plan() {
    let f = fixture().await;
    let r = resolver(DnsConfig { max_mx_hosts: 2, ..config(&f) });
    let plan = r.resolve_mx("multi.test").await.unwrap();
    assert_eq!(plan.hosts.len(), 2);
    assert_eq!(plan.hosts[1].name, "mx2.multi.test");
}

#[tokio::test]
async fn dns_loop_guard_drops_self_and_less_preferred() {
    let f = fixture().await;
    let r = resolver(config(&f));
    let plan = r.resolve_mx("multi.test").await.unwrap();
    let mine = plan.without_self(&["MX2.multi.test."]);
    let names: Vec<_> = mine.hosts.iter().map(|h| h.name.as_str()).collect();
    assert_eq!(names, vec!["mx1.multi.test"]);
    assert!(plan.without_self(&["mx1.multi.test"]).hosts.is_empty());
    assert_eq!(plan.without_self(&["other.example"]), plan);
}

#[tokio::test]
async fn dns_idna_names_are_converted() {
    let zones = vec![
        TestZone::new("test").mail_domain("xn--bcher-kva.test", &[(10, "mx.xn--bcher-kva.test", ip("127.0.9.1"))])
    ];
    let f = fixture_with(zones).await;
    let r = resolver(config(&f));
    let plan = r.resolve_mx("Bücher.test").await.unwrap();
    assert_eq!(plan.domain, "xn--bcher-kva.test");
    assert_eq!(plan.hosts[0].addresses, vec![ip("127.0.9.1")]);
    assert!(matches!(r.resolve_mx("bad name.test").await, Err(DnsError::InvalidName(_))));
}

#[tokio::test]
async fn dns_txt_records_keep_their_strings() {
    let f = fixture().await;
    let r = resolver(config(&f));
    let txt = r.lookup_txt("txt.test").await.unwrap();
    assert_eq!(txt.len(), 1);
    assert_eq!(txt[0].to_string_lossy(), "v=spf1 -all");
    assert_eq!(txt[0].strings.len(), 2);
    let d = r.query_txt("_dmarc.txt.test").await.unwrap();
    assert_eq!(d.records[0].to_string_lossy(), "v=DMARC1; p=none");
    assert_eq!(d.source, Source::Upstream);
    assert_eq!(r.query_txt("_dmarc.txt.test").await.unwrap().source, Source::Cache);
}

#[tokio::test]
async fn dns_lookup_ip_v4_first() {
    let f = fixture().await;
    let r = resolver(DnsConfig { enable_ipv6: true, ..config(&f) });
    assert_eq!(r.lookup_ip("implicit.test").await.unwrap(), vec![IpAddr::V4(Ipv4Addr::new(127, 0, 3, 1)), ip("::1")]);
    assert_eq!(r.lookup_ip("nx.test").await.unwrap_err(), DnsError::NxDomain);
    let _ = standard_zones();
}
