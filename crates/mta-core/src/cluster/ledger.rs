//! What this node holds, whatever Redis knows: leases per site (the truth, kept by delivery's grants and
//! releases), what Redis was last told, and the local token buckets used while Redis is away.

use std::collections::HashMap;
use std::time::Duration;

use tokio::time::Instant;

/// Leases and fallback buckets of this node.
#[derive(Default)]
pub(crate) struct Ledger {
    /// Leases held per site (connections open, or granted and about to open).
    held: HashMap<String, usize>,
    /// What Redis has for this node per site, as far as we know.
    synced: HashMap<String, usize>,
    /// Local buckets for rates while Redis is unreachable.
    buckets: HashMap<String, Bucket>,
}

struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Ledger {
    /// Leases held on `site`.
    pub(crate) fn held(&self, site: &str) -> usize {
        self.held.get(site).copied().unwrap_or(0)
    }

    /// Leases held on every site.
    pub(crate) fn total_held(&self) -> usize {
        self.held.values().sum()
    }

    /// `n` leases granted on `site` (by Redis or by the fallback share).
    pub(crate) fn grant(&mut self, site: &str, n: usize) {
        if n > 0 {
            *self.held.entry(site.to_string()).or_default() += n;
        }
    }

    /// `n` leases given back on `site`.
    pub(crate) fn release(&mut self, site: &str, n: usize) {
        if let Some(h) = self.held.get_mut(site) {
            *h = h.saturating_sub(n);
            if *h == 0 {
                self.held.remove(site);
            }
        }
    }

    /// Redis now has `n` leases of this node on `site`.
    pub(crate) fn synced(&mut self, site: &str, n: usize) {
        if n == 0 {
            self.synced.remove(site);
        } else {
            self.synced.insert(site.to_string(), n);
        }
    }

    /// Sites whose count Redis has wrong (every site held or known when `all`), with the count to set.
    pub(crate) fn out_of_sync(&self, all: bool) -> Vec<(String, usize)> {
        let mut out: Vec<(String, usize)> = self
            .held
            .iter()
            .filter(|(s, n)| all || self.synced.get(*s) != Some(n))
            .map(|(s, n)| (s.clone(), *n))
            .collect();
        out.extend(self.synced.keys().filter(|s| !self.held.contains_key(*s)).map(|s| (s.clone(), 0)));
        out
    }

    /// Redis is away: how many of `want` leases on `site` fit in this node's share of `limit` (the fleet's
    /// nodes last seen alive share it equally, at least one each, so the fleet stays at or under the total).
    pub(crate) fn fallback_grant(&self, site: &str, limit: usize, want: usize, nodes: usize) -> usize {
        let share = (limit / nodes.max(1)).max(1);
        want.min(share.saturating_sub(self.held(site)))
    }

    /// Redis is away: sends on `site` from a local bucket at this node's share of `rate`.
    pub(crate) fn fallback_tokens(
        &mut self,
        site: &str,
        rate: f64,
        want: usize,
        nodes: usize,
        now: Instant,
    ) -> (usize, Duration) {
        let rate = (rate / nodes.max(1) as f64).max(f64::MIN_POSITIVE);
        let cap = bucket_capacity(rate);
        let b = self.buckets.entry(site.to_string()).or_insert(Bucket { tokens: cap, at: now });
        b.tokens = (b.tokens + now.saturating_duration_since(b.at).as_secs_f64() * rate).min(cap);
        b.at = now;
        let grant = (b.tokens.floor() as usize).min(want);
        b.tokens -= grant as f64;
        if grant > 0 {
            return (grant, Duration::ZERO);
        }
        (0, Duration::from_secs_f64(((1.0 - b.tokens) / rate).min(60.0)))
    }
}

/// Burst a fleet bucket allows: a fifth of a second of its rate, at least one send (so the fleet's rate holds
/// over short windows too).
pub(crate) fn bucket_capacity(rate: f64) -> f64 {
    (rate / 5.0).max(1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fallback_share_is_the_total_over_the_nodes_seen() {
        let mut l = Ledger::default();
        assert_eq!(l.fallback_grant("s", 9, 10, 3), 3);
        l.grant("s", 3);
        assert_eq!(l.fallback_grant("s", 9, 10, 3), 0, "share used up");
        l.release("s", 1);
        assert_eq!(l.fallback_grant("s", 9, 10, 3), 1);
        // Never below one connection per node.
        assert_eq!(l.fallback_grant("t", 2, 5, 3), 1);
    }

    #[test]
    fn out_of_sync_lists_changed_and_dropped_sites() {
        let mut l = Ledger::default();
        l.grant("a", 2);
        l.synced("a", 2);
        l.grant("b", 1);
        l.synced("c", 4);
        let mut v = l.out_of_sync(false);
        v.sort();
        assert_eq!(v, [("b".to_string(), 1), ("c".to_string(), 0)]);
        assert_eq!(l.out_of_sync(true).len(), 3);
    }

    #[test]
    fn fallback_bucket_runs_at_the_node_share() {
        let mut l = Ledger::default();
        let t0 = Instant::now();
        // 30/s over 3 nodes: 10/s here, burst 2.
        assert_eq!(l.fallback_tokens("s", 30.0, 8, 3, t0).0, 2);
        let (n, wait) = l.fallback_tokens("s", 30.0, 8, 3, t0);
        assert_eq!(n, 0);
        assert!(wait > Duration::ZERO && wait <= Duration::from_millis(100), "{wait:?}");
        assert_eq!(l.fallback_tokens("s", 30.0, 8, 3, t0 + Duration::from_millis(100)).0, 1);
    }
}
