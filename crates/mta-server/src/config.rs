//! The TOML configuration (every key in docs/configuration.md): typed sections, named defaults, unknown keys refused.
//!
//! Every key is optional; the embedded defaults are what `cargo run -p mta-server` runs with. Errors from the
//! TOML layer already name the key and line; [`Config::validate`] adds the checks serde cannot express.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::duration::HumanDuration;

/// The whole configuration file.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Node identity and lifecycle.
    pub server: ServerSection,
    /// SMTP listeners and session limits.
    pub smtp: SmtpSection,
    /// HTTP API listener and keys.
    pub http: HttpSection,
    /// Where the durable spool lives.
    pub spool: SpoolSection,
    /// The resolver pool's upstreams and caps.
    pub dns: DnsSection,
    /// Outbound delivery settings.
    pub delivery: DeliverySection,
    /// Per-destination overrides of delivery limits.
    pub shaping: Vec<Shaping>,
    /// Fixed next hops (smart hosts) per destination domain.
    pub route: Vec<Route>,
    /// Inbound SPF/DKIM/DMARC policy.
    pub auth: AuthSection,
    /// Outbound DKIM signing keys.
    pub dkim: DkimSection,
    /// Load-shedding thresholds.
    pub backpressure: BackpressureSection,
    /// Logs and the delivery event log.
    pub log: LogSection,
    /// Test-only switches.
    pub debug: DebugSection,
}

/// `[server]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerSection {
    /// EHLO name, `Received:` by-name and Authentication-Results authserv-id.
    pub hostname: String,
    /// Part of every queue id so ids are unique across a fleet.
    pub node_id: String,
    /// How long a graceful stop may take before the rest stays queued.
    pub shutdown_timeout: HumanDuration,
}

impl Default for ServerSection {
    fn default() -> Self {
        let hostname = machine_hostname();
        let node_id = hostname.split('.').next().unwrap_or("node").to_string();
        ServerSection { hostname, node_id, shutdown_timeout: HumanDuration::secs(30) }
    }
}

/// The machine's hostname, or `localhost` if it cannot be read.
pub fn machine_hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname NUL-terminates within it on success.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc == 0 {
        let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
        if let Ok(s) = std::str::from_utf8(&buf[..end]) {
            if !s.is_empty() {
                return s.to_string();
            }
        }
    }
    "localhost".to_string()
}

/// Listener modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ListenerMode {
    /// Port 25 style: relay rules apply, AUTH optional.
    Smtp,
    /// Port 587 style: AUTH required before MAIL.
    Submission,
    /// Port 465 style: implicit TLS.
    Smtps,
}

/// One `[[smtp.listener]]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerSection {
    /// Address to bind.
    pub address: SocketAddr,
    /// Protocol mode.
    #[serde(default = "default_mode")]
    pub mode: ListenerMode,
    /// Expect a PROXY protocol (v1 or v2) header before SMTP (behind a load balancer).
    #[serde(default)]
    pub proxy_protocol: bool,
}

fn default_mode() -> ListenerMode {
    ListenerMode::Smtp
}

/// One `[[smtp.users]]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserSection {
    /// Login name.
    pub name: String,
    /// Hash from `mta-server hash-key --password` (argon2id PHC string) or `sha256:<hex>`.
    pub password_hash: String,
}

