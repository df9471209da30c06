//! DKIM signing (RFC 6376, RSA-SHA256 and Ed25519-SHA256 per RFC 8463) of the mail we send.
//!
//! Keys are per signing domain (`[[dkim.key]]`). A message is signed by every key of the most
//! specific configured domain that is the `From:` domain or a parent of it (a key for
//! `example.com` signs `news.example.com` mail; DMARC relaxed alignment accepts that), and
//! additionally by the keys of a fixed domain when one is set ([`Signer::with_fixed_domain`]).
//! Canonicalisation is relaxed/relaxed; From, To and Subject are oversigned (listed once more
//! than they occur, so no one can add a second one without breaking the signature).
//!
//! Signing is synchronous CPU work (RSA-2048: ~0.8 ms): [`Signer::sign_blocking`] runs it on the signer's
//! own [`CpuPool`] (one thread per CPU, jobs back to back), never on an async worker.

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use base64::Engine as _;
use bytes::Bytes;
use mail_auth::common::crypto::{DkimKey, Ed25519Key, RsaKey, Sha256, SigningKey};
use mail_auth::common::headers::HeaderWriter;
use mail_auth::dkim::{Canonicalization, DkimSigner, Done};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::PrivateKeyDer;

use super::error::AuthError;
use crate::cpu_pool::{CpuPool, SIGN_NICE_INCREMENT};

/// Headers signed when a key has no `headers` list.
pub const DEFAULT_HEADERS: &[&str] =
    &["From", "To", "Subject", "Date", "Message-ID", "MIME-Version", "Content-Type", "Reply-To", "Cc"];

/// Headers signed once more than they occur (RFC 6376 §8.15), when a key has no `headers` list.
pub const OVERSIGNED_HEADERS: &[&str] = &["From", "To", "Subject"];

/// Smallest RSA key we sign with (RFC 8301: at least 1024, 2048 recommended; our floor: 2048).
const MIN_RSA_BITS: usize = 2048;

/// `rsa-sha256` or `ed25519-sha256` (serde: exactly these spellings, as in `[[dkim.key]]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum KeyAlgorithm {
    /// `rsa-sha256`, key ≥ 2048 bits.
    #[serde(rename = "rsa-sha256")]
    RsaSha256,
    /// `ed25519-sha256` (RFC 8463).
    #[serde(rename = "ed25519-sha256")]
    Ed25519Sha256,
}

impl KeyAlgorithm {
    /// Parse the config spelling (`"rsa-sha256"`, `"ed25519-sha256"`).
    pub fn parse(s: &str) -> Result<Self, AuthError> {
        match s.to_ascii_lowercase().as_str() {
            "rsa-sha256" => Ok(KeyAlgorithm::RsaSha256),
            "ed25519-sha256" => Ok(KeyAlgorithm::Ed25519Sha256),
            other => {
                Err(AuthError::Config(format!("algorithm {other:?}: expected \"rsa-sha256\" or \"ed25519-sha256\"")))
            }
        }
    }

    /// The config / `a=` spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyAlgorithm::RsaSha256 => "rsa-sha256",
            KeyAlgorithm::Ed25519Sha256 => "ed25519-sha256",
        }
    }

    /// The `k=` tag of the DNS key record.
    fn k_tag(self) -> &'static str {
        match self {
            KeyAlgorithm::RsaSha256 => "rsa",
            KeyAlgorithm::Ed25519Sha256 => "ed25519",
        }
    }
}

/// One `[[dkim.key]]`.
#[derive(Debug, Clone)]
pub struct KeyConfig {
    /// Signing domain (`d=`).
    pub domain: String,
    /// Selector (`s=`); the public key is published at `selector._domainkey.domain`.
    pub selector: String,
    /// Algorithm of the key in `key_file`.
    pub algorithm: KeyAlgorithm,
    /// PEM private key: PKCS#8 (`BEGIN PRIVATE KEY`) for both, or PKCS#1 (`BEGIN RSA PRIVATE
    /// KEY`) for RSA.
    pub key_file: PathBuf,
    /// Headers to sign, in order; empty: [`DEFAULT_HEADERS`] + [`OVERSIGNED_HEADERS`]. A name
    /// listed twice is oversigned. `From` is added when missing (RFC 6376 §5.4).
    pub headers: Vec<String>,
}

/// One loaded key.
pub(crate) struct LoadedKey {
    pub(crate) domain: String,
    pub(crate) selector: String,
    pub(crate) algorithm: KeyAlgorithm,
    /// The `p=` value we expect in DNS, decoded: SubjectPublicKeyInfo for RSA, the raw 32-byte
    /// key for Ed25519.
    pub(crate) public_key: Vec<u8>,
    signer: DkimSigner<DkimKey, Done>,
}

