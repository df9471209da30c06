//! `Idempotency-Key`: the same key within 24 h replays the first answer and queues nothing.
//!
//! - A key is scoped by the caller's label (two API keys may use the same idempotency key independently):
//!   aux key `idem:<label>:<key>` in the spool.
//! - Its record (`{request_sha256, status, response_body, created_ms}`) is committed by
//!   [`mta_core::Engine::inject_with`] in the *same* durable round as the message, so after a crash either both
//!   exist or neither: an acknowledged message always has its key, a key never names a lost message.
//! - While the first request with a key is between "looked up" and "durable", the key is in an in-memory
//!   in-flight set; a second request with it gets `409`.
//! - The request fingerprint is the SHA-256 of the canonical JSON body (object keys sorted, no whitespace), so
//!   a retry that only reorders keys is still the same request; a different body gets `422`.
//! - Records older than 24 h are ignored on lookup and deleted by a background sweeper.
//! - Only `202` answers are recorded: a refused request stored nothing and may be retried with the same key.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use mta_core::Companion;
use mta_spool::{Op, Spool, SpoolError};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// How long a key is remembered.
pub const KEY_TTL: Duration = Duration::from_secs(24 * 3600);
/// How often the sweeper deletes expired keys.
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(600);
/// Longest accepted `Idempotency-Key`.
pub const MAX_KEY_LEN: usize = 255;
/// Prefix of every idempotency record in the aux tree.
const PREFIX: &str = "idem:";
/// Deletions per commit when sweeping.
const SWEEP_BATCH: usize = 1000;

/// The stored first answer to a key.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredAnswer {
    /// Hex SHA-256 of the canonical request body.
    pub request_sha256: String,
    /// HTTP status of the first answer.
    pub status: u16,
    /// JSON body of the first answer.
    pub response_body: Value,
    /// When it was stored (ms since the epoch).
    pub created_ms: u64,
}

/// Check an `Idempotency-Key` value: 1..=255 printable ASCII characters.
pub fn valid_key(key: &str) -> bool {
    !key.is_empty() && key.len() <= MAX_KEY_LEN && key.bytes().all(|b| (0x20..0x7f).contains(&b))
}

/// The aux key of `key` for caller `label`.
pub fn aux_key(label: &str, key: &str) -> Vec<u8> {
    format!("{PREFIX}{label}:{key}").into_bytes()
}

/// The request fingerprint built as the body is parsed: the SHA-256 of its canonical form (sorted object
/// keys, compact), fed member by member so a large `content` string is hashed while it is decoded, never
/// re-serialized into a buffer of its own.
pub struct Fingerprint {
    hasher: Sha256,
    members: usize,
}

impl Fingerprint {
    /// Start the canonical form of a JSON object; members must then come in sorted key order.
    pub fn object() -> Self {
        let mut hasher = Sha256::new();
        hasher.update(b"{");
        Fingerprint { hasher, members: 0 }
    }

    /// Start the member `key`; its value follows through [`Fingerprint::value`] or the `string_*` calls.
    pub fn key(&mut self, key: &str) {
        if self.members > 0 {
            self.hasher.update(b",");
        }
        self.members += 1;
        // Serializing a string into a hasher cannot fail.
        let _ = serde_json::to_writer(&mut self.hasher, key);
        self.hasher.update(b":");
    }

    /// A whole value, in canonical form.
    pub fn value(&mut self, value: &Value) {
        canonical(value, &mut self.hasher);
    }

    /// A string value given as decoded pieces: `piece` for each, between `string_start` and `string_end`.
    pub fn string_start(&mut self) {
        self.hasher.update(b"\"");
    }

    /// One decoded piece of the string value.
    pub fn string_piece(&mut self, piece: &[u8]) {
        super::json_text::write_escaped(piece, &mut self.hasher);
    }

    /// End of the string value.
    pub fn string_end(&mut self) {
        self.hasher.update(b"\"");
    }

    /// Close the object: the hex digest.
    pub fn finish(mut self) -> String {
        self.hasher.update(b"}");
        hex::encode(self.hasher.finalize())
    }
}

/// Hex SHA-256 of the canonical form of `body` (sorted object keys, compact).
#[cfg(test)]
pub fn fingerprint(body: &Value) -> String {
    let mut hasher = Sha256::new();
    canonical(body, &mut hasher);
    hex::encode(hasher.finalize())
}

/// `v` with sorted object keys and no whitespace. Writes go to a hasher or a `Vec`, which cannot fail.
fn canonical(v: &Value, out: &mut impl std::io::Write) {
    match v {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            let _ = out.write_all(b"{");
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    let _ = out.write_all(b",");
                }
                let _ = serde_json::to_writer(&mut *out, k);
                let _ = out.write_all(b":");
                canonical(&map[k], out);
            }
            let _ = out.write_all(b"}");
        }
        Value::Array(items) => {
            let _ = out.write_all(b"[");
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    let _ = out.write_all(b",");
                }
                canonical(item, out);
            }
            let _ = out.write_all(b"]");
        }
        other => {
            let _ = serde_json::to_writer(&mut *out, other);
        }
    }
}

/// The key table: durable records in the spool's aux tree plus the in-memory in-flight set.
#[derive(Debug)]
pub struct Idempotency {
    spool: Spool,
    in_flight: Mutex<HashSet<Vec<u8>>>,
}

