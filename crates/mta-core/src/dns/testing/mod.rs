//! Test helpers (feature `testing`): an in-process authoritative DNS server (hickory-server,
//! in-memory zones), a fault-injecting UDP proxy in front of it that tests control, and a scripted
//! server ([`ScriptedDnsServer`]) for suites that define their own answers (RFC 7208's).
//!
//! ```ignore
//! let server = TestDnsServer::start(vec![
//!     TestZone::new("example.test").mail_domain("example.test", &[(10, "mx1.example.test", "127.0.0.2".parse()?)]),
//! ]).await?;
//! let proxy = FaultyProxy::start(server.addr()).await?;   // optional
//! let resolver = Resolver::new(DnsConfig { nameservers: vec![proxy.addr()], ..Default::default() })?;
//! ```

mod scripted;

pub use scripted::{Scripted, ScriptedDnsServer, ScriptedZone};

use std::collections::{HashMap, HashSet, VecDeque};
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, CNAME, MX, SOA, TLSA, TXT};
use hickory_proto::rr::{LowerName, Name, RData, Record};
use hickory_server::store::in_memory::InMemoryZoneHandler;
use hickory_server::zone_handler::{AxfrPolicy, Catalog, ZoneType};
use hickory_server::Server;
use parking_lot::Mutex;
use rand::Rng;
use tokio::net::{TcpListener, UdpSocket};
use tokio::task::JoinHandle;

/// `"a.example"` → the FQDN `a.example.`.
pub fn fqdn(name: &str) -> Name {
    let s = if name.ends_with('.') { name.to_string() } else { format!("{name}.") };
    Name::from_ascii(&s).unwrap_or_else(|e| panic!("bad test name {name}: {e}"))
}

/// One authoritative zone, built record by record. Has an SOA (negative TTL 60 s by default).
#[derive(Clone)]
pub struct TestZone {
    origin: Name,
    records: Vec<Record>,
    ttl: u32,
}

impl TestZone {
    /// A zone for `origin` with its SOA (minimum / negative TTL 60 s) and TTL 300 for records.
    pub fn new(origin: &str) -> Self {
        let origin = fqdn(origin);
        let mut z = Self { origin: origin.clone(), records: Vec::new(), ttl: 300 };
        z.set_soa(60);
        z
    }

    fn set_soa(&mut self, negative_ttl: u32) {
        self.records.retain(|r| !matches!(r.data, RData::SOA(_)));
        let soa = SOA::new(
            fqdn(&format!("ns.{}", self.origin)),
            fqdn(&format!("hostmaster.{}", self.origin)),
            1,
            3600,
            600,
            86_400,
            negative_ttl,
        );
        self.records.push(Record::from_rdata(self.origin.clone(), negative_ttl, RData::SOA(soa)));
    }

    /// Negative TTL (SOA minimum and SOA TTL) of the zone.
    pub fn negative_ttl(mut self, secs: u32) -> Self {
        self.set_soa(secs);
        self
    }

    /// TTL of the records added after this call.
    pub fn ttl(mut self, secs: u32) -> Self {
        self.ttl = secs;
        self
    }

    /// Add any record.
    pub fn record(mut self, r: Record) -> Self {
        self.records.push(r);
        self
    }

    fn rdata(self, name: &str, data: RData) -> Self {
        let ttl = self.ttl;
        self.record(Record::from_rdata(fqdn(name), ttl, data))
    }

    /// `name MX preference exchange`.
    pub fn mx(self, name: &str, preference: u16, exchange: &str) -> Self {
        self.rdata(name, RData::MX(MX::new(preference, fqdn(exchange))))
    }

    /// RFC 7505 null MX: `name MX 0 .`.
    pub fn null_mx(self, name: &str) -> Self {
        self.rdata(name, RData::MX(MX::new(0, Name::root())))
    }

    /// `name A ip`.
    pub fn a(self, name: &str, ip: Ipv4Addr) -> Self {
        self.rdata(name, RData::A(A(ip)))
    }

    /// `name AAAA ip`.
    pub fn aaaa(self, name: &str, ip: Ipv6Addr) -> Self {
        self.rdata(name, RData::AAAA(AAAA(ip)))
    }

