//! The seam between connections and the wire: opening an outbound session to a site and sending on it. The
//! engine uses SMTP ([`Smtp`]); the runtime's unit tests plug in a scripted receiver so retries, throttling,
//! circuits and shutdown run under tokio's paused clock.

use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;

use mta_smtp::client::{ClientConfig, ClientError, Connection, Envelope, SendResult, TlsPolicy};

use super::plan::{Hop, HopTls, NextHops};
use crate::tls_policy::{PolicyMode, PolicySource, TlsResultType, TlsSession};
use crate::Response;

/// A boxed future (the traits below are object-safe so the runtime holds `Arc<dyn Transport>`).
pub(crate) type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// An open session, the host it reached, and its TLS under the site's policy.
pub(crate) struct Connected {
    /// The session.
    pub(crate) session: Box<dyn Session>,
    /// The MX host name reached (`mx` in events).
    pub(crate) mx: String,
    /// Its address (`receiving-ip` in TLS reports).
    pub(crate) addr: Option<std::net::SocketAddr>,
    /// The policy the session ran under and what came of it.
    pub(crate) tls: TlsSession,
}

/// Why no session could be opened: the last failure's response, and the host and address it came from.
pub(crate) struct Refused {
    /// The last failure's response (its text names the host for people; the fields below are for code).
    pub(crate) response: Response,
    /// The MX host of the last attempt (`None`: no next hop was tried).
    pub(crate) mx: Option<String>,
    /// Its address (`receiving-ip` in TLS reports).
    pub(crate) addr: Option<std::net::SocketAddr>,
}

impl Refused {
    /// A refusal before any host was tried.
    pub(crate) fn without_host(response: Response) -> Refused {
        Refused { response, mx: None, addr: None }
    }
}

/// Opens outbound sessions.
pub(crate) trait Transport: Send + Sync {
    /// A session to the first next hop of `hops` that answers, from `source`; with the name of the host
    /// reached. The error is the last failure's response and where it came from.
    fn connect<'a>(&'a self, hops: &'a NextHops, source: Option<IpAddr>) -> BoxFuture<'a, Result<Connected, Refused>>;
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
    fn connect<'a>(&'a self, hops: &'a NextHops, source: Option<IpAddr>) -> BoxFuture<'a, Result<Connected, Refused>> {
        Box::pin(async move {
            let mut client = self.client.clone();
            client.source_address = source.or(client.source_address);
            let mut last = Refused::without_host(Response::local(451, (4, 4, 1), "no next hop"));
            for hop in &hops.hosts {
                let mut client = client.clone();
                let policy = hop_policy(hops.tls, hop);
                match (hops.tls, &hop.tlsa) {
                    // A policy asked for it: never plaintext, never an unverified certificate (RFC 8461 §5).
                    (HopTls::Verified, _) => client.tls = TlsPolicy::Verified,
                    // `delivery.require_tls` (or a disabled STARTTLS) stays as configured: never weaker.
                    (HopTls::Testing, _) if client.tls == TlsPolicy::Opportunistic => client.tls = TlsPolicy::Testing,
                    // RFC 7672 §2.2: TLSA records, none usable: TLS is still mandatory, unauthenticated.
                    (HopTls::Dane, Some(records)) if records.is_empty() => client.tls = TlsPolicy::Required,
                    (HopTls::Dane, Some(records)) => {
                        client.tls = TlsPolicy::Dane;
                        client.dane = Some(records.clone());
                    }
                    _ => {}
                }
                let name = hop.name.as_str();
                for addr in hop.addrs.iter().copied() {
                    match Connection::connect(addr, name, &client).await {
                        Ok(conn) => {
                            metrics::counter!("mta_delivery_connections_opened_total").increment(1);
                            let tls = session_tls(hops.tls, hop, policy, &conn);
                            if let (PolicySource::Dane | PolicySource::MtaSts, Some(PolicyMode::Enforce)) =
                                (tls.policy, tls.mode)
                            {
                                policy_outcome(label(tls.policy), tls.failure.map_or("tls_verified", |f| f.as_str()));
                            }
                            let session = Box::new(conn) as Box<dyn Session>;
                            return Ok(Connected { session, mx: name.to_string(), addr: Some(addr), tls });
                        }
                        Err(e) => {
                            tracing::debug!(mx = name, %addr, error = %e, "connection failed; trying the next address");
                            last = Refused {
                                response: refusal_response(&e, policy, name, addr),
                                mx: Some(name.to_string()),
                                addr: Some(addr),
                            };
                        }
                    }
                }
            }
            Err(last)
        })
    }
}

/// The response for a failed attempt at `name` (`addr`) under `policy`: the policy's RFC 8460 type only when it
/// was enforced (opportunistic and `testing` sessions fall back to plaintext: not a policy failure); the text
/// says which policy refused and, for our own reasons, which host.
fn refusal_response(
    e: &ClientError,
    policy: Option<(PolicySource, PolicyMode)>,
    name: &str,
    addr: std::net::SocketAddr,
) -> Response {
    let mut last = Response::from_error(e);
    let enforced = policy.filter(|(_, mode)| *mode == PolicyMode::Enforce).map(|(p, _)| p);
    if enforced.is_none() {
        last.tls_failure = None;
    }
    if let Some(source) = enforced {
        let why = last.tls_failure.map_or("", |f| f.as_str());
        if let Some(failure) = last.tls_failure {
            policy_outcome(label(source), failure.as_str());
        }
        last.text = format!("{} ({} policy{}{why})", last.text, label(source), if why.is_empty() { "" } else { ": " });
    }
    if last.origin == crate::Origin::Local {
        last.text = format!("{name} [{addr}]: {}", last.text);
    }
    last
}

/// The policy governing `hop` on a site with `tls`: DANE for hosts with TLSA records (hosts without are
/// opportunistic), MTA-STS for every host of an MTA-STS site.
fn hop_policy(tls: HopTls, hop: &Hop) -> Option<(PolicySource, PolicyMode)> {
    match tls {
        HopTls::Default => None,
        HopTls::Verified => Some((PolicySource::MtaSts, PolicyMode::Enforce)),
        HopTls::Testing => Some((PolicySource::MtaSts, PolicyMode::Testing)),
        HopTls::Dane => hop.tlsa.as_ref().map(|_| (PolicySource::Dane, PolicyMode::Enforce)),
    }
}

/// What an established session's TLS says under the policy: enforced sessions that connected met it, except
/// a DANE host whose TLSA records are all unusable (`tlsa-invalid`, delivered over unauthenticated TLS);
/// `testing` sessions report what `enforce` would have refused.
fn session_tls(tls: HopTls, hop: &Hop, policy: Option<(PolicySource, PolicyMode)>, conn: &Connection) -> TlsSession {
    let Some((source, mode)) = policy else {
        return TlsSession::opportunistic(conn.is_tls());
    };
    let failure = match tls {
        HopTls::Dane if hop.tlsa.as_ref().is_some_and(|r| r.is_empty()) => Some(TlsResultType::TlsaInvalid),
        // RFC 8460 has no type for "MX host not in the policy"; `enforce` reports it the same way.
        HopTls::Testing if hop.outside_policy => Some(TlsResultType::ValidationFailure),
        HopTls::Testing => conn.testing_failure().and_then(TlsResultType::from_client_error),
        _ => None,
    };
    TlsSession { policy: source, mode: Some(mode), tls: conn.is_tls(), failure }
}

fn label(source: PolicySource) -> &'static str {
    match source {
        PolicySource::Dane => "dane",
        PolicySource::MtaSts => "mta-sts",
        PolicySource::None => "none",
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