impl LoadedKey {
    /// The TXT record to publish at `selector._domainkey.domain`.
    pub(crate) fn dns_record(&self) -> String {
        let p = base64::engine::general_purpose::STANDARD.encode(&self.public_key);
        format!("v=DKIM1; k={}; p={p}", self.algorithm.k_tag())
    }
}

/// The DKIM signer: every configured key, chosen per message by the `From:` domain. Cheap to
/// share (`Arc<Signer>`); signing needs no lock.
pub struct Signer {
    keys: Vec<LoadedKey>,
    fixed_domain: Option<String>,
    /// Threads for [`Signer::sign_blocking`], started on its first use (a signer without keys, or one only
    /// used synchronously, starts none).
    pool: OnceLock<Result<CpuPool, String>>,
}

/// How long a signature waits for a place in the signing pool's queue before the message is refused with a
/// transient error (the queue is bounded; waiting sessions are the back-pressure).
const SIGN_QUEUE_WAIT: Duration = Duration::from_secs(30);

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let keys: Vec<String> =
            self.keys.iter().map(|k| format!("{}/{} ({})", k.domain, k.selector, k.algorithm.as_str())).collect();
        f.debug_struct("Signer").field("keys", &keys).field("fixed_domain", &self.fixed_domain).finish()
    }
}

impl Signer {
    /// Load every key. Errors name the file and what is wrong with it (missing, unreadable, not
    /// PEM, wrong key type for `algorithm`, RSA under 2048 bits): `check-config` shows them.
    pub fn load_keys(configs: &[KeyConfig]) -> Result<Signer, AuthError> {
        let keys = configs.iter().map(load_key).collect::<Result<Vec<_>, _>>()?;
        Ok(Signer { keys, fixed_domain: None, pool: OnceLock::new() })
    }

    /// Also sign every message with the keys of `domain` (which must have a key), for example
    /// an ESP's own domain next to the customer's.
    pub fn with_fixed_domain(mut self, domain: &str) -> Result<Signer, AuthError> {
        let d = normalize_domain(domain);
        if !self.keys.iter().any(|k| k.domain == d) {
            return Err(AuthError::Config(format!("fixed signing domain {domain:?} has no [[dkim.key]]")));
        }
        self.fixed_domain = Some(d);
        Ok(self)
    }

    /// No key configured: [`Signer::sign`] always returns `None`.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The configured signing domains, each once, in config order.
    pub fn domains(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for k in &self.keys {
            if !out.contains(&k.domain) {
                out.push(k.domain.clone());
            }
        }
        out
    }

    /// `(name, TXT value)` to publish for each key: `selector._domainkey.domain` and
    /// `v=DKIM1; k=...; p=...`.
    pub fn dns_records(&self) -> Vec<(String, String)> {
        self.keys.iter().map(|k| (format!("{}._domainkey.{}", k.selector, k.domain), k.dns_record())).collect()
    }

    /// The signing domain chosen for mail from `from_domain`: the most specific configured
    /// domain equal to it or a parent of it. `None`: mail from that domain is not signed (except
    /// by the fixed domain).
    pub fn signing_domain(&self, from_domain: &str) -> Option<&str> {
        let from = normalize_domain(from_domain);
        self.keys
            .iter()
            .map(|k| k.domain.as_str())
            .filter(|d| {
                from == *d || (from.len() > d.len() && from.ends_with(d) && from[..from.len() - d.len()].ends_with('.'))
            })
            .max_by_key(|d| d.len())
    }

    pub(crate) fn keys(&self) -> &[LoadedKey] {
        &self.keys
    }

    /// Sign `message` (the exact bytes that will be stored and sent, our `Received:` included).
    /// Returns the `DKIM-Signature:` header field(s), folded, each ending in CRLF, to prepend;
    /// `None` when no key matches the `From:` domain (and no fixed domain is set) or the message
    /// has no `From:`.
    ///
    /// Synchronous CPU work (~1 ms per RSA-2048 key): run it on `spawn_blocking`
    /// ([`Signer::sign_blocking`]), not on an async worker thread.
    pub fn sign(&self, message: &[u8]) -> Result<Option<String>, AuthError> {
        if self.keys.is_empty() {
            return Ok(None);
        }
        let t0 = Instant::now();
        let chosen = from_domain(message).and_then(|f| self.signing_domain(&f).map(str::to_string));
        let mut domains: Vec<&str> = Vec::with_capacity(2);
        if let Some(d) = chosen.as_deref() {
            domains.push(d);
        }
        if let Some(f) = self.fixed_domain.as_deref() {
            if !domains.contains(&f) {
                domains.push(f);
            }
        }
        if domains.is_empty() {
            return Ok(None);
        }
        let mut out = String::new();
        for key in self.keys.iter().filter(|k| domains.contains(&k.domain.as_str())) {
            let sig = key
                .signer
                .sign(message)
                .map_err(|e| AuthError::Sign(format!("{}/{}: {e}", key.domain, key.selector)))?;
            out.push_str(&sig.to_header());
            metrics::counter!("mta_dkim_signatures_total", "algorithm" => key.algorithm.as_str()).increment(1);
        }
        metrics::histogram!("mta_dkim_sign_seconds").record(t0.elapsed().as_secs_f64());
        Ok(Some(out))
    }

