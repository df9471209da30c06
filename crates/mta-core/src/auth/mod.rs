//! Mail authentication: SPF / DKIM / DMARC / ARC verification of received mail, DKIM signing of
//! what we send, and pre-flight checks of our sending domains' DNS.
//!
//! # Layout
//! - `inbound.rs`: [`Verifier`] (policy + deadline around mail-auth) → [`Verdict`] (the
//!   `Authentication-Results:` header and an optional SMTP rejection), and
//!   [`strip_spoofed_results`].
//! - `signing.rs`: [`Signer`] — DKIM keys per signing domain, chosen by the `From:` domain.
//! - `preflight.rs`: [`Preflight`] — does each sending domain's SPF authorise our source
//!   addresses, and is its published DKIM key ours? ([`SenderStatus`], `GET /api/v1/senders`).
//! - `arc_check.rs`: structural checks of ARC sets that mail-auth does not make.
//! - `body_length.rs`: body hashes of `l=` signatures as RFC 6376 computes them (mail-auth does not).
//! - `dmarc.rs`: DMARC per RFC 7489 (organisational domain from the Public Suffix List, `pct`).
//! - `error.rs`: [`AuthError`].
//!
//! # DNS
//!
//! mail-auth takes a concrete hickory `TokioResolver`. It must not become a second resolver with
//! its own cache, retries and caps, so [`authenticator`] builds one pointed at the loopback stub
//! of our pool ([`crate::dns::Resolver::serve_stub`]) with its cache off and no retries: every
//! SPF/DKIM/DMARC/ARC lookup goes through our cache, coalescing, caps and metrics.
//!
//! ```ignore
//! let (stub, _task) = resolver.serve_stub("127.0.0.1:0".parse()?).await?;
//! let ma = mta_core::auth::authenticator(stub, resolver.config().lookup_timeout)?;
//! let verifier = Verifier::new(ma.clone(), AuthPolicy::default(), hostname);
//! ```
//!
//! # CPU
//!
//! Signing is CPU work (an RSA-2048 signature is ~1 ms): [`Signer::sign`] is synchronous and
//! must run on `spawn_blocking` (see [`Signer::sign_blocking`]), never on the async workers.
//! Verification is mostly DNS waits; its CPU part (body hash, a signature check per signature)
//! is small for usual message sizes and runs inline.

mod arc_check;
mod body_length;
mod dmarc;
mod error;
mod inbound;
mod preflight;
mod signing;
pub mod spf;

use std::net::SocketAddr;
use std::time::Duration;

pub use mail_auth::MessageAuthenticator;

pub use error::AuthError;
pub use inbound::{strip_spoofed_results, DmarcPolicy, Outcome, Reject, Summary, Verdict, Verifier, DEFAULT_DEADLINE};
pub use preflight::{Preflight, SenderStatus, DEFAULT_REFRESH};
pub use signing::{KeyAlgorithm, KeyConfig, Signer, DEFAULT_HEADERS, OVERSIGNED_HEADERS};

/// Policy of one inbound check (`auth.spf`, `auth.dkim`, `auth.dmarc`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Policy {
    /// Not checked, not reported.
    Off,
    /// Checked and reported in `Authentication-Results:` only.
    #[default]
    Record,
    /// Checked, reported, and failures rejected (SPF, DMARC; DKIM has no enforce: a failed
    /// signature counts as no signature, RFC 6376 §6.1, and only DMARC may reject).
    Enforce,
}

/// The inbound policy: one [`Policy`] per method. ARC is checked (and reported) when DKIM is. It is also
/// the config file's `[auth]` table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthPolicy {
    /// `auth.spf`.
    pub spf: Policy,
    /// `auth.dkim` (`Enforce` behaves as `Record`).
    pub dkim: Policy,
    /// `auth.dmarc`.
    pub dmarc: Policy,
}

impl AuthPolicy {
    /// Every method off: [`Verifier::verify`] does nothing (no header).
    pub fn is_off(&self) -> bool {
        self.spf == Policy::Off && self.dkim == Policy::Off && self.dmarc == Policy::Off
    }
}

/// A mail-auth [`MessageAuthenticator`] whose every lookup goes to our pool's loopback stub at
/// `stub` (see [`crate::dns::Resolver::serve_stub`]): hickory's cache off, no retries (ours do
/// that), and a per-query timeout of `lookup_timeout` + 1 s so that the pool's own answer
/// (SERVFAIL after its deadline) arrives before hickory gives up.
pub fn authenticator(stub: SocketAddr, lookup_timeout: Duration) -> Result<MessageAuthenticator, AuthError> {
    crate::dns::stub_client(stub, lookup_timeout + Duration::from_secs(1))
        .map(MessageAuthenticator)
        .map_err(|e| AuthError::Resolver(e.to_string()))
}
