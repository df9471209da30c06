//! Outbound TLS policies: which destinations must get verified TLS, to which MX hosts.
//!
//! # Layout
//! - `record`: the `_mta-sts.<domain>` TXT announcement (RFC 8461 §3.1) and its `id`.
//! - `policy`: the policy file (§3.2) and MX pattern matching (§4.1).
//! - `fetch`: the HTTPS fetch (§3.3): verified, size- and time-limited, no redirects.
//! - `roots`: trust anchors (system roots plus `delivery.tls_ca_file`).
//! - `result`: RFC 8460 result types of failed sessions ([`TlsResultType`]), carried on delivery responses.
//! - `cache`: policies by domain, in memory and in the spool's aux tree (they survive restarts).
//! - `dane`: DANE (RFC 7672): authenticated TLSA records of MX hosts ([`HostTlsa`]); takes precedence.
//! - `session`: which policy governed a delivery session and what came of it ([`TlsSession`], in events).
//!
//! # Threat model
//! MTA-STS protects against an active attacker on the path between us and the destination's MX hosts (strip
//! STARTTLS, present their own certificate, answer for a forged MX) once we hold a policy: then we deliver only
//! to MX hosts the policy names, over TLS verified against public roots for that name, and defer otherwise.
//! It is trust on first use: an attacker who controls our DNS and HTTPS path on the first lookup (or when the
//! cached policy has expired) can hide the policy; the cache and refreshes before expiry keep that window small.
//! A failed fetch with no cached policy means "no policy" (§5.1), so blocking the fetch does not stop mail.

mod cache;
mod dane;
mod fetch;
mod policy;
mod record;
mod result;
mod roots;
mod session;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::future::{BoxFuture, FutureExt, Shared};
use mta_spool::Spool;
use parking_lot::Mutex;

pub use cache::CachedPolicy;
pub use dane::{host_tlsa, mx_authenticated, tlsa_name, DaneSetting, HostTlsa};
pub use fetch::{FetchError, Fetcher, MAX_POLICY_BYTES};
pub use policy::{PolicyError, StsMode, StsPolicy, MAX_AGE_LIMIT};
pub use record::{parse_record, parse_records, RecordError, StsRecord};
pub use result::TlsResultType;
pub use roots::{load_roots, RootsError};
pub use session::{PolicyMode, PolicySource, TlsSession};

use crate::dns::{DnsError, Resolver};
use cache::PolicyCache;

/// Whether published MTA-STS policies are obeyed (`delivery.mta_sts`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MtaStsSetting {
    /// Never look policies up.
    Off,
    /// Look them up and apply them (`enforce` defers, `testing` reports).
    #[default]
    Enforce,
}

/// Default time limit of one policy fetch (§3.3 suggests about a minute at most; most answer in under a second).
pub const DEFAULT_FETCH_TIMEOUT: Duration = Duration::from_secs(20);
/// Default port of the policy host.
pub const DEFAULT_MTA_STS_PORT: u16 = 443;

/// What a lookup found for a destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StsLookup {
    /// The policy in force, if any (`mode: none` included, for reporting).
    pub policy: Option<CachedPolicy>,
    /// Why the latest fetch failed, when it did.
    pub fetch_error: Option<String>,
    /// Its RFC 8460 type: `sts-policy-fetch-error`, `sts-policy-invalid` or `sts-webpki-invalid`.
    pub fetch_failure: Option<TlsResultType>,
}

/// A failed fetch: its RFC 8460 type and text.
type Failure = (TlsResultType, String);

/// The MTA-STS policies of destinations; one per engine, shared.
pub struct TlsPolicies {
    resolver: Resolver,
    fetcher: Fetcher,
    cache: PolicyCache,
    /// Fetches running, by domain: concurrent lookups of a new `id` share one (a spawned task, so it finishes
    /// and fills the cache even if every caller gave up).
    inflight: Mutex<HashMap<String, SharedFetch>>,
    /// Failed fetches by domain: (id, Unix time before which it is not fetched again, error). Without it every
    /// delivery attempt to a domain with a broken policy host would wait for a fetch.
    failures: Mutex<HashMap<String, (String, u64, Failure)>>,
    /// How long a failed fetch is not repeated.
    retry_after: Duration,
    fetches: AtomicU64,
}

/// Default pause after a failed fetch.
pub const DEFAULT_FETCH_RETRY: Duration = Duration::from_secs(300);
/// Failed fetches remembered; beyond it the oldest are forgotten (a fetch again is the only cost).
const MAX_FAILURES: usize = 16_384;

impl std::fmt::Debug for TlsPolicies {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsPolicies").field("fetches", &self.fetches()).finish_non_exhaustive()
    }
}

/// One fetch shared by every lookup that needs it.
type SharedFetch = Shared<BoxFuture<'static, Result<CachedPolicy, Failure>>>;

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

impl TlsPolicies {
    /// Policies looked up through `resolver`, fetched with `fetcher`, cached in `spool`.
    pub fn new(resolver: Resolver, fetcher: Fetcher, spool: Spool) -> TlsPolicies {
        TlsPolicies {
            resolver,
            fetcher,
            cache: PolicyCache::new(spool),
            inflight: Mutex::new(HashMap::new()),
            failures: Mutex::new(HashMap::new()),
            retry_after: DEFAULT_FETCH_RETRY,
            fetches: AtomicU64::new(0),
        }
    }

