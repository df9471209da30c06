//! The TOML configuration (every key in docs/configuration.md): typed sections, named defaults, unknown keys refused.
//!
//! Every key is optional; the embedded defaults are what `cargo run -p mta-server` runs with. Errors name the
//! dotted key, and for what TOML and serde refuse (syntax, types, unknown keys, values outside an enumeration)
//! the line and the allowed values; [`Config::validate`] adds the checks serde cannot express.
//!
//! # Layout
//!
//! One file per section. A setting has one definition: where a section is the same thing as an engine type it
//! *is* that type (`[auth]` is `mta_core::auth::AuthPolicy`, `[[route]]` is `mta_core::delivery::Route`);
//! otherwise it converts into it with `From` (`[dns]` into `DnsConfig`, `[delivery]` into `DeliveryConfig`,
//! the whole file into `EngineConfig` in `engine`), and its defaults are the owning crate's.
//! - `server`, `smtp` (+ `listener`), `http`, `spool`, `dns`, `delivery` (+ `shaping`), `auth`, `dkim`,
//!   `backpressure`, `bounce`, `cluster`, `log`, `debug`, `webhook`, `amqp`, `outbox`, `history`, `suppression`
//!   (+ `[[response_rule]]`, `[deliverability]`), `tls_report`: the sections.
//! - `engine`: the engine's config from the sections.

mod amqp;
mod auth;
mod backpressure;
mod bounce;
mod cluster;
mod debug;
mod delivery;
mod dkim;
mod dns;
mod engine;
mod export_keys;
mod history;
mod http;
mod listener;
mod log;
mod outbox;
mod server;
mod shaping;
mod smtp;
mod spool;
mod suppression;
mod tls_report;
mod webhook;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use self::amqp::AmqpSection;
pub use self::backpressure::BackpressureSection;
pub use self::bounce::BounceSection;
pub use self::cluster::ClusterSection;
pub use self::debug::DebugSection;
pub use self::delivery::{DeliverySection, PoolSection};
pub use self::dkim::{DkimKey, DkimSection, PreflightMismatch};
pub use self::dns::DnsSection;
pub use self::history::HistorySection;
pub use self::http::{HttpSection, DEFAULT_BODY_MEMORY_WAIT, DEFAULT_MAX_BODY_MEMORY};
pub use self::listener::{ListenerMode, ListenerSection};
pub use self::log::{LogFormat, LogSection};
pub use self::outbox::OutboxSection;
pub use self::server::{machine_hostname, ServerSection, DEFAULT_SHUTDOWN_TIMEOUT};
pub use self::shaping::{parse_rate, Rate, ShapingSection};
pub use self::smtp::{SmtpSection, UserSection, DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_CONNECTIONS_PER_IP};
pub use self::spool::SpoolSection;
pub use self::suppression::{DeliverabilitySection, ResponseRuleSection, SuppressionSection};
pub use self::tls_report::TlsReportSection;
pub use self::webhook::WebhookSection;
pub use mta_core::auth::{AuthPolicy, Policy};
pub use mta_core::delivery::Route;

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
    pub shaping: Vec<ShapingSection>,
    /// Fixed next hops (smart hosts) per destination domain.
    pub route: Vec<Route>,
    /// Inbound SPF/DKIM/DMARC policy.
    pub auth: AuthPolicy,
    /// Outbound DKIM signing keys.
    pub dkim: DkimSection,
    /// Load-shedding thresholds.
    pub backpressure: BackpressureSection,
    /// Bounce classification rules of our own.
    pub bounce: BounceSection,
    /// Fleet-wide limits on a shared Redis.
    pub cluster: ClusterSection,
    /// Logs and the delivery event log.
    pub log: LogSection,
    /// Test-only switches.
    pub debug: DebugSection,
    /// Event export endpoints: signed, batched JSON POSTs.
    pub webhook: Vec<WebhookSection>,
    /// Event export to AMQP brokers: one persistent message per event, publisher confirms.
    pub amqp: Vec<AmqpSection>,
    /// The bound of the outbox the exporters read.
    pub outbox: OutboxSection,
    /// Finished messages' outcomes kept for status lookups.
    pub history: HistorySection,
    /// The suppression list: automatic entries and the complaint address.
    pub suppression: SuppressionSection,
    /// Replies that suspend, throttle or bounce (checked before the shipped defaults).
    pub response_rule: Vec<ResponseRuleSection>,
    /// Switches for the shipped deliverability defaults.
    pub deliverability: DeliverabilitySection,
    /// TLS reporting (RFC 8460).
    pub tls_report: TlsReportSection,
}

