//! The policy between SMTP sessions and the engine: relay control, AUTH, and handing messages to the spool.
//!
//! The session (in `mta-smtp`) speaks the protocol; this handler decides. Relay rule (docs/configuration.md): a
//! recipient is accepted when its domain is one of `smtp.relay_domains`, or the client is in
//! `smtp.relay_networks` (its real address, after PROXY protocol), or it authenticated. Never an open relay.
//!
//! Back-pressure (docs/operations.md): while the node sheds, a new connection gets `421 4.3.2` and a new transaction
//! (`MAIL`) `451 4.3.2`; a transaction already past `MAIL` finishes. While degraded, the greeting waits
//! `degraded_greeting_delay` and sessions beyond `degraded_smtp_sessions` get `421 4.3.2`.

use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;
use mta_core::auth::Verifier;
use mta_core::backpressure::{Backpressure, Overloaded};
use mta_core::{Engine, Incoming, InjectError, Injection, Protocol};
use mta_smtp::Reply;
use mta_smtp::{ConnectionLimits, ContentSink, Handler, SessionInfo, Transaction};

use crate::secrets::UserStore;

/// Messages up to this size are verified on the async workers; larger ones on a blocking thread.
const VERIFY_INLINE_MAX: usize = 256 << 10;

/// Relay and authentication policy plus the engine to queue into.
pub struct SmtpHandler {
    engine: Engine,
    relay_networks: Vec<IpNet>,
    relay_domains: Vec<String>,
    users: Arc<UserStore>,
    /// Inbound SPF/DKIM/DMARC/ARC for mail from outside the relay networks (None: all checks off).
    verifier: Option<Arc<Verifier>>,
    /// The node's health state (always healthy unless [`SmtpHandler::with_backpressure`]).
    backpressure: Backpressure,
    /// The listeners' connection counts, for the degraded session cap.
    limits: Option<Arc<ConnectionLimits>>,
    /// `suppression.complaint_address` (lowercase): mail to it is read as a feedback report, not relayed.
    complaint_address: Option<String>,
}

impl SmtpHandler {
    /// A handler for `engine` with the relay rules and users of the config.
    pub fn new(engine: Engine, relay_networks: Vec<IpNet>, relay_domains: Vec<String>, users: UserStore) -> Self {
        let relay_domains = relay_domains.into_iter().map(|d| d.to_ascii_lowercase()).collect();
        SmtpHandler {
            engine,
            relay_networks,
            relay_domains,
            users: Arc::new(users),
            verifier: None,
            backpressure: Backpressure::disabled(),
            limits: None,
            complaint_address: None,
        }
    }

    /// Read mail to `address` as ARF feedback reports (complaints) instead of queueing it.
    pub fn with_complaint_address(mut self, address: Option<String>) -> Self {
        self.complaint_address = address.map(|a| a.to_ascii_lowercase());
        self
    }

    fn is_complaint_address(&self, rcpt: &str) -> bool {
        self.complaint_address.as_deref().is_some_and(|c| c.eq_ignore_ascii_case(rcpt))
    }

    /// Refuse or slow new work by `backpressure`; `limits` are the listeners' (for the degraded session cap).
    pub fn with_backpressure(mut self, backpressure: Backpressure, limits: Arc<ConnectionLimits>) -> Self {
        self.backpressure = backpressure;
        self.limits = Some(limits);
        self
    }

    /// Verify mail from outsiders with `verifier`.
    pub fn with_verifier(mut self, verifier: Option<Arc<Verifier>>) -> Self {
        self.verifier = verifier;
        self
    }

    fn may_relay(&self, info: &SessionInfo) -> bool {
        info.auth_user.is_some() || self.relay_networks.iter().any(|n| n.contains(&info.peer.ip()))
    }

    fn is_relay_domain(&self, rcpt: &str) -> bool {
        let domain = rcpt.rsplit_once('@').map(|(_, d)| d).unwrap_or("");
        self.relay_domains.iter().any(|d| d.eq_ignore_ascii_case(domain))
    }
}

