//! One upstream recursive resolver: its own single-server hickory resolver (the protocol engine,
//! no cache, no retries), its token bucket, and its health (smoothed RTT, failure rates).

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hickory_proto::op::{DnsRequest, Edns, ResponseCode};
use hickory_resolver::config::{
    NameServerConfig, ProtocolConfig, ResolveHosts, ResolverConfig, ServerOrderingStrategy,
};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::udp::UdpClientStream;
use hickory_resolver::net::xfer::{DnsExchange, DnsHandle};
use hickory_resolver::net::{DnsError as HickoryDnsError, NetError, NoRecords};
use hickory_resolver::{ConnectionProvider, PoolContext};
use metrics::{counter, gauge};
use parking_lot::Mutex;

use super::config::DnsConfig;
use super::error::{DnsError, TransientKind};
use super::trouble::{Change, Trouble};

/// hickory's connection provider, except that a UDP exchange sends its query ONCE.
///
/// hickory 0.26's `UdpClientStream` retransmits a query up to 3 times (every 1.2 x SRTT, at
/// least 333 ms) within one "attempt", and the resolver gives no option to change it: a slow
/// upstream would see 3 packets per query from a layer we cannot see. We own retries (with a
/// budget), so the UDP stream gets `max_retries = 1` here. TCP is unchanged (used after a
/// truncated answer).
///
/// With `dns.dnssec = "trust-ad"` every query also carries the AD bit and EDNS's DO bit: a validating
/// resolver sets AD in its answer only when asked by one of them (RFC 6840 §5.7).
#[derive(Clone, Default)]
pub(crate) struct SingleShotProvider {
    runtime: TokioRuntimeProvider,
    ask_ad: bool,
}

/// One connection to an upstream; sets AD and DO on each request when asked to.
#[derive(Clone)]
pub(crate) struct Exchange {
    inner: DnsExchange<TokioRuntimeProvider>,
    ask_ad: bool,
}

impl DnsHandle for Exchange {
    type Response = <DnsExchange<TokioRuntimeProvider> as DnsHandle>::Response;
    type Runtime = TokioRuntimeProvider;

    fn send(&self, mut request: DnsRequest) -> Self::Response {
        if self.ask_ad {
            request.metadata.authentic_data = true;
            request.edns.get_or_insert_with(|| {
                let mut edns = Edns::new();
                edns.set_max_payload(1232);
                edns
            });
            if let Some(edns) = request.edns.as_mut() {
                edns.set_dnssec_ok(true);
            }
        }
        self.inner.send(request)
    }
}

type ConnFuture = Pin<Box<dyn Future<Output = Result<Exchange, NetError>> + Send>>;

impl ConnectionProvider for SingleShotProvider {
    type Conn = Exchange;
    type FutureConn = ConnFuture;
    type RuntimeProvider = TokioRuntimeProvider;

    fn new_connection(
        &self,
        ip: IpAddr,
        config: &hickory_resolver::config::ConnectionConfig,
        cx: &PoolContext,
    ) -> Result<Self::FutureConn, NetError> {
        let ask_ad = self.ask_ad;
        match &config.protocol {
            ProtocolConfig::Udp => {
                let remote = SocketAddr::new(ip, config.port);
                let provider = self.runtime.clone();
                let timeout = cx.options.timeout;
                let os_ports = cx.options.os_port_selection;
                let avoid = cx.options.avoid_local_udp_ports.clone();
                let bind = config.bind_addr;
                Ok(Box::pin(async move {
                    let inner = UdpClientStream::builder(remote, provider)
                        .with_timeout(Some(timeout))
                        .with_os_port_selection(os_ports)
                        .avoid_local_ports(avoid)
                        .with_bind_addr(bind)
                        .with_max_retries(1)
                        .exchange();
                    Ok(Exchange { inner, ask_ad })
                }))
            }
            _ => {
                let tcp = self.runtime.new_connection(ip, config, cx)?;
                Ok(Box::pin(async move { Ok(Exchange { inner: tcp.await?, ask_ad }) }))
            }
        }
    }

    fn runtime_provider(&self) -> &Self::RuntimeProvider {
        &self.runtime
    }
}

pub(crate) type Engine = hickory_resolver::Resolver<SingleShotProvider>;

