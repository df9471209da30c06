//! The recorder: owns result recording. Recipient states and the domain's schedule are updated through the
//! spool's group commit, a DSN written in the same round as the failure it reports, then events go out, then
//! the scheduler learns: gone, or scheduled again at the next retry time.
//!
//! Order matters for the invariant "a message is in the spool until each recipient is delivered or bounced":
//! the DSN and the new states become durable together, and only after that do events go out and memory forget.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use mta_spool::{MessageKind, MessageRecord, Op, Priority, QueueId, RecipientState};

use mta_spool::Spool;

use super::clock::Clock;
use super::dsn::{build_dsn, FailedRecipient};
use super::scheduler::{State, Work};
use super::timers::Timers;
use super::DeliveryConfig;
use crate::events::EventLog;
use crate::events::{event_id, now_rfc3339, Event, EventType};
use crate::tls_policy::TlsSession;
use crate::Response;

/// What happened to a recipient.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Delivered,
    Transient,
    Permanent,
    Expired,
}

/// An outcome with the response that decided it.
#[derive(Debug, Clone)]
pub(crate) struct Outcome {
    pub(crate) kind: Kind,
    pub(crate) response: Response,
    /// The session's TLS policy and result, for the event (`None`: no connection and no policy refusal).
    pub(crate) tls: Option<TlsSession>,
}

impl Outcome {
    pub(crate) fn transient(response: Response) -> Outcome {
        Outcome { kind: Kind::Transient, response, tls: None }
    }
    pub(crate) fn permanent(response: Response) -> Outcome {
        Outcome { kind: Kind::Permanent, response, tls: None }
    }
    pub(crate) fn delivered(response: Response) -> Outcome {
        Outcome { kind: Kind::Delivered, response, tls: None }
    }
    /// Past `max_age`: bounced with `4.4.7` (RFC 3463 "delivery time expired").
    pub(crate) fn expired(text: String) -> Outcome {
        Outcome { kind: Kind::Expired, response: Response::local(451, (4, 4, 7), text), tls: None }
    }
    /// The same outcome, reached in a session with this TLS.
    pub(crate) fn with_tls(mut self, tls: Option<TlsSession>) -> Outcome {
        self.tls = tls;
        self
    }
}

/// Outcomes of one attempt at one (message, domain).
#[derive(Debug, Clone)]
pub(crate) enum Outcomes {
    /// Every pending recipient of the domain.
    All(Outcome),
    /// Per recipient address.
    Each(Vec<(String, Outcome)>),
}

/// Makes outcomes durable, then tells events and the scheduler.
pub(crate) struct Recorder {
    spool: Spool,
    events: EventLog,
    timers: Arc<Timers>,
    cfg: Arc<DeliveryConfig>,
    hostname: String,
    clock: Clock,
    /// Serialises recording per message (several domains of one message may finish at once).
    stripes: Vec<tokio::sync::Mutex<()>>,
    /// Recordings started in the background (expiry, DNS failures) and not finished: stop waits for them so
    /// none reaches a closed spool.
    background: AtomicUsize,
    /// Stopping: no new background recording starts (the work stays queued in the spool).
    closed: AtomicBool,
}

impl Recorder {
    /// The stripe lock of message `id` (by its id, so that writers outside delivery can take the same lock).
    fn stripe_of(&self, id: &QueueId) -> usize {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        id.as_str().hash(&mut h);
        (h.finish() as usize) % self.stripes.len()
    }

