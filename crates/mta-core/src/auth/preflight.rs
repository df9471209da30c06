//! Sender pre-flight: for each signing domain, does its SPF record authorise our source
//! addresses, and is the DKIM key published at `selector._domainkey.domain` ours?
//!
//! Checked at start and then every [`DEFAULT_REFRESH`] (lookups go through the pool, so its
//! cache makes repeats cheap). A temporary DNS failure keeps the previous answer. A mismatch is
//! logged (`warn`), counted (`mta_auth_preflight_mismatch_total{domain,check}`) and shown by
//! [`Preflight::statuses`] (`GET /api/v1/senders`); [`Preflight::should_hold`] implements
//! `dkim.on_preflight_mismatch = "hold"`.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use hickory_proto::rr::RData;
use mail_auth::MessageAuthenticator;
use parking_lot::RwLock;
use serde::Serialize;
use tokio::task::JoinHandle;

use super::signing::{from_domain, normalize_domain, public_key_matches, LoadedKey, Signer};
use super::spf::{Spf, SpfDns, SpfResult};
use crate::dns::Resolver;
use crate::events::now_rfc3339;

/// Bound of one SPF check (each lookup has the pool's own timeout; this caps their sum).
const SPF_CHECK_TIMEOUT: Duration = Duration::from_secs(30);

/// How often every domain is checked again.
pub const DEFAULT_REFRESH: Duration = Duration::from_secs(3600);

/// The pre-flight result of one sending domain (one row of `GET /api/v1/senders`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SenderStatus {
    /// The signing domain.
    pub domain: String,
    /// Every source address passes the domain's SPF; `None`: not known (no source address
    /// configured, never checked, or only temporary DNS errors so far).
    pub spf_ok: Option<bool>,
    /// Every key's published public key is ours; `None`: not known yet.
    pub dkim_ok: Option<bool>,
    /// When last checked (RFC 3339, UTC); `None`: never.
    pub last_checked: Option<String>,
    /// What was found, human-readable (`"spf: ...; dkim sel1: ..."`).
    pub detail: String,
}

/// The pre-flight checker. Share it as `Arc<Preflight>`.
pub struct Preflight {
    auth: MessageAuthenticator,
    spf: Spf,
    signer: Arc<Signer>,
    sources: Vec<IpAddr>,
    hostname: String,
    state: RwLock<HashMap<String, SenderStatus>>,
}

/// One check's result: `Some(ok)` or `None` for a temporary failure (keep the previous one).
struct Check {
    ok: Option<bool>,
    detail: String,
}

impl Preflight {
    /// `sources`: our outbound addresses (`delivery.source_address` and every pool address);
    /// `hostname`: our HELO name (SPF `%{h}`).
    pub fn new(
        auth: MessageAuthenticator,
        signer: Arc<Signer>,
        sources: Vec<IpAddr>,
        hostname: impl Into<String>,
    ) -> Self {
        let state = signer
            .domains()
            .into_iter()
            .map(|d| {
                let s = SenderStatus {
                    domain: d.clone(),
                    spf_ok: None,
                    dkim_ok: None,
                    last_checked: None,
                    detail: "not checked yet".into(),
                };
                (d, s)
            })
            .collect();
        let hostname = hostname.into();
        let spf = Spf::new(SpfDns::Hickory(Box::new(auth.0.clone())), hostname.clone());
        Preflight { auth, spf, signer, sources, hostname, state: RwLock::new(state) }
    }

    /// SPF lookups straight through `resolver` (the pool behind mail-auth's stub), as
    /// [`super::Verifier::with_resolver`].
    pub fn with_resolver(mut self, resolver: Resolver) -> Self {
        self.spf = Spf::new(SpfDns::Pool(resolver), self.hostname.clone());
        self
    }

    /// The last result of every signing domain, sorted by domain.
    pub fn statuses(&self) -> Vec<SenderStatus> {
        let mut v: Vec<SenderStatus> = self.state.read().values().cloned().collect();
        v.sort_by(|a, b| a.domain.cmp(&b.domain));
        v
    }

    /// Hold mail from `from_domain` (`dkim.on_preflight_mismatch = "hold"`)? True only when the
    /// key that would sign it is known not to be the published one; unknown (not checked yet,
    /// temporary errors) sends.
    pub fn should_hold(&self, from_domain: &str) -> bool {
        let Some(d) = self.signer.signing_domain(from_domain) else {
            return false;
        };
        self.state.read().get(d).is_some_and(|s| s.dkim_ok == Some(false))
    }

    /// [`Preflight::should_hold`] for the `From:` domain of `message` (no `From:`: false).
    pub fn should_hold_message(&self, message: &[u8]) -> bool {
        from_domain(message).is_some_and(|d| self.should_hold(&d))
    }

    /// Check every signing domain now; returns the new statuses.
    pub async fn check_all(&self) -> Vec<SenderStatus> {
        let domains = self.signer.domains();
        let checks = domains.iter().map(|d| self.check_domain(d));
        futures::future::join_all(checks).await;
        self.statuses()
    }