/// Build the hickory resolver for one upstream: just that server, no cache, no retry, one
/// server at a time, no hosts file, no search list (we always pass FQDNs).
pub(crate) fn engine_for(addr: SocketAddr, cfg: &DnsConfig) -> Result<Engine, DnsError> {
    let mut ns = NameServerConfig::udp_and_tcp(addr.ip());
    for conn in ns.connections.iter_mut() {
        conn.port = addr.port();
    }
    let mut builder = hickory_resolver::Resolver::builder_with_config(
        ResolverConfig::from_name_servers(vec![ns]),
        SingleShotProvider { runtime: TokioRuntimeProvider::default(), ask_ad: cfg.dnssec == super::Dnssec::TrustAd },
    );
    let o = builder.options_mut();
    o.timeout = cfg.query_timeout;
    o.attempts = 0; // RetryDnsHandle: remaining retries after the first try
    o.cache_size = 0;
    o.num_concurrent_reqs = 1;
    o.server_ordering_strategy = ServerOrderingStrategy::UserProvidedOrder;
    o.use_hosts_file = ResolveHosts::Never;
    o.ndots = 0;
    o.try_tcp_on_error = false;
    o.preserve_intermediates = true;
    // hickory answers `Busy` above this per connection and then re-sends in a loop: our own
    // in-flight cap must be the binding one.
    o.max_active_requests = o.max_active_requests.max(cfg.max_in_flight + 1);
    builder.build().map_err(|e| DnsError::InvalidName(format!("resolver for {addr}: {e}")))
}

/// What one attempt to one upstream came back with (before caching).
#[derive(Debug)]
pub(crate) enum Reply {
    Answer(hickory_resolver::lookup::Lookup),
    /// NXDOMAIN or NODATA, with the negative TTL from the SOA when the server sent one.
    Negative {
        nxdomain: bool,
        ttl: Option<u32>,
    },
    Failed(TransientKind),
}

impl Reply {
    pub fn from_result(r: Result<hickory_resolver::lookup::Lookup, NetError>) -> Self {
        match r {
            Ok(l) => Self::Answer(l),
            Err(NetError::Dns(HickoryDnsError::NoRecordsFound(NoRecords { response_code, negative_ttl, .. }))) => {
                Self::Negative { nxdomain: response_code == ResponseCode::NXDomain, ttl: negative_ttl }
            }
            Err(NetError::Dns(HickoryDnsError::ResponseCode(ResponseCode::Refused))) => {
                Self::Failed(TransientKind::Refused)
            }
            Err(NetError::Dns(_)) => Self::Failed(TransientKind::ServFail),
            Err(NetError::Timeout) => Self::Failed(TransientKind::Timeout),
            Err(_) => Self::Failed(TransientKind::Network),
        }
    }

    /// rcode label for `mta_dns_answers_total`.
    pub fn rcode_label(&self) -> &'static str {
        match self {
            Self::Answer(_) => "noerror",
            Self::Negative { nxdomain: true, .. } => "nxdomain",
            Self::Negative { nxdomain: false, .. } => "nodata",
            Self::Failed(TransientKind::ServFail) => "servfail",
            Self::Failed(TransientKind::Refused) => "refused",
            Self::Failed(TransientKind::Timeout) => "timeout",
            Self::Failed(_) => "network",
        }
    }
}

/// GCRA token bucket: each query reserves the next send slot. A caller whose slot would come
/// after its deadline does not reserve (and the query goes elsewhere or fails `Overloaded`).
///
/// Reservation paces; `commit` makes the cap exact: it keeps the instants of the last `qps`
/// sends, and a send is allowed only if the `qps`-th previous one is at least 1 s old, so no
/// sliding second ever holds more than `qps` sends even when timers wake late in a batch.
#[derive(Debug)]
pub(crate) struct TokenBucket {
    sent: std::collections::VecDeque<Instant>,
    cap: usize,
    /// Theoretical arrival time of the next query.
    tat: Instant,
    interval: Duration,
    /// How far ahead of `tat` a query may go (the burst): one slot.
    tolerance: Duration,
}

impl TokenBucket {
    pub fn new(qps: u32) -> Self {
        let interval = Duration::from_secs(1) / qps.max(1);
        Self {
            sent: std::collections::VecDeque::with_capacity(qps.max(1) as usize),
            cap: qps.max(1) as usize,
            tat: Instant::now(),
            interval,
            tolerance: interval,
        }
    }

    /// Record a send now, or say when the window allows the next one.
    pub fn commit(&mut self, now: Instant) -> Result<(), Instant> {
        if self.sent.len() >= self.cap {
            let oldest = self.sent[0];
            let free_at = oldest + Duration::from_secs(1);
            if free_at > now {
                return Err(free_at);
            }
            self.sent.pop_front();
        }
        self.sent.push_back(now);
        Ok(())
    }

    /// Reserve a slot: `Some(send_at)` (maybe now), or `None` if it would come after `deadline`.
    pub fn reserve(&mut self, now: Instant, deadline: Instant) -> Option<Instant> {
        let tat = self.tat.max(now);
        let send_at = (tat.checked_sub(self.tolerance).unwrap_or(now)).max(now);
        if send_at > deadline {
            return None;
        }
        self.tat = tat + self.interval;
        Some(send_at)
    }
}