    /// Hold the recording locks of every message in `ids` (taken in stripe order, so two holders never
    /// deadlock; recording takes one at a time): a read-modify-write of those records made meanwhile (a queue
    /// transfer taking recipients away) cannot interleave with a delivery result, a DNS failure or an expiry.
    pub(crate) async fn hold<'a>(
        &'a self,
        ids: impl Iterator<Item = &QueueId>,
    ) -> Vec<tokio::sync::MutexGuard<'a, ()>> {
        let mut stripes: Vec<usize> = ids.map(|id| self.stripe_of(id)).collect();
        stripes.sort_unstable();
        stripes.dedup();
        let mut guards = Vec::with_capacity(stripes.len());
        for s in stripes {
            guards.push(self.stripes[s].lock().await);
        }
        guards
    }

    /// A recorder writing to `spool` and `events`, rescheduling on `timers`.
    pub(crate) fn new(
        spool: Spool,
        events: EventLog,
        timers: Arc<Timers>,
        cfg: Arc<DeliveryConfig>,
        hostname: String,
        clock: Clock,
    ) -> Recorder {
        let stripes = (0..1024).map(|_| tokio::sync::Mutex::new(())).collect();
        Recorder {
            spool,
            events,
            timers,
            cfg,
            hostname,
            clock,
            stripes,
            background: AtomicUsize::new(0),
            closed: AtomicBool::new(false),
        }
    }

    /// Expire `w` (past `max_age`): bounce its pending recipients with an `expiration` event and a DSN.
    pub(crate) fn expire(self: &Arc<Self>, w: Work, from: State) {
        let outcome = Outcome::expired("Message expired: not delivered within the maximum queue lifetime".into());
        self.in_background(w, from, outcome);
    }

    /// Record an outcome decided without a connection (DNS, routing).
    pub(crate) fn finish_without_connection(self: &Arc<Self>, w: Work, from: State, outcome: Outcome) {
        self.in_background(w, from, outcome);
    }

    /// Record `outcome` for every pending recipient of `w` in a task of its own, counted until it is done;
    /// once stopping, nothing starts (the pair stays in the spool for the next start).
    fn in_background(self: &Arc<Self>, w: Work, from: State, outcome: Outcome) {
        // Counted before the check, with `close` setting the flag before it reads the count: either `close`
        // sees this recording and waits for it, or this sees the flag and does not start.
        self.background.fetch_add(1, Ordering::SeqCst);
        if self.closed.load(Ordering::SeqCst) {
            self.background.fetch_sub(1, Ordering::SeqCst);
            return;
        }
        let this = self.clone();
        tokio::spawn(async move {
            this.record(w, from, Outcomes::All(outcome), None, None).await;
            this.background.fetch_sub(1, Ordering::SeqCst);
        });
    }

    /// Emit events that change no stored state (a `[[response_rule]]` action).
    /// Events that report no spool state change of their own (a response rule's action).
    pub(crate) async fn emit(&self, events: Vec<Event>) {
        self.events.emit_standalone(&self.spool, events).await;
    }

    /// Stop starting background recordings.
    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
    }

    /// Background recordings still running.
    pub(crate) fn in_progress(&self) -> usize {
        self.background.load(Ordering::SeqCst)
    }

    /// Apply `outcomes` to the message of `w`, durably, then update events and queues. `known` is the
    /// message's current record when the caller holds it (a message with one destination: no concurrent
    /// writer), saving a read.
    pub(crate) async fn record(
        &self,
        w: Work,
        from: State,
        outcomes: Outcomes,
        mx: Option<String>,
        known: Option<MessageRecord>,
    ) {
        let (id, domain) = self.timers.names(&w);
        let Some(id) = id else {
            self.timers.leave(&w, from);
            return;
        };
        let guard = self.stripes[self.stripe_of(&id)].lock().await;
        let fetched = match known {
            Some(r) => Ok(Some(r)),
            None => self.spool.get(&id).await,
        };
        let mut rec = match fetched {
            Ok(Some(r)) => r,
            Ok(None) => {
                self.timers.leave(&w, from);
                return;
            }
            Err(e) => {
                tracing::error!(%id, error = %e, "cannot read record to store a delivery result; retrying later");
                self.timers.reschedule(w, from, self.clock.now_ms() + 60_000);
                return;
            }
        };
        let now = self.clock.now_ms();
        let max_age = self.cfg.max_age.as_millis() as u64;
        let too_old = now.saturating_sub(rec.received_at_ms) >= max_age;
        let timestamp = now_rfc3339();
        let mut events = Vec::new();
        let mut failed = Vec::new();
        let mut suppress = Vec::new();
        let mut any_transient = false;
        let mut attempted = false;
        let mut expired_any = false;
        // An expiry sweep is not an attempt: attempts count only real tries.
        let is_expiry = matches!(&outcomes, Outcomes::All(o) if o.kind == Kind::Expired);
        for (index, r) in
            rec.recipients.iter_mut().enumerate().filter(|(_, r)| *r.domain == *domain && !r.state.is_final())
        {
            let found = match &outcomes {
                Outcomes::All(o) => Some(o.clone()),
                Outcomes::Each(list) => list.iter().find(|(a, _)| *a == r.address).map(|(_, o)| o.clone()),
            };
            let Some(mut o) = found else { continue };
            if o.kind == Kind::Transient && too_old {
                o = Outcome::expired(format!("Message expired; last error: {}", o.response));
            }
            if !is_expiry {
                r.attempts += 1;
                attempted = true;
            }
            r.last_reply = Some(o.response.to_string());
            let class = (o.kind != Kind::Delivered).then(|| self.cfg.classifier.classify(&o.response));
            let kind = match o.kind {
                Kind::Delivered => {
                    r.state = RecipientState::Delivered;
                    EventType::Delivery
                }
                Kind::Transient => {
                    r.state = RecipientState::Deferred;
                    any_transient = true;
                    EventType::TransientFailure
                }
                Kind::Permanent => {
                    r.state = RecipientState::Bounced;
                    if class.is_some_and(|c| self.cfg.auto_suppress.contains(&c)) {
                        suppress.push(crate::suppression::Entry::new(
                            r.address.clone(),
                            crate::suppression::Reason::HardBounce,
                            rec.tenant.clone(),
                        ));
                    }
                    failed.push(FailedRecipient {
                        address: r.address.clone(),
                        response: o.response.clone(),
                        remote_mta: mx.clone(),
                        bounce_class: class,
                    });
                    EventType::Bounce
                }
                Kind::Expired => {
                    r.state = RecipientState::Bounced;
                    expired_any = true;
                    failed.push(FailedRecipient {
                        address: r.address.clone(),
                        response: o.response.clone(),
                        remote_mta: None,
                        bounce_class: class,
                    });
                    EventType::Expiration
                }
            };
            metrics::counter!("mta_delivery_results_total", "result" => event_label(kind)).increment(1);
            events.push(Event {
                event_id: event_id(id.as_str(), index, &r.address, kind, r.attempts),
                kind,
                id: id.to_string(),
                sender: rec.sender.clone(),
                recipient: r.address.clone(),
                domain: r.domain.clone(),
                timestamp: timestamp.clone(),
                response: o.response,
                mx: mx.clone(),
                tenant: rec.tenant.clone(),
                source: None,
                attempts: Some(r.attempts),
                bounce_class: class,
                tls: o.tls,
            });
        }
        let mut next_due = None;
        let expires_at = rec.received_at_ms.saturating_add(max_age);
        if let Some(schedule) = rec.schedule_mut(&domain) {
            if attempted {
                schedule.attempts += 1;
                schedule.last_attempt_ms = Some(now);
            }
            if any_transient {
                let delay = self.cfg.retry_delay(schedule.attempts.max(1)).as_millis() as u64;
                let due = (now + delay).min(expires_at);
                schedule.next_attempt_ms = due;
                next_due = Some(due);
            }
        }

        let mut ops = Vec::with_capacity(2);
        let mut dsn = None;
        if !failed.is_empty() && !rec.sender.is_empty() && rec.kind != MessageKind::Dsn {
            let original = self.spool.read_body(&rec).await.unwrap_or_default();
            let arrival = crate::reception::rfc5322_from_ms(rec.received_at_ms);
            let bytes = build_dsn(&self.hostname, id.as_str(), &rec.sender, &arrival, &failed, &original, expired_any);
            let mut d = MessageRecord::new(self.spool.next_id(), "", std::slice::from_ref(&rec.sender), now);
            d.kind = MessageKind::Dsn;
            d.priority = Priority::Transactional;
            d.tenant = rec.tenant.clone();
            d.source.protocol = "dsn".into();
            ops.push(Op::Put { record: d.clone(), body: bytes.into() });
            dsn = Some(d);
        }
        let mut history_bytes = 0;
        if rec.is_done() {
            // The final outcomes outlive the record: written in the same commit that removes it.
            if let Some(history) = self.cfg.history.as_ref().filter(|h| h.keeps_any()) {
                let entry = crate::history::HistoryRecord::of(&rec, now, &self.cfg.classifier);
                let (history_ops, bytes) = history.record_ops(&entry);
                ops.extend(history_ops);
                history_bytes = bytes;
            }
            ops.push(Op::Remove { id: id.clone() });
        } else {
            ops.push(Op::Update { record: rec });
        }
        // The exported events become durable with the states they report: neither exists without the other.
        ops.extend(self.events.outbox_ops(&events));
        // So do the suppression entries the bounces add.
        let list = self.cfg.suppressions.as_ref().filter(|_| !suppress.is_empty());
        if let Some(list) = list {
            ops.extend(suppress.iter().filter_map(|e| list.op_for(e).ok()));
        }
        if let Err(e) = self.spool.commit(ops).await {
            tracing::error!(%id, error = %e, "cannot store delivery result; the attempt will be repeated");
            self.timers.reschedule(w, from, self.clock.now_ms() + 60_000);
            return;
        }
        if let (Some(history), true) = (&self.cfg.history, history_bytes > 0) {
            history.added(history_bytes);
        }
        // Durable: other domains of this message may record theirs while events go out.
        drop(guard);
        if let Some(list) = list {
            for e in &suppress {
                list.note_stored(e);
            }
        }
        self.events.emit(events).await;
        match next_due {
            Some(due) => self.timers.reschedule(w, from, due),
            None => self.timers.leave(&w, from),
        }
        if let Some(d) = dsn {
            metrics::counter!("mta_dsn_generated_total").increment(1);
            self.timers.enqueue_record(&d);
        }
    }
}