/// Marks a key as in flight until dropped (also when the request future is cancelled).
#[derive(Debug)]
pub struct InFlight<'a> {
    table: &'a Idempotency,
    key: Vec<u8>,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.table.in_flight.lock().remove(&self.key);
    }
}

impl Idempotency {
    /// The table over `spool`'s aux tree.
    pub fn new(spool: Spool) -> Self {
        Idempotency { spool, in_flight: Mutex::new(HashSet::new()) }
    }

    /// Claim `aux_key` for this request; `None` when another request holds it (`409`).
    pub fn begin(&self, aux_key: &[u8]) -> Option<InFlight<'_>> {
        self.in_flight.lock().insert(aux_key.to_vec()).then(|| InFlight { table: self, key: aux_key.to_vec() })
    }

    /// The stored answer of `aux_key`, unless absent, unreadable or older than [`KEY_TTL`] at `now_ms`.
    pub async fn lookup(&self, aux_key: &[u8], now_ms: u64) -> Result<Option<StoredAnswer>, SpoolError> {
        let Some(raw) = self.spool.aux_get(aux_key).await? else {
            return Ok(None);
        };
        let answer = match serde_json::from_slice::<StoredAnswer>(&raw) {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(key = %String::from_utf8_lossy(aux_key), error = %e, "unreadable idempotency record ignored");
                return Ok(None);
            }
        };
        Ok((!expired(&answer, now_ms)).then_some(answer))
    }

    /// The record that stores `answer` under `aux_key` (committed with the message).
    pub fn companion(aux_key: Vec<u8>, answer: &StoredAnswer) -> Companion {
        Companion::new(aux_key, serde_json::to_vec(answer).unwrap_or_default())
    }

    /// Delete every record expired at `now_ms`; returns how many.
    pub async fn sweep(&self, now_ms: u64) -> Result<usize, SpoolError> {
        let spool = self.spool.clone();
        let expired_keys = tokio::task::spawn_blocking(move || -> Result<Vec<Vec<u8>>, SpoolError> {
            let entries = spool.aux_scan_prefix(PREFIX.as_bytes())?;
            Ok(entries
                .into_iter()
                .filter(|(_, v)| serde_json::from_slice::<StoredAnswer>(v).map_or(true, |a| expired(&a, now_ms)))
                .map(|(k, _)| k)
                .collect())
        })
        .await
        .map_err(|e| SpoolError::io("idempotency sweep", std::io::Error::other(e.to_string())))??;
        let n = expired_keys.len();
        for batch in expired_keys.chunks(SWEEP_BATCH) {
            let ops = batch.iter().map(|k| Op::AuxRemove { key: k.clone() }).collect();
            self.spool.commit(ops).await?;
        }
        Ok(n)
    }

    /// Sweep every [`SWEEP_INTERVAL`] until the task is aborted.
    pub async fn run_sweeper(self: Arc<Self>) {
        let mut tick = tokio::time::interval(SWEEP_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            match self.sweep(super::now_ms()).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(removed = n, "expired idempotency keys removed"),
                Err(e) => tracing::warn!(error = %e, "idempotency sweep failed"),
            }
        }
    }
}

fn expired(answer: &StoredAnswer, now_ms: u64) -> bool {
    now_ms.saturating_sub(answer.created_ms) > KEY_TTL.as_millis() as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn fingerprint_ignores_key_order_and_whitespace() {
        let a: Value = serde_json::from_str(r#"{"b": [1, {"y": 2, "x": 1}], "a": "s"}"#).unwrap();
        let b: Value = serde_json::from_str(r#"{"a":"s","b":[1,{"x":1,"y":2}]}"#).unwrap();
        assert_eq!(fingerprint(&a), fingerprint(&b));
        assert_ne!(fingerprint(&a), fingerprint(&json!({"a": "t"})));
    }

    #[test]
    fn keys_are_bounded_printable_ascii() {
        assert!(valid_key("order-123:retry"));
        assert!(!valid_key(""));
        assert!(!valid_key(&"k".repeat(256)));
        assert!(!valid_key("tab\there"));
        assert!(!valid_key("é"));
    }

    #[tokio::test]
    async fn records_expire_and_are_swept() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open_async(mta_spool::SpoolConfig::new(dir.path(), "t")).await.unwrap();
        let table = Idempotency::new(spool.clone());
        let old = StoredAnswer { request_sha256: "x".into(), status: 202, response_body: json!({}), created_ms: 1_000 };
        let fresh = StoredAnswer { created_ms: 1_000 + KEY_TTL.as_millis() as u64, ..old.clone() };
        spool
            .commit(vec![
                Idempotency::companion(aux_key("l", "old"), &old).into(),
                Idempotency::companion(aux_key("l", "fresh"), &fresh).into(),
            ])
            .await
            .unwrap();
        let now = 2_000 + KEY_TTL.as_millis() as u64;
        assert!(table.lookup(&aux_key("l", "old"), now).await.unwrap().is_none());
        assert!(table.lookup(&aux_key("l", "fresh"), now).await.unwrap().is_some());
        assert_eq!(table.sweep(now).await.unwrap(), 1);
        assert!(spool.aux_get(&aux_key("l", "old")).await.unwrap().is_none());
        assert!(spool.aux_get(&aux_key("l", "fresh")).await.unwrap().is_some());
        let guard = table.begin(b"k").unwrap();
        assert!(table.begin(b"k").is_none());
        drop(guard);
        assert!(table.begin(b"k").is_some());
        spool.close().await;
    }
}