    /// `name CNAME target`.
    pub fn cname(self, name: &str, target: &str) -> Self {
        self.rdata(name, RData::CNAME(CNAME(fqdn(target))))
    }

    /// `name TXT "s1" "s2" ...`.
    pub fn txt(self, name: &str, strings: &[&str]) -> Self {
        let v = strings.iter().map(|s| s.to_string()).collect();
        self.rdata(name, RData::TXT(TXT::new(v)))
    }

    /// A TLSA record (RFC 6698: usage, selector, matching type, association data).
    pub fn tlsa(self, name: &str, usage: u8, selector: u8, matching: u8, data: Vec<u8>) -> Self {
        let rdata = TLSA::new(usage.into(), selector.into(), matching.into(), data);
        self.rdata(name, RData::TLSA(rdata))
    }

    /// A mail domain: one MX per `(preference, host, address)` and the host's A/AAAA record.
    pub fn mail_domain(mut self, domain: &str, hosts: &[(u16, &str, IpAddr)]) -> Self {
        for (pref, host, ip) in hosts {
            self = self.mx(domain, *pref, host);
            self = match ip {
                IpAddr::V4(v4) => self.a(host, *v4),
                IpAddr::V6(v6) => self.aaaa(host, *v6),
            };
        }
        self
    }

    fn build(self) -> Result<InMemoryZoneHandler, String> {
        let mut h = InMemoryZoneHandler::empty(self.origin.clone(), ZoneType::Primary, AxfrPolicy::Deny);
        for r in self.records {
            if !h.upsert_mut(r.clone(), 1) {
                return Err(format!("cannot insert {r}"));
            }
        }
        Ok(h)
    }
}

/// The zones the resolver tests use (all under `.test`, addresses in 127.0.0.0/8 and ::1):
///
/// | domain | what |
/// |---|---|
/// | `multi.test` | MX 10 mx1, 20 mx2, 30 mx3 (`mxN.multi.test` = 127.0.1.N) |
/// | `equal.test` | MX 10 a, 10 b (127.0.2.1, 127.0.2.2), 20 c (127.0.2.3) |
/// | `implicit.test` | no MX, A 127.0.3.1, AAAA ::1 |
/// | `nullmx.test` | MX 0 . |
/// | `alias.test` | CNAME `target.test` (MX 10 mx.target.test = 127.0.4.1) |
/// | `cnamemx.test` | MX 10 `mxalias.cnamemx.test`, CNAME to `real.cnamemx.test` = 127.0.5.1 |
/// | `v6.test` | MX 10 mx.v6.test: A 127.0.6.1, AAAA ::1 |
/// | `txt.test` | TXT "v=spf1 " "-all"; `_dmarc.txt.test` TXT "v=DMARC1; p=none" |
/// | `short.test` | MX 10 mx.short.test (TTL 1 s), A 127.0.7.1 (TTL 1 s) |
/// | `badhost.test` | MX 10 missing.badhost.test (NXDOMAIN), 20 ok.badhost.test = 127.0.8.1 |
/// | `nx.test` | does not exist (in zone `test.`): NXDOMAIN |
pub fn standard_zones() -> Vec<TestZone> {
    let ip = |s: &str| -> IpAddr { s.parse().unwrap() };
    vec![TestZone::new("test")
        .negative_ttl(60)
        .mail_domain(
            "multi.test",
            &[
                (20, "mx2.multi.test", ip("127.0.1.2")),
                (10, "mx1.multi.test", ip("127.0.1.1")),
                (30, "mx3.multi.test", ip("127.0.1.3")),
            ],
        )
        .mail_domain(
            "equal.test",
            &[
                (10, "a.equal.test", ip("127.0.2.1")),
                (10, "b.equal.test", ip("127.0.2.2")),
                (20, "c.equal.test", ip("127.0.2.3")),
            ],
        )
        .a("implicit.test", Ipv4Addr::new(127, 0, 3, 1))
        .aaaa("implicit.test", Ipv6Addr::LOCALHOST)
        .null_mx("nullmx.test")
        .cname("alias.test", "target.test")
        .mail_domain("target.test", &[(10, "mx.target.test", ip("127.0.4.1"))])
        .mx("cnamemx.test", 10, "mxalias.cnamemx.test")
        .cname("mxalias.cnamemx.test", "real.cnamemx.test")
        .a("real.cnamemx.test", Ipv4Addr::new(127, 0, 5, 1))
        .mail_domain("v6.test", &[(10, "mx.v6.test", ip("127.0.6.1"))])
        .aaaa("mx.v6.test", Ipv6Addr::LOCALHOST)
        .txt("txt.test", &["v=spf1 ", "-all"])
        .txt("_dmarc.txt.test", &["v=DMARC1; p=none"])
        .mail_domain(
            "badhost.test",
            &[(10, "missing.badhost.test", ip("127.0.8.9")), (20, "ok.badhost.test", ip("127.0.8.1"))],
        )
        // remove the A of missing.badhost.test again: keep only its name in the MX
        .filter(|r| r.name != fqdn("missing.badhost.test"))
        .ttl(1)
        .mail_domain("short.test", &[(10, "mx.short.test", ip("127.0.7.1"))])]
}