/// A value that parses but makes no sense: the dotted key and what is wrong (sections' checks return it).
#[derive(Debug)]
struct Invalid {
    key: String,
    message: String,
}

impl Invalid {
    fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        Invalid { key: key.into(), message: message.into() }
    }
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
    /// TOML syntax, an unknown key, or a value of the wrong type or out of the allowed set.
    #[error("config {path}: {}{message}", key.as_deref().map(|k| format!("key `{k}`: ")).unwrap_or_default())]
    Parse {
        /// File path.
        path: PathBuf,
        /// Dotted key, when the error is about one (`backpressure.dns_action`, `smtp.listener[0].mode`).
        key: Option<String>,
        /// toml's message, naming line and column, and for enumerations the allowed values.
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
        let config: Config = serde_path_to_error::deserialize(toml::Deserializer::new(text)).map_err(|e| {
            // An error outside any key (TOML syntax) has an empty path, printed ".".
            let key = Some(e.path().to_string()).filter(|k| k != "." && !k.contains('?'));
            ConfigError::Parse { path: path.into(), key, message: e.into_inner().to_string().trim_end().to_string() }
        })?;
        config.validate(path)?;
        Ok(config)
    }

    /// The checks serde cannot express.
    pub fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        self.check().map_err(|Invalid { key, message }| ConfigError::Invalid { path: path.into(), key, message })
    }

    fn check(&self) -> Result<(), Invalid> {
        self.server.check()?;
        self.smtp.check()?;
        self.http.check()?;
        self.delivery.check()?;
        delivery::check_routes(&self.route)?;
        for d in &self.smtp.relay_domains {
            let routed = self.route.iter().any(|r| r.domain == "*" || r.domain.eq_ignore_ascii_case(d));
            if !routed {
                return Err(Invalid::new("smtp.relay_domains", format!("domain {d:?} needs a [[route]] (loop guard)")));
            }
        }
        auth::check(&self.auth)?;
        self.dkim.check()?;
        self.backpressure.check()?;
        self.bounce.check()?;
        self.suppression.check()?;
        suppression::check_rules(&self.response_rule)?;
        for (n, w) in self.webhook.iter().enumerate() {
            w.check(n)?;
        }
        for (n, a) in self.amqp.iter().enumerate() {
            a.check(n)?;
        }
        self.cluster.check()?;
        self.history.check()?;
        Ok(())
    }

    /// The signing keys in the engine's form.
    pub fn dkim_keys(&self) -> Vec<mta_core::auth::KeyConfig> {
        self.dkim.keys()
    }

    /// The effective config as TOML, exactly (it loads back equal).
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot print config: {e}\n"))
    }

    /// The effective config as TOML for `check-config`: shared secrets (the webhooks' HMAC keys) replaced by
    /// [`REDACTED`], since its output ends up in terminals, tickets and logs. API keys and passwords are
    /// stored as hashes and print as they are.
    pub fn to_toml_redacted(&self) -> String {
        let mut shown = self.clone();
        for hook in &mut shown.webhook {
            hook.secret = REDACTED.to_string();
        }
        for broker in &mut shown.amqp {
            broker.url = mta_core::export::redact_url(&broker.url);
        }
        shown.to_toml()
    }
}

/// What `check-config` prints in place of a secret.
pub const REDACTED: &str = "(redacted)";

#[cfg(test)]
mod tests {
    use super::*;
    use mta_core::EngineConfig;

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
    fn enumerated_settings_name_the_key_and_the_allowed_values() {
        for (text, key, allowed) in [
            ("[backpressure]\ndns_action = \"drop\"\n", "backpressure.dns_action", "`shed` or `defer`"),
            ("[log]\nformat = \"xml\"\n", "log.format", "`text` or `json`"),
            ("[dkim]\non_preflight_mismatch = \"bounce\"\n", "dkim.on_preflight_mismatch", "`send` or `hold`"),
            ("[auth]\nspf = \"strict\"\n", "auth.spf", "`off`, `record`, `enforce`"),
            (
                "[[smtp.listener]]\naddress = \"127.0.0.1:1\"\nmode = \"lmtp\"\n",
                "smtp.listener[0].mode",
                "`smtp`, `submission`, `smtps`",
            ),
            (
                "[[dkim.key]]\ndomain = \"a\"\nselector = \"s\"\nalgorithm = \"RSA-SHA1\"\nkey_file = \"k\"\n",
                "dkim.key[0].algorithm",
                "`rsa-sha256` or `ed25519-sha256`",
            ),
            ("[[shaping]]\ndomain = \"a\"\nrate = \"fast\"\n", "shaping[0].rate", "\"100/s\""),
        ] {
            let e = Config::parse(text, Path::new("t.toml")).unwrap_err().to_string();
            assert!(e.contains(&format!("key `{key}`")), "{text}: {e}");
            assert!(e.contains(allowed), "{text}: {e}");
            assert!(e.contains("line "), "{text}: {e}");
        }
    }

