//! Session counts per policy domain and report period (RFC 8460 §4.4), kept in memory and written to the
//! spool's aux tree (`tls-report/<period start>/<domain>`) by [`TlsReports::flush`], so a restart does not lose
//! a period: at most what was counted since the last flush (a few seconds) is lost on a crash.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use mta_spool::{Op, Spool};
use parking_lot::Mutex;

/// Key prefix in the spool's aux tree.
const PREFIX: &str = "tls-report/";
/// Distinct failure rows kept per domain and period (receiving host × address × type); beyond, further
/// failures are counted in the summary only.
const MAX_FAILURE_ROWS: usize = 256;
/// Domains counted per period; beyond, new domains are not counted (a report is best effort).
const MAX_DOMAINS: usize = 100_000;

/// The policy a session ran under, as reported (RFC 8460 §4.4 `policy`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PolicyDesc {
    /// `sts`, `tlsa` or `no-policy-found`.
    pub policy_type: String,
    /// The policy: MTA-STS policy lines, or TLSA records in presentation form.
    pub policy_string: Vec<String>,
    /// MX patterns (MTA-STS) or MX hosts with TLSA records (DANE).
    pub mx_host: Vec<String>,
}

/// One row of `failure-details`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub struct FailureKey {
    /// RFC 8460 result type (`validation-failure`, …).
    pub result_type: String,
    /// The MX host tried, when known.
    pub receiving_mx_hostname: Option<String>,
    /// Its address, when known.
    pub receiving_ip: Option<IpAddr>,
}

/// One domain's counts in one period.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DomainCounts {
    /// The latest policy seen for the domain in the period.
    pub policy: Option<PolicyDesc>,
    /// Sessions that negotiated TLS as the policy asked.
    pub success: u64,
    /// Sessions that failed, in total.
    pub failure: u64,
    /// Failed sessions by type and receiver.
    pub failures: Vec<(FailureKey, u64)>,
    /// After the period: the `rua` destinations that took its report (a failing one is retried on its own).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sent_to: Vec<String>,
}

impl DomainCounts {
    fn merge(&mut self, other: DomainCounts) {
        if self.policy.is_none() {
            self.policy = other.policy;
        }
        self.success += other.success;
        self.failure += other.failure;
        for rua in other.sent_to {
            if !self.sent_to.contains(&rua) {
                self.sent_to.push(rua);
            }
        }
        for (k, n) in other.failures {
            if let Some(row) = self.failures.iter_mut().find(|(r, _)| *r == k) {
                row.1 += n;
            } else if self.failures.len() < MAX_FAILURE_ROWS {
                self.failures.push((k, n));
            }
        }
    }

    fn add_failure(&mut self, key: FailureKey) {
        self.failure += 1;
        if let Some(row) = self.failures.iter_mut().find(|(k, _)| *k == key) {
            row.1 += 1;
        } else if self.failures.len() < MAX_FAILURE_ROWS {
            self.failures.push((key, 1));
        }
    }
}

/// A finished period's counts for one domain, ready to report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Due {
    /// Start of the period (Unix seconds).
    pub start: u64,
    /// End of the period (Unix seconds).
    pub end: u64,
    /// The policy domain.
    pub domain: String,
    /// Its counts.
    pub counts: DomainCounts,
}

/// The counters. One per engine, shared by the delivery connections and the sender.
pub struct TlsReports {
    spool: Spool,
    interval: u64,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// (period start, domain) → counts; periods not yet reported.
    counts: BTreeMap<(u64, String), DomainCounts>,
    /// Entries changed since the last flush.
    dirty: HashSet<(u64, String)>,
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn key(start: u64, domain: &str) -> Vec<u8> {
    format!("{PREFIX}{start:020}/{domain}").into_bytes()
}

impl TlsReports {
    /// Counters for periods of `interval` (at least one second), persisted in `spool`. Call
    /// [`TlsReports::load`] once to add what an earlier run stored.
    pub fn new(spool: Spool, interval: Duration) -> Arc<TlsReports> {
        Arc::new(TlsReports { spool, interval: interval.as_secs().max(1), state: Mutex::new(State::default()) })
    }

    /// Adds the counts an earlier run stored (before a restart) to those held now.
    pub async fn load(&self) {
        let spool = self.spool.clone();
        let scan = tokio::task::spawn_blocking(move || spool.aux_scan_prefix(PREFIX.as_bytes())).await;
        match scan {
            Ok(Ok(rows)) => {
                let mut state = self.state.lock();
                for (k, v) in rows {
                    let Some((start, domain)) = parse_key(&k) else { continue };
                    let Ok(stored) = serde_json::from_slice::<DomainCounts>(&v) else { continue };
                    let counts = state.counts.entry((start, domain)).or_default();
                    counts.merge(stored);
                }
            }
            Ok(Err(e)) => tracing::warn!(error = %e, "reading stored TLS report counts failed"),
            Err(e) => tracing::warn!(error = %e, "reading stored TLS report counts failed"),
        }
    }