fn event_label(kind: EventType) -> &'static str {
    match kind {
        EventType::Reception => "reception",
        EventType::Delivery => "delivered",
        EventType::TransientFailure => "transient",
        EventType::Bounce => "bounced",
        EventType::Expiration => "expired",
        EventType::Suppressed => "suppressed",
        EventType::ResponseRule => "response_rule",
    }
}

#[cfg(test)]
mod hold_tests {
    use super::*;

    fn recorder(dir: &std::path::Path) -> Recorder {
        let spool = Spool::open(mta_spool::SpoolConfig::new(dir, "t")).unwrap();
        let cfg = Arc::new(DeliveryConfig::default());
        let timers = Arc::new(Timers::new(false, std::iter::empty()));
        Recorder::new(spool, EventLog::open(None).unwrap(), timers, cfg, "h".into(), Clock::System)
    }

    #[tokio::test]
    async fn a_hold_excludes_recording_of_the_same_message_and_overlapping_holds_do_not_deadlock() {
        let dir = tempfile::tempdir().unwrap();
        let r = Arc::new(recorder(dir.path()));
        let ids: Vec<QueueId> = (0..200).map(|i| QueueId::parse(&format!("{i:014x}.n")).unwrap()).collect();
        let held = r.hold(ids.iter()).await;
        // The same message's stripe is busy while held.
        let stripe = r.stripe_of(&ids[7]);
        assert!(r.stripes[stripe].try_lock().is_err());
        drop(held);
        assert!(r.stripes[stripe].try_lock().is_ok());
        // Two holders over overlapping sets in opposite orders both finish (stripes are taken in order).
        let (a, b) = (r.clone(), r.clone());
        let (ia, ib): (Vec<QueueId>, Vec<QueueId>) = (ids[..150].to_vec(), ids[50..].iter().rev().cloned().collect());
        let run = |r: Arc<Recorder>, ids: Vec<QueueId>| async move {
            for _ in 0..50 {
                let _g = r.hold(ids.iter()).await;
                tokio::task::yield_now().await;
            }
        };
        let both = futures::future::join(tokio::spawn(run(a, ia)), tokio::spawn(run(b, ib)));
        let (x, y) = tokio::time::timeout(std::time::Duration::from_secs(20), both).await.expect("no deadlock");
        x.unwrap();
        y.unwrap();
    }
}
