//! `[[amqp]]`: an AMQP 0-9-1 broker (RabbitMQ) events are published to, one persistent message per event with
//! publisher confirms; converts into [`mta_core::export::AmqpConfig`], whose defaults these are.

use mta_core::export::{self, AmqpConfig};
use mta_core::EventType;
use serde::{Deserialize, Serialize};

use super::export_keys::{
    all_events, default_batch_delay, default_batch_size, default_max_retry_age, default_timeout, ExportKeys,
};
use super::Invalid;
use crate::duration::HumanDuration;

/// One `[[amqp]]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AmqpSection {
    /// Label in metrics, logs and health (added key; default `amqp-<n>`, n counting from 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// `amqp://user:pass@host:port/vhost` (vhost `%2f` is `/`), or `amqps://` for TLS.
    pub url: String,
    /// PEM roots trusted for `amqps://` besides the system's (added key; a private CA).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<std::path::PathBuf>,
    /// Exchange to publish to (default `""`, the broker's default exchange: the routing key names a queue).
    #[serde(default)]
    pub exchange: String,
    /// Routing key template: `{type}`, `{domain}` and `{tenant}` are replaced by the event's fields.
    #[serde(default = "default_routing_key")]
    pub routing_key: String,
    /// Event types published (default: all).
    #[serde(default = "all_events")]
    pub events: Vec<EventType>,
    /// Messages published before waiting for their confirms (added key).
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    /// Longest wait for a batch to fill (added key).
    #[serde(default = "default_batch_delay")]
    pub batch_delay: HumanDuration,
    /// Time limit of connecting, or of one batch's publishes and confirms (added key).
    #[serde(default = "default_timeout")]
    pub timeout: HumanDuration,
    /// Events unconfirmed this long after they happened are dropped, counted and logged (added key).
    #[serde(default = "default_max_retry_age")]
    pub max_retry_age: HumanDuration,
}

fn default_routing_key() -> String {
    export::DEFAULT_ROUTING_KEY.to_string()
}

impl AmqpSection {
    /// The checks serde cannot express; `n` is the section's index.
    pub(super) fn check(&self, n: usize) -> Result<(), Invalid> {
        let key = |k: &str| format!("amqp[{n}].{k}");
        let scheme_ok = self.url.starts_with("amqp://") || self.url.starts_with("amqps://");
        if !scheme_ok || export::Amqp::new(&self.url, "", "", self.timeout.get()).is_err() {
            let shown = export::redact_url(&self.url);
            return Err(Invalid::new(key("url"), format!("{shown:?} is not an amqp:// or amqps:// URL")));
        }
        if let Some(path) = &self.ca_file {
            if !self.url.starts_with("amqps://") {
                return Err(Invalid::new(key("ca_file"), "only applies to an amqps:// url"));
            }
            mta_core::tls_policy::load_roots(Some(path)).map_err(|e| Invalid::new(key("ca_file"), e.to_string()))?;
        }
        if self.routing_key.len() > 255 {
            return Err(Invalid::new(key("routing_key"), "longer than AMQP's 255 bytes"));
        }
        self.export_keys().check(key)
    }

    /// The keys every export section has.
    fn export_keys(&self) -> ExportKeys<'_> {
        ExportKeys {
            name: &self.name,
            events: &self.events,
            batch_size: self.batch_size,
            batch_delay: &self.batch_delay,
            timeout: &self.timeout,
            max_retry_age: &self.max_retry_age,
        }
    }

    /// The engine's form; `n` names it when `name` is not set.
    pub fn to_core(&self, n: usize) -> AmqpConfig {
        let mut endpoint = self.export_keys().settings(format!("amqp-{n}"));
        // One channel: batches go one after another (a batch is already many messages in flight).
        endpoint.concurrency = 1;
        AmqpConfig {
            url: self.url.clone(),
            exchange: self.exchange.clone(),
            ca_file: self.ca_file.clone(),
            routing_key: self.routing_key.clone(),
            endpoint,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::super::Config;

    #[test]
    fn defaults_are_the_contracts() {
        let c =
            Config::parse("[[amqp]]\nurl = \"amqp://u:p@127.0.0.1:5672/%2f\"\nexchange = \"mta\"\n", Path::new("t"))
                .unwrap();
        let a = c.amqp[0].to_core(0);
        assert_eq!(a.endpoint.name, "amqp-0");
        assert_eq!(a.routing_key, "{type}");
        assert_eq!(a.exchange, "mta");
        assert_eq!(a.endpoint.events, mta_core::EventTypes::all());
    }

    #[test]
    fn bad_values_name_their_key_and_hide_the_password() {
        let e = Config::parse("[[amqp]]\nurl = \"http://u:secretpw@x/\"\n", Path::new("t")).unwrap_err().to_string();
        assert!(e.contains("amqp[0].url") && !e.contains("secretpw"), "{e}");
        let c = Config::parse("[[amqp]]\nurl = \"amqp://u:secretpw@127.0.0.1/%2f\"\n", Path::new("t")).unwrap();
        assert!(!c.to_toml_redacted().contains("secretpw"));
    }

    #[test]
    fn ca_file_must_load_and_needs_amqps() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        let key = rcgen::KeyPair::generate().unwrap();
        let cert =
            rcgen::CertificateParams::new(vec!["broker.example".to_string()]).unwrap().self_signed(&key).unwrap();
        std::fs::write(&ca, cert.pem()).unwrap();
        let amqp = |url: &str, ca: &Path| format!("[[amqp]]\nurl = \"{url}\"\nca_file = \"{}\"\n", ca.display());
        let c = Config::parse(&amqp("amqps://u:p@broker.example/%2f", &ca), Path::new("t")).unwrap();
        assert_eq!(c.amqp[0].to_core(0).ca_file.as_deref(), Some(ca.as_path()));
        let missing = amqp("amqps://u:p@b/%2f", Path::new("/nonexistent/ca.pem"));
        let e = Config::parse(&missing, Path::new("t")).unwrap_err().to_string();
        assert!(e.contains("amqp[0].ca_file"), "{e}");
        let e = Config::parse(&amqp("amqp://u:p@b/%2f", &ca), Path::new("t")).unwrap_err().to_string();
        assert!(e.contains("amqp[0].ca_file") && e.contains("amqps"), "{e}");
    }
}