/// `[smtp]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SmtpSection {
    /// Plain `smtp`-mode listeners.
    pub listen: Vec<SocketAddr>,
    /// Listeners with a mode and PROXY protocol.
    pub listener: Vec<ListenerSection>,
    /// PEM certificate chain; STARTTLS is offered when set.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key.
    pub tls_key: Option<PathBuf>,
    /// Largest message accepted (announced in SIZE).
    pub max_message_size: u64,
    /// Recipients per message.
    pub max_recipients: usize,
    /// Concurrent SMTP connections in total.
    pub max_connections: usize,
    /// Concurrent SMTP connections per client IP.
    pub max_connections_per_ip: usize,
    /// Percent of `max_connections` one network (IPv4 /24, IPv6 /48) may hold before its idle sessions give way
    /// to other networks' newcomers when every slot is taken; 100 turns it off (added key).
    pub network_share: u8,
    /// A whole command line must arrive within this (RFC 5321 §4.5.3.2), however slowly its bytes trickle.
    pub timeout_command: HumanDuration,
    /// Wait for each DATA block.
    pub timeout_data: HumanDuration,
    /// Message content must come at least this fast (octets per second, after `data_rate_grace`); 0 = off
    /// (added key).
    pub min_data_rate: u64,
    /// Time before `min_data_rate` counts (added key).
    pub data_rate_grace: HumanDuration,
    /// Peers allowed to send a PROXY header on `proxy_protocol` listeners (`http.trusted_proxies` counts too).
    pub trusted_proxies: Vec<IpNet>,
    /// More `Received:` headers than this is a loop: `554 5.4.6`.
    pub max_hops: usize,
    /// Clients allowed to relay without AUTH.
    pub relay_networks: Vec<IpNet>,
    /// Domains accepted from anyone (inbound gateway).
    pub relay_domains: Vec<String>,
    /// Allow AUTH before TLS.
    pub allow_plaintext_auth: bool,
    /// Submission users.
    pub users: Vec<UserSection>,
    /// Bad commands tolerated per session before disconnect (added key).
    pub max_errors: usize,
}

impl Default for SmtpSection {
    fn default() -> Self {
        SmtpSection {
            listen: vec![SocketAddr::from(([127, 0, 0, 1], 2525))],
            listener: Vec::new(),
            tls_cert: None,
            tls_key: None,
            max_message_size: 52_428_800,
            max_recipients: 1000,
            max_connections: 10_000,
            max_connections_per_ip: 100,
            network_share: mta_smtp::server::limits::DEFAULT_NETWORK_SHARE,
            timeout_command: HumanDuration::secs(300),
            timeout_data: HumanDuration::secs(600),
            min_data_rate: mta_smtp::server::config::DEFAULT_MIN_DATA_RATE,
            data_rate_grace: HumanDuration::secs(mta_smtp::server::config::DEFAULT_DATA_RATE_GRACE.as_secs()),
            trusted_proxies: Vec::new(),
            max_hops: 50,
            relay_networks: vec!["127.0.0.0/8".parse().unwrap_or_default(), "::1/128".parse().unwrap_or_default()],
            relay_domains: Vec::new(),
            allow_plaintext_auth: false,
            users: Vec::new(),
            max_errors: 10,
        }
    }
}

/// `[http]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpSection {
    /// Address of the HTTP API.
    pub listen: SocketAddr,
    /// `sha256:<hex>` hashes of accepted bearer keys; empty = loopback clients only.
    pub api_keys: Vec<String>,
    /// Networks whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<IpNet>,
    /// PEM certificate for HTTPS (added key).
    pub tls_cert: Option<PathBuf>,
    /// PEM key for HTTPS (added key).
    pub tls_key: Option<PathBuf>,
    /// Requests per second per API key (added key; 0 = unlimited).
    pub rate_limit_per_key: u32,
    /// Memory for request bodies in flight, each charged 3x its size (body, decoded message, engine copy)
    /// (added key; at least 1 MiB).
    pub max_body_memory: u64,
    /// Longest wait for a share of `max_body_memory` before `503` + `Retry-After` (added key).
    pub body_memory_wait: HumanDuration,
}

impl Default for HttpSection {
    fn default() -> Self {
        HttpSection {
            listen: SocketAddr::from(([127, 0, 0, 1], 8025)),
            api_keys: Vec::new(),
            trusted_proxies: Vec::new(),
            tls_cert: None,
            tls_key: None,
            rate_limit_per_key: 0,
            max_body_memory: 512 << 20,
            body_memory_wait: HumanDuration::secs(10),
        }
    }
}

