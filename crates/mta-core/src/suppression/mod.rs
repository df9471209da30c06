//! The suppression list: recipients we must not mail again, per tenant (or for every tenant), durable in the
//! spool's aux tree through the same group commit as everything else, checked at injection against a compact
//! in-memory index.
//!
//! # Layout
//! - `entry`: [`Entry`], [`Reason`] and their stored form.
//! - this file: [`Suppressions`], the index and the durable operations.
//!
//! The index holds one 64-bit hash per (tenant, address): 9 bytes per bucket in a hash set (8 and a control
//! byte; 9 to 18 bytes per entry with the table's spare room), so a million entries cost ~16 MiB and a lookup is one hash and one probe. A hash
//! collision could suppress an innocent address; at 64 bits and a million entries its chance is ~10⁻¹³ per
//! address, which we accept for a check that must not touch the disk.

mod complaint;
mod entry;

use std::collections::HashSet;
use std::hash::{Hash, Hasher};

use mta_spool::{Op, Spool, SpoolError};
use parking_lot::RwLock;

pub use complaint::{parse_report, Complaint, ComplaintError, MAX_REPORT};
pub use entry::{Entry, Reason};

/// Prefix of every suppression key in the spool's aux tree: `sup\0<tenant>\0<address>`.
const PREFIX: &[u8] = b"sup\0";

/// Longest address accepted (RFC 5321 §4.5.3.1.3 path limit).
const MAX_ADDRESS: usize = 256;
/// Longest tenant name accepted.
const MAX_TENANT: usize = 128;

/// Why a suppression operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SuppressionError {
    /// The address is not one we could ever send to, or too long.
    #[error("invalid address {0:?}")]
    InvalidAddress(String),
    /// The tenant name is too long or contains a NUL.
    #[error("invalid tenant {0:?}")]
    InvalidTenant(String),
    /// A message sent to the complaint address is not a usable feedback report.
    #[error(transparent)]
    Complaint(#[from] ComplaintError),
    /// The spool could not be read or written: retry later.
    #[error(transparent)]
    Spool(#[from] SpoolError),
}

/// The normalised key parts: the tenant (`""` for every tenant) and the lowercased address.
fn normalise(tenant: Option<&str>, address: &str) -> Result<(String, String), SuppressionError> {
    let address = address.trim().trim_start_matches('<').trim_end_matches('>').to_lowercase();
    if address.is_empty() || address.len() > MAX_ADDRESS || !address.contains('@') || address.contains('\0') {
        return Err(SuppressionError::InvalidAddress(address));
    }
    let tenant = tenant.unwrap_or("");
    if tenant.len() > MAX_TENANT || tenant.contains('\0') {
        return Err(SuppressionError::InvalidTenant(tenant.to_string()));
    }
    Ok((tenant.to_string(), address))
}

fn key(tenant: &str, address: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(PREFIX.len() + tenant.len() + 1 + address.len());
    k.extend_from_slice(PREFIX);
    k.extend_from_slice(tenant.as_bytes());
    k.push(0);
    k.extend_from_slice(address.as_bytes());
    k
}

/// The index hash of (tenant, address). SipHash with fixed keys: the index is rebuilt at every start, so the
/// value only has to be stable within a process.
fn fingerprint(tenant: &str, address: &str) -> u64 {
    #[allow(deprecated)]
    let mut h = std::hash::SipHasher::new();
    tenant.hash(&mut h);
    address.hash(&mut h);
    h.finish()
}

/// The suppression list of one spool. Cheap to share behind an `Arc`.
pub struct Suppressions {
    spool: Spool,
    index: RwLock<Index>,
}

impl std::fmt::Debug for Suppressions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Suppressions").field("entries", &self.len()).finish()
    }
}

impl Suppressions {
    /// Load the index from `spool` (blocking: one walk over the stored entries, at start-up, one entry in
    /// memory at a time).
    pub fn load(spool: Spool) -> Result<Suppressions, SpoolError> {
        let mut index = Index::default();
        spool.aux_visit_prefix(PREFIX, None, |k, _| {
            if let Some((tenant, address)) = split_key(k) {
                index.insert(fingerprint(tenant, address));
            }
            true
        })?;
        index.shrink_to_fit();
        metrics::gauge!("mta_suppressions").set(index.len() as f64);
        Ok(Suppressions { spool, index: RwLock::new(index) })
    }

