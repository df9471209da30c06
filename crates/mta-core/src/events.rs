//! The delivery event log: one JSON object per line per recipient, written off the async runtime.
//!
//! Writers hand events to a bounded channel (so a stalled disk slows producers instead of growing memory); one
//! thread owns the file, batches writes and reopens the file on request (SIGHUP, for log rotation).
//!
//! Every event has an [`Event::event_id`] derived from what it reports (queue id, recipient, type, attempt),
//! so a retried export or a state change recorded again after a crash carries the same id: receivers
//! deduplicate on it. When exporters are configured, [`EventLog::outbox_ops`] turns the events a state change
//! produces into outbox entries committed with that change (see [`crate::export`]).

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Serialize;
use tokio::sync::{broadcast, mpsc};

use crate::throughput::Throughput;

/// What happened to one recipient.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventType {
    /// Accepted and durable in the spool.
    Reception,
    /// Accepted by the next hop.
    Delivery,
    /// Failed for now; a retry is scheduled.
    TransientFailure,
    /// Failed permanently; a DSN was queued unless the sender is null.
    Bounce,
    /// Still undelivered at `max_age`; bounced.
    Expiration,
    /// Refused at injection: the recipient is on the suppression list (never queued).
    Suppressed,
    /// A `[[response_rule]]` matched a reply: the site was suspended or throttled (`response` is the reply).
    ResponseRule,
}

impl EventType {
    /// Every type, in the order the docs list them.
    pub const ALL: [EventType; 7] = [
        EventType::Reception,
        EventType::Delivery,
        EventType::TransientFailure,
        EventType::Bounce,
        EventType::Expiration,
        EventType::Suppressed,
        EventType::ResponseRule,
    ];

    /// The name used in JSON and config (`"transient_failure"`).
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Reception => "reception",
            EventType::Delivery => "delivery",
            EventType::TransientFailure => "transient_failure",
            EventType::Bounce => "bounce",
            EventType::Expiration => "expiration",
            EventType::Suppressed => "suppressed",
            EventType::ResponseRule => "response_rule",
        }
    }

    /// The type named `name`, if any.
    pub fn parse(name: &str) -> Option<EventType> {
        EventType::ALL.into_iter().find(|t| t.as_str() == name)
    }

    fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

/// A set of event types (which ones an exporter wants).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EventTypes(u8);

impl EventTypes {
    /// No type.
    pub const NONE: EventTypes = EventTypes(0);

    /// Every type.
    pub fn all() -> EventTypes {
        EventType::ALL.into_iter().collect()
    }

    /// True when `t` is in the set.
    pub fn contains(self, t: EventType) -> bool {
        self.0 & t.bit() != 0
    }

    /// True when no type is in the set.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The union of both sets.
    pub fn union(self, other: EventTypes) -> EventTypes {
        EventTypes(self.0 | other.0)
    }
}

impl FromIterator<EventType> for EventTypes {
    fn from_iter<I: IntoIterator<Item = EventType>>(iter: I) -> Self {
        EventTypes(iter.into_iter().fold(0, |acc, t| acc | t.bit()))
    }
}

/// The stable id of the event of type `kind` for recipient number `index` (`address`) of message `queue_id`
/// after `attempts` attempts: the same inputs give the same id, so a retried or re-recorded event keeps it.
/// 32 hex digits (128 bits of SHA-256).
pub fn event_id(queue_id: &str, index: usize, address: &str, kind: EventType, attempts: u32) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    // Fields separated by NUL: none of them can contain one, so distinct inputs never collide by concatenation.
    for part in [queue_id.as_bytes(), index.to_string().as_bytes(), address.as_bytes(), kind.as_str().as_bytes()] {
        h.update(part);
        h.update([0]);
    }
    h.update(attempts.to_be_bytes());
    hex::encode(&h.finalize()[..16])
}

/// One line of the event log.
#[derive(Debug, Clone, Serialize)]
pub struct Event {
    /// Stable id of this event (see [`event_id`]): receivers deduplicate on it.
    pub event_id: String,
    /// Event type.
    #[serde(rename = "type")]
    pub kind: EventType,
    /// Queue id.
    pub id: String,
    /// Envelope sender (empty for `<>`).
    pub sender: String,
    /// Recipient address.
    pub recipient: String,
    /// Destination domain.
    pub domain: String,
    /// RFC 3339 UTC time.
    pub timestamp: String,
    /// The reply that decided it (our own for receptions).
    pub response: crate::Response,
    /// The MX host involved, if any.
    pub mx: Option<String>,
    /// Tenant of the message.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// How the message arrived (receptions) or attempt number (deliveries).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// Attempts made so far for this recipient.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attempts: Option<u32>,
    /// The bounce class of the response (`bounce`, `transient_failure` and `expiration` events).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bounce_class: Option<crate::bounce::BounceClass>,
    /// The TLS policy of the session and what came of it (`delivery`, `transient_failure`, `bounce`): present
    /// when a connection was made or a TLS policy refused the attempt before connecting.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<crate::tls_policy::TlsSession>,
}

