//! `[[amqp]]`: an AMQP 0-9-1 broker (RabbitMQ) events are published to, one persistent message per event with
//! publisher confirms; converts into [`mta_core::export::AmqpConfig`], whose defaults these are.

use mta_core::export::{self, AmqpConfig, EndpointSettings};
use mta_core::EventType;
use serde::{Deserialize, Serialize};

use super::Invalid;
use crate::duration::HumanDuration;

/// One `[[amqp]]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AmqpSection {
    /// Label in metrics, logs and health (added key; default `amqp-<n>`, n counting from 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// `amqp://user:pass@host:port/vhost` (vhost `%2f` is `/`).
    pub url: String,
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
fn all_events() -> Vec<EventType> {
    EventType::ALL.to_vec()
}
fn default_batch_size() -> usize {
    export::DEFAULT_BATCH_SIZE
}
fn default_batch_delay() -> HumanDuration {
    export::DEFAULT_BATCH_DELAY.into()
}
fn default_timeout() -> HumanDuration {
    export::DEFAULT_TIMEOUT.into()
}
fn default_max_retry_age() -> HumanDuration {
    export::DEFAULT_MAX_RETRY_AGE.into()
}

/// Largest `batch_size` (a batch is held in memory while it is retried).
const MAX_BATCH_SIZE: usize = 10_000;

impl AmqpSection {
    /// The checks serde cannot express; `n` is the section's index.
    pub(super) fn check(&self, n: usize) -> Result<(), Invalid> {
        let key = |k: &str| format!("amqp[{n}].{k}");
        let scheme_ok = self.url.starts_with("amqp://");
        if !scheme_ok || export::Amqp::new(&self.url, "", "", self.timeout.get()).is_err() {
            let shown = export::redact_url(&self.url);
            return Err(Invalid::new(key("url"), format!("{shown:?} is not an amqp:// URL")));
        }
        if self.events.is_empty() {
            return Err(Invalid::new(key("events"), "lists no event type (leave it out for all)"));
        }
        if self.routing_key.len() > 255 {
            return Err(Invalid::new(key("routing_key"), "longer than AMQP's 255 bytes"));
        }
        if self.batch_size == 0 || self.batch_size > MAX_BATCH_SIZE {
            return Err(Invalid::new(key("batch_size"), format!("must be 1 to {MAX_BATCH_SIZE}")));
        }
        if self.timeout.get().is_zero() {
            return Err(Invalid::new(key("timeout"), "must be above 0"));
        }
        Ok(())
    }

    /// The engine's form; `n` names it when `name` is not set.
    pub fn to_core(&self, n: usize) -> AmqpConfig {
        let name = self.name.clone().unwrap_or_else(|| format!("amqp-{n}"));
        let mut endpoint = EndpointSettings::defaults(name);
        endpoint.events = self.events.iter().copied().collect();
        endpoint.batch_size = self.batch_size;
        endpoint.batch_delay = self.batch_delay.get();
        endpoint.timeout = self.timeout.get();
        endpoint.max_retry_age = self.max_retry_age.get();
        // One channel: batches go one after another (a batch is already many messages in flight).
        endpoint.concurrency = 1;
        AmqpConfig {
            url: self.url.clone(),
            exchange: self.exchange.clone(),
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
}
