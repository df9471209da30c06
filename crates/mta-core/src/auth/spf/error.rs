//! Why an SPF evaluation ended in `permerror` or `temperror`.

/// The reason behind a `permerror` (the domain's records are wrong) or a `temperror` (DNS could
/// not answer now: try again later). See [`SpfError::is_temporary`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SpfError {
    /// The record (or a macro in it) does not follow RFC 7208's ABNF. Permanent.
    #[error("SPF syntax error: {0}")]
    Syntax(String),
    /// More than one `v=spf1` record at a name (§4.5). Permanent.
    #[error("more than one SPF record at {0}")]
    MultipleRecords(String),
    /// More than 10 `include`/`a`/`mx`/`ptr`/`exists`/`redirect` terms evaluated (§4.6.4). Permanent.
    #[error("more than 10 DNS-querying terms")]
    TooManyLookups,
    /// More than 2 lookups answered NXDOMAIN or nothing (§4.6.4). Permanent.
    #[error("more than 2 void DNS lookups")]
    TooManyVoidLookups,
    /// An `mx` target with more than 10 MX records (§4.6.4). Permanent.
    #[error("{0} has more than 10 MX records")]
    TooManyMx(String),
    /// An `include` or `redirect` target without an SPF record (§5.2, §6.1). Permanent.
    #[error("no SPF record at {0}")]
    NoRecordAt(String),
    /// A lookup failed for now (timeout, SERVFAIL, our resolver's caps). Temporary.
    #[error("temporary DNS failure: {0}")]
    Dns(String),
}

impl SpfError {
    /// True for `temperror` (retry later), false for `permerror` (fix the records).
    pub fn is_temporary(&self) -> bool {
        matches!(self, SpfError::Dns(_))
    }
}
