//! One outbound connection: connect with MX failover, then carry messages from the site's ready queue until
//! the queue is empty, the per-connection limit is reached, the peer fails, or we are stopping.

use std::collections::VecDeque;
use std::sync::Arc;

use mta_smtp::client::{Envelope, RecipientOutcome, Stage};
use mta_smtp::Reply;
use mta_spool::Fetched;

use super::context::Context;
use super::plan::{HopTls, NextHops};
use super::recorder::{Outcome, Outcomes};
use super::response_rules::RuleAction;
use super::scheduler::{State, Work};
use super::site::SiteKey;
use super::sites::PREFETCH;
use super::transport::{Connected, Refused, Session as Transaction};
use crate::events::{event_id, now_rfc3339, Event, EventType};
use crate::tls_policy::{PolicySource, TlsSession};
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

/// Bodies prefetched per batch beyond the first, in bytes: what a connection may hold ahead of sending, outside
/// the in-flight memory budget (which covers the message on the wire), so large messages are read one at a time.
const PREFETCH_BODY_BYTES: u64 = 64 * 1024;
/// Results a connection may have in the spool's commit queue while it carries the next messages. In practice
/// a connection is at most a few results ahead (one commit round takes milliseconds); the cap bounds memory and,
/// after a crash, how many received-but-unrecorded 250s a connection can leave to be delivered again.
const MAX_RECORDING: usize = 32;

/// How soon a message found claimed by a queue transfer is tried again (if the transfer fails, it stays here).
const TRANSFER_RETRY_MS: u64 = 10_000;

/// A message taken for this connection, with what the spool returned for it.
/// The third part is the owners' epoch before the read (a transfer's change after it makes the copy stale).
type Taken = (Work, Result<Option<Fetched>, mta_spool::SpoolError>, u64);

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
pub(crate) async fn run(ctx: &Arc<Context>, key: &SiteKey) {
    let Some((hops, limit)) = ctx.sites.hops(key) else { return };
    let Connected { session: mut conn, mx, addr, tls } = match ctx.transport.connect(&hops, key.source).await {
        Ok(c) => {
            ctx.sites.connected(key);
            c
        }
        Err(Refused { response: reason, mx, addr }) => {
            // Every address failed: one pending message takes the attempt (so it moves toward expiry); the
            // circuit opens after repeated failures so the rest don't each wait out a connect timeout.
            let now = ctx.clock.instant();
            let work = ctx.sites.connect_failed(key, now, ctx.cfg.circuit_threshold, ctx.cfg.circuit_open_for);
            if let Some(w) = work {
                report_failed_session(ctx, &hops, &w, &reason, mx.as_deref(), addr);
                ctx.timers.transition_all([&w], State::Ready, State::InFlight);
                // A refusal (greeting, EHLO) keeps the server's reply; it is transient whatever its code
                // (a `bounce` rule aside), and a `[[response_rule]]` may suspend or throttle the site.
                let domain = ctx.timers.domain_name(w.domain);
                let rule = apply_rule(ctx, key, &domain, &reason, &w, None).await;
                let tls = refusal(&hops, &reason);
                let outcome = match rule {
                    Some(RuleAction::Bounce) => Outcome::permanent(reason),
                    _ => Outcome::transient(reason),
                };
                ctx.recorder.record(w, State::InFlight, Outcomes::All(outcome.with_tls(tls)), None, None).await;
            }
            return;
        }
    };
    let session = Session { mx: &mx, tls };
    let mut sent = 0usize;
    let mut taken: VecDeque<Taken> = VecDeque::new();
    let mut recording = Recording::default();
    let mut next = Next::Continue;
    // Domains this session counted in TLS reports (one session per domain per connection).
    let mut reported: Vec<u32> = Vec::new();
    while sent < limit && !ctx.is_stopping() {
        if taken.is_empty() {
            let batch = next_batch(ctx, key, (limit - sent).min(PREFETCH)).await;
            if batch.is_empty() {
                break;
            }
            fetch(ctx, batch, &mut taken).await;
        }
        let Some((w, fetched, epoch)) = taken.pop_front() else { continue };
        sent += 1;
        if let (Some(reports), Some(policy)) = (&ctx.tls_reports, &hops.policy) {
            // Hosts outside the policy (a DANE site's hosts without TLSA records) are not its sessions.
            if tls.policy != PolicySource::None && !reported.contains(&w.domain) && reported.len() < 64 {
                reported.push(w.domain);
                let domain = ctx.timers.domain_name(w.domain);
                match tls.failure {
                    None => reports.success(&domain, policy),
                    Some(f) => reports.failure(&domain, policy, f.as_str(), Some(&mx), addr.map(|a| a.ip())),
                }
            }
        }
        next = deliver_one(ctx, key, conn.as_mut(), &session, (w, fetched, epoch), &mut recording).await;
        if matches!(next, Next::Close) {
            break;
        }
    }
    give_back(ctx, key, taken);
    if matches!(next, Next::Continue) && conn.is_usable() {
        conn.quit().await;
    } else {
        drop(conn);
    }
    recording.finish().await;
}

