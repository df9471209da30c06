//! The delivery event log: one JSON object per line per recipient, written off the async runtime.
//!
//! Writers hand events to a bounded channel (so a stalled disk slows producers instead of growing memory); one
//! thread owns the file, batches writes and reopens the file on request (SIGHUP, for log rotation).

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use serde::Serialize;
use tokio::sync::{broadcast, mpsc};

/// What happened to one recipient.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
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
}

/// One line of the event log.
#[derive(Debug, Clone, Serialize)]
pub struct Event {
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

/// Handle to the event log; cheap to clone.
#[derive(Clone)]
pub struct EventLog {
    tx: Option<mpsc::Sender<Command>>,
    subscribers: broadcast::Sender<Event>,
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
            return Ok(EventLog { tx: None, subscribers });
        };
        let path = path.to_path_buf();
        let file = open_append(&path)?;
        let (tx, rx) = mpsc::channel(8192);
        std::thread::Builder::new().name("mta-event-log".into()).spawn(move || writer(path, file, rx))?;
        Ok(EventLog { tx: Some(tx), subscribers })
    }

    /// Record events (waits when the writer is behind; never drops).
    pub async fn emit(&self, events: Vec<Event>) {
        if events.is_empty() {
            return;
        }
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
