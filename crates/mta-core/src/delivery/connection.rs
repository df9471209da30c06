//! One outbound connection: connect with MX failover, then carry messages from the site's ready queue until
//! the queue is empty, the per-connection limit is reached, the peer fails, or we are stopping.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use mta_smtp::client::{Connection, Envelope, RecipientOutcome, Stage};
use mta_smtp::Reply;
use mta_spool::Fetched;

use super::results::{record, record_known, Outcome, Outcomes};
use super::runtime::Shared;
use super::scheduler::{State, Work};
use super::site::SiteKey;
use crate::Response;

/// Whether the connection can carry another message.
enum Next {
    Continue,
    Close,
}

/// Where a recipient's final reply came from: the content's reply when it is that one, else its `RCPT`.
fn outcome_stage(o: &RecipientOutcome, data_reply: Option<&Reply>) -> Stage {
    if o.is_delivered() || data_reply.is_some_and(|d| d == o.reply()) {
        Stage::DataTerm
    } else {
        Stage::Rcpt
    }
}

async fn connect(shared: &Arc<Shared>, key: &SiteKey) -> Result<(Connection, String), Response> {
    let hops = match shared.sites.lock().get(key) {
        Some(site) => site.hops.clone(),
        None => return Err(Response::local(451, (4, 4, 1), "site vanished")),
    };
    let mut client = shared.client.clone();
    client.source_address = key.source.or(client.source_address);
    let mut last = Response::local(451, (4, 4, 1), "no next hop");
    for (name, addr) in hops.targets() {
        match Connection::connect(addr, name, &client).await {
            Ok(conn) => {
                metrics::counter!("mta_delivery_connections_opened_total").increment(1);
                return Ok((conn, name.to_string()));
            }
            Err(e) => {
                tracing::debug!(mx = name, %addr, error = %e, "connection failed; trying the next address");
                last = Response::from_error(&e);
                if last.origin == crate::Origin::Local {
                    last.text = format!("{name} [{addr}]: {}", last.text);
                }
            }
        }
    }
    Err(last)
}

/// Messages a connection reads from the spool in one blocking call (prefetch while it sends).
pub(crate) const PREFETCH: usize = 8;
/// Bodies prefetched per batch beyond the first, in bytes: what a connection may hold ahead of sending, outside
/// the in-flight memory budget (which covers the message on the wire), so large messages are read one at a time.
const PREFETCH_BODY_BYTES: u64 = 64 * 1024;
/// Results a connection may have in the spool's commit queue while it carries the next messages. In practice
/// a connection is at most a few results ahead (one commit round takes milliseconds); the cap bounds memory and,
/// after a crash, how many received-but-unrecorded 250s a connection can leave to be delivered again.
const MAX_RECORDING: usize = 32;

/// A message taken for this connection, with what the spool returned for it.
type Taken = (Work, Result<Option<Fetched>, mta_spool::SpoolError>);

/// Results being made durable in the background while the connection carries the next message, so a
/// connection's rate is not one commit round per message. The connection waits for all of them before it
/// counts as closed (graceful stop relies on that: every received 250 is recorded before exit).
#[derive(Default)]
struct Recording {
    tasks: VecDeque<tokio::task::JoinHandle<()>>,
}

impl Recording {
    async fn push(&mut self, task: tokio::task::JoinHandle<()>) {
        while self.tasks.front().is_some_and(|t| t.is_finished()) {
            self.tasks.pop_front();
        }
        if self.tasks.len() >= MAX_RECORDING {
            if let Some(oldest) = self.tasks.pop_front() {
                let _ = oldest.await;
            }
        }
        self.tasks.push_back(task);
    }