/// `[spool]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SpoolSection {
    /// Spool directory.
    pub path: PathBuf,
    /// sled page cache size in bytes (added key).
    pub cache_bytes: u64,
    /// A message being received stays in memory up to this many bytes, then its body streams to a spool
    /// file (added key).
    pub memory_per_message: usize,
    /// Bytes of messages held in memory by all receptions together; beyond it bodies go to disk at once
    /// (added key).
    pub body_memory_budget: u64,
}

impl Default for SpoolSection {
    fn default() -> Self {
        SpoolSection {
            path: PathBuf::from("./mta-data"),
            cache_bytes: 64 << 20,
            memory_per_message: mta_core::engine::DEFAULT_MEMORY_PER_MESSAGE,
            body_memory_budget: mta_core::engine::DEFAULT_BODY_MEMORY_BUDGET,
        }
    }
}

/// `[dns]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DnsSection {
    /// Upstream resolvers; empty = resolv.conf.
    pub nameservers: Vec<SocketAddr>,
    /// Hard cap on queries per second sent to each upstream.
    pub max_qps_per_upstream: u32,
    /// Hard cap on queries in flight.
    pub max_in_flight: usize,
    /// Lower clamp of cached TTLs.
    pub min_ttl: HumanDuration,
    /// Upper clamp of cached TTLs.
    pub max_ttl: HumanDuration,
    /// Lifetime of negative answers.
    pub negative_ttl: HumanDuration,
    /// How long expired answers may be served while upstreams fail.
    pub serve_stale_for: HumanDuration,
    /// Look up AAAA records for MX hosts (added key).
    pub ipv6: bool,
    /// Deadline of one lookup, whatever the retries (added key).
    pub lookup_timeout: HumanDuration,
    /// Time limit of one query to one upstream (added key).
    pub query_timeout: HumanDuration,
}

impl Default for DnsSection {
    fn default() -> Self {
        DnsSection {
            nameservers: Vec::new(),
            max_qps_per_upstream: 1000,
            max_in_flight: 256,
            min_ttl: HumanDuration::secs(30),
            max_ttl: HumanDuration::secs(86_400),
            negative_ttl: HumanDuration::secs(300),
            serve_stale_for: HumanDuration::secs(3600),
            ipv6: false,
            lookup_timeout: HumanDuration::secs(5),
            query_timeout: HumanDuration::secs(2),
        }
    }
}

/// One `[[delivery.pool]]`: a named set of egress addresses.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolSection {
    /// Pool name used by messages' `pool` field.
    pub name: String,
    /// Source addresses to send from.
    pub addresses: Vec<std::net::IpAddr>,
}

/// `[delivery]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeliverySection {
    /// TCP port used for every MX host.
    pub port: u16,
    /// Outbound bind address.
    pub source_address: Option<std::net::IpAddr>,
    /// Egress pools.
    pub pool: Vec<PoolSection>,
    /// Retry intervals; the last repeats; each gets up to 10% jitter.
    pub retry_intervals: Vec<HumanDuration>,
    /// Age after which undelivered recipients expire and bounce.
    pub max_age: HumanDuration,
    /// Connections per destination site and egress source.
    pub connections_per_domain: usize,
    /// Messages sent over one connection before it is closed.
    pub messages_per_connection: usize,
    /// Refuse to deliver without TLS.
    pub require_tls: bool,
    /// Deliver at all (added key; `false` only spools).
    pub enabled: bool,
    /// Outbound connections in total (added key).
    pub max_connections: usize,
    /// Bytes of message content held by outbound connections at once (added key).
    pub max_inflight_bytes: usize,
    /// One time limit for every SMTP client stage instead of RFC 5321's (added key; tests).
    pub smtp_timeout: Option<HumanDuration>,
    /// How long a site's circuit stays open after repeated connection failures (added key).
    pub circuit_open_for: HumanDuration,
    /// How long a throttling reply (421, 451 4.7.x) lowers a site's connections (added key).
    pub throttle_for: HumanDuration,
}

