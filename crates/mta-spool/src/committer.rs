//! The group-commit thread: one dedicated OS thread makes every write durable, many at a time.
//!
//! A round: block for the first request, then drain whatever else is queued (up to `max_round_ops` operations
//! or `max_round_bytes` of bodies), then
//!
//! 1. plan: check each request against the index (an update needs its message) — a request that fails its
//!    check gets its own error and is left out of the round;
//! 2. append all bodies of the round to the active segment (one `writev` per segment touched);
//! 3. `fdatasync` the segment, so no durable record can point at bytes that are not;
//! 4. apply every record and aux write in one sled transaction (they recover together or not at all);
//! 5. sled flush + fsync of its files;
//! 6. delete segments nothing points into any more (the removals are durable now), answer every waiter.
//!
//! A failure in steps 2–5 answers every waiter of the round with the error: never a false ack. A failed fsync or
//! index write poisons the spool (every later write is refused), because after a failed fsync the kernel may have
//! dropped the dirty pages and nothing can be trusted until recovery re-reads the disk.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use sled::transaction::{ConflictableTransactionError, TransactionError};
use sled::Transactional;
use tokio::sync::{mpsc, oneshot};

use crate::error::SpoolError;
use crate::id::QueueId;
use crate::joined;
use crate::outbox::{self, OutboxDelta};
use crate::record::{BodyLocation, MessageRecord, INLINE_MAX, INLINE_SEGMENT};
use crate::segment::SegmentWriter;
use crate::staged::SealedBody;
use crate::store::Shared;

/// One write, committed through [`crate::Spool::commit`]; all ops of one call become durable together.
#[derive(Debug, Clone)]
pub enum Op {
    /// Store a message: its record and bytes. The spool fills in `record.body`. A put over an existing id
    /// replaces that message.
    Put {
        /// The envelope record (its `id` is the key).
        record: MessageRecord,
        /// The message bytes as they will be sent.
        body: Bytes,
    },
    /// Store a message whose body was staged and sealed beforehand ([`crate::StagedBody`]): only the record
    /// is written in the round. The spool fills in `record.body`.
    PutSealed {
        /// The envelope record (its `id` is the key).
        record: MessageRecord,
        /// The durable body it points at.
        body: SealedBody,
    },
    /// Replace a message's record (recipient states, schedules). The body location is kept from the stored
    /// record, whatever `record.body` says; fails with [`SpoolError::NotFound`] if the message is gone.
    Update {
        /// The new record.
        record: MessageRecord,
    },
    /// Delete a message (no-op if it is already gone). Its body segment is deleted once nothing points into it.
    Remove {
        /// The message to delete.
        id: QueueId,
    },
    /// Store a caller-chosen key and value in the aux tree (for example an idempotency key).
    AuxPut {
        /// Key bytes.
        key: Vec<u8>,
        /// Value bytes.
        value: Vec<u8>,
    },
    /// Delete an aux key (no-op if absent).
    AuxRemove {
        /// Key bytes.
        key: Vec<u8>,
    },
    /// Add `item` to this round's joined entry under `prefix` ([`crate::joined`]): one aux key for all of a
    /// round's items with that prefix, keyed by the largest `order` among them.
    AuxJoin {
        /// Key prefix of the entries.
        prefix: Vec<u8>,
        /// What the entry is ordered by (for example a time in ms).
        order: u64,
        /// The item.
        item: Vec<u8>,
    },
    /// Append to the outbox ([`crate::outbox`]): one or more `\n`-separated items. The committer joins the
    /// appends of a round into one entry with the next sequence.
    OutboxAppend {
        /// The entry (for example one exported event as JSON).
        value: Vec<u8>,
    },
    /// Delete every outbox entry with a sequence up to and including `seq`.
    OutboxRemoveThrough {
        /// The last sequence removed.
        seq: u64,
    },
}

