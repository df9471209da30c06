//! The seam between connections and the wire: opening an outbound session to a site and sending on it. The
//! engine uses SMTP ([`Smtp`]); the runtime's unit tests plug in a scripted receiver so retries, throttling,
//! circuits and shutdown run under tokio's paused clock.

use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;

use mta_smtp::client::{ClientConfig, ClientError, Connection, Envelope, SendResult, TlsPolicy};

use super::plan::{HopTls, NextHops};
use crate::Response;

/// A boxed future (the traits below are object-safe so the runtime holds `Arc<dyn Transport>`).
pub(crate) type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// An open session and the name of the host it reached.
pub(crate) type Connected = (Box<dyn Session>, String);

/// Opens outbound sessions.
pub(crate) trait Transport: Send + Sync {
    /// A session to the first next hop of `hops` that answers, from `source`; with the name of the host
    /// reached. The error is the last failure's response.
    fn connect<'a>(&'a self, hops: &'a NextHops, source: Option<IpAddr>) -> BoxFuture<'a, Result<Connected, Response>>;
}

/// One open outbound session.
pub(crate) trait Session: Send {
    /// Send one message to the envelope's recipients.
    fn send<'a>(&'a mut self, env: &'a Envelope<'a>, data: &'a [u8]) -> BoxFuture<'a, Result<SendResult, ClientError>>;
    /// The session can carry another message.
    fn is_usable(&self) -> bool;
    /// Say goodbye (`QUIT`) and close.
    fn quit(self: Box<Self>) -> BoxFuture<'static, ()>;
}

/// SMTP over TCP with the engine's client settings.
pub(crate) struct Smtp {
    /// Client settings (EHLO name, TLS policy and roots, time limits, default source address).
    pub(crate) client: ClientConfig,
}

impl Transport for Smtp {
    fn connect<'a>(&'a self, hops: &'a NextHops, source: Option<IpAddr>) -> BoxFuture<'a, Result<Connected, Response>> {
        Box::pin(async move {
            let mut client = self.client.clone();
            client.source_address = source.or(client.source_address);
            let source_label = match hops.tls {
                HopTls::Verified => {
                    // A policy asked for it: never plaintext, never an unverified certificate (RFC 8461 §5).
                    client.tls = TlsPolicy::Verified;
                    Some("mta-sts")
                }
                HopTls::Dane => Some("dane"),
                HopTls::Default => None,
            };
            let mut last = Response::local(451, (4, 4, 1), "no next hop");
            for hop in &hops.hosts {
                let mut client = client.clone();
                let mut policy = source_label;
                if hops.tls == HopTls::Dane {
                    match &hop.tlsa {
                        // RFC 7672 §2.2: TLSA records, none usable: TLS is still mandatory, unauthenticated.
                        Some(records) if records.is_empty() => client.tls = TlsPolicy::Required,
                        Some(records) => {
                            client.tls = TlsPolicy::Dane;
                            client.dane = Some(records.clone());
                        }
                        None => policy = None,
                    }
                }
                let name = hop.name.as_str();
                for addr in hop.addrs.iter().copied() {
                    match Connection::connect(addr, name, &client).await {
                        Ok(conn) => {
                            metrics::counter!("mta_delivery_connections_opened_total").increment(1);
                            if let Some(source) = policy {
                                policy_outcome(source, "tls_verified");
                            }
                            return Ok((Box::new(conn) as Box<dyn Session>, name.to_string()));
                        }
                        Err(e) => {
                            tracing::debug!(mx = name, %addr, error = %e, "connection failed; trying the next address");
                            last = Response::from_error(&e);
                            if let (Some(source), Some(failure)) = (policy, last.tls_failure) {
                                policy_outcome(source, failure.as_str());
                            }
                            if let Some(source) = policy {
                                // The event says which policy refused the session, and why (RFC 8460 type).
                                let why = last.tls_failure.map_or("", |f| f.as_str());
                                last.text = format!(
                                    "{} ({source} policy{}{why})",
                                    last.text,
                                    if why.is_empty() { "" } else { ": " }
                                );
                            }
                            if last.origin == crate::Origin::Local {
                                last.text = format!("{name} [{addr}]: {}", last.text);
                            }
                        }
                    }
                }
            }
            Err(last)
        })
    }
}

/// Counts a connection under an enforced policy (`mta-sts` or `dane`): verified, or its RFC 8460 failure type.
fn policy_outcome(source: &'static str, result: &'static str) {
    metrics::counter!("mta_tls_policy_total", "source" => source, "mode" => "enforce", "result" => result).increment(1);
}

impl Session for Connection {
    fn send<'a>(&'a mut self, env: &'a Envelope<'a>, data: &'a [u8]) -> BoxFuture<'a, Result<SendResult, ClientError>> {
        Box::pin(Connection::send(self, env, data))
    }

    fn is_usable(&self) -> bool {
        Connection::is_usable(self)
    }

    fn quit(self: Box<Self>) -> BoxFuture<'static, ()> {
        Box::pin(Connection::quit(*self))
    }
}