impl TestZone {
    /// Keep only the records matching `keep`.
    pub fn filter(mut self, keep: impl Fn(&Record) -> bool) -> Self {
        self.records.retain(|r| keep(r));
        self
    }
}

/// An in-process authoritative DNS server on 127.0.0.1 (UDP and TCP, same port). Stops when
/// dropped.
pub struct TestDnsServer {
    addr: SocketAddr,
    zones: Vec<(LowerName, Arc<InMemoryZoneHandler>)>,
    _server: Server<Catalog>,
}

impl TestDnsServer {
    /// Serve `zones` on 127.0.0.1:<ephemeral>.
    pub async fn start(zones: Vec<TestZone>) -> io::Result<Self> {
        Self::start_on(IpAddr::V4(Ipv4Addr::LOCALHOST), zones).await
    }

    /// Serve `zones` on `ip`:<ephemeral>.
    pub async fn start_on(ip: IpAddr, zones: Vec<TestZone>) -> io::Result<Self> {
        let mut catalog = Catalog::new();
        let mut handlers = Vec::new();
        for z in zones {
            let origin = LowerName::new(&z.origin);
            let h = Arc::new(z.build().map_err(io::Error::other)?);
            catalog.upsert(origin.clone(), vec![h.clone()]);
            handlers.push((origin, h));
        }
        let (udp, tcp) = bind_pair(ip).await?;
        let addr = udp.local_addr()?;
        let mut server = Server::new(catalog);
        server.register_socket(udp);
        server.register_listener(tcp, Duration::from_secs(10), 65_535);
        Ok(Self { addr, zones: handlers, _server: server })
    }

    /// The server's address (UDP and TCP).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Add or replace a record at run time (in the most specific zone holding its name).
    pub async fn upsert(&self, record: Record) -> bool {
        let name = LowerName::new(&record.name);
        let zone = self.zones.iter().filter(|(o, _)| o.zone_of(&name)).max_by_key(|(o, _)| o.num_labels());
        match zone {
            Some((_, h)) => h.upsert(record, 2).await,
            None => false,
        }
    }
}

async fn bind_pair(ip: IpAddr) -> io::Result<(UdpSocket, TcpListener)> {
    let mut last = None;
    for _ in 0..20 {
        let udp = UdpSocket::bind(SocketAddr::new(ip, 0)).await?;
        match TcpListener::bind(udp.local_addr()?).await {
            Ok(tcp) => return Ok((udp, tcp)),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| io::Error::other("bind")))
}

/// What the proxy does with a query over its rate limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OverLimit {
    /// Answer REFUSED.
    Refuse,
    /// Drop silently (the client times out), like a cloud resolver's packet limit.
    Drop,
}

#[derive(Default)]
struct ProxyState {
    delay_us: AtomicU64,
    servfail_ppm: AtomicU32,
    drop_ppm: AtomicU32,
    rate_limit: AtomicU32,
    refuse_over_limit: AtomicBool,
    received: AtomicU64,
    forwarded: AtomicU64,
    limiter: Mutex<Option<(Instant, u32)>>,
    window: Mutex<(VecDeque<Instant>, usize)>,
    per_name: Mutex<HashMap<String, u64>>,
    /// Query names (lowercase FQDN) always answered SERVFAIL: a broken domain among healthy ones.
    servfail_names: Mutex<HashSet<String>>,
    /// Query names whose answers get the AD bit: the proxy plays a validating resolver for them.
    authenticated_names: Mutex<HashSet<String>>,
    /// Queries that asked for DNSSEC (AD or DO bit set).
    dnssec_asked: AtomicU64,
}