impl Default for DeliverySection {
    fn default() -> Self {
        DeliverySection {
            port: 25,
            source_address: None,
            pool: Vec::new(),
            retry_intervals: [60, 300, 900, 1800, 3600, 7200, 14_400].into_iter().map(HumanDuration::secs).collect(),
            max_age: HumanDuration::secs(3 * 86_400),
            connections_per_domain: 16,
            messages_per_connection: 100,
            require_tls: false,
            enabled: true,
            max_connections: 2048,
            max_inflight_bytes: 512 << 20,
            smtp_timeout: None,
            circuit_open_for: HumanDuration::secs(60),
            throttle_for: HumanDuration::secs(300),
        }
    }
}

/// One `[[shaping]]` override.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Shaping {
    /// Destination domain (or MX site name) the override applies to.
    pub domain: String,
    /// Connection cap.
    pub connections: Option<usize>,
    /// Messages per connection.
    pub messages_per_connection: Option<usize>,
    /// Rate such as `"100/s"`, `"6000/m"`, `"50000/h"`.
    pub rate: Option<String>,
}

/// One `[[route]]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    /// Destination domain, or `"*"` for every domain.
    pub domain: String,
    /// Fixed next hop `host:port`.
    pub relay: String,
}

/// Policy of one inbound check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthPolicy {
    /// Not checked.
    Off,
    /// Checked and recorded in Authentication-Results.
    Record,
    /// Checked; failures rejected.
    Enforce,
}

/// `[auth]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthSection {
    /// SPF policy.
    pub spf: AuthPolicy,
    /// DKIM policy (`off` or `record`).
    pub dkim: AuthPolicy,
    /// DMARC policy.
    pub dmarc: AuthPolicy,
}

impl Default for AuthSection {
    fn default() -> Self {
        AuthSection { spf: AuthPolicy::Record, dkim: AuthPolicy::Record, dmarc: AuthPolicy::Record }
    }
}

/// One `[[dkim.key]]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DkimKey {
    /// Signing domain (d=).
    pub domain: String,
    /// Selector (s=).
    pub selector: String,
    /// `rsa-sha256` or `ed25519-sha256`.
    pub algorithm: String,
    /// PEM private key.
    pub key_file: PathBuf,
    /// Headers to sign (default: a standard set with From/To/Subject oversigned).
    #[serde(default)]
    pub headers: Vec<String>,
}

/// `[dkim]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DkimSection {
    /// Signing keys.
    pub key: Vec<DkimKey>,
    /// `send` or `hold` when our key is not the published one.
    pub on_preflight_mismatch: String,
}

impl Default for DkimSection {
    fn default() -> Self {
        DkimSection { key: Vec::new(), on_preflight_mismatch: "send".into() }
    }
}

/// `[backpressure]`: high marks enter a state, low marks (high × `low_mark_ratio`) leave it, after at least
/// `min_dwell` in the state. A mark of 0 is off. See `mta_core::backpressure`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BackpressureSection {
    /// Master switch.
    pub enabled: bool,
    /// Sliding window the signals are computed over.
    pub window: HumanDuration,
    /// Minimum time in a state before leaving it.
    pub min_dwell: HumanDuration,
    /// How often the monitor samples (added key).
    pub sample_interval: HumanDuration,
    /// Spool commit p99 (ms) entering degraded.
    pub commit_p99_degraded_ms: f64,
    /// Spool commit p99 (ms) entering shedding.
    pub commit_p99_shed_ms: f64,
    /// fsyncs per second entering degraded; 0: off (added key; depends on the disk).
    pub fsyncs_per_sec_degraded: f64,
    /// fsyncs per second entering shedding; 0: off (added key).
    pub fsyncs_per_sec_shed: f64,
    /// Fraction of the high mark below which a state is left (hysteresis).
    pub low_mark_ratio: f64,
    /// DNS upstream smoothed RTT (ms) entering degraded.
    pub dns_rtt_degraded_ms: f64,
    /// DNS upstream smoothed RTT (ms) entering shedding.
    pub dns_rtt_shed_ms: f64,
    /// DNS upstream failure rate (timeouts + SERVFAIL) entering degraded (added key).
    pub dns_failure_rate_degraded: f64,
    /// DNS upstream failure rate entering shedding.
    pub dns_failure_rate_shed: f64,
    /// `shed`: DNS signals shed intake like the others; `defer`: at most degraded, delivery defers the
    /// destinations whose lookups fail (added key).
    pub dns_action: String,
    /// Event-loop lag (ms) entering degraded (added key).
    pub event_loop_lag_degraded_ms: f64,
    /// Event-loop lag (ms) entering shedding.
    pub event_loop_lag_shed_ms: f64,
    /// Free disk (MiB) below which intake sheds; 0: off.
    pub min_free_disk_mb: u64,
    /// Process RSS (MiB) entering degraded; 0: off (added key).
    pub rss_degraded_mb: f64,
    /// Process RSS (MiB) entering shedding; 0: off (added key).
    pub rss_shed_mb: f64,
    /// `Retry-After` seconds sent with HTTP 503.
    pub retry_after_secs: u64,
    /// While degraded: delay before the SMTP greeting (added key).
    pub degraded_greeting_delay: HumanDuration,
    /// While degraded: most SMTP sessions at once; 0: half of `smtp.max_connections` (added key).
    pub degraded_smtp_sessions: usize,
    /// While degraded: most HTTP injections in flight (added key).
    pub degraded_http_in_flight: usize,
}