/// The TLS of an attempt a policy refused (no session): which policy and why, from the response.
fn refusal(hops: &NextHops, reason: &Response) -> Option<TlsSession> {
    let source = match hops.tls {
        HopTls::Verified => PolicySource::MtaSts,
        HopTls::Dane => PolicySource::Dane,
        HopTls::Default | HopTls::Testing => return None,
    };
    reason.tls_failure.map(|f| TlsSession::refused(source, f))
}

/// What every outcome of a connection shares: the host reached and the session's TLS.
struct Session<'a> {
    mx: &'a str,
    tls: TlsSession,
}

/// Counts a session refused under a policy in TLS reports: its RFC 8460 type, and the MX host and address
/// of the attempt that failed.
fn report_failed_session(
    ctx: &Context,
    hops: &NextHops,
    w: &Work,
    reason: &Response,
    mx: Option<&str>,
    addr: Option<std::net::SocketAddr>,
) {
    let (Some(reports), Some(policy), Some(failure)) = (&ctx.tls_reports, &hops.policy, reason.tls_failure) else {
        return;
    };
    reports.failure(&ctx.timers.domain_name(w.domain), policy, failure.as_str(), mx, addr.map(|a| a.ip()));
}

/// Take up to `max` messages: wait for the first, then as many more as are queued, within this connection's
/// fair share of the queue (so the site's other connections are not starved).
async fn next_batch(ctx: &Arc<Context>, key: &SiteKey, max: usize) -> Vec<Work> {
    let deadline = ctx.clock.instant() + ctx.cfg.idle_timeout;
    let Some(first) = ctx.sites.next_work(key, deadline, || ctx.is_stopping()).await else { return Vec::new() };
    let mut batch = vec![first];
    batch.extend(ctx.sites.take_more(key, max, ctx.clock.instant()));
    batch
}

/// Mark `batch` in flight and read its records and bodies in one trip to the spool.
async fn fetch(ctx: &Arc<Context>, batch: Vec<Work>, taken: &mut VecDeque<Taken>) {
    let (works, ids) = ctx.timers.take_in_flight(batch);
    let epoch = ctx.owners.epoch();
    let reads = ctx.spool.get_many_with_body(ids, PREFETCH_BODY_BYTES).await;
    taken.extend(works.into_iter().zip(reads).map(|(w, r)| (w, r, epoch)));
}

/// Return prefetched messages the connection did not send to the front of the site's ready queue, in order.
fn give_back(ctx: &Arc<Context>, key: &SiteKey, taken: VecDeque<Taken>) {
    if taken.is_empty() {
        return;
    }
    let works: Vec<Work> = taken.into_iter().map(|(w, _, _)| w).collect();
    // One owner at a time (no lock order to keep in mind): the site queue first, the timer for any leftover.
    let orphaned = ctx.sites.give_back(key, &works);
    ctx.timers.transition_all(&works, State::InFlight, State::Ready);
    ctx.timers.reschedule_all(orphaned, State::Ready, ctx.clock.now_ms());
}

