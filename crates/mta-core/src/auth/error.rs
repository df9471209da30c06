//! Errors of the auth module, classified for the caller.

use std::path::PathBuf;

/// What went wrong loading keys, signing or setting up verification.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    /// A key file could not be read (missing, unreadable, a directory). Fix the path or its
    /// permissions; `check-config` reports it under `dkim.key[i].key_file`.
    #[error("cannot read DKIM key file {path}: {source}")]
    KeyFile {
        /// The configured path.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The key file was read but holds no usable key of the configured algorithm (not PEM, or
    /// an EC key, or an Ed25519 key where RSA was configured, ...). Fix the file or `algorithm`.
    #[error("DKIM key file {path}: {reason}")]
    BadKey {
        /// The configured path.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A configuration value is invalid (unknown algorithm, empty domain or selector).
    #[error("invalid DKIM key configuration: {0}")]
    Config(String),
    /// Signing failed (no header to sign, or the crypto library refused). The message cannot be
    /// signed: the caller decides whether to send it unsigned or refuse it (a 4xx is safe).
    #[error("DKIM signing failed: {0}")]
    Sign(String),
    /// The resolver for mail-auth could not be built.
    #[error("auth resolver: {0}")]
    Resolver(String),
}

impl AuthError {
    /// True for errors of the configuration (key files, values): fix the config, retrying will
    /// not help. False for a signing failure of one message.
    pub fn is_config(&self) -> bool {
        matches!(self, AuthError::KeyFile { .. } | AuthError::BadKey { .. } | AuthError::Config(_))
    }
}
