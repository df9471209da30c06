//! Record values handed to callers, and `Lookup<T>`: an answer with its remaining TTL.

use std::sync::Arc;
use std::time::Duration;

/// One MX record. `exchange` is lowercase, without the trailing dot; the root (null MX) is `"."`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct MxRecord {
    /// Lower is preferred.
    pub preference: u16,
    /// The mail exchanger's host name.
    pub exchange: String,
}

impl MxRecord {
    /// True for the RFC 7505 null MX target (`0 .`).
    pub fn is_null(&self) -> bool {
        self.exchange == "."
    }
}

/// One TXT record: its character-strings, in order (SPF and DKIM join them without separator).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TxtRecord {
    /// The `<character-string>`s of the record.
    pub strings: Vec<Vec<u8>>,
}

impl TxtRecord {
    /// The character-strings concatenated (how SPF, DKIM and DMARC read a TXT record).
    pub fn joined(&self) -> Vec<u8> {
        self.strings.concat()
    }

    /// `joined()` as text, invalid UTF-8 replaced.
    pub fn to_string_lossy(&self) -> String {
        String::from_utf8_lossy(&self.joined()).into_owned()
    }
}

/// Where an answer came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// A fresh cache entry.
    Cache,
    /// An upstream answered for this lookup (or for a concurrent one we joined).
    Upstream,
    /// An expired entry served because the upstreams failed (RFC 8767).
    Stale,
}

/// An answer: the records (shared, cheap to clone), their remaining TTL and where they came from.
#[derive(Debug, Clone)]
pub struct Lookup<T> {
    /// The records. Never empty (an empty answer is `DnsError::NoData`).
    pub records: Arc<Vec<T>>,
    /// Time left before the cache entry expires (zero for stale answers).
    pub ttl: Duration,
    /// Cache, upstream or stale.
    pub source: Source,
    /// The answer was DNSSEC-authenticated (`dns.dnssec = "trust-ad"` and the resolver set the AD bit).
    pub authenticated: bool,
}