impl Default for BackpressureSection {
    fn default() -> Self {
        BackpressureSection {
            enabled: true,
            window: HumanDuration::secs(10),
            min_dwell: HumanDuration::secs(5),
            sample_interval: HumanDuration(std::time::Duration::from_millis(250)),
            commit_p99_degraded_ms: 250.0,
            commit_p99_shed_ms: 1000.0,
            fsyncs_per_sec_degraded: 0.0,
            fsyncs_per_sec_shed: 0.0,
            low_mark_ratio: 0.5,
            dns_rtt_degraded_ms: 500.0,
            dns_rtt_shed_ms: 2000.0,
            dns_failure_rate_degraded: 0.2,
            dns_failure_rate_shed: 0.5,
            dns_action: "shed".into(),
            event_loop_lag_degraded_ms: 200.0,
            event_loop_lag_shed_ms: 500.0,
            min_free_disk_mb: 1024,
            rss_degraded_mb: 0.0,
            rss_shed_mb: 0.0,
            retry_after_secs: 5,
            degraded_greeting_delay: HumanDuration(std::time::Duration::from_millis(500)),
            degraded_smtp_sessions: 0,
            degraded_http_in_flight: 64,
        }
    }
}

impl BackpressureSection {
    /// The engine's form; `smtp_max_connections` sizes the default degraded session cap.
    pub fn to_core(&self, smtp_max_connections: usize) -> mta_core::backpressure::BackpressureConfig {
        use mta_core::backpressure::{BackpressureConfig, DnsAction, Marks};
        BackpressureConfig {
            enabled: self.enabled,
            sample_interval: self.sample_interval.get(),
            window: self.window.get(),
            min_dwell: self.min_dwell.get(),
            low_mark_ratio: self.low_mark_ratio,
            commit_p99_ms: Marks::new(self.commit_p99_degraded_ms, self.commit_p99_shed_ms),
            fsyncs_per_sec: Marks::new(self.fsyncs_per_sec_degraded, self.fsyncs_per_sec_shed),
            dns_rtt_ms: Marks::new(self.dns_rtt_degraded_ms, self.dns_rtt_shed_ms),
            dns_failure_rate: Marks::new(self.dns_failure_rate_degraded, self.dns_failure_rate_shed),
            dns_action: if self.dns_action == "defer" { DnsAction::Defer } else { DnsAction::Shed },
            event_loop_lag_ms: Marks::new(self.event_loop_lag_degraded_ms, self.event_loop_lag_shed_ms),
            rss_mb: Marks::new(self.rss_degraded_mb, self.rss_shed_mb),
            min_free_disk_mb: self.min_free_disk_mb,
            retry_after: std::time::Duration::from_secs(self.retry_after_secs.max(1)),
            degraded_greeting_delay: self.degraded_greeting_delay.get(),
            degraded_smtp_sessions: if self.degraded_smtp_sessions == 0 {
                (smtp_max_connections / 2).max(1)
            } else {
                self.degraded_smtp_sessions
            },
            degraded_http_in_flight: self.degraded_http_in_flight.max(1),
        }
    }