    /// [`Signer::sign`] on the signing pool (one thread per CPU), so the async workers never stall on RSA.
    pub async fn sign_blocking(self: &Arc<Self>, message: Bytes) -> Result<Option<String>, AuthError> {
        if self.keys.is_empty() {
            return Ok(None);
        }
        let pool = self.pool.get_or_init(|| {
            let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
            CpuPool::new("sign", threads, SIGN_NICE_INCREMENT).map_err(|e| e.to_string())
        });
        let pool = pool.as_ref().map_err(|e| AuthError::Sign(format!("cannot start the signing threads: {e}")))?;
        let me = self.clone();
        pool.run(SIGN_QUEUE_WAIT, move || me.sign(&message))
            .await
            .map_err(|e| AuthError::Sign(format!("signing: {e}")))?
    }
}

/// Lowercase A-label without a trailing dot (`Bücher.Example.` → `xn--bcher-kva.example`).
pub(crate) fn normalize_domain(d: &str) -> String {
    let d = d.trim().trim_end_matches('.');
    idna::domain_to_ascii(d).unwrap_or_else(|_| d.to_ascii_lowercase())
}

/// The domain of the first address in the first `From:` header.
pub(crate) fn from_domain(message: &[u8]) -> Option<String> {
    let parsed = mail_parser::MessageParser::new().parse_headers(message)?;
    let addr = parsed.from()?.first()?.address()?;
    let (_, domain) = addr.rsplit_once('@')?;
    (!domain.is_empty()).then(|| normalize_domain(domain))
}

fn load_key(cfg: &KeyConfig) -> Result<LoadedKey, AuthError> {
    let domain = normalize_domain(&cfg.domain);
    if domain.is_empty() || cfg.selector.trim().is_empty() {
        return Err(AuthError::Config(format!(
            "key {}: domain and selector must not be empty",
            cfg.key_file.display()
        )));
    }
    let path = cfg.key_file.as_path();
    let pem = std::fs::read(path).map_err(|source| AuthError::KeyFile { path: path.to_path_buf(), source })?;
    let bad = |reason: String| AuthError::BadKey { path: path.to_path_buf(), reason };
    let der = PrivateKeyDer::from_pem_slice(&pem)
        .map_err(|e| bad(format!("no PEM private key in it ({e}); expected \"BEGIN PRIVATE KEY\"")))?;
    let found = key_kind(&der);
    let (key, public_key): (DkimKey, Vec<u8>) = match cfg.algorithm {
        KeyAlgorithm::RsaSha256 => {
            if found != "RSA" {
                return Err(bad(format!("holds an {found} key, but algorithm = \"rsa-sha256\"")));
            }
            let k = RsaKey::<Sha256>::from_key_der(der).map_err(|e| {
                if e.to_string().contains("TooSmall") {
                    bad(format!("RSA key is too small; at least {MIN_RSA_BITS} bits are required"))
                } else {
                    bad(format!("not a usable RSA key: {e}"))
                }
            })?;
            let bits = rsa_bits(&k).map_err(|e| bad(format!("RSA key unusable: {e}")))?;
            if bits < MIN_RSA_BITS {
                return Err(bad(format!("RSA key has {bits} bits; at least {MIN_RSA_BITS} bits are required")));
            }
            let spki = rsa_spki(&k.public_key());
            (DkimKey::Rsa(k), spki)
        }
        KeyAlgorithm::Ed25519Sha256 => {
            let PrivateKeyDer::Pkcs8(p8) = &der else {
                return Err(bad(format!("holds an {found} key, but algorithm = \"ed25519-sha256\"")));
            };
            if found != "Ed25519" {
                return Err(bad(format!("holds an {found} key, but algorithm = \"ed25519-sha256\"")));
            }
            let k = Ed25519Key::from_pkcs8_der(p8.secret_pkcs8_der())
                .or_else(|_| Ed25519Key::from_pkcs8_maybe_unchecked_der(p8.secret_pkcs8_der()))
                .map_err(|e| bad(format!("not a usable Ed25519 key: {e}")))?;
            let public = k.public_key();
            (DkimKey::Ed25519(k), public)
        }
    };
    let headers = signed_headers(&cfg.headers);
    let signer = DkimSigner::from_key(key)
        .domain(domain.clone())
        .selector(cfg.selector.trim())
        .headers(headers)
        .header_canonicalization(Canonicalization::Relaxed)
        .body_canonicalization(Canonicalization::Relaxed);
    Ok(LoadedKey { domain, selector: cfg.selector.trim().to_string(), algorithm: cfg.algorithm, public_key, signer })
}

