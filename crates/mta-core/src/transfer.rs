//! Queue transfer: moving queued messages to another node, and taking them in, exactly once.
//!
//! - Source: [`Engine::transfer_page`] walks the spool in id order, claims each message with pending
//!   recipients (in the chosen domain) so no connection sends it meanwhile, and hands out a [`Parcel`]: the
//!   record with its pending recipients only (attempts, tenant, priority and reception time kept) and the
//!   stored bytes. Once the peer said the parcels are durable, [`Engine::transfer_done`] removes them here (or,
//!   when only some recipients moved, takes those recipients out of the record).
//! - Peer: [`Engine::import`] stores a batch in one durable commit with a marker per parcel (aux key
//!   `xfer:<source id>[:<domain>]`). A parcel whose marker exists is a repeat (the source was interrupted after
//!   our answer): it is answered as done and stored nothing. A whole message keeps its queue id; a partial one
//!   (some recipients only) gets a new id here, so its remaining recipients may follow later under another
//!   marker.

use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use mta_spool::{domain_of, DomainSchedule, MessageRecord, Op, QueueId, RecipientState, SpoolError};

use crate::delivery::Owned;
use crate::Engine;

/// Prefix of the import markers in the spool's aux tree.
pub const MARKER_PREFIX: &str = "xfer:";

/// How long an import marker is kept: far longer than any source retries an interrupted transfer.
pub const MARKER_TTL: std::time::Duration = std::time::Duration::from_secs(7 * 24 * 3600);

/// Marker deletions per commit when sweeping.
const SWEEP_BATCH: usize = 1000;

/// Why a transfer step failed.
#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    /// The node is stopping.
    #[error("the node is stopping")]
    ShuttingDown,
    /// The spool failed.
    #[error("spool: {0}")]
    Spool(#[from] SpoolError),
    /// A blocking task failed.
    #[error("task failed: {0}")]
    Join(String),
}

/// One message (or some of its recipients) on its way to another node.
#[derive(Debug)]
pub struct Parcel {
    /// The message's id here (the idempotency key on the peer).
    pub source_id: QueueId,
    /// Set when only the recipients of this domain move (the message has others): part of the marker.
    pub partial_domain: Option<String>,
    /// What the peer stores: pending recipients only, schedules due now, everything else as stored here.
    pub record: MessageRecord,
    /// The stored message bytes.
    pub body: Bytes,
    /// Keeps local deliveries off the message until the move is done or given up.
    pub claim: Owned,
}

/// What the peer did with one parcel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImportOutcome {
    /// Stored now under this id.
    Stored(QueueId),
    /// Imported before (its marker exists) or already in the spool: nothing stored.
    Duplicate,
}

/// A parcel as the peer receives it (without the source's claim).
#[derive(Debug, Clone)]
pub struct Arrival {
    /// The source's queue id.
    pub source_id: QueueId,
    /// See [`Parcel::partial_domain`].
    pub partial_domain: Option<String>,
    /// The record to store (its id is replaced for a partial parcel, its body location by the spool's).
    pub record: MessageRecord,
    /// The message bytes.
    pub body: Bytes,
}

