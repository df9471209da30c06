//! The `[[amqp]]` sink: each event published as one persistent AMQP message (delivery mode 2, JSON body,
//! `message_id` = `event_id`) to an exchange on an AMQP 0-9-1 broker (RabbitMQ), with publisher confirms: a
//! batch is confirmed only when the broker acked every one of its messages.
//!
//! `amqps://` connects over TLS (rustls), verifying the broker's certificate for the URL's host against the
//! system roots plus the endpoint's `ca_file`.
//!
//! One connection and one confirm-mode channel per endpoint, opened on first use and again after any failure
//! (the endpoint's retry backoff paces reconnection). A nack, a closed channel or a lost connection fails the
//! whole batch; the endpoint sends it again, so a receiver may see an event twice and deduplicates on its
//! `event_id`.

use std::time::Duration;

use futures::future::BoxFuture;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::tcp::OwnedTLSConfig;
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties};
use serde_json::Value;

use super::endpoint::{Sink, SinkError};
use super::ExportError;

/// Default `routing_key` template.
pub const DEFAULT_ROUTING_KEY: &str = "{type}";
/// The longest routing key AMQP allows (a short string).
const MAX_ROUTING_KEY: usize = 255;

/// An AMQP endpoint's client.
pub struct Amqp {
    url: String,
    exchange: String,
    routing_key: String,
    connect_timeout: Duration,
    /// Extra PEM roots for `amqps://`.
    ca_pem: Option<String>,
    /// The open connection and its confirm-mode channel, if any.
    link: tokio::sync::Mutex<Option<(Connection, Channel)>>,
}

impl std::fmt::Debug for Amqp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Amqp").field("exchange", &self.exchange).finish_non_exhaustive()
    }
}

impl Amqp {
    /// A client publishing to `exchange` on the broker at `url` (`amqp://user:pass@host:port/vhost`), routing
    /// each event by the `routing_key` template (`{type}`, `{domain}`, `{tenant}` are replaced by the event's
    /// fields). Nothing connects until the first batch.
    pub fn new(url: &str, exchange: &str, routing_key: &str, connect_timeout: Duration) -> Result<Amqp, ExportError> {
        url.parse::<lapin::uri::AMQPUri>().map_err(|reason| ExportError::InvalidUrl { url: redact(url), reason })?;
        Ok(Amqp {
            url: url.to_string(),
            exchange: exchange.to_string(),
            routing_key: routing_key.to_string(),
            connect_timeout,
            ca_pem: None,
            link: tokio::sync::Mutex::new(None),
        })
    }

    /// Also trust the PEM certificates `pem` for `amqps://` (a private CA).
    pub fn with_ca_pem(mut self, pem: String) -> Amqp {
        self.ca_pem = Some(pem);
        self
    }

    /// The channel to publish on: the open one, or a new connection's.
    async fn channel(&self) -> Result<Channel, SinkError> {
        let mut link = self.link.lock().await;
        if let Some((conn, channel)) = link.as_ref() {
            if conn.status().connected() && channel.status().connected() {
                return Ok(channel.clone());
            }
        }
        *link = None;
        let connect = async {
            let tls = OwnedTLSConfig { identity: None, cert_chain: self.ca_pem.clone() };
            let runtime = lapin::runtime::default_runtime()?;
            let conn =
                Connection::connect_with_config(&self.url, ConnectionProperties::default(), tls, runtime).await?;
            let channel = conn.create_channel().await?;
            channel.confirm_select(ConfirmSelectOptions::default()).await?;
            Ok::<_, lapin::Error>((conn, channel))
        };
        let (conn, channel) = tokio::time::timeout(self.connect_timeout, connect)
            .await
            .map_err(|_| SinkError::Timeout(self.connect_timeout))?
            .map_err(|e| SinkError::Unreachable(e.to_string()))?;
        tracing::info!(exchange = %self.exchange, "connected to the AMQP broker");
        *link = Some((conn, channel.clone()));
        Ok(channel)
    }