    /// The checks serde cannot express: `Err((key, message))`.
    fn check(&self) -> Result<(), (&'static str, String)> {
        if !(self.low_mark_ratio > 0.0 && self.low_mark_ratio <= 1.0) {
            return Err(("backpressure.low_mark_ratio", "must be in (0, 1]".into()));
        }
        if !matches!(self.dns_action.as_str(), "shed" | "defer") {
            return Err(("backpressure.dns_action", "expected \"shed\" or \"defer\"".into()));
        }
        if self.sample_interval.get() < std::time::Duration::from_millis(10)
            || self.window.get() < self.sample_interval.get()
        {
            return Err((
                "backpressure.window",
                "sample_interval must be >= 10ms and window >= sample_interval".into(),
            ));
        }
        Ok(())
    }
}

/// `[log]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogSection {
    /// Delivery event log (JSON lines).
    pub events: PathBuf,
    /// `text` or `json` process logs on stderr (added key).
    pub format: String,
}

impl Default for LogSection {
    fn default() -> Self {
        LogSection { events: PathBuf::from("./mta-data/events.jsonl"), format: "text".into() }
    }
}

/// `[debug]`
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DebugSection {
    /// Enables `PUT /api/v1/debug/faults` (tests only).
    pub fault_injection: bool,
}

/// A configuration that could not be loaded; the message names the key and line where known.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config {path}: {source}")]
    Read {
        /// File path.
        path: PathBuf,
        /// Underlying error.
        source: std::io::Error,
    },
    /// TOML syntax or a key of the wrong type or name.
    #[error("config {path}: {message}")]
    Parse {
        /// File path.
        path: PathBuf,
        /// toml's message, naming key, line and column.
        message: String,
    },
    /// A value that parses but makes no sense.
    #[error("config {path}: key `{key}`: {message}")]
    Invalid {
        /// File path.
        path: PathBuf,
        /// Dotted key.
        key: String,
        /// What is wrong.
        message: String,
    },
}