/// What the committer answers a commit: the records stored by its `Put` ops, in order.
pub(crate) type CommitReply = Result<Vec<MessageRecord>, SpoolError>;

/// A message to the committer thread.
pub(crate) enum Request {
    /// Commit these ops in one round.
    Commit {
        /// The ops, applied in order.
        ops: Vec<Op>,
        /// Where the answer goes.
        reply: oneshot::Sender<CommitReply>,
        /// When the caller queued it (for the wait-latency histogram).
        enqueued: Instant,
    },
    /// Finish what is queued before this, answer, and stop.
    Shutdown {
        /// Answered when the committer stops.
        reply: oneshot::Sender<()>,
    },
}

impl Request {
    /// Operations and body bytes of a request (for the round caps).
    fn weight(&self) -> (usize, u64) {
        match self {
            Request::Commit { ops, .. } => {
                let bytes = ops
                    .iter()
                    .map(|op| match op {
                        Op::Put { body, .. } => body.len() as u64,
                        Op::OutboxAppend { value } => value.len() as u64,
                        Op::AuxJoin { item, .. } => item.len() as u64,
                        _ => 0,
                    })
                    .sum();
                (ops.len(), bytes)
            }
            Request::Shutdown { .. } => (0, 0),
        }
    }
}

/// Where a record's body is during planning: already stored, or the n-th body appended this round.
#[derive(Debug, Clone, Copy)]
enum BodyRef {
    Stored(BodyLocation),
    Pending(usize),
}

/// A planned index write.
enum Write {
    Record { key: Vec<u8>, record: Box<MessageRecord>, body: BodyRef, old: Option<BodyRef> },
    RemoveRecord { key: Vec<u8>, old: Option<BodyRef> },
    AuxPut { key: Vec<u8>, value: Vec<u8> },
    AuxRemove { key: Vec<u8> },
}

/// What is known about a record key during planning.
#[derive(Debug, Clone, Copy)]
enum Slot {
    Absent,
    Present(BodyRef),
    /// Stored but undecodable: can be removed or overwritten, not updated.
    Undecodable,
}

/// An outbox entry written by a round is closed at this size (a round's appends beyond it start another).
const OUTBOX_ENTRY_MAX: usize = 256 << 10;

/// The work of one round.
#[derive(Default)]
struct Plan {
    bodies: Vec<(QueueId, Bytes)>,
    writes: Vec<Write>,
    /// Record keys written this round → their state after the planned writes.
    slots: HashMap<Vec<u8>, Slot>,
    /// Change in the number of records.
    record_delta: i64,
    /// Staged bodies whose records this round writes: they become permanent when it succeeds.
    sealed: Vec<SealedBody>,
    /// The round's outbox appends and removals.
    outbox: OutboxDelta,
    /// Outbox entries up to this sequence are already removed by an earlier request of the round.
    outbox_removed_through: Option<u64>,
    /// The round's outbox appends (of accepted requests), written as few entries when the round is sealed.
    outbox_appends: Vec<Vec<u8>>,
    /// Their bytes once joined (each counted with its separator).
    outbox_append_bytes: u64,
    /// The round's joined-entry items (of accepted requests): (prefix, order, item).
    joins: Vec<(Vec<u8>, u64, Vec<u8>)>,
}

/// A request accepted into the round: its waiter and the puts whose stored records it gets back.
struct Accepted {
    reply: oneshot::Sender<CommitReply>,
    enqueued: Instant,
    puts: Vec<(MessageRecord, usize)>,
}

/// The committer's state; lives on its own thread.
pub(crate) struct Committer {
    shared: Arc<Shared>,
    writer: SegmentWriter,
    rx: mpsc::Receiver<Request>,
    /// A request drained but left for the next round (it would have exceeded the caps).
    carry: Option<Request>,
    /// Set after a durability failure: every later write is refused.
    poisoned: Option<String>,
    max_round_ops: usize,
    max_round_bytes: u64,
    /// Group-commit gathering: with several writers active, wait up to this long for more of them.
    commit_delay: Duration,
    /// Requests in the previous round: the sign of how many writers are active.
    last_round_requests: usize,
    /// Sequence of the last joined entry written; starts from the clock so a restart within the same
    /// millisecond order cannot reuse a key.
    join_seq: u64,
}