    /// A list over `spool` with an empty index: for offline tools that only write or list entries.
    pub fn empty(spool: Spool) -> Suppressions {
        Suppressions { spool, index: RwLock::new(Index::default()) }
    }

    /// Bytes the in-memory index holds (its table, spare room included).
    pub fn index_bytes(&self) -> usize {
        // hashbrown: one u64 and one control byte per bucket.
        self.index.read().capacity() * (std::mem::size_of::<u64>() + 1)
    }

    /// Entries in the list.
    pub fn len(&self) -> usize {
        self.index.read().len()
    }

    /// True when the list is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// True when `address` must not be mailed for a message of `tenant`: it is listed for that tenant or for
    /// every tenant. Memory only.
    pub fn is_suppressed(&self, tenant: Option<&str>, address: &str) -> bool {
        let Ok((tenant, address)) = normalise(tenant, address) else { return false };
        let index = self.index.read();
        if index.is_empty() {
            return false;
        }
        index.contains(&fingerprint("", &address))
            || (!tenant.is_empty() && index.contains(&fingerprint(&tenant, &address)))
    }

    /// The operation that stores `entry` (for a caller's own commit, e.g. with the bounce that caused it);
    /// call [`Suppressions::note_stored`] once that commit is durable.
    pub fn op_for(&self, entry: &Entry) -> Result<Op, SuppressionError> {
        let (tenant, address) = normalise(entry.tenant.as_deref(), &entry.email)?;
        Ok(Op::AuxPut { key: key(&tenant, &address), value: entry.encode() })
    }

    /// `entry` is durable: make it visible to injection.
    pub fn note_stored(&self, entry: &Entry) {
        if let Ok((tenant, address)) = normalise(entry.tenant.as_deref(), &entry.email) {
            let mut index = self.index.write();
            if index.insert(fingerprint(&tenant, &address)) {
                metrics::gauge!("mta_suppressions").set(index.len() as f64);
            }
        }
    }

    /// Add or replace `entry` durably; true when it is new.
    pub async fn put(&self, entry: &Entry) -> Result<bool, SuppressionError> {
        let existed = self.get(entry.tenant.as_deref(), &entry.email).await?.is_some();
        self.spool.commit(vec![self.op_for(entry)?]).await?;
        self.note_stored(entry);
        Ok(!existed)
    }

    /// The entry for `address` under `tenant` (`None`: the every-tenant list).
    pub async fn get(&self, tenant: Option<&str>, address: &str) -> Result<Option<Entry>, SuppressionError> {
        let (tenant, address) = normalise(tenant, address)?;
        let stored = self.spool.aux_get(&key(&tenant, &address)).await?;
        Ok(stored.and_then(|v| Entry::decode(&tenant, &address, &v)))
    }

    /// Remove the entry durably; true when there was one.
    pub async fn remove(&self, tenant: Option<&str>, address: &str) -> Result<bool, SuppressionError> {
        let (tenant, address) = normalise(tenant, address)?;
        let k = key(&tenant, &address);
        let existed = self.spool.aux_get(&k).await?.is_some();
        self.spool.commit(vec![Op::AuxRemove { key: k }]).await?;
        let mut index = self.index.write();
        index.remove(&fingerprint(&tenant, &address));
        metrics::gauge!("mta_suppressions").set(index.len() as f64);
        Ok(existed)
    }