    async fn finish(self) {
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

/// Run one connection for the site `key`.
pub(crate) async fn run(shared: &Arc<Shared>, key: &SiteKey) {
    let (mut conn, mx) = match connect(shared, key).await {
        Ok(c) => {
            if let Some(site) = shared.sites.lock().get_mut(key) {
                site.connected();
            }
            c
        }
        Err(reason) => {
            // Every address failed: one pending message takes the attempt (so it moves toward expiry); the
            // circuit opens after repeated failures so the rest don't each wait out a connect timeout.
            let work = {
                let mut sites = shared.sites.lock();
                let Some(site) = sites.get_mut(key) else { return };
                site.connect_failed(Instant::now(), shared.cfg.circuit_threshold, shared.cfg.circuit_open_for);
                site.pop(Instant::now())
            };
            if let Some(w) = work {
                shared.sched.lock().transition(&w, State::Ready, State::InFlight);
                // A refusal (greeting, EHLO) keeps the server's reply; it is transient whatever its code.
                let outcome = Outcome::transient(reason);
                record(shared, w, State::InFlight, Outcomes::All(outcome), None).await;
            }
            return;
        }
    };
    let limit = shared.sites.lock().get(key).map(|s| s.limits.messages_per_connection).unwrap_or(1);
    let mut sent = 0usize;
    let mut taken: VecDeque<Taken> = VecDeque::new();
    let mut recording = Recording::default();
    let mut next = Next::Continue;
    while sent < limit && !shared.stopping.load(Ordering::Acquire) {
        if taken.is_empty() {
            let batch = next_batch(shared, key, (limit - sent).min(PREFETCH)).await;
            if batch.is_empty() {
                break;
            }
            fetch(shared, batch, &mut taken).await;
        }
        let Some((w, fetched)) = taken.pop_front() else { continue };
        sent += 1;
        next = deliver_one(shared, key, &mut conn, &mx, w, fetched, &mut recording).await;
        if matches!(next, Next::Close) {
            break;
        }
    }
    give_back(shared, key, taken);
    if matches!(next, Next::Continue) {
        conn.quit().await;
    } else {
        drop(conn);
    }
    recording.finish().await;
}

/// Take up to `max` messages: wait for the first, then as many more as are queued, within this connection's
/// fair share of the queue (so the site's other connections are not starved).
async fn next_batch(shared: &Arc<Shared>, key: &SiteKey, max: usize) -> Vec<Work> {
    let Some(first) = next_work(shared, key).await else { return Vec::new() };
    let mut batch = vec![first];
    if max > 1 {
        let mut sites = shared.sites.lock();
        if let Some(site) = sites.get_mut(key) {
            let share = site.len() / site.active.max(1);
            let now = Instant::now();
            for _ in 0..share.min(max - 1) {
                match site.pop(now) {
                    Some(w) => batch.push(w),
                    None => break,
                }
            }
        }
    }
    batch
}

/// Mark `batch` in flight and read its records and bodies in one trip to the spool.
async fn fetch(shared: &Arc<Shared>, batch: Vec<Work>, taken: &mut VecDeque<Taken>) {
    let mut works = Vec::with_capacity(batch.len());
    let mut ids = Vec::with_capacity(batch.len());
    {
        let mut s = shared.sched.lock();
        for w in batch {
            s.transition(&w, State::Ready, State::InFlight);
            match w.msg.to_queue_id(&s.nodes) {
                Some(id) => {
                    works.push(w);
                    ids.push(id);
                }
                None => s.leave(&w, State::InFlight),
            }
        }
    }
    let reads = shared.spool.get_many_with_body(ids, PREFETCH_BODY_BYTES).await;
    taken.extend(works.into_iter().zip(reads));
}

/// Return prefetched messages the connection did not send to the front of the site's ready queue, in order.
fn give_back(shared: &Arc<Shared>, key: &SiteKey, taken: VecDeque<Taken>) {
    if taken.is_empty() {
        return;
    }
    // One lock at a time (no lock-order to keep in mind): the site queue first, the timer for any leftover.
    let orphaned: Vec<Work> = {
        let mut sites = shared.sites.lock();
        match sites.get_mut(key) {
            Some(site) => {
                for (w, _) in taken.iter().rev() {
                    site.push_front(*w);
                }
                Vec::new()
            }
            // The site is only removed once it has no connection; keep the work on the timer regardless.
            None => taken.iter().map(|(w, _)| *w).collect(),
        }
    };
    {
        let mut sched = shared.sched.lock();
        for (w, _) in &taken {
            sched.transition(w, State::InFlight, State::Ready);
        }
    }
    for w in orphaned {
        shared.reschedule(w, State::Ready, super::runtime::now_ms());
    }
}

/// The next work for this connection: at once if queued, else wait up to the idle time for more (so a trickle
/// of messages reuses one connection instead of opening one each).
async fn next_work(shared: &Arc<Shared>, key: &SiteKey) -> Option<Work> {
    let deadline = Instant::now() + shared.cfg.idle_timeout;
    let mut idle = false;
    let work = loop {
        let (work, rate_wait, wake) = match shared.sites.lock().get_mut(key) {
            Some(site) => {
                let w = site.pop(Instant::now());
                if w.is_some() && idle {
                    site.idle -= 1;
                    idle = false;
                } else if w.is_none() && !idle {
                    site.idle += 1;
                    idle = true;
                }
                (w, site.rate_wait(), Some(site.work_ready.clone()))
            }
            None => (None, std::time::Duration::ZERO, None),
        };
        let now = Instant::now();
        if work.is_some() || shared.stopping.load(Ordering::Acquire) || now >= deadline {
            break work;
        }
        let left = deadline - now;
        match wake {
            // Rate-limited: the next token is due at a known time.
            _ if !rate_wait.is_zero() => tokio::time::sleep(rate_wait.min(left)).await,
            // Otherwise sleep until work is queued (or the idle time is over): no polling.
            Some(wake) => {
                let _ = tokio::time::timeout(left, wake.notified()).await;
            }
            None => break None,
        }
    };
    if idle {
        if let Some(site) = shared.sites.lock().get_mut(key) {
            site.idle = site.idle.saturating_sub(1);
        }
    }
    work
}

async fn deliver_one(
    shared: &Arc<Shared>,
    key: &SiteKey,
    conn: &mut Connection,
    mx: &str,
    w: Work,
    fetched: Result<Option<Fetched>, mta_spool::SpoolError>,
    recording: &mut Recording,
) -> Next {
    let domain = shared.sched.lock().domains.name(w.domain);
    let now = super::runtime::now_ms();
    if now.saturating_sub(w.received_ms) >= shared.cfg.max_age.as_millis() as u64 {
        super::results::expire(shared.clone(), w, State::InFlight);
        return Next::Continue;
    }
    let (rec, body) = match fetched {
        Ok(Some(Fetched { record, body: Some(body) })) => (record, body),
        Ok(Some(Fetched { record, body: None })) => match shared.spool.read_body(&record).await {
            Ok(body) => (record, body),
            Err(e) => return unreadable(shared, w, e, now),
        },
        Ok(None) => {
            shared.sched.lock().leave(&w, State::InFlight);
            return Next::Continue;
        }
        Err(e) => return unreadable(shared, w, e, now),
    };
    let rcpts: Vec<String> = rec
        .recipients
        .iter()
        .filter(|r| *r.domain == *domain && !r.state.is_final())
        .map(|r| r.address.clone())
        .collect();
    if rcpts.is_empty() {
        shared.sched.lock().leave(&w, State::InFlight);
        return Next::Continue;
    }
    let held = shared.hold.read().as_ref().is_some_and(|check| check(&body));
    if held {
        metrics::counter!("mta_delivery_held_total").increment(1);
        tracing::info!(id = %rec.id, "message held (sender pre-flight mismatch); re-checked in 5 minutes");
        shared.reschedule(w, State::InFlight, now + 300_000);
        return Next::Continue;
    }
    // Bounded by the total so a message larger than the whole budget waits for all of it instead of forever.
    let kib = u32::try_from(body.len() / 1024 + 1).unwrap_or(u32::MAX).min(shared.mem_permits_total);
    let _mem = shared.mem_permits.clone().acquire_many_owned(kib).await.ok();
    let needs_8bit = body.iter().any(|b| *b >= 0x80);
    let mut throttle = false;
    let mut list = Vec::with_capacity(rcpts.len());
    let mut whole: Option<Outcome> = None;
    let mut next = Next::Continue;
    // At most 100 recipients per transaction (RFC 5321 §4.5.3.1.8 minimum every server must take).
    for chunk in rcpts.chunks(100) {
        let env = Envelope {
            sender: &rec.sender,
            recipients: chunk,
            needs_8bit,
            needs_smtputf8: !rec.sender.is_ascii() || chunk.iter().any(|r| !r.is_ascii()),
        };
        let started = Instant::now();
        let result = conn.send(&env, &body).await;
        metrics::histogram!("mta_delivery_send_seconds").record(started.elapsed().as_secs_f64());
        match result {
            Ok(res) => {
                for (addr, o) in chunk.iter().zip(res.recipients.iter()) {
                    let response = Response::remote(o.reply(), outcome_stage(o, res.data_reply.as_ref()));
                    throttle |= response.is_throttle();
                    let outcome = match o {
                        RecipientOutcome::Delivered(_) => Outcome::delivered(response),
                        RecipientOutcome::Transient(_) => Outcome::transient(response),
                        RecipientOutcome::Permanent(_) => Outcome::permanent(response),
                    };
                    list.push((addr.clone(), outcome));
                }
                throttle |= res.data_reply.as_ref().is_some_and(|r| Response::remote(r, Stage::DataTerm).is_throttle());
                // The client sends RSET itself after a failed transaction; an unusable connection is closed.
                if !conn.is_usable() {
                    next = Next::Close;
                    break;
                }
            }
            Err(e) => {
                let response = Response::from_error(&e);
                throttle |= response.is_throttle();
                let outcome =
                    if e.is_permanent() { Outcome::permanent(response.clone()) } else { Outcome::transient(response) };
                for addr in chunk {
                    list.push((addr.clone(), outcome.clone()));
                }
                if e.is_connection_level() || !conn.is_usable() {
                    next = Next::Close;
                    // Recipients of later chunks were not tried: they take the same transient result.
                    whole = Some(if e.is_permanent() { Outcome::transient(Response::from_error(&e)) } else { outcome });
                    break;
                }
            }
        }
    }
    let outcomes = match whole {
        Some(rest) => {
            for addr in rcpts.iter().skip(list.len()) {
                list.push((addr.clone(), rest.clone()));
            }
            Outcomes::Each(list)
        }
        None => Outcomes::Each(list),
    };
    if throttle {
        if let Some(site) = shared.sites.lock().get_mut(key) {
            site.throttle(Instant::now(), shared.cfg.throttle_for);
        }
    }
    // With a single destination nobody else updates this record meanwhile: the copy read above is current.
    let known = (rec.schedules.len() == 1).then_some(rec);
    let (shared, mx) = (shared.clone(), mx.to_string());
    let task = tokio::spawn(async move {
        record_known(&shared, w, State::InFlight, outcomes, Some(mx), known).await;
    });
    recording.push(task).await;
    next
}

/// A message that could not be read: a corrupt one stays in the spool for an operator (it can never be
/// delivered as accepted); on other errors the attempt is retried later.
fn unreadable(shared: &Arc<Shared>, w: Work, e: mta_spool::SpoolError, now: u64) -> Next {
    match e {
        mta_spool::SpoolError::Corrupt { key, reason } => {
            tracing::error!(%key, %reason, "message unreadable; left in the spool, not delivered");
            metrics::counter!("mta_delivery_unreadable_total").increment(1);
            shared.sched.lock().leave(&w, State::InFlight);
        }
        e => {
            let id = w.msg.to_queue_id(&shared.sched.lock().nodes).map(|id| id.to_string()).unwrap_or_default();
            tracing::error!(%id, error = %e, "cannot read message for delivery");
            shared.reschedule(w, State::InFlight, now + 60_000);
        }
    }
    Next::Continue
}