/// Map an engine refusal to the SMTP reply the client sees.
fn reply_for(e: &InjectError) -> Reply {
    match e {
        InjectError::TooLarge { .. } => Reply::new(552, (5, 3, 4), "Message size exceeds fixed limit"),
        InjectError::HeaderTooLarge => Reply::new(552, (5, 3, 4), "Header section too large"),
        InjectError::TooManyRecipients { .. } => Reply::new(452, (4, 5, 3), "Too many recipients"),
        InjectError::InvalidSender { .. } => Reply::new(553, (5, 1, 7), "Bad sender address syntax"),
        InjectError::InvalidRecipient { .. } => Reply::new(553, (5, 1, 3), "Bad recipient address syntax"),
        InjectError::NoRecipients => Reply::new(554, (5, 5, 1), "No valid recipients"),
        InjectError::ShuttingDown => Reply::new(421, (4, 3, 2), "Service shutting down"),
        InjectError::Overloaded(_) => Reply::new(451, (4, 3, 2), "Service busy, try again later"),
        _ => Reply::new(451, (4, 3, 0), "Temporary local problem, message not queued"),
    }
}

/// The reply to a back-pressure refusal: `421` at connect (the session closes), `451` to `MAIL`.
fn overloaded_reply(code: u16, e: &Overloaded) -> Reply {
    metrics::counter!("mta_smtp_backpressure_refusals_total", "code" => if code == 421 { "421" } else { "451" })
        .increment(1);
    match e {
        Overloaded::Shedding { .. } => Reply::new(code, (4, 3, 2), "Service busy (load shedding), try again later"),
        _ => Reply::new(code, (4, 3, 2), "Service busy, try again later"),
    }
}

/// Where a session's message content goes: the engine's bounded-memory reception (staged to disk when large).
pub struct SmtpContent {
    incoming: Incoming,
}

impl ContentSink for SmtpContent {
    async fn write(&mut self, chunk: &[u8]) -> Result<(), Reply> {
        self.incoming.write(chunk).await.map_err(|e| {
            if e.is_temporary() {
                tracing::warn!(error = %e, "message content not stored");
            }
            reply_for(&e)
        })
    }
}

impl Handler for SmtpHandler {
    type Content = SmtpContent;

    fn on_connect(&self, info: &SessionInfo) -> Result<(), Reply> {
        if !self.engine.is_accepting() {
            return Err(Reply::new(421, (4, 3, 2), "Service shutting down"));
        }
        let active = self.limits.as_ref().map_or(0, |l| l.active());
        if let Err(e) = self.backpressure.check_smtp_session(active) {
            tracing::debug!(peer = %info.peer, error = %e, "SMTP connection refused");
            return Err(overloaded_reply(421, &e));
        }
        Ok(())
    }

    fn greeting_delay(&self, _info: &SessionInfo) -> Duration {
        self.backpressure.greeting_delay()
    }

    fn on_mail(&self, _info: &SessionInfo, sender: &str) -> Result<(), Reply> {
        if let Err(e) = self.backpressure.check_new_work() {
            return Err(overloaded_reply(451, &e));
        }
        if !sender.is_empty() {
            if let Err(reason) = mta_core::reception::check_address(sender) {
                return Err(Reply::new(553, (5, 1, 7), format!("Bad sender address: {reason}")));
            }
        }
        Ok(())
    }

    fn on_rcpt(&self, info: &SessionInfo, _sender: &str, rcpt: &str) -> Result<(), Reply> {
        if let Err(reason) = mta_core::reception::check_address(rcpt) {
            return Err(Reply::new(553, (5, 1, 3), format!("Bad recipient address: {reason}")));
        }
        // Feedback reports come from the mailbox providers, outside our relay networks.
        if self.is_complaint_address(rcpt) {
            return Ok(());
        }
        if !(self.may_relay(info) || self.is_relay_domain(rcpt)) {
            return Err(Reply::new(550, (5, 7, 1), "Relay access denied"));
        }
        // SMTP carries no tenant: only entries for every tenant apply here.
        if self.engine.suppressions().is_suppressed(None, rcpt) {
            let (engine, sender, rcpt) = (self.engine.clone(), _sender.to_string(), rcpt.to_string());
            tokio::spawn(async move { engine.emit_suppressed(&sender, None, &[rcpt], "smtp").await });
            return Err(Reply::new(550, (5, 7, 1), "Recipient address suppressed (on the suppression list)"));
        }
        Ok(())
    }

    fn auth_enabled(&self) -> bool {
        !self.users.is_empty()
    }

    fn authenticate(&self, user: &str, password: &str) -> impl std::future::Future<Output = bool> + Send {
        let users = self.users.clone();
        let (user, password) = (user.to_string(), password.to_string());
        async move {
            // argon2 costs milliseconds of CPU: keep it off the async workers.
            tokio::task::spawn_blocking(move || users.verify(&user, &password)).await.unwrap_or(false)
        }
    }

