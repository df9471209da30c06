//! The engine's config from the file's: each section converts itself; this only puts the parts together.

use mta_core::delivery::Shaping;
use mta_core::dns::DnsConfig;
use mta_core::export::ExportConfig;
use mta_core::{DeliveryConfig, EngineConfig};

use super::dkim::PreflightMismatch;
use super::Config;

impl From<&Config> for EngineConfig {
    fn from(config: &Config) -> Self {
        let mut delivery = DeliveryConfig::from(&config.delivery);
        delivery.shaping = config.shaping.iter().map(Shaping::from).collect();
        delivery.routes = config.route.clone();
        delivery.tls_report = (&config.tls_report).into();
        // Checked by `Config::validate`; a file changed since then falls back to the shipped rules.
        delivery.classifier = config.bounce.classifier().unwrap_or_else(|e| {
            tracing::error!(error = %e, "bounce.rules_file unusable; classifying with the shipped rules");
            mta_core::bounce::Classifier::shipped()
        });
        delivery.auto_suppress = config.suppression.classes();
        delivery.response_rules =
            super::suppression::response_rules(&config.response_rule, config.deliverability.default_response_rules);
        EngineConfig {
            hostname: config.server.hostname.clone(),
            node_id: config.server.node_id.clone(),
            spool_cache_bytes: config.spool.cache_bytes,
            memory_per_message: config.spool.memory_per_message,
            body_memory_budget: config.spool.body_memory_budget,
            event_log: Some(config.log.events.clone()),
            max_recipients: config.smtp.max_recipients,
            max_message_size: config.smtp.max_message_size,
            dns: DnsConfig::from(&config.dns),
            delivery,
            dkim_keys: config.dkim.keys(),
            auth: config.auth,
            backpressure: Some(config.backpressure.to_core(config.smtp.max_connections)),
            hold_on_preflight_mismatch: config.dkim.on_preflight_mismatch == PreflightMismatch::Hold,
            source_addresses: config.delivery.source_addresses(),
            export: ExportConfig {
                webhooks: config.webhook.iter().enumerate().map(|(n, w)| w.to_core(n)).collect(),
                amqp: config.amqp.iter().enumerate().map(|(n, a)| a.to_core(n)).collect(),
                outbox_max_bytes: config.outbox.max_bytes,
            },
            history: config.history.to_core(),
            ..EngineConfig::new(config.spool.path.clone())
        }
    }
}
