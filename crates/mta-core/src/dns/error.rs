//! Typed outcomes of a lookup, classified for the caller (retry later or bounce).

use std::fmt;

/// Why a lookup failed. `is_permanent()` tells delivery whether to bounce or defer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DnsError {
    /// The name does not exist (NXDOMAIN). Permanent: bounce.
    #[error("domain does not exist (NXDOMAIN)")]
    NxDomain,
    /// The name exists but has no record of this type. Permanent; for MX it means implicit MX
    /// (`resolve_mx` handles that).
    #[error("no record of the requested type (NODATA)")]
    NoData,
    /// The domain publishes a null MX (RFC 7505): it accepts no mail. Permanent: bounce (5.1.10).
    #[error("domain accepts no mail (null MX, RFC 7505)")]
    NullMx,
    /// Every MX host of the domain failed permanently (NXDOMAIN / no address). Permanent.
    #[error("no MX host of the domain has an address")]
    NoAddress,
    /// The name is not a valid domain name (IDNA or syntax). Permanent.
    #[error("invalid domain name: {0}")]
    InvalidName(String),
    /// The answer could not be had now. Retry later (defer the whole domain's batch once).
    #[error("temporary DNS failure: {kind}")]
    Transient {
        /// What went wrong.
        kind: TransientKind,
    },
}

/// The kind of a transient failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TransientKind {
    /// The upstream answered SERVFAIL (or another error rcode).
    ServFail,
    /// No answer within the deadline.
    Timeout,
    /// The upstream answered REFUSED.
    Refused,
    /// A socket error talking to the upstream.
    Network,
    /// Our own caps: the wait queue is full, the retry budget is spent, or no token came in
    /// time. No packet left for this attempt: back off.
    Overloaded,
}

impl fmt::Display for TransientKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl TransientKind {
    /// A short stable name (metric label, logs).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ServFail => "servfail",
            Self::Timeout => "timeout",
            Self::Refused => "refused",
            Self::Network => "network",
            Self::Overloaded => "overloaded",
        }
    }
}

impl DnsError {
    /// Shorthand for a transient error of `kind`.
    pub fn transient(kind: TransientKind) -> Self {
        Self::Transient { kind }
    }

    /// True when asking again will not help (bounce); false when the caller should retry later.
    pub fn is_permanent(&self) -> bool {
        !matches!(self, Self::Transient { .. })
    }

    /// The transient kind, if this is a transient failure.
    pub fn transient_kind(&self) -> Option<TransientKind> {
        match self {
            Self::Transient { kind } => Some(*kind),
            _ => None,
        }
    }
}