/// The `h=` list: configured or default, From always present. mail-auth lists each header as
/// many times as it occurs, then appends every listed name it did not meet — so a name given
/// twice here is signed once more than it occurs (oversigning).
fn signed_headers(configured: &[String]) -> Vec<String> {
    let mut h: Vec<String> = if configured.is_empty() {
        DEFAULT_HEADERS.iter().chain(OVERSIGNED_HEADERS).map(|s| s.to_string()).collect()
    } else {
        configured.iter().map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect()
    };
    if !h.iter().any(|n| n.eq_ignore_ascii_case("from")) {
        h.insert(0, "From".into());
    }
    h
}

/// "RSA", "Ed25519", "EC" or "unknown", from the key's algorithm identifier.
fn key_kind(der: &PrivateKeyDer<'_>) -> &'static str {
    const RSA_OID: &[u8] = &[0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];
    const ED25519_OID: &[u8] = &[0x06, 0x03, 0x2b, 0x65, 0x70];
    const EC_OID: &[u8] = &[0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
    match der {
        PrivateKeyDer::Pkcs1(_) => "RSA",
        PrivateKeyDer::Sec1(_) => "EC",
        PrivateKeyDer::Pkcs8(p) => {
            // the AlgorithmIdentifier comes first, within the first ~32 bytes
            let head = &p.secret_pkcs8_der()[..p.secret_pkcs8_der().len().min(40)];
            let has = |oid: &[u8]| head.windows(oid.len()).any(|w| w == oid);
            if has(RSA_OID) {
                "RSA"
            } else if has(ED25519_OID) {
                "Ed25519"
            } else if has(EC_OID) {
                "EC"
            } else {
                "unknown"
            }
        }
        _ => "unknown",
    }
}

/// Key size: the length of a signature (= the modulus).
fn rsa_bits(k: &RsaKey<Sha256>) -> Result<usize, mail_auth::Error> {
    Ok(k.sign(&b"probe"[..])?.len() * 8)
}

/// PKCS#1 RSAPublicKey → SubjectPublicKeyInfo (what `p=` holds by convention, RFC 6376 §3.6.1).
fn rsa_spki(pkcs1: &[u8]) -> Vec<u8> {
    const ALG_ID: &[u8] = &[0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01, 0x05, 0x00];
    let mut bits = Vec::with_capacity(pkcs1.len() + 1);
    bits.push(0);
    bits.extend_from_slice(pkcs1);
    let mut inner = ALG_ID.to_vec();
    inner.extend(der_tlv(0x03, &bits));
    der_tlv(0x30, &inner)
}

fn der_tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let n = content.len();
    if n < 0x80 {
        out.push(n as u8);
    } else {
        let bytes: Vec<u8> = n.to_be_bytes().iter().copied().skip_while(|b| *b == 0).collect();
        out.push(0x80 | bytes.len() as u8);
        out.extend(bytes);
    }
    out.extend_from_slice(content);
    out
}

/// Published `p=` (decoded) matches our key? RSA keys may be published as SubjectPublicKeyInfo
/// or as a bare RSAPublicKey: compare the RSAPublicKey part.
pub(crate) fn public_key_matches(ours: &LoadedKey, published: &[u8]) -> bool {
    match ours.algorithm {
        KeyAlgorithm::Ed25519Sha256 => published == ours.public_key.as_slice(),
        KeyAlgorithm::RsaSha256 => {
            // ours is SPKI = header (≤ 24 bytes) || 0x00 || RSAPublicKey
            let ours = ours.public_key.as_slice();
            published == ours
                || (!published.is_empty()
                    && published.len() < ours.len()
                    && published.len() + 24 >= ours.len()
                    && &ours[ours.len() - published.len()..] == published)
        }
    }
}

// Shared across sessions and moved into `spawn_blocking`.
const _: () = {
    fn is<T: Send + Sync>() {}
    #[allow(dead_code)]
    fn check() {
        is::<Signer>();
    }
};
