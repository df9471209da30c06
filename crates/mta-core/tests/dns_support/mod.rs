//! Shared set-up of the DNS tests: the standard test zones on an in-process server, a faulty
//! proxy in front, and a resolver config fit for tests (short TTL floors).
#![allow(dead_code)]

use std::time::Duration;

use mta_core::dns::testing::{standard_zones, FaultyProxy, TestDnsServer, TestZone};
use mta_core::dns::{DnsConfig, Resolver};

pub struct Fixture {
    pub server: TestDnsServer,
    pub proxy: FaultyProxy,
}

pub async fn fixture() -> Fixture {
    fixture_with(standard_zones()).await
}

pub async fn fixture_with(zones: Vec<TestZone>) -> Fixture {
    let server = TestDnsServer::start(zones).await.expect("dns server");
    let proxy = FaultyProxy::start(server.addr()).await.expect("proxy");
    Fixture { server, proxy }
}

pub fn config(f: &Fixture) -> DnsConfig {
    DnsConfig {
        nameservers: vec![f.proxy.addr()],
        min_ttl: Duration::ZERO,
        lookup_timeout: Duration::from_secs(3),
        query_timeout: Duration::from_secs(1),
        ..DnsConfig::default()
    }
}

pub fn resolver(cfg: DnsConfig) -> Resolver {
    Resolver::new(cfg).expect("resolver")
}