/// The marker key of a parcel.
pub fn marker_key(source_id: &QueueId, partial_domain: Option<&str>) -> Vec<u8> {
    match partial_domain {
        Some(d) => format!("{MARKER_PREFIX}{source_id}:{d}").into_bytes(),
        None => format!("{MARKER_PREFIX}{source_id}").into_bytes(),
    }
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// The record the peer gets for `record`'s pending recipients (in `domain`, when given), and whether that
/// leaves recipients behind (`Some(domain)`: a partial parcel). `None` when nothing is pending there.
pub fn export_record(record: &MessageRecord, domain: Option<&str>) -> Option<(MessageRecord, Option<String>)> {
    let in_scope = |d: &str| domain.is_none_or(|want| d.eq_ignore_ascii_case(want));
    let pending: Vec<_> = record.recipients.iter().filter(|r| !r.state.is_final()).collect();
    let moving: Vec<_> = pending.iter().filter(|r| in_scope(&r.domain)).map(|r| (*r).clone()).collect();
    if moving.is_empty() {
        return None;
    }
    let partial = (moving.len() < pending.len()).then(|| domain.unwrap_or_default().to_ascii_lowercase());
    let mut schedules: Vec<DomainSchedule> = Vec::new();
    for r in &moving {
        if schedules.iter().any(|s| s.domain == r.domain) {
            continue;
        }
        let attempts = record.schedules.iter().find(|s| s.domain == r.domain).map_or(0, |s| s.attempts);
        let last = record.schedules.iter().find(|s| s.domain == r.domain).and_then(|s| s.last_attempt_ms);
        // Due at once on the peer: it is a new node for this destination.
        schedules.push(DomainSchedule {
            domain: r.domain.clone(),
            attempts,
            next_attempt_ms: 0,
            last_attempt_ms: last,
        });
    }
    let mut out = record.clone();
    out.recipients = moving;
    out.schedules = schedules;
    out.body = Default::default();
    Some((out, partial))
}

impl Engine {
    /// Up to `limit` parcels from messages after `after` in id order (all destinations, or only `domain`'s),
    /// and the id to continue after (`None` once the spool is walked). Messages being delivered right now are
    /// skipped and counted in the second value: a later pass takes them.
    pub async fn transfer_page(
        &self,
        after: Option<QueueId>,
        limit: usize,
        max_bytes: u64,
        domain: Option<String>,
    ) -> Result<(Vec<Parcel>, usize, Option<QueueId>), TransferError> {
        if !self.is_accepting() {
            return Err(TransferError::ShuttingDown);
        }
        let spool = self.spool().clone();
        let owners = self.delivery().owners().clone();
        tokio::task::spawn_blocking(move || {
            let records = spool.records_after(after.as_ref(), limit)?;
            // The walk is over when the page came back short and every record in it was looked at.
            let mut done = records.len() < limit;
            let mut next = None;
            let mut parcels = Vec::new();
            let mut busy = 0usize;
            let mut bytes = 0u64;
            for record in records {
                if !parcels.is_empty() && bytes + record.body.len > max_bytes {
                    done = false;
                    break;
                }
                next = Some(record.id.clone());
                let Some((export, partial)) = export_record(&record, domain.as_deref()) else { continue };
                let Some(claim) = owners.claim(&record.id) else {
                    busy += 1;
                    continue;
                };
                // Read again under the claim: a delivery may have recorded results since the page was read.
                let Some(current) = spool.get_blocking(&record.id)? else { continue };
                let (export, partial) = if current == record {
                    (export, partial)
                } else {
                    match export_record(&current, domain.as_deref()) {
                        Some(e) => e,
                        None => continue,
                    }
                };
                let body = match spool.read_body_blocking(&current) {
                    Ok(b) => b,
                    Err(SpoolError::Corrupt { key, reason }) => {
                        tracing::error!(%key, %reason, "unreadable message left in place by the transfer");
                        continue;
                    }
                    Err(e) => return Err(e.into()),
                };
                bytes += body.len() as u64;
                parcels.push(Parcel {
                    source_id: current.id.clone(),
                    partial_domain: partial,
                    record: export,
                    body,
                    claim,
                });
            }
            Ok((parcels, busy, if done { None } else { next }))
        })
        .await
        .map_err(|e| TransferError::Join(e.to_string()))?
    }

    /// The peer acknowledged `parcels` as durable: remove them here (or their moved recipients), durably, then
    /// release their claims.
    pub async fn transfer_done(&self, parcels: Vec<Parcel>) -> Result<(), TransferError> {
        if parcels.is_empty() {
            return Ok(());
        }
        let spool = self.spool().clone();
        // Taking recipients away is a read-modify-write of the record: under the recording locks, so a DNS
        // failure or expiry recorded for the recipients that stay cannot interleave (and be lost, or put the
        // moved recipients back).
        let partial: Vec<QueueId> =
            parcels.iter().filter(|p| p.partial_domain.is_some()).map(|p| p.source_id.clone()).collect();
        let _held = self.delivery().hold_records(partial.iter()).await;
        let (ops, parcels) = tokio::task::spawn_blocking(move || {
            let mut ops = Vec::with_capacity(parcels.len());
            for p in &parcels {
                match &p.partial_domain {
                    None => ops.push(Op::Remove { id: p.source_id.clone() }),
                    Some(_) => {
                        let Some(mut rec) = spool.get_blocking(&p.source_id)? else { continue };
                        let moved: Vec<&str> = p.record.recipients.iter().map(|r| r.address.as_str()).collect();
                        rec.recipients.retain(|r| r.state.is_final() || !moved.contains(&r.address.as_str()));
                        let left: Vec<String> = rec.recipients.iter().map(|r| r.domain.clone()).collect();
                        rec.schedules.retain(|s| left.contains(&s.domain));
                        ops.push(if rec.recipients.iter().all(|r| r.state.is_final()) {
                            Op::Remove { id: rec.id.clone() }
                        } else {
                            Op::Update { record: rec }
                        });
                    }
                }
            }
            Ok::<_, SpoolError>((ops, parcels))
        })
        .await
        .map_err(|e| TransferError::Join(e.to_string()))??;
        self.spool().commit(ops).await?;
        for p in parcels {
            p.claim.changed();
        }
        Ok(())
    }

    /// Store `arrivals` durably in one commit, each with its marker, and queue them for delivery; a repeat
    /// of an earlier import stores nothing. Answers only after the commit.
    pub async fn import(&self, arrivals: Vec<Arrival>) -> Result<Vec<ImportOutcome>, TransferError> {
        if !self.is_accepting() {
            return Err(TransferError::ShuttingDown);
        }
        let _serial = self.import_lock().lock().await;
        let spool = self.spool().clone();
        let stamp = now_ms();
        let (ops, outcomes, stored_at) = tokio::task::spawn_blocking(move || {
            let mut ops = Vec::with_capacity(arrivals.len() * 2);
            let mut outcomes = Vec::with_capacity(arrivals.len());
            let mut stored_at = Vec::new();
            for a in arrivals {
                let marker = marker_key(&a.source_id, a.partial_domain.as_deref());
                let seen = spool.aux_get_blocking(&marker)?.is_some()
                    || (a.partial_domain.is_none() && spool.get_blocking(&a.source_id)?.is_some());
                // The same parcel twice in one batch: the second is a repeat.
                let twice = ops.iter().any(|op| matches!(op, Op::AuxPut { key, .. } if *key == marker));
                if seen || twice {
                    outcomes.push(ImportOutcome::Duplicate);
                    continue;
                }
                let mut record = a.record;
                record.id = if a.partial_domain.is_some() { spool.next_id() } else { a.source_id.clone() };
                for r in &mut record.recipients {
                    r.domain = domain_of(&r.address);
                    if r.state.is_final() {
                        r.state = RecipientState::Queued;
                    }
                }
                let value = format!("{} {stamp}", record.id).into_bytes();
                outcomes.push(ImportOutcome::Stored(record.id.clone()));
                stored_at.push(outcomes.len() - 1);
                ops.push(Op::Put { record, body: a.body });
                ops.push(Op::AuxPut { key: marker, value });
            }
            Ok::<_, SpoolError>((ops, outcomes, stored_at))
        })
        .await
        .map_err(|e| TransferError::Join(e.to_string()))??;
        let stored = self.spool().commit_returning(ops).await?;
        for record in &stored {
            self.delivery().enqueue(record);
        }
        metrics::counter!("mta_transfer_imported_total").increment(stored_at.len() as u64);
        Ok(outcomes)
    }
}

impl Engine {
    /// Delete import markers older than [`MARKER_TTL`]; how many were deleted.
    pub async fn sweep_transfer_markers(&self) -> Result<usize, TransferError> {
        let spool = self.spool().clone();
        let now = now_ms();
        let old = tokio::task::spawn_blocking(move || {
            let entries = spool.aux_scan_prefix(MARKER_PREFIX.as_bytes())?;
            Ok::<_, SpoolError>(
                entries
                    .into_iter()
                    .filter(|(_, v)| {
                        let stamp = std::str::from_utf8(v)
                            .ok()
                            .and_then(|t| t.rsplit_once(' '))
                            .and_then(|(_, ms)| ms.parse::<u64>().ok())
                            .unwrap_or(0);
                        now.saturating_sub(stamp) > MARKER_TTL.as_millis() as u64
                    })
                    .map(|(k, _)| k)
                    .collect::<Vec<_>>(),
            )
        })
        .await
        .map_err(|e| TransferError::Join(e.to_string()))??;
        let n = old.len();
        for chunk in old.chunks(SWEEP_BATCH) {
            let ops = chunk.iter().map(|k| Op::AuxRemove { key: k.clone() }).collect();
            self.spool().commit(ops).await?;
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> MessageRecord {
        let id = QueueId::parse("0001.a").unwrap();
        let rcpts = vec!["a@x.example".to_string(), "b@y.example".to_string(), "c@y.example".to_string()];
        let mut r = MessageRecord::new(id, "s@src.example", &rcpts, 42);
        r.recipients[0].state = RecipientState::Delivered;
        r.recipients[1].attempts = 3;
        r.schedules[1].attempts = 3;
        r.schedules[1].next_attempt_ms = 99_999;
        r
    }

    #[test]
    fn export_keeps_pending_recipients_only() {
        let (out, partial) = export_record(&record(), None).unwrap();
        assert_eq!(partial, None);
        let addrs: Vec<_> = out.recipients.iter().map(|r| r.address.as_str()).collect();
        assert_eq!(addrs, ["b@y.example", "c@y.example"]);
        assert_eq!(out.schedules.len(), 1);
        assert_eq!((out.schedules[0].attempts, out.schedules[0].next_attempt_ms), (3, 0));
        assert_eq!(out.received_at_ms, 42);
    }

    #[test]
    fn export_by_domain() {
        // Every pending recipient is in y.example: the whole message moves.
        assert_eq!(export_record(&record(), Some("Y.example")).unwrap().1, None);
        assert!(export_record(&record(), Some("x.example")).is_none());
        let mut r = record();
        r.recipients[0].state = RecipientState::Queued;
        let (out, partial) = export_record(&r, Some("x.example")).unwrap();
        assert_eq!(partial.as_deref(), Some("x.example"));
        assert_eq!(out.recipients.len(), 1);
    }
}