    async fn begin_content(&self, _info: &SessionInfo, _txn: &Transaction) -> Result<SmtpContent, Reply> {
        if !self.engine.is_accepting() {
            return Err(reply_for(&InjectError::ShuttingDown));
        }
        Ok(SmtpContent { incoming: self.engine.incoming() })
    }

    fn queue(
        &self,
        info: &SessionInfo,
        txn: Transaction,
        content: SmtpContent,
    ) -> impl std::future::Future<Output = Result<String, Reply>> + Send {
        // Trusted clients (authenticated or in relay_networks) get our DKIM signature; mail from outsiders for
        // relay_domains is verified instead, and never signed (it could claim our domain in From:).
        let trusted = self.may_relay(info);
        let verifier = if trusted { None } else { self.verifier.clone() };
        let (peer, helo, sender) = (info.peer.ip(), info.helo.clone().unwrap_or_default(), txn.sender.clone());
        let mut incoming = content.incoming;
        let complaint = txn.recipients.iter().any(|r| self.is_complaint_address(r));
        let recipients: Vec<String> = txn.recipients.into_iter().filter(|r| !self.is_complaint_address(r)).collect();
        let mut injection = Injection {
            sender: txn.sender,
            recipients,
            content: bytes::Bytes::new(),
            tenant: None,
            pool: None,
            priority: mta_core::Priority::Bulk,
            protocol: Protocol::Esmtp { tls: info.tls, auth: info.auth_user.is_some() },
            peer: Some(info.peer.ip()),
            helo: info.helo.clone(),
            auth_user: info.auth_user.clone(),
            auth_results: None,
            sign: trusted,
        };
        let engine = self.engine.clone();
        async move {
            if complaint {
                // A feedback report is consumed: it adds a complaint entry and is never relayed.
                let whole = incoming.content().await.map_err(|e| reply_for(&e))?;
                let bytes = whole.bytes();
                drop(whole);
                if let Err(e) = engine.suppressions().add_complaint(bytes).await {
                    tracing::warn!(error = %e, "message to the complaint address refused");
                    return Err(match e {
                        mta_core::suppression::SuppressionError::Complaint(e) => {
                            Reply::new(550, (5, 6, 0), format!("Not accepted: {e}"))
                        }
                        _ => Reply::new(451, (4, 3, 0), "Temporary local problem, report not recorded"),
                    });
                }
                if injection.recipients.is_empty() {
                    return Ok("feedback-report".to_string());
                }
            }
            if let Some(verifier) = verifier {
                // The whole message, read back under the engine's memory budget when it was staged.
                let whole = incoming.content().await.map_err(|e| reply_for(&e))?;
                let verdict = if whole.len() > VERIFY_INLINE_MAX {
                    // Parsing hashes every body: for a large message that is milliseconds of CPU, so it runs
                    // on a blocking thread (its DNS lookups still go through the runtime).
                    let (bytes, handle) = (whole.bytes(), tokio::runtime::Handle::current());
                    let (helo, sender) = (helo.clone(), sender.clone());
                    let verifier = Arc::clone(&verifier);
                    tokio::task::spawn_blocking(move || {
                        handle.block_on(async move { verifier.verify(peer, &helo, &sender, &bytes).await })
                    })
                    .await
                    .map_err(|_| Reply::new(451, (4, 3, 0), "Temporary local problem, message not queued"))?
                } else {
                    verifier.verify(peer, &helo, &sender, &whole).await
                };
                drop(whole);
                if let Some((code, enhanced, text)) = verdict.reject {
                    return Err(Reply::new(code, enhanced, text));
                }
                if !verdict.header.is_empty() {
                    injection.auth_results = Some(verdict.header);
                }
            }
            let started = std::time::Instant::now();
            match incoming.finish(injection).await {
                Ok(accepted) => {
                    // End of data to the 250: what a client waits for durability.
                    metrics::histogram!("mta_smtp_ack_seconds").record(started.elapsed().as_secs_f64());
                    Ok(accepted.id.to_string())
                }
                Err(e) => {
                    if e.is_temporary() {
                        tracing::warn!(error = %e, "message not queued");
                    }
                    Err(reply_for(&e))
                }
            }
        }
    }
}