async fn deliver_one(
    ctx: &Arc<Context>,
    key: &SiteKey,
    conn: &mut dyn Transaction,
    session: &Session<'_>,
    (w, fetched, epoch): Taken,
    recording: &mut Recording,
) -> Next {
    let domain = ctx.timers.domain_name(w.domain);
    let now = ctx.clock.now_ms();
    // Suspended (by an operator or a rule) after it was queued on the site: held, not sent.
    let Some(w) = ctx.timers.hold_if_suspended(w, State::InFlight) else {
        return Next::Continue;
    };
    if now.saturating_sub(w.received_ms) >= ctx.cfg.max_age.as_millis() as u64 {
        ctx.recorder.expire(w, State::InFlight);
        return Next::Continue;
    }
    let (rec, body) = match fetched {
        Ok(Some(Fetched { record, body: Some(body) })) => (record, body),
        Ok(Some(Fetched { record, body: None })) => match ctx.spool.read_body(&record).await {
            Ok(body) => (record, body),
            Err(e) => return unreadable(ctx, w, e, now),
        },
        Ok(None) => {
            ctx.timers.leave(&w, State::InFlight);
            return Next::Continue;
        }
        Err(e) => return unreadable(ctx, w, e, now),
    };
    // Held until the result is durable (the recording task drops it): a transfer cannot take it meanwhile.
    let Some(owned) = ctx.owners.deliver(&rec.id) else {
        // Being moved to another node: if the move fails it is due again soon.
        ctx.timers.reschedule(w, State::InFlight, now + TRANSFER_RETRY_MS);
        return Next::Continue;
    };
    let mut rec = rec;
    if ctx.owners.epoch() != epoch {
        // A transfer changed some message since this copy was read: read it again (it may be gone).
        match ctx.spool.get(&rec.id).await {
            Ok(Some(fresh)) => rec = fresh,
            Ok(None) => {
                ctx.timers.leave(&w, State::InFlight);
                return Next::Continue;
            }
            Err(e) => return unreadable(ctx, w, e, now),
        }
    }
    let rcpts: Vec<String> = rec
        .recipients
        .iter()
        .filter(|r| *r.domain == *domain && !r.state.is_final())
        .map(|r| r.address.clone())
        .collect();
    if rcpts.is_empty() {
        ctx.timers.leave(&w, State::InFlight);
        return Next::Continue;
    }
    if ctx.holds(&body) {
        metrics::counter!("mta_delivery_held_total").increment(1);
        tracing::info!(id = %rec.id, "message held (sender pre-flight mismatch); re-checked in 5 minutes");
        ctx.timers.reschedule(w, State::InFlight, now + 300_000);
        return Next::Continue;
    }
    let _memory = ctx.memory_for(body.len()).await;
    let needs_8bit = body.iter().any(|b| *b >= 0x80);
    let mut throttle = false;
    let mut ruled = false;
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
        let started = std::time::Instant::now();
        let result = conn.send(&env, &body).await;
        metrics::histogram!("mta_delivery_send_seconds").record(started.elapsed().as_secs_f64());
        match result {
            Ok(res) => {
                for (addr, o) in chunk.iter().zip(res.recipients.iter()) {
                    let response = Response::remote(o.reply(), outcome_stage(o, res.data_reply.as_ref()));
                    let rule = if response.is_positive() {
                        None
                    } else {
                        apply_rule(ctx, key, &domain, &response, &w, Some((&rec, addr))).await
                    };
                    throttle |= rule.is_none() && response.is_throttle();
                    ruled |= matches!(rule, Some(RuleAction::Suspend));
                    let outcome = match (o, rule) {
                        (RecipientOutcome::Delivered(_), _) => Outcome::delivered(response),
                        (_, Some(RuleAction::Bounce)) => Outcome::permanent(response),
                        (RecipientOutcome::Transient(_), _) => Outcome::transient(response),
                        (RecipientOutcome::Permanent(_), _) => Outcome::permanent(response),
                    };
                    list.push((addr.clone(), outcome.with_tls(Some(session.tls))));
                }
                throttle |= !ruled
                    && res.data_reply.as_ref().is_some_and(|r| Response::remote(r, Stage::DataTerm).is_throttle());
                if ruled {
                    // The destination is suspended: stop sending to it on this connection.
                    next = Next::Close;
                    break;
                }
                // The client sends RSET itself after a failed transaction; an unusable connection is closed.
                if !conn.is_usable() {
                    next = Next::Close;
                    break;
                }
            }
            Err(e) => {
                let response = Response::from_error(&e);
                let rule = apply_rule(ctx, key, &domain, &response, &w, Some((&rec, &chunk[0]))).await;
                throttle |= rule.is_none() && response.is_throttle();
                let outcome = if e.is_permanent() || rule == Some(RuleAction::Bounce) {
                    Outcome::permanent(response.clone())
                } else {
                    Outcome::transient(response)
                }
                .with_tls(Some(session.tls));
                for addr in chunk {
                    list.push((addr.clone(), outcome.clone()));
                }
                if e.is_connection_level() || !conn.is_usable() {
                    next = Next::Close;
                    // Recipients of later chunks were not tried: they take the same transient result.
                    whole = Some(if e.is_permanent() {
                        Outcome::transient(Response::from_error(&e)).with_tls(Some(session.tls))
                    } else {
                        outcome
                    });
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
        ctx.sites.throttle(key, ctx.clock.instant(), ctx.cfg.throttle_for);
    }
    // With a single destination nobody else updates this record meanwhile: the copy read above is current.
    let known = (rec.schedules.len() == 1).then_some(rec);
    let (recorder, mx) = (ctx.recorder.clone(), session.mx.to_string());
    let task = tokio::spawn(async move {
        recorder.record(w, State::InFlight, outcomes, Some(mx), known).await;
        drop(owned);
    });
    recording.push(task).await;
    next
}

/// Apply the first `[[response_rule]]` matching `response` from `domain`: suspend the domain's queue or
/// throttle the site `key` for the rule's duration, with a `response_rule` event; returns the action (a
/// `bounce` is the caller's to apply). `about` names the message and recipient the reply was about.
async fn apply_rule(
    ctx: &Arc<Context>,
    key: &SiteKey,
    domain: &str,
    response: &Response,
    w: &Work,
    about: Option<(&mta_spool::MessageRecord, &String)>,
) -> Option<RuleAction> {
    if response.origin != crate::response::Origin::Remote || response.is_positive() {
        return None;
    }
    let line = response.to_string();
    let rule = ctx.cfg.response_rules.find(domain, &line)?;
    let until_ms = ctx.clock.now_ms().saturating_add(rule.duration.as_millis() as u64);
    let reason = format!("response_rule {}: {line}", rule.action.name());
    match rule.action {
        RuleAction::Suspend => ctx.timers.suspend_until(domain, until_ms, reason.clone()),
        RuleAction::Throttle { factor } => {
            ctx.sites.throttle_by(key, ctx.clock.instant(), factor, rule.duration);
            ctx.timers.note_throttle(domain, until_ms, reason.clone());
        }
        RuleAction::Bounce => {}
    }
    metrics::counter!("mta_response_rule_actions_total", "action" => rule.action.name()).increment(1);
    tracing::info!(%domain, action = rule.action.name(), reply = %line, "response rule matched");
    let (id, sender, recipient, tenant) = match about {
        Some((rec, addr)) => (rec.id.to_string(), rec.sender.clone(), addr.clone(), rec.tenant.clone()),
        None => (ctx.timers.names(w).0.map(|i| i.to_string()).unwrap_or_default(), String::new(), String::new(), None),
    };
    let event = Event {
        event_id: event_id(&id, 0, &recipient, EventType::ResponseRule, until_ms as u32),
        kind: EventType::ResponseRule,
        id,
        sender,
        recipient,
        domain: domain.to_string(),
        timestamp: now_rfc3339(),
        response: response.clone(),
        mx: None,
        tenant,
        source: Some(reason),
        attempts: None,
        bounce_class: None,
        tls: None,
    };
    ctx.recorder.emit(vec![event]).await;
    Some(rule.action)
}

/// A message that could not be read: a corrupt one stays in the spool for an operator (it can never be
/// delivered as accepted); on other errors the attempt is retried later.
fn unreadable(ctx: &Arc<Context>, w: Work, e: mta_spool::SpoolError, now: u64) -> Next {
    match e {
        mta_spool::SpoolError::Corrupt { key, reason } => {
            tracing::error!(%key, %reason, "message unreadable; left in the spool, not delivered");
            metrics::counter!("mta_delivery_unreadable_total").increment(1);
            ctx.timers.leave(&w, State::InFlight);
        }
        e => {
            let id = ctx.timers.names(&w).0.map(|id| id.to_string()).unwrap_or_default();
            tracing::error!(%id, error = %e, "cannot read message for delivery");
            ctx.timers.reschedule(w, State::InFlight, now + 60_000);
        }
    }
    Next::Continue
}