    /// Check one signing domain now and store the result.
    pub async fn check_domain(&self, domain: &str) -> SenderStatus {
        let domain = normalize_domain(domain);
        let keys: Vec<&LoadedKey> = self.signer.keys().iter().filter(|k| k.domain == domain).collect();
        let (spf, dkim) = tokio::join!(self.check_spf(&domain), self.check_dkim(&keys));
        let prev = self.state.read().get(&domain).cloned();
        let status = SenderStatus {
            domain: domain.clone(),
            spf_ok: spf.ok.or(prev.as_ref().and_then(|p| p.spf_ok)),
            dkim_ok: dkim.ok.or(prev.as_ref().and_then(|p| p.dkim_ok)),
            last_checked: Some(now_rfc3339()),
            detail: format!("spf: {}; dkim: {}", spf.detail, dkim.detail),
        };
        for (check, ok) in [("spf", spf.ok), ("dkim", dkim.ok)] {
            if ok == Some(false) {
                metrics::counter!("mta_auth_preflight_mismatch_total", "domain" => domain.clone(), "check" => check)
                    .increment(1);
            }
        }
        if spf.ok == Some(false) || dkim.ok == Some(false) {
            tracing::warn!(domain = %domain, detail = %status.detail, "sender pre-flight mismatch");
        } else {
            tracing::debug!(domain = %domain, detail = %status.detail, "sender pre-flight");
        }
        self.state.write().insert(domain, status.clone());
        status
    }

    /// Run [`Preflight::check_all`] now and then every `every`, until the task is aborted.
    pub fn spawn(self: Arc<Self>, every: Duration) -> JoinHandle<()> {
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                self.check_all().await;
            }
        })
    }

    async fn check_spf(&self, domain: &str) -> Check {
        if self.sources.is_empty() {
            return Check { ok: None, detail: "not checked (no source address configured)".into() };
        }
        let sender = format!("postmaster@{domain}");
        let mut bad = Vec::new();
        let mut temp = Vec::new();
        for ip in &self.sources {
            let check = self.spf.verify_mail_from(*ip, &self.hostname, &sender);
            match tokio::time::timeout(SPF_CHECK_TIMEOUT, check).await.map(|o| o.result) {
                Ok(SpfResult::Pass) => {}
                Ok(SpfResult::TempError) | Err(_) => temp.push(format!("{ip}: temperror")),
                Ok(other) => bad.push(format!("{ip}: {other}")),
            }
        }
        if !bad.is_empty() {
            Check { ok: Some(false), detail: format!("not authorised: {}", bad.join(", ")) }
        } else if !temp.is_empty() {
            Check { ok: None, detail: format!("temporary DNS error ({})", temp.join(", ")) }
        } else {
            Check { ok: Some(true), detail: format!("pass for {} source address(es)", self.sources.len()) }
        }
    }

    async fn check_dkim(&self, keys: &[&LoadedKey]) -> Check {
        let mut parts = Vec::new();
        let mut all_ok = true;
        let mut any_temp = false;
        for k in keys {
            let name = format!("{}._domainkey.{}.", k.selector, k.domain);
            let (ok, what) = match self.auth.resolver().txt_lookup(name.as_str()).await {
                Ok(lookup) => {
                    let records: Vec<String> = lookup
                        .answers()
                        .iter()
                        .filter_map(|r| match &r.data {
                            RData::TXT(t) => {
                                Some(t.txt_data.iter().map(|s| String::from_utf8_lossy(s)).collect::<String>())
                            }
                            _ => None,
                        })
                        .collect();
                    judge_key_records(k, &records)
                }
                Err(e) if e.is_no_records_found() => (Some(false), "no key published".to_string()),
                Err(e) => (None, format!("temporary DNS error ({e})")),
            };
            match ok {
                Some(true) => {}
                Some(false) => all_ok = false,
                None => any_temp = true,
            }
            parts.push(format!("{} {what}", k.selector));
        }
        let ok = if !all_ok {
            Some(false)
        } else if any_temp {
            None
        } else {
            Some(true)
        };
        Check { ok, detail: parts.join(", ") }
    }
}

/// Compare the TXT records at `selector._domainkey.domain` with our key.
fn judge_key_records(k: &LoadedKey, records: &[String]) -> (Option<bool>, String) {
    let Some(rec) = records.iter().find(|r| r.contains("p=")) else {
        return (Some(false), "no DKIM key record".into());
    };
    let tags: HashMap<String, String> = rec
        .split(';')
        .filter_map(|t| t.split_once('='))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.chars().filter(|c| !c.is_whitespace()).collect()))
        .collect();
    let p = tags.get("p").map(String::as_str).unwrap_or("");
    if p.is_empty() {
        return (Some(false), "key revoked (empty p=)".into());
    }
    let k_tag = tags.get("k").map_or("rsa", String::as_str).to_ascii_lowercase();
    let want = match k.algorithm {
        super::KeyAlgorithm::RsaSha256 => "rsa",
        super::KeyAlgorithm::Ed25519Sha256 => "ed25519",
    };
    if k_tag != want {
        return (Some(false), format!("published k={k_tag}, ours is {want}"));
    }
    let Ok(published) = base64::engine::general_purpose::STANDARD.decode(p.as_bytes()) else {
        return (Some(false), "published p= is not valid base64".into());
    };
    if public_key_matches(k, &published) {
        (Some(true), "matches".into())
    } else {
        (Some(false), format!("published key differs from ours (publish: {})", k.dns_record()))
    }
}
