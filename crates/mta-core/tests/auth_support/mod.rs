//! Shared set-up of the auth tests: an in-process authoritative DNS server with the zones a test
//! defines, our resolver pool in front of it, the pool's loopback stub, and a mail-auth
//! authenticator pointed at the stub — the same path as in production.
#![allow(dead_code)]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use mta_core::auth::{self, KeyAlgorithm, KeyConfig, MessageAuthenticator, Signer};
use mta_core::dns::testing::{FaultyProxy, TestDnsServer, TestZone};
use mta_core::dns::{DnsConfig, Resolver};
use tokio::task::JoinHandle;

/// The client address used by the inbound tests.
pub const CLIENT: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));
/// An address no test SPF record allows.
pub const STRANGER: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 99));
/// Our authserv-id.
pub const HOST: &str = "mx.receiver.test";

pub struct Env {
    pub server: TestDnsServer,
    pub proxy: Option<FaultyProxy>,
    pub resolver: Resolver,
    pub stub: SocketAddr,
    pub auth: MessageAuthenticator,
    task: JoinHandle<()>,
}

impl Drop for Env {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub fn dns_config(upstream: SocketAddr) -> DnsConfig {
    DnsConfig {
        nameservers: vec![upstream],
        min_ttl: Duration::ZERO,
        lookup_timeout: Duration::from_secs(2),
        query_timeout: Duration::from_secs(1),
        ..DnsConfig::default()
    }
}

/// Serve `zones`; resolver → (proxy →) server; stub; authenticator.
pub async fn env_with(zones: Vec<TestZone>, with_proxy: bool) -> Env {
    let server = TestDnsServer::start(zones).await.expect("dns server");
    let proxy = if with_proxy { Some(FaultyProxy::start(server.addr()).await.expect("proxy")) } else { None };
    let upstream = proxy.as_ref().map_or(server.addr(), |p| p.addr());
    let resolver = Resolver::new(dns_config(upstream)).expect("resolver");
    let (stub, task) = resolver.serve_stub("127.0.0.1:0".parse().unwrap()).await.expect("stub");
    let auth = auth::authenticator(stub, resolver.config().lookup_timeout).expect("authenticator");
    Env { server, proxy, resolver, stub, auth, task }
}

pub async fn env(zones: Vec<TestZone>) -> Env {
    env_with(zones, false).await
}

pub fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/auth").join(name)
}

pub fn key(domain: &str, selector: &str, algorithm: KeyAlgorithm, file: &str) -> KeyConfig {
    KeyConfig {
        domain: domain.into(),
        selector: selector.into(),
        algorithm,
        key_file: fixture(file),
        headers: Vec::new(),
    }
}

pub fn rsa(domain: &str, selector: &str) -> KeyConfig {
    key(domain, selector, KeyAlgorithm::RsaSha256, "rsa2048.pem")
}

pub fn ed(domain: &str, selector: &str) -> KeyConfig {
    key(domain, selector, KeyAlgorithm::Ed25519Sha256, "ed25519.pem")
}

pub fn signer(keys: &[KeyConfig]) -> Signer {
    Signer::load_keys(keys).expect("load keys")
}

/// Add each key record of `signer` to `zone` (TXT split into 255-byte strings).
pub fn publish(mut zone: TestZone, signer: &Signer) -> TestZone {
    for (name, value) in signer.dns_records() {
        zone = txt(zone, &name, &value);
    }
    zone
}

/// `name TXT value`, split into 255-byte character-strings.
pub fn txt(zone: TestZone, name: &str, value: &str) -> TestZone {
    let parts: Vec<&str> = value.as_bytes().chunks(255).map(|c| std::str::from_utf8(c).unwrap()).collect();
    zone.txt(name, &parts)
}

/// A small message with CRLF line ends.
pub fn message(from: &str, subject: &str, body: &str) -> Vec<u8> {
    format!(
        "From: Sender <{from}>\r\nTo: rcpt@receiver.test\r\nSubject: {subject}\r\nDate: Mon, 1 Jan 2024 00:00:00 +0000\r\nMessage-ID: <1@{}>\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n{body}",
        from.rsplit_once('@').map_or("x", |(_, d)| d)
    )
    .into_bytes()
}

/// `signature(s) || message`.
pub fn signed(signer: &Signer, msg: &[u8]) -> Vec<u8> {
    let sig = signer.sign(msg).expect("sign").expect("a key matches");
    let mut out = sig.into_bytes();
    out.extend_from_slice(msg);
    out
}