/// `ms` since the epoch as RFC 3339 UTC with milliseconds.
pub fn rfc3339_from_ms(ms: u64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    let fmt = time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z");
    t.format(&fmt).unwrap_or_default()
}

/// Current UTC time in RFC 3339 with milliseconds.
pub fn now_rfc3339() -> String {
    let now = time::OffsetDateTime::now_utc();
    let fmt = time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z");
    now.format(&fmt).unwrap_or_default()
}

enum Command {
    Write(Vec<Event>),
    Reopen,
}

/// Events per outbox append at most. With [`OUTBOX_ENTRY_BYTES`] this bounds one append, and so the size of
/// an outbox entry (the spool joins a round's appends into entries of up to 256 KiB; an append never splits).
const OUTBOX_ENTRY_EVENTS: usize = 256;
/// An outbox append is closed once it holds this many bytes.
const OUTBOX_ENTRY_BYTES: usize = 64 << 10;

/// Handle to the event log; cheap to clone.
#[derive(Clone)]
pub struct EventLog {
    tx: Option<mpsc::Sender<Command>>,
    subscribers: broadcast::Sender<Event>,
    /// Types some exporter wants: those go to the outbox with the state change they report.
    exported: EventTypes,
    /// Per-minute counts of every event emitted (the console's time series).
    throughput: Arc<Throughput>,
}

impl std::fmt::Debug for EventLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventLog").field("file", &self.tx.is_some()).finish()
    }
}

impl EventLog {
    /// An event log appending to `path` (created with its parent directory), or only in-process subscribers
    /// when `path` is `None`.
    pub fn open(path: Option<&Path>) -> std::io::Result<EventLog> {
        let (subscribers, _) = broadcast::channel(4096);
        let Some(path) = path else {
            return Ok(EventLog { tx: None, subscribers, exported: EventTypes::NONE, throughput: Arc::default() });
        };
        let path = path.to_path_buf();
        let file = open_append(&path)?;
        let (tx, rx) = mpsc::channel(8192);
        std::thread::Builder::new().name("mta-event-log".into()).spawn(move || writer(path, file, rx))?;
        Ok(EventLog { tx: Some(tx), subscribers, exported: EventTypes::NONE, throughput: Arc::default() })
    }

    /// The same log, also writing events of the `exported` types to the outbox (through
    /// [`EventLog::outbox_ops`]).
    pub fn with_exported(mut self, exported: EventTypes) -> EventLog {
        self.exported = exported;
        self
    }

    /// Outbox entries for the events some exporter wants: commit them with the state change they report.
    /// The events go as JSON lines in as few appends as the caps allow (the spool joins a round's appends
    /// into one entry: the outbox's cost on the commit path is one insert per round, not one per event).
    pub fn outbox_ops(&self, events: &[Event]) -> Vec<mta_spool::Op> {
        if self.exported.is_empty() {
            return Vec::new();
        }
        let mut ops = Vec::new();
        let mut value = Vec::new();
        let mut in_value = 0usize;
        for e in events.iter().filter(|e| self.exported.contains(e.kind)) {
            if in_value > 0 && (in_value >= OUTBOX_ENTRY_EVENTS || value.len() >= OUTBOX_ENTRY_BYTES) {
                ops.push(mta_spool::Op::OutboxAppend { value: std::mem::take(&mut value) });
                in_value = 0;
            }
            let mark = value.len();
            if in_value > 0 {
                value.push(b'\n');
            }
            // An event that cannot be serialized (never expected) reaches the event log only.
            if serde_json::to_writer(&mut value, e).is_ok() {
                in_value += 1;
            } else {
                value.truncate(mark);
            }
        }
        if in_value > 0 {
            ops.push(mta_spool::Op::OutboxAppend { value });
        }
        ops
    }

    /// Record events that report no spool state change of their own (a refused recipient, a response rule's
    /// action): their outbox entries are committed alone first, so exporters get them as durably as any other.
    pub async fn emit_standalone(&self, spool: &mta_spool::Spool, events: Vec<Event>) {
        let ops = self.outbox_ops(&events);
        if !ops.is_empty() {
            if let Err(e) = spool.commit(ops).await {
                tracing::warn!(error = %e, "cannot write events to the outbox; they reach the event log only");
            }
        }
        self.emit(events).await;
    }

    /// Record events (waits when the writer is behind; never drops).
    pub async fn emit(&self, events: Vec<Event>) {
        if events.is_empty() {
            return;
        }
        self.throughput.record(events.iter().map(|e| (e.kind, e.bounce_class)));
        if self.subscribers.receiver_count() > 0 {
            for e in &events {
                let _ = self.subscribers.send(e.clone());
            }
        }
        if let Some(tx) = &self.tx {
            if tx.send(Command::Write(events)).await.is_err() {
                tracing::error!("event log writer is gone; events lost");
            }
        }
    }