impl Config {
    /// Read and validate a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.into(), source })?;
        Config::parse(&text, path)
    }

    /// Parse and validate config text (`path` is only used in messages).
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text)
            .map_err(|e| ConfigError::Parse { path: path.into(), message: e.to_string().trim_end().to_string() })?;
        config.validate(path)?;
        Ok(config)
    }

    /// The checks serde cannot express.
    pub fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let invalid = |key: &str, message: String| ConfigError::Invalid { path: path.into(), key: key.into(), message };
        if self.server.hostname.trim().is_empty() {
            return Err(invalid("server.hostname", "must not be empty".into()));
        }
        if self.server.node_id.trim().is_empty() {
            return Err(invalid("server.node_id", "must not be empty".into()));
        }
        if self.smtp.tls_cert.is_some() != self.smtp.tls_key.is_some() {
            return Err(invalid("smtp.tls_cert", "smtp.tls_cert and smtp.tls_key must be set together".into()));
        }
        if self.http.tls_cert.is_some() != self.http.tls_key.is_some() {
            return Err(invalid("http.tls_cert", "http.tls_cert and http.tls_key must be set together".into()));
        }
        for (key, p) in [("smtp.tls_cert", &self.smtp.tls_cert), ("smtp.tls_key", &self.smtp.tls_key)] {
            if let Some(p) = p {
                if let Err(e) = std::fs::metadata(p) {
                    return Err(invalid(key, format!("cannot read {}: {e}", p.display())));
                }
            }
        }
        if self.smtp.listener.iter().any(|l| l.mode == ListenerMode::Smtps) && self.smtp.tls_cert.is_none() {
            return Err(invalid("smtp.listener.mode", "mode \"smtps\" needs smtp.tls_cert and smtp.tls_key".into()));
        }
        if !(1..=100).contains(&self.smtp.network_share) {
            return Err(invalid("smtp.network_share", "must be a percentage from 1 to 100".into()));
        }
        if self.smtp.max_recipients == 0 {
            return Err(invalid("smtp.max_recipients", "must be at least 1".into()));
        }
        if self.smtp.max_message_size < 1024 {
            return Err(invalid("smtp.max_message_size", "must be at least 1024".into()));
        }
        for (i, u) in self.smtp.users.iter().enumerate() {
            if !(u.password_hash.starts_with("$argon2") || u.password_hash.starts_with("sha256:")) {
                return Err(invalid(
                    &format!("smtp.users[{i}].password_hash"),
                    "expected a hash from `mta-server hash-key --password` ($argon2id$...) or sha256:<hex>".into(),
                ));
            }
        }
        for (i, k) in self.http.api_keys.iter().enumerate() {
            let ok =
                k.strip_prefix("sha256:").is_some_and(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()));
            if !ok {
                return Err(invalid(
                    &format!("http.api_keys[{i}]"),
                    "expected sha256:<64 hex digits> from `mta-server hash-key`".into(),
                ));
            }
        }
        if self.delivery.retry_intervals.is_empty() {
            return Err(invalid("delivery.retry_intervals", "needs at least one interval".into()));
        }
        if self.delivery.connections_per_domain == 0 || self.delivery.messages_per_connection == 0 {
            return Err(invalid("delivery.connections_per_domain", "limits must be at least 1".into()));
        }
        for (i, s) in self.shaping.iter().enumerate() {
            if let Some(rate) = &s.rate {
                if parse_rate(rate).is_none() {
                    return Err(invalid(
                        &format!("shaping[{i}].rate"),
                        format!("invalid rate {rate:?}; use forms like \"100/s\", \"6000/m\""),
                    ));
                }
            }
        }
        for (i, r) in self.route.iter().enumerate() {
            if !r.relay.contains(':') {
                return Err(invalid(&format!("route[{i}].relay"), format!("expected host:port, got {:?}", r.relay)));
            }
        }
        for d in &self.smtp.relay_domains {
            let routed = self.route.iter().any(|r| r.domain == "*" || r.domain.eq_ignore_ascii_case(d));
            if !routed {
                return Err(invalid("smtp.relay_domains", format!("domain {d:?} needs a [[route]] (loop guard)")));
            }
        }
        if self.auth.dkim == AuthPolicy::Enforce {
            return Err(invalid(
                "auth.dkim",
                "only \"off\" or \"record\" (a failed signature counts as none; DMARC may reject)".into(),
            ));
        }
        for (i, k) in self.dkim.key.iter().enumerate() {
            if k.algorithm != "rsa-sha256" && k.algorithm != "ed25519-sha256" {
                return Err(invalid(
                    &format!("dkim.key[{i}].algorithm"),
                    format!("expected \"rsa-sha256\" or \"ed25519-sha256\", got {:?}", k.algorithm),
                ));
            }
            // Loading the key checks it exists, is readable, is PEM of the right type and size.
            if let Err(e) = mta_core::auth::Signer::load_keys(&[dkim_key_config(k)?]) {
                return Err(invalid(&format!("dkim.key[{i}].key_file"), e.to_string()));
            }
        }
        if !matches!(self.dkim.on_preflight_mismatch.as_str(), "send" | "hold") {
            return Err(invalid("dkim.on_preflight_mismatch", "expected \"send\" or \"hold\"".into()));
        }
        if let Err((key, message)) = self.backpressure.check() {
            return Err(invalid(key, message));
        }
        if !matches!(self.log.format.as_str(), "text" | "json") {
            return Err(invalid("log.format", "expected \"text\" or \"json\"".into()));
        }
        Ok(())
    }

    /// The signing keys in the engine's form.
    pub fn dkim_keys(&self) -> Result<Vec<mta_core::auth::KeyConfig>, ConfigError> {
        self.dkim.key.iter().map(dkim_key_config).collect()
    }

    /// The effective config as TOML (for `check-config`).
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot print config: {e}\n"))
    }
}