    /// Up to `limit` entries after `cursor` (an opaque value from a previous page), of `tenant` only when given;
    /// with the cursor of the next page when there is more (blocking: a range scan of the aux tree from the
    /// cursor).
    pub fn list_blocking(
        &self,
        tenant: Option<&str>,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<Entry>, Option<String>), SuppressionError> {
        let mut prefix = PREFIX.to_vec();
        if let Some(t) = tenant {
            if t.contains('\0') || t.len() > MAX_TENANT {
                return Err(SuppressionError::InvalidTenant(t.to_string()));
            }
            prefix.extend_from_slice(t.as_bytes());
            prefix.push(0);
        }
        let after = cursor.and_then(decode_cursor);
        let mut out = Vec::new();
        let mut next = None;
        let mut last_key = Vec::new();
        self.spool.aux_visit_prefix(&prefix, after.as_deref(), |k, v| {
            if out.len() == limit {
                next = Some(encode_cursor(&last_key));
                return false;
            }
            if let Some(e) = split_key(k).and_then(|(t, a)| Entry::decode(t, a, v)) {
                out.push(e);
                last_key = k.to_vec();
            }
            true
        })?;
        Ok((out, next))
    }

    /// Read an ARF feedback report (RFC 5965) and add a `complaint` entry for the recipient it names: for the
    /// tenant of the original message when it is still in the spool, else for every tenant. Parsing runs on a
    /// blocking thread.
    pub async fn add_complaint(&self, report: bytes::Bytes) -> Result<Entry, SuppressionError> {
        let spool = self.spool.clone();
        let parsed = tokio::task::spawn_blocking(move || {
            let complaint = parse_report(&report)?;
            let tenant = complaint
                .original_id
                .as_deref()
                .and_then(mta_spool::QueueId::parse)
                .and_then(|id| spool.get_blocking(&id).ok().flatten())
                .and_then(|record| record.tenant);
            Ok::<_, SuppressionError>((complaint, tenant))
        })
        .await
        .map_err(|e| {
            SuppressionError::Spool(SpoolError::io("parse feedback report", std::io::Error::other(e.to_string())))
        })?;
        let (complaint, tenant) = parsed?;
        let entry = Entry::new(complaint.recipient, Reason::Complaint, tenant);
        self.put(&entry).await?;
        metrics::counter!("mta_complaints_total").increment(1);
        tracing::info!(recipient = %entry.email, tenant = ?entry.tenant, feedback_type = ?complaint.feedback_type,
            "complaint recorded: recipient suppressed");
        Ok(entry)
    }

    /// Store many entries in one commit (CSV import); returns how many were valid and stored.
    pub async fn put_many(&self, entries: &[Entry]) -> Result<usize, SuppressionError> {
        let ops: Vec<Op> = entries.iter().filter_map(|e| self.op_for(e).ok()).collect();
        let n = ops.len();
        if n > 0 {
            self.spool.commit(ops).await?;
        }
        for e in entries {
            self.note_stored(e);
        }
        Ok(n)
    }
}

/// The (tenant, address) of a stored key, if it is a well-formed suppression key.
fn split_key(k: &[u8]) -> Option<(&str, &str)> {
    let rest = k.strip_prefix(PREFIX)?;
    let nul = rest.iter().position(|b| *b == 0)?;
    Some((std::str::from_utf8(&rest[..nul]).ok()?, std::str::from_utf8(&rest[nul + 1..]).ok()?))
}

/// The index's hasher: its keys are already SipHash fingerprints, so hashing them again would only cost time.
#[derive(Default, Clone, Copy)]
struct Passthrough(u64);

impl Hasher for Passthrough {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Only u64 keys are hashed (write_u64); fold anything else in so the hasher stays correct.
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

type Index = HashSet<u64, std::hash::BuildHasherDefault<Passthrough>>;

/// A cursor is the last key of a page, hex-encoded (opaque to clients, safe in a query string).
fn encode_cursor(key: &[u8]) -> String {
    key.iter().map(|b| format!("{b:02x}")).collect()
}

fn decode_cursor(c: &str) -> Option<Vec<u8>> {
    if !c.len().is_multiple_of(2) || c.len() > 2 * (PREFIX.len() + MAX_TENANT + MAX_ADDRESS + 1) {
        return None;
    }
    (0..c.len()).step_by(2).map(|i| u8::from_str_radix(c.get(i..i + 2)?, 16).ok()).collect()
}

#[cfg(test)]
mod tests;