    /// Forget the connection (after a failure): the next batch opens a new one.
    async fn reset(&self) {
        if let Some((conn, _)) = self.link.lock().await.take() {
            // Closing politely is best effort: the broker may already be gone.
            let _ = tokio::time::timeout(Duration::from_secs(1), conn.close(200, "reconnecting".into())).await;
        }
    }

    async fn publish(&self, events: &[Vec<u8>]) -> Result<(), SinkError> {
        let channel = self.channel().await?;
        let result = self.publish_on(&channel, events).await;
        if result.is_err() {
            self.reset().await;
        }
        result
    }

    async fn publish_on(&self, channel: &Channel, events: &[Vec<u8>]) -> Result<(), SinkError> {
        let broken = |e: lapin::Error| SinkError::Unreachable(e.to_string());
        let mut confirms = Vec::with_capacity(events.len());
        for event in events {
            let fields: Value = serde_json::from_slice(event).unwrap_or(Value::Null);
            let key = routing_key(&self.routing_key, &fields);
            let mut properties =
                BasicProperties::default().with_delivery_mode(2).with_content_type("application/json".into());
            if let Some(id) = fields.get("event_id").and_then(Value::as_str) {
                properties = properties.with_message_id(id.into());
            }
            let confirm = channel
                .basic_publish(
                    self.exchange.as_str().into(),
                    key.as_str().into(),
                    BasicPublishOptions::default(),
                    event,
                    properties,
                )
                .await
                .map_err(broken)?;
            confirms.push(confirm);
        }
        // Every message of the batch must be acked; the broker confirms in order, so this waits about as long
        // as the last one.
        for confirm in confirms {
            match confirm.await.map_err(broken)? {
                Confirmation::Ack(_) => {}
                Confirmation::Nack(_) => return Err(SinkError::Rejected("broker nacked a message".into())),
                Confirmation::NotRequested => {
                    return Err(SinkError::Rejected("channel is not in confirm mode".into()));
                }
            }
        }
        Ok(())
    }
}

impl Sink for Amqp {
    fn send<'a>(&'a self, events: &'a [Vec<u8>]) -> BoxFuture<'a, Result<(), SinkError>> {
        Box::pin(self.publish(events))
    }
}

/// The routing key of `event` from `template`: `{type}`, `{domain}` and `{tenant}` replaced by the event's
/// fields (empty when absent), cut to AMQP's 255 bytes.
pub(crate) fn routing_key(template: &str, event: &Value) -> String {
    let field = |k: &str| event.get(k).and_then(Value::as_str).unwrap_or_default().to_string();
    let mut key = template
        .replace("{type}", &field("type"))
        .replace("{domain}", &field("domain"))
        .replace("{tenant}", &field("tenant"));
    if key.len() > MAX_ROUTING_KEY {
        let mut cut = MAX_ROUTING_KEY;
        while !key.is_char_boundary(cut) {
            cut -= 1;
        }
        key.truncate(cut);
    }
    key
}

/// `url` without its password, for messages.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{}{user}:(redacted){}", &url[..scheme + 3], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routing_keys_come_from_the_template() {
        let e = serde_json::json!({"type": "bounce", "domain": "example.net", "tenant": "acme"});
        assert_eq!(routing_key("{type}", &e), "bounce");
        assert_eq!(routing_key("mta.{tenant}.{type}.{domain}", &e), "mta.acme.bounce.example.net");
        assert_eq!(routing_key("x.{tenant}", &serde_json::json!({"type": "delivery"})), "x.");
        assert!(routing_key(&"é{type}".repeat(100), &e).len() <= 255);
    }

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(redact("amqp://user:pw@127.0.0.1:5672/%2f"), "amqp://user:(redacted)@127.0.0.1:5672/%2f");
        assert_eq!(redact("amqp://127.0.0.1/"), "amqp://127.0.0.1/");
    }

    #[test]
    fn urls_are_checked() {
        assert!(Amqp::new("amqp://u:p@127.0.0.1:5672/%2f", "", "{type}", Duration::from_secs(1)).is_ok());
        assert!(Amqp::new("amqps://u:p@broker.example:5671/%2f", "", "{type}", Duration::from_secs(1)).is_ok());
        assert!(Amqp::new("http://x/", "", "{type}", Duration::from_secs(1)).is_err());
    }
}