    fn period(&self, now: u64) -> u64 {
        now - now % self.interval
    }

    fn update(&self, domain: &str, policy: &PolicyDesc, f: impl FnOnce(&mut DomainCounts)) {
        let start = self.period(unix_now());
        let k = (start, domain.to_ascii_lowercase());
        let mut state = self.state.lock();
        if !state.counts.contains_key(&k) && state.counts.len() >= MAX_DOMAINS {
            return;
        }
        let counts = state.counts.entry(k.clone()).or_default();
        if counts.policy.as_ref() != Some(policy) {
            counts.policy = Some(policy.clone());
        }
        f(counts);
        state.dirty.insert(k);
    }

    /// A session to `domain` negotiated TLS as `policy` asked.
    pub fn success(&self, domain: &str, policy: &PolicyDesc) {
        self.update(domain, policy, |c| c.success += 1);
    }

    /// A session to `domain` under `policy` failed with `result_type`.
    pub fn failure(&self, domain: &str, policy: &PolicyDesc, result_type: &str, mx: Option<&str>, ip: Option<IpAddr>) {
        let key = FailureKey {
            result_type: result_type.to_string(),
            receiving_mx_hostname: mx.map(str::to_string),
            receiving_ip: ip,
        };
        self.update(domain, policy, |c| c.add_failure(key));
    }

    /// Writes the counts changed since the last flush to the spool (one group commit).
    pub async fn flush(&self) {
        let ops: Vec<Op> = {
            let mut state = self.state.lock();
            let dirty: Vec<(u64, String)> = state.dirty.drain().collect();
            dirty
                .into_iter()
                .filter_map(|k| {
                    let v = serde_json::to_vec(state.counts.get(&k)?).ok()?;
                    Some(Op::AuxPut { key: key(k.0, &k.1), value: v })
                })
                .collect()
        };
        if ops.is_empty() {
            return;
        }
        if let Err(e) = self.spool.commit(ops).await {
            tracing::warn!(error = %e, "storing TLS report counts failed; kept in memory");
        }
    }

    /// The counts of every period that has ended by `now` (Unix seconds).
    pub fn due(&self, now: u64) -> Vec<Due> {
        let current = self.period(now);
        let state = self.state.lock();
        state
            .counts
            .iter()
            .filter(|((start, _), _)| *start < current)
            .map(|((start, domain), counts)| Due {
                start: *start,
                end: start + self.interval,
                domain: domain.clone(),
                counts: counts.clone(),
            })
            .collect()
    }

    /// A period's report for `domain` reached `rua`: remembered durably (with the counts), so neither a later
    /// retry nor a restart sends it there again.
    pub async fn sent_to(&self, start: u64, domain: &str, rua: &str) {
        let op = {
            let mut state = self.state.lock();
            let k = (start, domain.to_string());
            let Some(counts) = state.counts.get_mut(&k) else { return };
            if counts.sent_to.iter().any(|r| r == rua) {
                return;
            }
            counts.sent_to.push(rua.to_string());
            let Ok(value) = serde_json::to_vec(&*counts) else { return };
            state.dirty.remove(&k);
            Op::AuxPut { key: key(start, domain), value }
        };
        if let Err(e) = self.spool.commit(vec![op]).await {
            tracing::warn!(domain, rua, error = %e, "storing a TLS report's destination failed; it may get it twice");
        }
    }

    /// A period's report for `domain` was sent (or given up): forget it, here and in the spool.
    pub async fn done(&self, start: u64, domain: &str) {
        {
            let mut state = self.state.lock();
            let k = (start, domain.to_string());
            state.counts.remove(&k);
            state.dirty.remove(&k);
        }
        if let Err(e) = self.spool.commit(vec![Op::AuxRemove { key: key(start, domain) }]).await {
            tracing::warn!(domain, error = %e, "removing reported TLS counts failed");
        }
    }

    /// Counts held now, by domain, for the current period (tests, debug).
    pub fn current(&self) -> HashMap<String, DomainCounts> {
        let start = self.period(unix_now());
        let state = self.state.lock();
        state.counts.iter().filter(|((s, _), _)| *s == start).map(|((_, d), c)| (d.clone(), c.clone())).collect()
    }
}

fn parse_key(k: &[u8]) -> Option<(u64, String)> {
    let s = std::str::from_utf8(k).ok()?.strip_prefix(PREFIX)?;
    let (start, domain) = s.split_once('/')?;
    Some((start.parse().ok()?, domain.to_string()))
}