    /// Reopen the file (after log rotation).
    pub async fn reopen(&self) {
        if let Some(tx) = &self.tx {
            let _ = tx.send(Command::Reopen).await;
        }
    }

    /// Per-minute counts of the events emitted over the last hour.
    pub fn throughput(&self) -> &Throughput {
        &self.throughput
    }

    /// Receive every event from now on (in-process subscribers, for embedders and tests). A slow subscriber
    /// misses events rather than slowing delivery.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.subscribers.subscribe()
    }
}

fn open_append(path: &PathBuf) -> std::io::Result<File> {
    if let Some(dir) = path.parent() {
        if !dir.as_os_str().is_empty() {
            std::fs::create_dir_all(dir)?;
        }
    }
    OpenOptions::new().create(true).append(true).open(path)
}

fn writer(path: PathBuf, file: File, mut rx: mpsc::Receiver<Command>) {
    let mut out = BufWriter::with_capacity(256 << 10, file);
    while let Some(cmd) = rx.blocking_recv() {
        let mut next = Some(cmd);
        // Drain what is queued so one write and one flush cover many events.
        while let Some(cmd) = next.take() {
            match cmd {
                Command::Write(events) => {
                    for e in events {
                        if let Ok(mut line) = serde_json::to_vec(&e) {
                            line.push(b'\n');
                            if let Err(err) = out.write_all(&line) {
                                tracing::error!(%err, "event log write failed");
                            }
                        }
                    }
                }
                Command::Reopen => {
                    let _ = out.flush();
                    match open_append(&path) {
                        Ok(f) => {
                            out = BufWriter::with_capacity(256 << 10, f);
                            tracing::info!(path = %path.display(), "event log reopened");
                        }
                        Err(err) => tracing::error!(%err, path = %path.display(), "event log reopen failed"),
                    }
                }
            }
            next = rx.try_recv().ok();
        }
        if let Err(err) = out.flush() {
            tracing::error!(%err, "event log flush failed");
        }
    }
    let _ = out.flush();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_ids_are_stable_and_distinct() {
        let a = event_id("q1", 0, "a@x", EventType::TransientFailure, 1);
        assert_eq!(a, event_id("q1", 0, "a@x", EventType::TransientFailure, 1));
        assert_eq!(a.len(), 32);
        for other in [
            event_id("q1", 0, "a@x", EventType::TransientFailure, 2),
            event_id("q1", 1, "a@x", EventType::TransientFailure, 1),
            event_id("q1", 0, "a@x", EventType::Bounce, 1),
            event_id("q2", 0, "a@x", EventType::TransientFailure, 1),
        ] {
            assert_ne!(a, other);
        }
    }

    fn reception(n: usize) -> Event {
        Event {
            event_id: event_id("q", n, "r@x", EventType::Reception, 0),
            kind: EventType::Reception,
            id: "q".into(),
            sender: "s@x".into(),
            recipient: format!("r{n}@x"),
            domain: "x".into(),
            timestamp: now_rfc3339(),
            response: crate::Response::local(250, (2, 0, 0), "queued"),
            mx: None,
            tenant: None,
            source: None,
            attempts: None,
            bounce_class: None,
            tls: None,
        }
    }

    #[test]
    fn a_commits_events_share_outbox_entries_within_their_caps() {
        let log = EventLog::open(None).unwrap();
        assert!(log.outbox_ops(&[reception(0)]).is_empty(), "nothing exported: nothing written");
        let log = log.with_exported([EventType::Reception].into_iter().collect());
        let events: Vec<Event> = (0..OUTBOX_ENTRY_EVENTS + 10).map(reception).collect();
        let ops = log.outbox_ops(&events);
        assert_eq!(ops.len(), 2, "one entry per {OUTBOX_ENTRY_EVENTS} events");
        let mut seen = 0;
        for op in &ops {
            let mta_spool::Op::OutboxAppend { value } = op else { panic!("not an append: {op:?}") };
            for (i, item) in mta_spool::outbox_items(value).enumerate() {
                let v: serde_json::Value = serde_json::from_slice(item).unwrap();
                assert_eq!(v["recipient"], format!("r{}@x", seen + i));
            }
            seen += mta_spool::outbox_items_in(value) as usize;
        }
        assert_eq!(seen, events.len());
        let other = log.with_exported([EventType::Bounce].into_iter().collect());
        assert!(other.outbox_ops(&events).is_empty(), "only the types some endpoint wants");
    }

    #[test]
    fn type_names_round_trip() {
        for t in EventType::ALL {
            assert_eq!(EventType::parse(t.as_str()), Some(t));
            assert_eq!(serde_json::to_value(t).unwrap(), t.as_str());
        }
        let set: EventTypes = [EventType::Bounce].into_iter().collect();
        assert!(set.contains(EventType::Bounce) && !set.contains(EventType::Delivery));
        assert!(EventTypes::all().contains(EventType::Expiration));
    }
}
