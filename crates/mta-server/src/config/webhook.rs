//! `[[webhook]]`: an endpoint the events are POSTed to (batched, signed, retried); converts into
//! [`mta_core::export::WebhookConfig`], whose defaults these are.

use mta_core::export::{self, WebhookConfig};
use mta_core::EventType;
use serde::{Deserialize, Serialize};

use super::export_keys::{
    all_events, default_batch_delay, default_batch_size, default_max_retry_age, default_timeout, ExportKeys,
};
use super::Invalid;
use crate::duration::HumanDuration;

/// One `[[webhook]]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookSection {
    /// Label in metrics, logs and health (added key; default `webhook-<n>`, n counting from 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// `http://` or `https://` URL to POST to.
    pub url: String,
    /// Event types sent (default: all).
    #[serde(default = "all_events")]
    pub events: Vec<EventType>,
    /// HMAC-SHA256 key of the `X-MTA-Signature` header.
    pub secret: String,
    /// Events per POST at most.
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    /// Longest wait for a batch to fill.
    #[serde(default = "default_batch_delay")]
    pub batch_delay: HumanDuration,
    /// Time limit of one request.
    #[serde(default = "default_timeout")]
    pub timeout: HumanDuration,
    /// Events unconfirmed this long after they happened are dropped (counted and logged).
    #[serde(default = "default_max_retry_age")]
    pub max_retry_age: HumanDuration,
    /// POSTs in flight at once (added key).
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
}

fn default_concurrency() -> usize {
    export::DEFAULT_CONCURRENCY
}

/// Largest `concurrency`.
const MAX_CONCURRENCY: usize = 256;

impl WebhookSection {
    /// The checks serde cannot express; `n` is the section's index.
    pub(super) fn check(&self, n: usize) -> Result<(), Invalid> {
        let key = |k: &str| format!("webhook[{n}].{k}");
        let ok_scheme = self.url.starts_with("http://") || self.url.starts_with("https://");
        if !ok_scheme || self.url.parse::<hyper::Uri>().is_err() {
            return Err(Invalid::new(key("url"), format!("{:?} is not an http:// or https:// URL", self.url)));
        }
        if self.secret.is_empty() {
            return Err(Invalid::new(key("secret"), "must not be empty (it signs every request)"));
        }
        if self.concurrency == 0 || self.concurrency > MAX_CONCURRENCY {
            return Err(Invalid::new(key("concurrency"), format!("must be 1 to {MAX_CONCURRENCY}")));
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
    pub fn to_core(&self, n: usize) -> WebhookConfig {
        let mut endpoint = self.export_keys().settings(format!("webhook-{n}"));
        endpoint.concurrency = self.concurrency;
        WebhookConfig { url: self.url.clone(), secret: self.secret.clone(), endpoint }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::super::Config;

    #[test]
    fn defaults_are_the_contracts() {
        let c =
            Config::parse("[[webhook]]\nurl = \"https://app.example/hook\"\nsecret = \"s\"\n", Path::new("t")).unwrap();
        let w = c.webhook[0].to_core(0);
        assert_eq!(w.endpoint.name, "webhook-0");
        assert_eq!(w.endpoint.batch_size, 100);
        assert_eq!(w.endpoint.batch_delay.as_secs(), 1);
        assert_eq!(w.endpoint.timeout.as_secs(), 10);
        assert_eq!(w.endpoint.max_retry_age.as_secs(), 86_400);
        assert_eq!(w.endpoint.events, mta_core::EventTypes::all());
    }

    #[test]
    fn bad_values_name_their_key() {
        for (text, key) in [
            ("url = \"ftp://x\"\nsecret = \"s\"", "webhook[0].url"),
            ("url = \"http://x/\"\nsecret = \"\"", "webhook[0].secret"),
            ("url = \"http://x/\"\nsecret = \"s\"\nbatch_size = 0", "webhook[0].batch_size"),
            ("url = \"http://x/\"\nsecret = \"s\"\nevents = []", "webhook[0].events"),
        ] {
            let e = Config::parse(&format!("[[webhook]]\n{text}\n"), Path::new("t")).unwrap_err().to_string();
            assert!(e.contains(key), "{e}");
        }
        let e =
            Config::parse("[[webhook]]\nurl = \"http://x/\"\nsecret = \"s\"\nevents = [\"opened\"]\n", Path::new("t"))
                .unwrap_err()
                .to_string();
        assert!(e.contains("opened") && e.contains("bounce"), "{e}");
    }

    #[test]
    fn check_config_does_not_print_the_secret() {
        let c = Config::parse(
            "[[webhook]]\nurl = \"https://app.example/hook\"\nsecret = \"hunter2-signing-key\"\n",
            Path::new("t"),
        )
        .unwrap();
        let shown = c.to_toml_redacted();
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains(crate::config::REDACTED), "{shown}");
        assert!(c.to_toml().contains("hunter2-signing-key"), "the exact form still round-trips");
    }
}