    #[test]
    fn enumerated_settings_keep_their_spellings() {
        let c = Config::parse(
            "[log]\nformat = \"json\"\n[dkim]\non_preflight_mismatch = \"hold\"\n[auth]\nspf = \"enforce\"\ndkim = \"off\"\n\
             [[smtp.listener]]\naddress = \"127.0.0.1:1\"\nmode = \"submission\"\n",
            Path::new("t.toml"),
        )
        .unwrap();
        assert_eq!(c.log.format, LogFormat::Json);
        assert_eq!(c.dkim.on_preflight_mismatch, PreflightMismatch::Hold);
        assert_eq!(c.auth.spf, Policy::Enforce);
        assert_eq!(c.auth.dkim, Policy::Off);
        assert_eq!(c.smtp.listener[0].mode, ListenerMode::Submission);
        let printed = c.to_toml();
        for line in
            ["format = \"json\"", "on_preflight_mismatch = \"hold\"", "spf = \"enforce\"", "mode = \"submission\""]
        {
            assert!(printed.contains(line), "{line} in\n{printed}");
        }
    }

    #[test]
    fn defaults_are_the_engines() {
        let file = EngineConfig::from(&Config::default());
        let core = EngineConfig::new("./mta-data");
        assert_eq!(file.max_message_size, core.max_message_size);
        assert_eq!(file.max_recipients, core.max_recipients);
        assert_eq!(file.spool_cache_bytes, core.spool_cache_bytes);
        assert_eq!(format!("{:?}", file.dns), format!("{:?}", core.dns));
        assert_eq!(format!("{:?}", file.delivery), format!("{:?}", core.delivery));
        assert_eq!(file.auth, core.auth);
        let bp = Config::default().backpressure.to_core(10_000);
        let core_bp = mta_core::backpressure::BackpressureConfig {
            degraded_smtp_sessions: 5000,
            ..mta_core::backpressure::BackpressureConfig::default()
        };
        assert_eq!(format!("{bp:?}"), format!("{core_bp:?}"));
    }

    #[test]
    fn sections_convert_into_the_engines_config() {
        let c = Config::parse(
            "[dns]\nmax_in_flight = 7\nipv6 = true\nmin_ttl = \"1m\"\n\
             [delivery]\nconnections_per_domain = 3\nsource_address = \"192.0.2.1\"\nretry_intervals = [\"30s\"]\n\
             [[delivery.pool]]\nname = \"p\"\naddresses = [\"192.0.2.2\"]\n\
             [[shaping]]\ndomain = \"Example.NET\"\nrate = \"60/m\"\n\
             [[route]]\ndomain = \"*\"\nrelay = \"127.0.0.1:25\"\n\
             [dkim]\non_preflight_mismatch = \"hold\"\n",
            Path::new("t.toml"),
        )
        .unwrap();
        let ec = EngineConfig::from(&c);
        assert_eq!(ec.dns.max_in_flight, 7);
        assert!(ec.dns.enable_ipv6);
        assert_eq!(ec.dns.min_ttl.as_secs(), 60);
        assert_eq!(ec.delivery.connections_per_site, 3);
        assert_eq!(ec.delivery.retry_intervals, vec![std::time::Duration::from_secs(30)]);
        assert_eq!(ec.delivery.pools.get("p").map(Vec::len), Some(1));
        assert_eq!(ec.delivery.shaping[0].domain, "example.net");
        assert_eq!(ec.delivery.shaping[0].rate, Some(1.0));
        assert_eq!(ec.delivery.routes, vec![Route { domain: "*".into(), relay: "127.0.0.1:25".into() }]);
        assert_eq!(ec.source_addresses.len(), 2);
        assert!(ec.hold_on_preflight_mismatch);
    }
}