/// A UDP proxy in front of a DNS server, injecting faults and counting every packet received
/// (in total, per query name, and the most in any sliding second). UDP only.
pub struct FaultyProxy {
    addr: SocketAddr,
    state: Arc<ProxyState>,
    task: JoinHandle<()>,
}

impl Drop for FaultyProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FaultyProxy {
    /// Proxy on 127.0.0.1:<ephemeral> forwarding to `upstream`.
    pub async fn start(upstream: SocketAddr) -> io::Result<Self> {
        let sock = Arc::new(UdpSocket::bind("127.0.0.1:0").await?);
        let addr = sock.local_addr()?;
        let state = Arc::new(ProxyState::default());
        let st = state.clone();
        let task = tokio::spawn(async move {
            let mut buf = vec![0u8; 65_535];
            loop {
                let Ok((n, peer)) = sock.recv_from(&mut buf).await else {
                    continue;
                };
                let packet = buf[..n].to_vec();
                st.note_received();
                let (st, sock) = (st.clone(), sock.clone());
                tokio::spawn(async move { st.handle(packet, peer, sock, upstream).await });
            }
        });
        Ok(Self { addr, state, task })
    }

    /// The proxy's address: point the resolver here.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Delay every query by `d` before handling it.
    pub fn set_delay(&self, d: Duration) {
        self.state.delay_us.store(d.as_micros() as u64, Ordering::Relaxed);
    }

    /// Answer SERVFAIL to this fraction of queries (0..1), at random.
    pub fn set_servfail_ratio(&self, r: f64) {
        self.state.servfail_ppm.store(ppm(r), Ordering::Relaxed);
    }

    /// Always answer SERVFAIL for these query names (any type), whatever the other faults; an
    /// empty list turns it off. A broken domain, as opposed to a failing upstream.
    pub fn set_servfail_names(&self, names: &[&str]) {
        *self.state.servfail_names.lock() = names.iter().map(|n| fqdn(n).to_ascii().to_ascii_lowercase()).collect();
    }

    /// Set the AD bit on answers for these query names (any type), as a validating resolver does for a
    /// signed zone; an empty list turns it off.
    pub fn set_authenticated_names(&self, names: &[&str]) {
        *self.state.authenticated_names.lock() =
            names.iter().map(|n| fqdn(n).to_ascii().to_ascii_lowercase()).collect();
    }

    /// Queries received that carried the AD or DO bit (`dns.dnssec = "trust-ad"` sets both).
    pub fn dnssec_asked(&self) -> u64 {
        self.state.dnssec_asked.load(Ordering::Relaxed)
    }

    /// Drop this fraction of queries (0..1), at random.
    pub fn set_drop_ratio(&self, r: f64) {
        self.state.drop_ppm.store(ppm(r), Ordering::Relaxed);
    }

    /// Accept at most `qps` queries per (fixed) second; `0` turns the limit off.
    pub fn set_rate_limit(&self, qps: u32, over: OverLimit) {
        self.state.refuse_over_limit.store(over == OverLimit::Refuse, Ordering::Relaxed);
        self.state.rate_limit.store(qps, Ordering::Relaxed);
    }

    /// Turn every fault off.
    pub fn heal(&self) {
        self.set_delay(Duration::ZERO);
        self.set_servfail_ratio(0.0);
        self.set_drop_ratio(0.0);
        self.set_rate_limit(0, OverLimit::Drop);
        self.set_servfail_names(&[]);
    }

    /// Packets received since start (or the last `reset_counts`).
    pub fn received(&self) -> u64 {
        self.state.received.load(Ordering::Relaxed)
    }

    /// Packets forwarded to the server.
    pub fn forwarded(&self) -> u64 {
        self.state.forwarded.load(Ordering::Relaxed)
    }

    /// Packets received for query name `name` (any type).
    pub fn received_for(&self, name: &str) -> u64 {
        let key = fqdn(name).to_ascii().to_ascii_lowercase();
        self.state.per_name.lock().get(&key).copied().unwrap_or(0)
    }

