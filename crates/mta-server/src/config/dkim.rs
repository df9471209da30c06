//! `[dkim]` and `[[dkim.key]]`: outbound signing keys and what to do when they are not the published ones.

use std::path::PathBuf;

use mta_core::auth::{KeyAlgorithm, KeyConfig, Signer};
use serde::{Deserialize, Serialize};

use super::Invalid;

/// One `[[dkim.key]]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DkimKey {
    /// Signing domain (d=).
    pub domain: String,
    /// Selector (s=).
    pub selector: String,
    /// `rsa-sha256` or `ed25519-sha256`.
    pub algorithm: KeyAlgorithm,
    /// PEM private key.
    pub key_file: PathBuf,
    /// Headers to sign (default: a standard set with From/To/Subject oversigned).
    #[serde(default)]
    pub headers: Vec<String>,
}

impl From<&DkimKey> for KeyConfig {
    fn from(k: &DkimKey) -> Self {
        KeyConfig {
            domain: k.domain.to_ascii_lowercase(),
            selector: k.selector.clone(),
            algorithm: k.algorithm,
            key_file: k.key_file.clone(),
            headers: k.headers.clone(),
        }
    }
}

/// `dkim.on_preflight_mismatch`: what delivery does when our key is not the one published in DNS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PreflightMismatch {
    /// Send anyway: the pre-flight only reports the mismatch.
    #[default]
    Send,
    /// Hold the messages whose signing domain does not check out.
    Hold,
}

/// `[dkim]`
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DkimSection {
    /// Signing keys.
    pub key: Vec<DkimKey>,
    /// `send` or `hold` when our key is not the published one.
    pub on_preflight_mismatch: PreflightMismatch,
}

impl DkimSection {
    /// The signing keys in the engine's form.
    pub fn keys(&self) -> Vec<KeyConfig> {
        self.key.iter().map(KeyConfig::from).collect()
    }

    /// The checks serde cannot express: each key file loads (exists, is readable, PEM of the right type and
    /// size).
    pub(super) fn check(&self) -> Result<(), Invalid> {
        for (i, k) in self.key.iter().enumerate() {
            if let Err(e) = Signer::load_keys(&[KeyConfig::from(k)]) {
                return Err(Invalid::new(format!("dkim.key[{i}].key_file"), e.to_string()));
            }
        }
        Ok(())
    }
}