    /// The same, repeating a failed fetch after `retry_after` instead of [`DEFAULT_FETCH_RETRY`] (tests).
    pub fn with_fetch_retry(mut self, retry_after: Duration) -> TlsPolicies {
        self.retry_after = retry_after;
        self
    }

    /// Policy fetches attempted since start (the benchmark's "lookups per destination per max_age").
    pub fn fetches(&self) -> u64 {
        self.fetches.load(Ordering::Relaxed)
    }

    /// The cached policy of `domain` without any lookup (the HTTP API), when it has not expired.
    pub async fn cached(&self, domain: &str) -> Option<CachedPolicy> {
        let domain = domain.trim_end_matches('.').to_ascii_lowercase();
        self.cache.get(&domain).await.filter(|c| c.expires() > unix_now())
    }

    /// The policy in force for `domain` (§5.1): the cached one while its `id` matches the DNS record; fetched
    /// again when the `id` changed, or in the background when it nears expiry. When the TXT record is gone or
    /// the fetch fails, an unexpired cached policy stays in force.
    pub async fn lookup(self: &Arc<Self>, domain: &str) -> StsLookup {
        let domain = domain.trim_end_matches('.').to_ascii_lowercase();
        let now = unix_now();
        let cached = self.cache.get(&domain).await.filter(|c| c.expires() > now);
        let record = match self.resolver.query_txt(&format!("_mta-sts.{domain}")).await {
            Ok(l) => {
                let joined: Vec<Vec<u8>> = l.records.iter().map(|r| r.joined()).collect();
                parse_records(joined.iter().map(Vec::as_slice))
            }
            Err(DnsError::NxDomain | DnsError::NoData) => Err(RecordError::None),
            Err(e) => {
                tracing::debug!(domain, error = %e, "MTA-STS record lookup failed");
                return StsLookup { policy: cached, fetch_error: None, fetch_failure: None };
            }
        };
        let record = match record {
            Ok(r) => r,
            Err(e) => {
                if !matches!(e, RecordError::None) {
                    tracing::info!(domain, error = %e, "unusable MTA-STS record");
                }
                return StsLookup { policy: cached, fetch_error: None, fetch_failure: None };
            }
        };
        if let Some(c) = &cached {
            if c.id == record.id {
                // Refresh in the last quarter of max_age so a busy destination never runs on an expired policy.
                if c.expires().saturating_sub(now) < c.policy.max_age_secs / 4 {
                    // Not awaited: the spawned fetch replaces the cached policy when it succeeds.
                    drop(self.fetch_shared(&domain, &record.id));
                }
                return StsLookup { policy: cached, fetch_error: None, fetch_failure: None };
            }
        }
        let failed =
            self.failures.lock().get(&domain).filter(|(id, until, _)| *id == record.id && now < *until).cloned();
        if let Some((_, _, (kind, error))) = failed {
            return StsLookup { policy: cached, fetch_error: Some(error), fetch_failure: Some(kind) };
        }
        match self.fetch_shared(&domain, &record.id).await {
            Ok(fresh) => StsLookup { policy: Some(fresh), fetch_error: None, fetch_failure: None },
            Err((kind, e)) => {
                tracing::info!(domain, error = %e, "MTA-STS policy fetch failed");
                StsLookup { policy: cached, fetch_error: Some(e), fetch_failure: Some(kind) }
            }
        }
    }

    /// The fetch of `domain`'s policy running now, or a new one.
    fn fetch_shared(self: &Arc<Self>, domain: &str, id: &str) -> SharedFetch {
        let mut inflight = self.inflight.lock();
        if let Some(running) = inflight.get(domain) {
            return running.clone();
        }
        let (this, d, i) = (self.clone(), domain.to_string(), id.to_string());
        let task = tokio::spawn(async move {
            let result = this.fetch_and_store(&d, &i).await;
            {
                let mut failures = this.failures.lock();
                match &result {
                    Ok(_) => {
                        failures.remove(&d);
                    }
                    Err(e) => {
                        if failures.len() >= MAX_FAILURES {
                            let now = unix_now();
                            failures.retain(|_, (_, until, _)| *until > now);
                        }
                        if failures.len() < MAX_FAILURES {
                            let until = unix_now().saturating_add(this.retry_after.as_secs());
                            failures.insert(d.clone(), (i.clone(), until, e.clone()));
                        }
                    }
                }
            }
            this.inflight.lock().remove(&d);
            result
        });
        let shared = async move {
            task.await.unwrap_or_else(|e| Err((TlsResultType::StsPolicyFetchError, format!("policy fetch task: {e}"))))
        }
        .boxed()
        .shared();
        inflight.insert(domain.to_string(), shared.clone());
        shared
    }

    async fn fetch_and_store(&self, domain: &str, id: &str) -> Result<CachedPolicy, Failure> {
        self.fetches.fetch_add(1, Ordering::Relaxed);
        let body = self.fetcher.fetch(&self.resolver, domain).await.map_err(|e| {
            let kind = if e.webpki { TlsResultType::StsWebpkiInvalid } else { TlsResultType::StsPolicyFetchError };
            (kind, e.to_string())
        })?;
        let policy = StsPolicy::parse(&body).map_err(|e| (TlsResultType::StsPolicyInvalid, e.to_string()))?;
        let now = unix_now();
        let fresh = CachedPolicy { id: id.to_string(), policy, fetched: now };
        self.cache.put(domain, fresh.clone(), now).await;
        Ok(fresh)
    }
}