/// Smoothed health of an upstream.
///
/// Rates are exponentially weighted over queries (alpha 1/32) and decay with time when no query
/// comes (half-life 10 s) so a backed-off upstream is tried again. Only what says something about
/// the upstream counts: timeouts, network errors and SERVFAIL. A single broken destination domain
/// cannot weigh much: its failure is memoized (`failure_memo`) and its lookups coalesced, so it
/// costs one sample per memo period, among the samples of every other name.
#[derive(Debug)]
pub(crate) struct Health {
    pub srtt: f64, // seconds
    pub timeout_rate: f64,
    pub servfail_rate: f64,
    pub last: Instant,
}

const ALPHA: f64 = 1.0 / 32.0;
const SRTT_ALPHA: f64 = 1.0 / 8.0;
const DECAY_HALF_LIFE: f64 = 10.0;

impl Health {
    fn decay(&self, now: Instant) -> f64 {
        let age = now.saturating_duration_since(self.last).as_secs_f64();
        0.5f64.powf(age / DECAY_HALF_LIFE)
    }

    pub fn observe(&mut self, now: Instant, rtt: Duration, outcome: Option<TransientKind>, timeout: Duration) {
        let d = self.decay(now);
        self.timeout_rate *= d;
        self.servfail_rate *= d;
        let (t, s, sample) = match outcome {
            None => (0.0, 0.0, rtt),
            Some(TransientKind::Timeout | TransientKind::Network) => (1.0, 0.0, timeout),
            Some(_) => (0.0, 1.0, rtt),
        };
        self.timeout_rate += ALPHA * (t - self.timeout_rate);
        self.servfail_rate += ALPHA * (s - self.servfail_rate);
        self.srtt += SRTT_ALPHA * (sample.as_secs_f64() - self.srtt);
        self.last = now;
    }

    /// Lower is better. Used to weigh the choice of upstream.
    pub fn score(&self, now: Instant) -> f64 {
        let d = self.decay(now);
        // a penalised srtt decays back toward 1 ms when the upstream is not used
        let srtt = (self.srtt * d).max(0.000_5);
        srtt * (1.0 + 20.0 * (self.timeout_rate + self.servfail_rate) * d)
    }
}

/// One upstream of the pool.
pub(crate) struct Upstream {
    pub addr: SocketAddr,
    pub label: String,
    pub engine: Engine,
    pub bucket: Mutex<TokenBucket>,
    pub health: Mutex<Health>,
    /// Failing across many names now? Decides whether a failure is the name's or ours.
    trouble: Mutex<Trouble>,
    pub queries: AtomicU64,
}

impl Upstream {
    pub fn new(addr: SocketAddr, cfg: &DnsConfig) -> Result<Self, DnsError> {
        Ok(Self {
            addr,
            label: addr.to_string(),
            engine: engine_for(addr, cfg)?,
            bucket: Mutex::new(TokenBucket::new(cfg.max_qps_per_upstream)),
            health: Mutex::new(Health { srtt: 0.001, timeout_rate: 0.0, servfail_rate: 0.0, last: Instant::now() }),
            trouble: Mutex::new(Trouble::default()),
            queries: AtomicU64::new(0),
        })
    }

    pub fn count_query(&self) {
        self.queries.fetch_add(1, Ordering::Relaxed);
    }

    /// Feed the outcome of one packet for query name `name` (hashed) to the trouble detector.
    pub fn note_outcome(&self, now: Instant, name: u64, failed: bool) {
        let change = self.trouble.lock().observe(now, name, failed);
        match change {
            Some(Change::Entered) => {
                counter!("mta_dns_upstream_trouble_total", "upstream" => self.label.clone()).increment(1);
                gauge!("mta_dns_upstream_in_trouble", "upstream" => self.label.clone()).set(1.0);
                tracing::warn!(upstream = %self.addr, "DNS upstream failing across many names; per-name back-off suspended");
            }
            Some(Change::Recovered) => {
                gauge!("mta_dns_upstream_in_trouble", "upstream" => self.label.clone()).set(0.0);
                tracing::info!(upstream = %self.addr, "DNS upstream answering again; names failed in its trouble are retried");
            }
            None => {}
        }
    }

    /// Failing across many names now: a failure from it says nothing about the name.
    pub fn in_trouble(&self) -> bool {
        self.trouble.lock().in_trouble()
    }

    /// Answering now, after a trouble that ended after `at` (see `Trouble::recovered_since`).
    pub fn recovered_since(&self, at: Instant) -> bool {
        self.trouble.lock().recovered_since(at)
    }
}