    /// The most packets received within any sliding second.
    pub fn max_per_second(&self) -> usize {
        self.state.window.lock().1
    }

    /// Reset every counter.
    pub fn reset_counts(&self) {
        self.state.received.store(0, Ordering::Relaxed);
        self.state.forwarded.store(0, Ordering::Relaxed);
        *self.state.window.lock() = (VecDeque::new(), 0);
        self.state.per_name.lock().clear();
    }
}

fn ppm(r: f64) -> u32 {
    (r.clamp(0.0, 1.0) * 1_000_000.0) as u32
}

impl ProxyState {
    fn note_received(&self) {
        self.received.fetch_add(1, Ordering::Relaxed);
        let now = Instant::now();
        let mut w = self.window.lock();
        w.0.push_back(now);
        while let Some(front) = w.0.front() {
            if now.duration_since(*front) >= Duration::from_secs(1) {
                w.0.pop_front();
            } else {
                break;
            }
        }
        w.1 = w.1.max(w.0.len());
    }

    fn over_limit(&self) -> bool {
        let limit = self.rate_limit.load(Ordering::Relaxed);
        if limit == 0 {
            return false;
        }
        let now = Instant::now();
        let mut l = self.limiter.lock();
        let (start, count) = l.get_or_insert((now, 0));
        if now.duration_since(*start) >= Duration::from_secs(1) {
            *start = now;
            *count = 0;
        }
        *count += 1;
        *count > limit
    }

    async fn handle(&self, packet: Vec<u8>, peer: SocketAddr, sock: Arc<UdpSocket>, upstream: SocketAddr) {
        let msg = Message::from_vec(&packet).ok();
        let mut broken_name = false;
        let mut authenticated = false;
        if let Some(m) = &msg {
            if m.metadata.authentic_data || m.edns.as_ref().is_some_and(|e| e.flags().dnssec_ok) {
                self.dnssec_asked.fetch_add(1, Ordering::Relaxed);
            }
        }
        if let Some(q) = msg.as_ref().and_then(|m| m.queries.first()) {
            let name = q.name().to_ascii().to_ascii_lowercase();
            broken_name = self.servfail_names.lock().contains(&name);
            authenticated = self.authenticated_names.lock().contains(&name);
            *self.per_name.lock().entry(name).or_default() += 1;
        }
        let delay = Duration::from_micros(self.delay_us.load(Ordering::Relaxed));
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        let error_reply = |code: ResponseCode| -> Option<Vec<u8>> {
            let m = msg.as_ref()?;
            let mut r = Message::response(m.metadata.id, m.metadata.op_code);
            r.metadata.recursion_desired = m.metadata.recursion_desired;
            r.metadata.recursion_available = true;
            r.metadata.response_code = code;
            r.add_queries(m.queries.iter().cloned());
            r.to_vec().ok()
        };
        if self.over_limit() {
            if self.refuse_over_limit.load(Ordering::Relaxed) {
                if let Some(b) = error_reply(ResponseCode::Refused) {
                    let _ = sock.send_to(&b, peer).await;
                }
            }
            return;
        }
        let roll = rand::rng().random_range(0..1_000_000u32);
        if roll < self.drop_ppm.load(Ordering::Relaxed) {
            return;
        }
        let roll = rand::rng().random_range(0..1_000_000u32);
        if broken_name || roll < self.servfail_ppm.load(Ordering::Relaxed) {
            if let Some(b) = error_reply(ResponseCode::ServFail) {
                let _ = sock.send_to(&b, peer).await;
            }
            return;
        }
        self.forwarded.fetch_add(1, Ordering::Relaxed);
        let Ok(out) = UdpSocket::bind("127.0.0.1:0").await else {
            return;
        };
        if out.send_to(&packet, upstream).await.is_err() {
            return;
        }
        let mut buf = vec![0u8; 65_535];
        if let Ok(Ok((n, _))) = tokio::time::timeout(Duration::from_secs(5), out.recv_from(&mut buf)).await {
            let mut reply = buf[..n].to_vec();
            if authenticated {
                if let Ok(mut m) = Message::from_vec(&reply) {
                    m.metadata.authentic_data = true;
                    if let Ok(b) = m.to_vec() {
                        reply = b;
                    }
                }
            }
            let _ = sock.send_to(&reply, peer).await;
        }
    }
}
