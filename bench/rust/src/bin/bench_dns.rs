//! Benchmark helper: a loopback DNS server naming the benchmark's sinks: `d0.bench` ... `d{N-1}.bench` each
//! have `MX 10 mx.dN.bench` with `A <ip>`. Prints `listening <addr>` and serves until killed.
//!
//! `cargo run --release -p mta-bench --bin bench_dns -- 100 127.0.0.1 [port]`
//!
//! `BENCH_DNS_TXT="name=text|name=text"` adds TXT records in the `bench` zone (SPF, DKIM keys and DMARC
//! records of the inbound verification benchmark, `bench/auth/inbound.py`); a text longer than 255 octets is
//! split into strings of 255. `BENCH_DNS_A="name=ip|name=ip"` adds A records (the MTA-STS policy host of
//! `bench/delivery/tls_policy.py`).

use std::net::{IpAddr, Ipv4Addr};

use mta_core::dns::testing::{TestDnsServer, TestZone};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let domains: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(100);
    let ip: Ipv4Addr = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(Ipv4Addr::LOCALHOST);
    let mut zone = TestZone::new("bench").ttl(3600);
    for i in 0..domains {
        zone = zone.mail_domain(&format!("d{i}.bench"), &[(10, &format!("mx.d{i}.bench"), IpAddr::V4(ip))]);
    }
    zone = zone.mail_domain("sender.bench", &[(10, "mx.sender.bench", IpAddr::V4(ip))]);
    for record in std::env::var("BENCH_DNS_TXT").unwrap_or_default().split('|').filter(|r| !r.is_empty()) {
        let Some((name, text)) = record.split_once('=') else {
            return Err(format!("BENCH_DNS_TXT entry without '=': {record}").into());
        };
        let strings: Vec<&str> = text.as_bytes().chunks(255).filter_map(|c| std::str::from_utf8(c).ok()).collect();
        zone = zone.txt(name, &strings);
    }
    for record in std::env::var("BENCH_DNS_A").unwrap_or_default().split('|').filter(|r| !r.is_empty()) {
        let Some((name, addr)) = record.split_once('=') else {
            return Err(format!("BENCH_DNS_A entry without '=': {record}").into());
        };
        zone = zone.a(name, addr.parse()?);
    }
    let server = TestDnsServer::start(vec![zone]).await?;
    println!("listening {}", server.addr());
    tokio::signal::ctrl_c().await?;
    Ok(())
}