fn dkim_key_config(k: &DkimKey) -> Result<mta_core::auth::KeyConfig, ConfigError> {
    let algorithm = mta_core::auth::KeyAlgorithm::parse(&k.algorithm).map_err(|e| ConfigError::Invalid {
        path: PathBuf::new(),
        key: "dkim.key.algorithm".into(),
        message: e.to_string(),
    })?;
    Ok(mta_core::auth::KeyConfig {
        domain: k.domain.to_ascii_lowercase(),
        selector: k.selector.clone(),
        algorithm,
        key_file: k.key_file.clone(),
        headers: k.headers.clone(),
    })
}

/// Parse a rate such as `"100/s"`, `"6000/m"` or `"50000/h"` into messages per second.
pub fn parse_rate(s: &str) -> Option<f64> {
    let (n, unit) = s.trim().split_once('/')?;
    let n: f64 = n.trim().parse().ok()?;
    let per = match unit.trim() {
        "s" | "sec" => 1.0,
        "m" | "min" => 60.0,
        "h" | "hour" => 3600.0,
        "d" | "day" => 86_400.0,
        _ => return None,
    };
    (n > 0.0).then_some(n / per)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_is_the_defaults() {
        let c = Config::parse("", Path::new("t.toml")).unwrap();
        assert_eq!(c.smtp.listen, vec!["127.0.0.1:2525".parse().unwrap()]);
        assert_eq!(c.http.listen, "127.0.0.1:8025".parse().unwrap());
        assert_eq!(c.smtp.max_message_size, 52_428_800);
        assert_eq!(c.delivery.retry_intervals.len(), 7);
        assert_eq!(c.server.shutdown_timeout.get().as_secs(), 30);
    }

    #[test]
    fn unknown_key_names_key_and_line() {
        let e = Config::parse("[smtp]\nmax_recipients = 5\nbogus = 1\n", Path::new("t.toml")).unwrap_err().to_string();
        assert!(e.contains("bogus"), "{e}");
        assert!(e.contains("line 3"), "{e}");
    }

    #[test]
    fn bad_duration_is_reported() {
        let e = Config::parse("[server]\nshutdown_timeout = \"soon\"\n", Path::new("t.toml")).unwrap_err().to_string();
        assert!(e.contains("shutdown_timeout") || e.contains("line 2"), "{e}");
    }

    #[test]
    fn printed_config_parses_back() {
        let c = Config::parse("[delivery]\nretry_intervals = [\"30s\", \"2h\"]\n", Path::new("t.toml")).unwrap();
        let again = Config::parse(&c.to_toml(), Path::new("t.toml")).unwrap();
        assert_eq!(again.delivery.retry_intervals, c.delivery.retry_intervals);
    }

    #[test]
    fn backpressure_keys_and_checks() {
        let c = Config::parse(
            "[smtp]\nmax_connections = 100\n[backpressure]\ndns_action = \"defer\"\nwindow = \"3s\"\n",
            Path::new("t.toml"),
        )
        .unwrap();
        let core = c.backpressure.to_core(c.smtp.max_connections);
        assert_eq!(core.dns_action, mta_core::backpressure::DnsAction::Defer);
        assert_eq!(core.degraded_smtp_sessions, 50, "default: half of smtp.max_connections");
        assert_eq!(core.window.as_secs(), 3);
        assert_eq!(core.fsyncs_per_sec.shed, None, "0 is off");
        for bad in ["dns_action = \"drop\"", "low_mark_ratio = 0", "low_mark_ratio = 1.5", "window = \"1ms\""] {
            let e = Config::parse(&format!("[backpressure]\n{bad}\n"), Path::new("t.toml")).unwrap_err().to_string();
            assert!(e.contains("backpressure"), "{bad}: {e}");
        }
    }

    #[test]
    fn rates() {
        assert_eq!(parse_rate("100/s"), Some(100.0));
        assert_eq!(parse_rate("60/m"), Some(1.0));
        assert_eq!(parse_rate("fast"), None);
    }
}
