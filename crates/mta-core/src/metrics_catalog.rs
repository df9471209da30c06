//! Every metric the engine and its server export, with its help text and unit: described to the recorder at
//! start-up (so `/metrics` carries `# HELP` for each family) and listed in `docs/operations.md`. A test checks
//! that every metric the code emits is here.

/// What kind of Prometheus family a metric is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricKind {
    /// Monotonic count (`_total`).
    Counter,
    /// A value that goes up and down.
    Gauge,
    /// A distribution (`_bucket`, `_sum`, `_count`).
    Histogram,
}

/// One metric family.
#[derive(Debug, Clone, Copy)]
pub struct MetricDoc {
    /// Family name.
    pub name: &'static str,
    /// Kind.
    pub kind: MetricKind,
    /// Unit, where it has one.
    pub unit: Option<metrics::Unit>,
    /// Help text.
    pub help: &'static str,
}

/// The catalog.
pub const METRICS: &[MetricDoc] = &[
    MetricDoc { name: "mta_auth_deadline_exceeded_total", kind: MetricKind::Counter, unit: None, help: "Inbound verifications that hit their deadline (results reported as temperror)." },
    MetricDoc { name: "mta_auth_preflight_mismatch_total", kind: MetricKind::Counter, unit: None, help: "Sender pre-flight checks that found our DKIM key or SPF record not published as configured, by check and domain." },
    MetricDoc { name: "mta_auth_rejections_total", kind: MetricKind::Counter, unit: None, help: "Inbound messages refused by an enforced SPF/DKIM/DMARC policy, by reply code." },
    MetricDoc { name: "mta_auth_results_total", kind: MetricKind::Counter, unit: None, help: "Inbound verification results, by method (spf, dkim, dmarc, arc) and result." },
    MetricDoc { name: "mta_auth_spoofed_results_removed_total", kind: MetricKind::Counter, unit: None, help: "Authentication-Results fields claiming our authserv-id removed from received messages." },
    MetricDoc { name: "mta_auth_verify_seconds", kind: MetricKind::Histogram, unit: Some(metrics::Unit::Seconds), help: "Time to verify one inbound message (SPF, DKIM, DMARC, ARC together)." },
    MetricDoc { name: "mta_backpressure_signal", kind: MetricKind::Gauge, unit: None, help: "Current value of each health signal the back-pressure monitor samples (commit latency, fsync rate, DNS, event-loop lag, disk, RSS)." },
    MetricDoc { name: "mta_backpressure_state", kind: MetricKind::Gauge, unit: None, help: "Node health state: 0 healthy, 1 degraded, 2 shedding." },
    MetricDoc { name: "mta_backpressure_transitions_total", kind: MetricKind::Counter, unit: None, help: "Health state changes, by from, to and the signal that caused them." },
    MetricDoc { name: "mta_cluster_fallback", kind: MetricKind::Gauge, unit: None, help: "1 while this node runs on local limits (its share of each fleet total) because Redis is unreachable, else 0." },
    MetricDoc { name: "mta_cluster_lease_grants_total", kind: MetricKind::Counter, unit: None, help: "Connection leases granted to this node (by Redis, or by its local share while Redis is away)." },
    MetricDoc { name: "mta_cluster_leases_held", kind: MetricKind::Gauge, unit: None, help: "Connection leases this node holds now (one per outbound connection under fleet-wide limits)." },
    MetricDoc { name: "mta_cluster_redis_errors_total", kind: MetricKind::Counter, unit: None, help: "Redis calls that failed or timed out (each switches the node to local limits until it reconnects)." },
    MetricDoc { name: "mta_cluster_redis_seconds", kind: MetricKind::Histogram, unit: Some(metrics::Unit::Seconds), help: "Round-trip time of one Redis script call (lease, token grant, heartbeat, sync)." },
    MetricDoc { name: "mta_cluster_token_grants_total", kind: MetricKind::Counter, unit: None, help: "Sends granted to this node from fleet-wide rate buckets." },
    MetricDoc { name: "mta_complaints_total", kind: MetricKind::Counter, unit: None, help: "ARF feedback reports (complaints) recorded as suppression entries." },
    MetricDoc { name: "mta_delivery_circuit_open_total", kind: MetricKind::Counter, unit: None, help: "Times a destination site's circuit opened after repeated connection failures." },
    MetricDoc { name: "mta_delivery_connections", kind: MetricKind::Gauge, unit: None, help: "Outbound SMTP connections open now." },
    MetricDoc { name: "mta_delivery_connections_opened_total", kind: MetricKind::Counter, unit: None, help: "Outbound SMTP connections opened." },
    MetricDoc { name: "mta_delivery_held_total", kind: MetricKind::Counter, unit: None, help: "Messages held instead of sent (sender pre-flight mismatch with on_preflight_mismatch = hold)." },
    MetricDoc { name: "mta_delivery_results_total", kind: MetricKind::Counter, unit: None, help: "Delivery results per recipient, by result (delivered, deferred, bounced, expired)." },
    MetricDoc { name: "mta_delivery_send_seconds", kind: MetricKind::Histogram, unit: Some(metrics::Unit::Seconds), help: "Time to send one message on an open connection, from MAIL to the end-of-data reply." },
    MetricDoc { name: "mta_delivery_throttled_total", kind: MetricKind::Counter, unit: None, help: "Throttling replies (421, 451 4.7.x) that lowered a site's connection count." },
    MetricDoc { name: "mta_delivery_unreadable_total", kind: MetricKind::Counter, unit: None, help: "Queued messages whose spool record or body could not be read at delivery time." },
    MetricDoc { name: "mta_export_dropped_total", kind: MetricKind::Counter, unit: None, help: "Events an export endpoint gave up on, by endpoint and reason (max_retry_age; outbox_full with endpoint *)." },
    MetricDoc { name: "mta_export_endpoint_oldest_age_seconds", kind: MetricKind::Gauge, unit: Some(metrics::Unit::Seconds), help: "Age of the oldest event an endpoint has not confirmed yet, by endpoint (0 when none)." },
    MetricDoc { name: "mta_export_endpoint_outbox_depth", kind: MetricKind::Gauge, unit: None, help: "Events in the outbox an endpoint has not confirmed yet, by endpoint (counted up to 1,048,576)." },
    MetricDoc { name: "mta_export_failed_total", kind: MetricKind::Counter, unit: None, help: "Export requests (batches) that failed: non-2xx answer, connection error or timeout, by endpoint." },
    MetricDoc { name: "mta_export_outbox_bytes", kind: MetricKind::Gauge, unit: Some(metrics::Unit::Bytes), help: "Bytes of events in the durable outbox (bounded by outbox.max_bytes, kept by the commit that would exceed it)." },
    MetricDoc { name: "mta_export_outbox_entries", kind: MetricKind::Gauge, unit: None, help: "Entries in the durable outbox (one per spool commit round that reported events, holding those events), waiting for at least one endpoint's confirmation." },
    MetricDoc { name: "mta_export_outbox_oldest_age_seconds", kind: MetricKind::Gauge, unit: Some(metrics::Unit::Seconds), help: "Age of the oldest event in the outbox (0 when empty)." },
    MetricDoc { name: "mta_export_outbox_peak_bytes", kind: MetricKind::Gauge, unit: Some(metrics::Unit::Bytes), help: "The most bytes the outbox held after any commit since the server started (never above outbox.max_bytes, unless the outbox held more at start-up)." },
    MetricDoc { name: "mta_export_retried_total", kind: MetricKind::Counter, unit: None, help: "Events sent again after a failed request, by endpoint." },
    MetricDoc { name: "mta_export_sent_total", kind: MetricKind::Counter, unit: None, help: "Events confirmed (2xx) by an export endpoint, by endpoint." },
    MetricDoc { name: "mta_history_bytes", kind: MetricKind::Gauge, unit: Some(metrics::Unit::Bytes), help: "Bytes of message history kept for status lookups of finished messages (bounded by history.max_bytes)." },
    MetricDoc { name: "mta_history_pruned_total", kind: MetricKind::Counter, unit: None, help: "Finished messages dropped from the history (older than history.retention, or the oldest beyond history.max_bytes)." },
    MetricDoc { name: "mta_dkim_sign_seconds", kind: MetricKind::Histogram, unit: Some(metrics::Unit::Seconds), help: "Time to DKIM-sign one message (all its signatures)." },
    MetricDoc { name: "mta_dkim_signatures_total", kind: MetricKind::Counter, unit: None, help: "DKIM signatures made, by algorithm." },
    MetricDoc { name: "mta_dns_answers_total", kind: MetricKind::Counter, unit: None, help: "Answers from DNS upstreams, by upstream and response code." },
    MetricDoc { name: "mta_dns_cache_total", kind: MetricKind::Counter, unit: None, help: "Resolver cache lookups, by result (hit, miss, stale, negative)." },
    MetricDoc { name: "mta_dns_coalesced_total", kind: MetricKind::Counter, unit: None, help: "Lookups that joined an identical query already in flight instead of sending another." },
    MetricDoc { name: "mta_dns_in_flight", kind: MetricKind::Gauge, unit: None, help: "DNS queries in flight to the upstreams now." },
    MetricDoc { name: "mta_dns_lookup_seconds", kind: MetricKind::Histogram, unit: Some(metrics::Unit::Seconds), help: "Time of one resolver lookup as the caller sees it (cache hits included)." },
    MetricDoc { name: "mta_dns_queries_total", kind: MetricKind::Counter, unit: None, help: "Queries sent to each DNS upstream (packets, retries included)." },
    MetricDoc { name: "mta_dns_query_seconds", kind: MetricKind::Histogram, unit: Some(metrics::Unit::Seconds), help: "Round-trip time of one upstream query, by upstream." },
    MetricDoc { name: "mta_dns_queued", kind: MetricKind::Gauge, unit: None, help: "Lookups waiting for an in-flight slot or an upstream's rate limit." },
    MetricDoc { name: "mta_dns_refreshes_total", kind: MetricKind::Counter, unit: None, help: "Background refreshes of popular cache entries before they expire." },
    MetricDoc { name: "mta_dns_retries_total", kind: MetricKind::Counter, unit: None, help: "Queries re-sent after a failure (spent from the retry budget)." },
    MetricDoc { name: "mta_dns_retry_budget_exhausted_total", kind: MetricKind::Counter, unit: None, help: "Retries not sent because the retry budget was spent." },
    MetricDoc { name: "mta_dns_upstream_in_trouble", kind: MetricKind::Gauge, unit: None, help: "1 while a DNS upstream fails across many names at once (per-name back-off suspended), by upstream." },
    MetricDoc { name: "mta_dns_upstream_trouble_total", kind: MetricKind::Counter, unit: None, help: "Times a DNS upstream entered upstream-wide trouble, by upstream." },
    MetricDoc { name: "mta_dsn_generated_total", kind: MetricKind::Counter, unit: None, help: "Delivery status notifications (bounces) generated." },
    MetricDoc { name: "mta_http_backpressure_refusals_total", kind: MetricKind::Counter, unit: None, help: "HTTP injections refused with 503 by back-pressure." },
    MetricDoc { name: "mta_http_body_memory_bytes", kind: MetricKind::Gauge, unit: Some(metrics::Unit::Bytes), help: "Bytes of the HTTP request-body memory budget charged right now." },
    MetricDoc { name: "mta_http_body_memory_limit_bytes", kind: MetricKind::Gauge, unit: Some(metrics::Unit::Bytes), help: "The HTTP request-body memory budget (http.max_body_memory)." },
    MetricDoc { name: "mta_http_body_memory_refusals_total", kind: MetricKind::Counter, unit: None, help: "HTTP requests refused with 503 body_memory_exhausted after waiting http.body_memory_wait for the budget." },
    MetricDoc { name: "mta_http_body_too_large_total", kind: MetricKind::Counter, unit: None, help: "HTTP requests refused with 413 for a body over the size cap (announced or read)." },
    MetricDoc { name: "mta_http_idempotent_replays_total", kind: MetricKind::Counter, unit: None, help: "HTTP injections answered from a stored Idempotency-Key result." },
    MetricDoc { name: "mta_http_inject_seconds", kind: MetricKind::Histogram, unit: Some(metrics::Unit::Seconds), help: "Time of one HTTP injection, from request to durable 202." },
    MetricDoc { name: "mta_http_requests_total", kind: MetricKind::Counter, unit: None, help: "HTTP API requests, by method, route and status." },
    MetricDoc { name: "mta_messages_received_total", kind: MetricKind::Counter, unit: None, help: "Messages accepted (durable), by protocol (smtp, http, api)." },
    MetricDoc { name: "mta_messages_staged_total", kind: MetricKind::Counter, unit: None, help: "Received messages whose body outgrew memory and was streamed to a spool file." },
    MetricDoc { name: "mta_recipients_received_total", kind: MetricKind::Counter, unit: None, help: "Recipients accepted with those messages." },
    MetricDoc { name: "mta_recipients_suppressed_total", kind: MetricKind::Counter, unit: None, help: "Recipients refused at injection (SMTP RCPT or HTTP) because they are on the suppression list." },
    MetricDoc { name: "mta_response_rule_actions_total", kind: MetricKind::Counter, unit: None, help: "Replies that matched a [[response_rule]], by action (suspend, throttle, bounce)." },
    MetricDoc { name: "mta_smtp_ack_seconds", kind: MetricKind::Histogram, unit: Some(metrics::Unit::Seconds), help: "Time from the end of a message's data to its 250 (durability wait)." },
    MetricDoc { name: "mta_smtp_backpressure_refusals_total", kind: MetricKind::Counter, unit: None, help: "SMTP refusals by back-pressure, by code (421 at connect, 451 at MAIL)." },
    MetricDoc { name: "mta_smtp_client_connections_total", kind: MetricKind::Counter, unit: None, help: "Outbound SMTP connection attempts, by result." },
    MetricDoc { name: "mta_smtp_client_messages_total", kind: MetricKind::Counter, unit: None, help: "Messages sent by the outbound SMTP client, by result." },
    MetricDoc { name: "mta_smtp_client_tls_total", kind: MetricKind::Counter, unit: None, help: "Outbound STARTTLS outcomes, by result." },
    MetricDoc { name: "mta_smtp_idle_evictions_total", kind: MetricKind::Counter, unit: None, help: "SMTP sessions closed while idle to admit a new client when every slot was taken." },
    MetricDoc { name: "mta_smtp_proxy_untrusted_total", kind: MetricKind::Counter, unit: None, help: "Connections refused on a PROXY-protocol listener because the peer is not a trusted proxy." },
    MetricDoc { name: "mta_smtp_timeouts_total", kind: MetricKind::Counter, unit: None, help: "SMTP sessions closed by a deadline, by kind (deadline, min_data_rate)." },
    MetricDoc { name: "mta_spool_commit_rounds_total", kind: MetricKind::Counter, unit: None, help: "Spool group-commit rounds." },
    MetricDoc { name: "mta_spool_commit_seconds", kind: MetricKind::Histogram, unit: Some(metrics::Unit::Seconds), help: "Duration of one spool commit round (writes and syncs)." },
    MetricDoc { name: "mta_spool_commit_wait_seconds", kind: MetricKind::Histogram, unit: Some(metrics::Unit::Seconds), help: "Time a spool write waited from queueing to durable." },
    MetricDoc { name: "mta_spool_fsyncs_total", kind: MetricKind::Counter, unit: None, help: "fsync and fdatasync calls made by the spool." },
    MetricDoc { name: "mta_spool_records", kind: MetricKind::Gauge, unit: None, help: "Messages in the spool." },
    MetricDoc { name: "mta_spool_round_ops", kind: MetricKind::Histogram, unit: None, help: "Operations per spool commit round (how many writes one sync covered)." },
    MetricDoc { name: "mta_suppressions", kind: MetricKind::Gauge, unit: None, help: "Entries in the suppression list's in-memory index." },
    MetricDoc { name: "mta_tls_policy_total", kind: MetricKind::Counter, unit: None, help: "Outbound TLS policy outcomes, by source (mta-sts, dane), mode and result: per destination lookup matched, mx_mismatch, fetch_error, tlsa_invalid or tlsa_lookup_failed; per connection under an enforced policy tls_verified or the RFC 8460 failure type (starttls-not-supported, certificate-host-mismatch, validation-failure, ...)." },
    MetricDoc { name: "mta_tls_reports_sent_total", kind: MetricKind::Counter, unit: None, help: "TLS reports (RFC 8460) handed to a rua destination, by result (ok: uploaded over HTTPS or queued as mail; failed)." },
    MetricDoc { name: "mta_transfer_failed_total", kind: MetricKind::Counter, unit: None, help: "Messages a queue transfer could not move to its peer (they stay queued here)." },
    MetricDoc { name: "mta_transfer_imported_total", kind: MetricKind::Counter, unit: None, help: "Messages taken in from another node by POST /api/v1/queue/import (repeats not counted)." },
    MetricDoc { name: "mta_transfer_in_progress", kind: MetricKind::Gauge, unit: None, help: "Messages of a queue transfer sent to the peer and not yet acknowledged." },
    MetricDoc { name: "mta_transfer_moved_total", kind: MetricKind::Counter, unit: None, help: "Messages a queue transfer moved to its peer (acknowledged durable there, removed here)." },
    MetricDoc { name: "mta_transfer_running", kind: MetricKind::Gauge, unit: None, help: "Queue transfers running on this node (0 or 1)." },
];

/// Describe every metric of [`METRICS`] to the installed `metrics` recorder (call once, after installing it).
pub fn describe_all() {
    for m in METRICS {
        match (m.kind, m.unit) {
            (MetricKind::Counter, Some(u)) => metrics::describe_counter!(m.name, u, m.help),
            (MetricKind::Counter, None) => metrics::describe_counter!(m.name, m.help),
            (MetricKind::Gauge, Some(u)) => metrics::describe_gauge!(m.name, u, m.help),
            (MetricKind::Gauge, None) => metrics::describe_gauge!(m.name, m.help),
            (MetricKind::Histogram, Some(u)) => metrics::describe_histogram!(m.name, u, m.help),
            (MetricKind::Histogram, None) => metrics::describe_histogram!(m.name, m.help),
        }
    }
}
