//! Cost of one SPF evaluation on a warm cache: our evaluator (through the pool directly, and
//! through the loopback stub as `Verifier::new` without a resolver does) against mail-auth 0.13's
//! (through the stub, as it was used before). Record: `ip4`, an `include` with `a` and `mx`, `-all`;
//! the client matches the last `mx` host, so every term is evaluated.
//!
//! `cargo run --release -p mta-bench --bin spf_bench [-- N]`

use std::net::IpAddr;
use std::time::Instant;

use mail_auth::spf::verify::SpfParameters;
use mta_core::auth::spf::{Spf, SpfDns};
use mta_core::dns::testing::{TestDnsServer, TestZone};
use mta_core::dns::{DnsConfig, Resolver};

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let n: u32 = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(20_000);
    let zone = TestZone::new("test")
        .txt("example.test", &["v=spf1 ip4:198.51.100.0/24 include:_spf.example.test -all"])
        .txt("_spf.example.test", &["v=spf1 a:web.example.test mx -all"])
        .a("web.example.test", "203.0.113.1".parse().unwrap())
        .mx("_spf.example.test", 10, "mx1.example.test")
        .mx("_spf.example.test", 20, "mx2.example.test")
        .a("mx1.example.test", "203.0.113.2".parse().unwrap())
        .a("mx2.example.test", "192.0.2.25".parse().unwrap());
    let server = TestDnsServer::start(vec![zone]).await.expect("dns");
    let resolver = Resolver::new(DnsConfig { nameservers: vec![server.addr()], ..DnsConfig::default() }).expect("pool");
    let (stub, _task) = resolver.serve_stub("127.0.0.1:0".parse().unwrap()).await.expect("stub");
    let ma = mta_core::auth::authenticator(stub, resolver.config().lookup_timeout).expect("authenticator");
    let ip: IpAddr = "192.0.2.25".parse().unwrap();
    let ours_pool = Spf::new(SpfDns::Pool(resolver.clone()), "mx.receiver.test");
    let ours_stub = Spf::new(SpfDns::Hickory(Box::new(ma.0.clone())), "mx.receiver.test");

    let bench = |name: &'static str, per: std::time::Duration| {
        println!(
            "{name:<28} {:>8.1} µs/evaluation  ({:.0}/s on one thread)",
            per.as_secs_f64() * 1e6,
            1.0 / per.as_secs_f64()
        );
    };
    // warm the cache
    assert_eq!(ours_pool.verify_mail_from(ip, "mail.example.test", "a@example.test").await.result.as_str(), "pass");
    let t = Instant::now();
    for _ in 0..n {
        let o = ours_pool.verify_mail_from(ip, "mail.example.test", "a@example.test").await;
        assert_eq!(o.result.as_str(), "pass");
    }
    bench("ours, pool directly", t.elapsed() / n);
    let t = Instant::now();
    for _ in 0..n {
        let o = ours_stub.verify_mail_from(ip, "mail.example.test", "a@example.test").await;
        assert_eq!(o.result.as_str(), "pass");
    }
    bench("ours, via loopback stub", t.elapsed() / n);
    let t = Instant::now();
    for _ in 0..n {
        let p = SpfParameters::verify_mail_from(ip, "mail.example.test", "mx.receiver.test", "a@example.test");
        let o = ma.verify_spf(p).await;
        assert_eq!(o.result(), mail_auth::SpfResult::Pass);
    }
    bench("mail-auth 0.13, via stub", t.elapsed() / n);
}