/// What the gathering loop does with one request taken from the channel.
enum Take {
    Added,
    Full,
    Shutdown,
}

impl Committer {
    /// A committer appending to `writer` and serving `rx`.
    pub(crate) fn new(
        shared: Arc<Shared>,
        writer: SegmentWriter,
        rx: mpsc::Receiver<Request>,
        max_round_ops: usize,
        max_round_bytes: u64,
    ) -> Self {
        Committer {
            shared,
            writer,
            rx,
            carry: None,
            poisoned: None,
            max_round_ops: max_round_ops.max(1),
            max_round_bytes: max_round_bytes.max(1),
            commit_delay: Duration::ZERO,
            last_round_requests: 0,
            join_seq: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64),
        }
    }

    /// Gather for up to `delay` when writers are concurrent (see [`crate::SpoolConfig::commit_delay`]).
    pub(crate) fn with_commit_delay(mut self, delay: Duration) -> Self {
        self.commit_delay = delay;
        self
    }

    /// Add `next` to the round unless it would exceed the caps (then it is carried to the next round).
    fn take(
        &mut self,
        next: Request,
        batch: &mut Vec<Request>,
        ops: &mut usize,
        bytes: &mut u64,
    ) -> (Take, Option<oneshot::Sender<()>>) {
        if let Request::Shutdown { reply } = next {
            return (Take::Shutdown, Some(reply));
        }
        let (o, b) = next.weight();
        if *ops + o > self.max_round_ops || *bytes + b > self.max_round_bytes {
            self.carry = Some(next);
            return (Take::Full, None);
        }
        *ops += o;
        *bytes += b;
        batch.push(next);
        (Take::Added, None)
    }

    /// Serve requests until every sender is gone or a shutdown is asked; queued requests are finished first.
    pub(crate) fn run(mut self) {
        loop {
            let first = match self.carry.take() {
                Some(r) => r,
                None => match self.rx.blocking_recv() {
                    Some(r) => r,
                    None => break,
                },
            };
            let started = Instant::now();
            let mut batch = Vec::new();
            let mut shutdown = None;
            let (mut ops, mut bytes) = first.weight();
            match first {
                Request::Shutdown { reply } => shutdown = Some(reply),
                commit => batch.push(commit),
            }
            if shutdown.is_none() {
                let delay = self.shared.flush_delay_us.load(Ordering::Relaxed);
                if delay > 0 {
                    std::thread::sleep(Duration::from_micros(delay));
                }
                let mut full = false;
                while ops < self.max_round_ops && bytes < self.max_round_bytes {
                    let Ok(next) = self.rx.try_recv() else { break };
                    match self.take(next, &mut batch, &mut ops, &mut bytes) {
                        (Take::Added, _) => {}
                        (Take::Full, _) => {
                            full = true;
                            break;
                        }
                        (Take::Shutdown, reply) => {
                            shutdown = reply;
                            break;
                        }
                    }
                }
                // Group commit gathering (like PostgreSQL's commit_delay with commit_siblings): when the last
                // round served several writers, the others are likely a few hundred microseconds away; waiting
                // briefly for them makes one sync cover more messages. A lone writer never waits.
                if !full && shutdown.is_none() && !self.commit_delay.is_zero() && self.last_round_requests >= 4 {
                    let deadline = started + self.commit_delay;
                    while batch.len() < self.last_round_requests && Instant::now() < deadline {
                        match self.rx.try_recv() {
                            Ok(next) => match self.take(next, &mut batch, &mut ops, &mut bytes) {
                                (Take::Added, _) => {}
                                (Take::Full, _) => break,
                                (Take::Shutdown, reply) => {
                                    shutdown = reply;
                                    break;
                                }
                            },
                            Err(mpsc::error::TryRecvError::Empty) => std::thread::sleep(Duration::from_micros(50)),
                            Err(mpsc::error::TryRecvError::Disconnected) => break,
                        }
                    }
                }
            }
            self.last_round_requests = batch.len();
            if !batch.is_empty() {
                self.round(batch, started, ops, bytes);
            }
            if let Some(reply) = shutdown {
                // Refuse what is still queued (its waiters see `Closed`), then stop.
                self.rx.close();
                if let Some(Request::Commit { reply, .. }) = self.carry.take() {
                    let _ = reply.send(Err(SpoolError::Closed));
                }
                let _ = reply.send(());
                break;
            }
        }
        tracing::debug!("spool committer stopped");
    }

    /// Run one round over `batch` and answer its waiters.
    fn round(&mut self, batch: Vec<Request>, started: Instant, ops: usize, bytes: u64) {
        let mut plan = Plan::default();
        let mut accepted = Vec::with_capacity(batch.len());
        for req in batch {
            let Request::Commit { ops, reply, enqueued } = req else { continue };
            if let Some(reason) = &self.poisoned {
                let _ = reply.send(Err(SpoolError::Poisoned(reason.clone())));
                continue;
            }
            match self.plan_request(&mut plan, ops) {
                Ok(puts) => accepted.push(Accepted { reply, enqueued, puts }),
                Err(e) => {
                    let _ = reply.send(Err(e));
                }
            }
        }
        let outcome = if accepted.is_empty() {
            Ok(Vec::new())
        } else {
            self.seal_outbox(&mut plan);
            self.seal_joins(&mut plan);
            self.execute(&mut plan)
        };
        let stats = &self.shared.stats;
        // Counted before the answers go out, so a caller that sees its ack also sees the round in `stats()`.
        stats.round(ops, bytes, started.elapsed());
        match outcome {
            Ok(locations) => {
                stats.add_records(plan.record_delta);
                self.shared.outbox.applied(&plan.outbox);
                for body in &plan.sealed {
                    body.mark_committed();
                }
                // Deleting before answering keeps "removed" meaning "its segment may be gone" for the caller.
                self.shared.segments.delete_empty(self.writer.num());
                for a in accepted {
                    let records = a
                        .puts
                        .into_iter()
                        .map(|(mut record, i)| {
                            if let Some(loc) = locations.get(i) {
                                record.body = *loc;
                            }
                            record
                        })
                        .collect();
                    stats.wait(a.enqueued.elapsed());
                    let _ = a.reply.send(Ok(records));
                }
            }
            Err(e) => {
                tracing::error!(error = %e, waiters = accepted.len(), "spool commit round failed");
                for a in accepted {
                    stats.wait(a.enqueued.elapsed());
                    let _ = a.reply.send(Err(e.clone()));
                }
            }
        }
    }

    /// Write the round's outbox appends as entries of up to [`OUTBOX_ENTRY_MAX`] bytes (items joined by `\n`):
    /// one sled key per round instead of one per event is what keeps exporting cheap on the commit path.
    fn seal_outbox(&self, plan: &mut Plan) {
        let mut entry: Vec<u8> = Vec::new();
        for value in std::mem::take(&mut plan.outbox_appends) {
            if !entry.is_empty() && entry.len() + value.len() > OUTBOX_ENTRY_MAX {
                self.append_entry(plan, std::mem::take(&mut entry));
            }
            if entry.is_empty() {
                entry = value;
            } else {
                entry.push(b'\n');
                entry.extend_from_slice(&value);
            }
        }
        if !entry.is_empty() {
            self.append_entry(plan, entry);
        }
        plan.outbox_append_bytes = 0;
    }

    /// Write the round's joined items as one entry per prefix (closed at [`joined::ENTRY_MAX`] bytes), keyed by
    /// the largest order among its items and the next sequence.
    fn seal_joins(&mut self, plan: &mut Plan) {
        // (prefix, largest order, value) of each prefix's open entry.
        let mut open: Vec<(Vec<u8>, u64, Vec<u8>)> = Vec::new();
        for (prefix, order, item) in std::mem::take(&mut plan.joins) {
            let i = match open.iter().position(|(p, _, _)| *p == prefix) {
                Some(i) => i,
                None => {
                    open.push((prefix, 0, Vec::new()));
                    open.len() - 1
                }
            };
            let (prefix, largest, value) = &mut open[i];
            if !value.is_empty() && value.len() + 4 + item.len() > joined::ENTRY_MAX {
                let full = std::mem::take(value);
                self.join_entry(plan, prefix, std::mem::take(largest), full);
            }
            *largest = (*largest).max(order);
            joined::push(value, &item);
        }
        for (prefix, largest, value) in open {
            self.join_entry(plan, &prefix, largest, value);
        }
    }

    fn join_entry(&mut self, plan: &mut Plan, prefix: &[u8], order: u64, value: Vec<u8>) {
        self.join_seq = self.join_seq.wrapping_add(1);
        plan.writes.push(Write::AuxPut { key: joined::key(prefix, order, self.join_seq), value });
    }

    fn append_entry(&self, plan: &mut Plan, value: Vec<u8>) {
        let seq = self.shared.outbox.allocate();
        let delta = &mut plan.outbox;
        delta.added += 1;
        delta.added_bytes += value.len() as u64;
        delta.first_added = Some(delta.first_added.unwrap_or(seq).min(seq));
        delta.last_added = Some(seq);
        plan.writes.push(Write::AuxPut { key: outbox::key(seq), value });
    }

    /// Plan the removal of the oldest stored outbox entries (after `removed_through`, which earlier ops of the
    /// round already removed) until at least `want` bytes are freed or none is left; counted as dropped.
    /// Returns the new `removed_through`. Entries appended earlier in this round are not in the tree yet and
    /// are never dropped (a round larger than the whole bound can exceed it, by at most that round's bytes).
    fn drop_oldest(
        &self,
        removed_through: Option<u64>,
        want: u64,
        outbox: &mut OutboxDelta,
        writes: &mut Vec<Write>,
    ) -> Result<Option<u64>, SpoolError> {
        let start = removed_through.map_or(0, |s| s.saturating_add(1));
        let index = self.shared.index()?;
        let mut freed = 0u64;
        let mut last = removed_through;
        let mut iter = index.aux.range(outbox::key(start)..outbox::key(u64::MAX));
        for item in iter.by_ref() {
            let (k, v) = item.map_err(|e| SpoolError::sled("scan outbox", e))?;
            let Some(seq) = outbox::seq_of(&k) else { continue };
            let len = v.len() as u64;
            freed += len;
            outbox.removed += 1;
            outbox.removed_bytes += len;
            outbox.dropped += 1;
            outbox.dropped_items += outbox::items_in(&v);
            outbox.dropped_bytes += len;
            writes.push(Write::AuxRemove { key: k.to_vec() });
            last = Some(seq);
            if freed >= want {
                break;
            }
        }
        if last != removed_through {
            let next = iter
                .next()
                .transpose()
                .map_err(|e| SpoolError::sled("scan outbox", e))?
                .and_then(|(k, _)| outbox::seq_of(&k));
            outbox.oldest_after_removal = Some(next.unwrap_or(u64::MAX));
        }
        Ok(last)
    }

    /// Check one request's ops and add them to `plan`; on error the plan is left as it was.
    fn plan_request(&self, plan: &mut Plan, ops: Vec<Op>) -> Result<Vec<(MessageRecord, usize)>, SpoolError> {
        let bodies_before = plan.bodies.len();
        let sealed_before = plan.sealed.len();
        let mut slots: HashMap<Vec<u8>, Slot> = HashMap::new();
        let mut writes = Vec::with_capacity(ops.len());
        let mut delta = 0i64;
        let mut puts = Vec::new();
        let mut outbox = OutboxDelta::default();
        let mut removed_through = plan.outbox_removed_through;
        let mut appends = Vec::new();
        let mut append_bytes = 0u64;
        let mut joins = Vec::new();
        let result = (|| {
            for op in ops {
                match op {
                    Op::Put { record, body } => {
                        let key = record.id.as_str().as_bytes().to_vec();
                        let old = self.slot(plan, &slots, &key)?;
                        if matches!(old, Slot::Absent) {
                            delta += 1;
                        }
                        let n = plan.bodies.len();
                        plan.bodies.push((record.id.clone(), body));
                        puts.push((record.clone(), n));
                        slots.insert(key.clone(), Slot::Present(BodyRef::Pending(n)));
                        writes.push(Write::Record {
                            key,
                            record: Box::new(record),
                            body: BodyRef::Pending(n),
                            old: present(old),
                        });
                    }
                    Op::PutSealed { mut record, body } => {
                        let key = record.id.as_str().as_bytes().to_vec();
                        let old = self.slot(plan, &slots, &key)?;
                        if matches!(old, Slot::Absent) {
                            delta += 1;
                        }
                        let loc = body.location();
                        record.body = loc;
                        plan.sealed.push(body);
                        puts.push((record.clone(), usize::MAX));
                        slots.insert(key.clone(), Slot::Present(BodyRef::Stored(loc)));
                        writes.push(Write::Record {
                            key,
                            record: Box::new(record),
                            body: BodyRef::Stored(loc),
                            old: present(old),
                        });
                    }
                    Op::Update { record } => {
                        let key = record.id.as_str().as_bytes().to_vec();
                        match self.slot(plan, &slots, &key)? {
                            Slot::Present(b) => {
                                writes.push(Write::Record { key, record: Box::new(record), body: b, old: Some(b) });
                            }
                            Slot::Absent => return Err(SpoolError::NotFound(record.id)),
                            Slot::Undecodable => {
                                return Err(SpoolError::Corrupt {
                                    key: record.id.to_string(),
                                    reason: "stored record cannot be decoded; not updated".into(),
                                })
                            }
                        }
                    }
                    Op::Remove { id } => {
                        let key = id.as_str().as_bytes().to_vec();
                        let old = self.slot(plan, &slots, &key)?;
                        if !matches!(old, Slot::Absent) {
                            delta -= 1;
                            slots.insert(key.clone(), Slot::Absent);
                            writes.push(Write::RemoveRecord { key, old: present(old) });
                        }
                    }
                    Op::AuxPut { key, value } => writes.push(Write::AuxPut { key, value }),
                    Op::AuxRemove { key } => writes.push(Write::AuxRemove { key }),
                    Op::AuxJoin { prefix, order, item } => joins.push((prefix, order, item)),
                    Op::OutboxAppend { value } => {
                        if value.is_empty() {
                            continue;
                        }
                        // Make room first: the outbox never holds more than its bound after a round.
                        append_bytes += value.len() as u64 + 1;
                        let projected = i128::from(self.shared.outbox.bytes())
                            + plan.outbox.net_bytes()
                            + outbox.net_bytes()
                            + i128::from(plan.outbox_append_bytes)
                            + i128::from(append_bytes);
                        let limit = self.shared.outbox.limit();
                        if projected > i128::from(limit) {
                            let excess = u64::try_from(projected - i128::from(limit)).unwrap_or(u64::MAX);
                            // Free a sixteenth of the bound beyond the excess, so a full outbox is not
                            // trimmed (a scan of the tree) on every append.
                            let want = excess.saturating_add(limit / 16);
                            removed_through = self.drop_oldest(removed_through, want, &mut outbox, &mut writes)?;
                        }
                        appends.push(value);
                    }
                    Op::OutboxRemoveThrough { seq } => {
                        // Only the committer writes the tree, so what it holds now is what the round removes.
                        let start = removed_through.map_or(0, |s| s.saturating_add(1));
                        if start <= seq {
                            let index = self.shared.index()?;
                            for item in index.aux.range(outbox::key(start)..=outbox::key(seq)) {
                                let (k, v) = item.map_err(|e| SpoolError::sled("scan outbox", e))?;
                                outbox.removed += 1;
                                outbox.removed_bytes += v.len() as u64;
                                writes.push(Write::AuxRemove { key: k.to_vec() });
                            }
                            let next = index
                                .aux
                                .range(outbox::key(seq.saturating_add(1))..)
                                .next()
                                .transpose()
                                .map_err(|e| SpoolError::sled("scan outbox", e))?
                                .and_then(|(k, _)| outbox::seq_of(&k));
                            outbox.oldest_after_removal = Some(next.unwrap_or(u64::MAX));
                            removed_through = Some(seq);
                        }
                    }
                }
            }
            Ok(())
        })();
        match result {
            Ok(()) => {
                plan.outbox.merge(outbox);
                plan.outbox_removed_through = removed_through;
                plan.outbox_appends.extend(appends);
                plan.outbox_append_bytes += append_bytes;
                plan.joins.extend(joins);
                plan.slots.extend(slots);
                plan.writes.extend(writes);
                plan.record_delta += delta;
                Ok(puts)
            }
            Err(e) => {
                plan.bodies.truncate(bodies_before);
                plan.sealed.truncate(sealed_before);
                Err(e)
            }
        }
    }

    /// The state of record `key`: this request's writes, then this round's, then the index.
    fn slot(&self, plan: &Plan, slots: &HashMap<Vec<u8>, Slot>, key: &[u8]) -> Result<Slot, SpoolError> {
        if let Some(s) = slots.get(key).or_else(|| plan.slots.get(key)) {
            return Ok(*s);
        }
        let stored = self.shared.index()?.records.get(key).map_err(|e| SpoolError::sled("read record", e))?;
        Ok(match stored {
            None => Slot::Absent,
            Some(v) => match MessageRecord::decode(&v) {
                Ok(r) => Slot::Present(BodyRef::Stored(r.body)),
                Err(_) => Slot::Undecodable,
            },
        })
    }

    /// Steps 2–5 of a round; returns the locations of the appended bodies.
    fn execute(&mut self, plan: &mut Plan) -> Result<Vec<BodyLocation>, SpoolError> {
        let shared = Arc::clone(&self.shared);
        let segments = &shared.segments;
        // Small bodies go inline into the index (same transaction, same fsync); only large ones take a segment
        // append and its own fdatasync, so a round of ordinary mail costs one sync.
        let mut locations = vec![BodyLocation::default(); plan.bodies.len()];
        let mut large = Vec::new();
        let mut large_at = Vec::new();
        for (i, (id, body)) in plan.bodies.iter().enumerate() {
            if body.len() <= INLINE_MAX {
                locations[i] = BodyLocation {
                    segment: INLINE_SEGMENT,
                    offset: 0,
                    len: body.len() as u64,
                    crc32: crc32fast::hash(body),
                };
            } else {
                large.push((id.clone(), body.clone()));
                large_at.push(i);
            }
        }
        if !large.is_empty() {
            let appended = segments.append(&mut self.writer, &large)?;
            segments.sync(&self.writer).map_err(|e| self.poison(e))?;
            for (i, loc) in large_at.into_iter().zip(appended) {
                locations[i] = loc;
            }
        }
        let resolve = |b: BodyRef| match b {
            BodyRef::Stored(loc) => loc,
            BodyRef::Pending(i) => locations.get(i).copied().unwrap_or_default(),
        };
        let mut added = Vec::new();
        let mut removed = Vec::new();
        // Inline body writes, in the order of the record writes they belong to.
        let mut body_ops: Vec<(&[u8], Option<&[u8]>)> = Vec::new();
        let mut aux_ops: Vec<(&[u8], Option<&[u8]>)> = Vec::new();
        // Writes are replayed in order inside the transaction; keep them as one ordered list per tree.
        let mut record_ops: Vec<(&[u8], Option<Vec<u8>>)> = Vec::new();
        for w in &mut plan.writes {
            match w {
                Write::Record { key, record, body, old } => {
                    let loc = resolve(*body);
                    record.body = loc;
                    added.push(loc.segment);
                    if let Some(o) = old {
                        let o = resolve(*o);
                        removed.push(o.segment);
                        if o.segment == INLINE_SEGMENT && loc.segment != INLINE_SEGMENT {
                            body_ops.push((key.as_slice(), None));
                        }
                    }
                    if let (BodyRef::Pending(i), INLINE_SEGMENT) = (*body, loc.segment) {
                        if let Some((_, bytes)) = plan.bodies.get(i) {
                            body_ops.push((key.as_slice(), Some(bytes.as_ref())));
                        }
                    }
                    record_ops.push((key.as_slice(), Some(record.encode())));
                }
                Write::RemoveRecord { key, old } => {
                    if let Some(o) = old {
                        let o = resolve(*o);
                        removed.push(o.segment);
                        if o.segment == INLINE_SEGMENT {
                            body_ops.push((key.as_slice(), None));
                        }
                    }
                    record_ops.push((key.as_slice(), None));
                }
                Write::AuxPut { key, value } => aux_ops.push((key.as_slice(), Some(value.as_slice()))),
                Write::AuxRemove { key } => aux_ops.push((key.as_slice(), None)),
            }
        }
        let index = shared.index()?;
        let tx: Result<(), TransactionError<()>> =
            (&index.records, &index.aux, &index.bodies).transaction(|(records, aux, bodies)| {
                // One transaction: a record is never durable without the inline bytes it points at.
                for (key, value) in &body_ops {
                    match value {
                        Some(v) => bodies.insert(*key, *v)?,
                        None => bodies.remove(*key)?,
                    };
                }
                for (key, value) in &record_ops {
                    match value {
                        Some(v) => records.insert(*key, v.as_slice())?,
                        None => records.remove(*key)?,
                    };
                }
                for (key, value) in &aux_ops {
                    match value {
                        Some(v) => aux.insert(*key, *v)?,
                        None => aux.remove(*key)?,
                    };
                }
                Ok::<(), ConflictableTransactionError<()>>(())
            });
        match tx {
            Ok(()) => {}
            Err(TransactionError::Storage(e)) => return Err(self.poison(SpoolError::sled("apply round to index", e))),
            Err(TransactionError::Abort(())) => {
                return Err(self.poison(SpoolError::Poisoned("index transaction aborted".into())))
            }
        }
        index.flush_durable().map_err(|e| self.poison(e))?;
        added.retain(|s| *s != 0 && *s != INLINE_SEGMENT);
        removed.retain(|s| *s != 0 && *s != INLINE_SEGMENT);
        segments.adjust_live(&added, &removed);
        Ok(locations)
    }

    /// Remember a durability failure; every later write is refused.
    fn poison(&mut self, e: SpoolError) -> SpoolError {
        tracing::error!(error = %e, "spool durability failure: refusing further writes until restart");
        self.poisoned.get_or_insert_with(|| e.to_string());
        e
    }
}

/// The body of a slot that holds a decodable record.
fn present(slot: Slot) -> Option<BodyRef> {
    match slot {
        Slot::Present(b) => Some(b),
        _ => None,
    }
}
