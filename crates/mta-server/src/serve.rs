//! `mta-server serve`: open the engine, bind listeners, run until a signal, stop gracefully.
//!
//! Graceful stop (docs/operations.md): new SMTP connections get `421 4.3.2` and HTTP `503`, in-flight injections finish,
//! all within `server.shutdown_timeout`; then the spool is flushed and closed. Whatever is unfinished stays
//! queued. SIGHUP reopens the event log.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use mta_core::{Engine, EngineConfig};
use mta_smtp::{ConnectionLimits, ListenerMode as SmtpMode, ListenerOptions, SessionConfig};
use tokio::net::TcpListener;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;
use tokio::task::JoinSet;

use mta_core::auth;

use crate::config::{AuthPolicy, Config, ListenerMode};

fn auth_policy(p: AuthPolicy) -> auth::Policy {
    match p {
        AuthPolicy::Off => auth::Policy::Off,
        AuthPolicy::Record => auth::Policy::Record,
        AuthPolicy::Enforce => auth::Policy::Enforce,
    }
}
use crate::http::{self, HttpState};
use crate::secrets::UserStore;
use crate::smtp_handler::SmtpHandler;

/// Build the engine's config from the file's.
pub fn engine_config(config: &Config) -> EngineConfig {
    let mut ec = EngineConfig::new(config.spool.path.clone());
    ec.hostname = config.server.hostname.clone();
    ec.node_id = config.server.node_id.clone();
    ec.spool_cache_bytes = config.spool.cache_bytes;
    ec.memory_per_message = config.spool.memory_per_message;
    ec.auth = auth::AuthPolicy {
        spf: auth_policy(config.auth.spf),
        dkim: auth_policy(config.auth.dkim),
        dmarc: auth_policy(config.auth.dmarc),
    };
    ec.backpressure = Some(config.backpressure.to_core(config.smtp.max_connections));
    ec.hold_on_preflight_mismatch = config.dkim.on_preflight_mismatch == "hold";
    ec.source_addresses = config.delivery.source_address.into_iter().collect();
    ec.source_addresses.extend(config.delivery.pool.iter().flat_map(|p| p.addresses.iter().copied()));
    ec.body_memory_budget = config.spool.body_memory_budget;
    ec.event_log = Some(config.log.events.clone());
    ec.max_recipients = config.smtp.max_recipients;
    ec.max_message_size = config.smtp.max_message_size;
    ec.dkim_keys = config.dkim_keys().unwrap_or_default();
    let d = &config.dns;
    ec.dns.nameservers = d.nameservers.clone();
    ec.dns.max_qps_per_upstream = d.max_qps_per_upstream;
    ec.dns.max_in_flight = d.max_in_flight;
    ec.dns.min_ttl = d.min_ttl.get();
    ec.dns.max_ttl = d.max_ttl.get();
    ec.dns.negative_ttl = d.negative_ttl.get();
    ec.dns.serve_stale_for = d.serve_stale_for.get();
    ec.dns.enable_ipv6 = d.ipv6;
    ec.dns.lookup_timeout = d.lookup_timeout.get();
    ec.dns.query_timeout = d.query_timeout.get();
    let del = &config.delivery;
    let dc = &mut ec.delivery;
    dc.enabled = del.enabled;
    dc.port = del.port;
    dc.source_address = del.source_address;
    dc.pools = del.pool.iter().map(|p| (p.name.clone(), p.addresses.clone())).collect();
    dc.retry_intervals = del.retry_intervals.iter().map(|d| d.get()).collect();
    dc.max_age = del.max_age.get();
    dc.connections_per_site = del.connections_per_domain;
    dc.messages_per_connection = del.messages_per_connection;
    dc.require_tls = del.require_tls;
    dc.max_connections = del.max_connections;
    dc.max_inflight_bytes = del.max_inflight_bytes;
    dc.smtp_timeout = del.smtp_timeout.map(|d| d.get());
    dc.circuit_open_for = del.circuit_open_for.get();
    dc.throttle_for = del.throttle_for.get();
    dc.shaping = config
        .shaping
        .iter()
        .map(|s| mta_core::delivery::Shaping {
            domain: s.domain.to_ascii_lowercase(),
            connections: s.connections,
            messages_per_connection: s.messages_per_connection,
            rate: s.rate.as_deref().and_then(crate::config::parse_rate),
        })
        .collect();
    dc.routes = config
        .route
        .iter()
        .map(|r| mta_core::delivery::Route { domain: r.domain.to_ascii_lowercase(), relay: r.relay.clone() })
        .collect();
    ec
}

fn session_config(config: &Config) -> anyhow::Result<SessionConfig> {
    let tls = match (&config.smtp.tls_cert, &config.smtp.tls_key) {
        (Some(cert), Some(key)) => Some(tokio_rustls::TlsAcceptor::from(crate::tls::server_config(cert, key)?)),
        _ => None,
    };
    Ok(SessionConfig {
        hostname: config.server.hostname.clone(),
        max_message_size: config.smtp.max_message_size,
        max_recipients: config.smtp.max_recipients,
        max_errors: u32::try_from(config.smtp.max_errors).unwrap_or(u32::MAX),
        max_hops: config.smtp.max_hops,
        timeout_command: config.smtp.timeout_command.get(),
        timeout_data: config.smtp.timeout_data.get(),
        min_data_rate: config.smtp.min_data_rate,
        data_rate_grace: config.smtp.data_rate_grace.get(),
        allow_plaintext_auth: config.smtp.allow_plaintext_auth,
        tls,
        ..SessionConfig::default()
    })
}

async fn bind(addr: SocketAddr, what: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr).await.with_context(|| format!("cannot listen for {what} on {addr}"))
}

/// Run the server until SIGTERM/SIGINT, then stop gracefully.
pub async fn run(config: Config) -> anyhow::Result<()> {
    let prometheus = crate::telemetry::init_metrics()?;
    let (engine, report) = Engine::open(engine_config(&config)).await.context("cannot open the spool")?;
    tracing::info!(
        messages = report.messages,
        quarantined = report.quarantined.len(),
        path = %config.spool.path.display(),
        "spool opened"
    );
    let (shutdown_tx, shutdown_rx) = watch::channel(false);

    let verifier = engine.verifier().cloned();
    let preflight = engine.preflight().cloned();

    if config.debug.fault_injection {
        tracing::warn!(
            "debug.fault_injection = true: PUT /api/v1/debug/faults can slow this node on purpose (tests only)"
        );
    }
    let backpressure = engine.backpressure().clone();

    let session = Arc::new(session_config(&config)?);
    let users = UserStore::new(config.smtp.users.iter().map(|u| (u.name.clone(), u.password_hash.clone())));
    let limits = ConnectionLimits::new(config.smtp.max_connections, config.smtp.max_connections_per_ip)
        .with_network_share(config.smtp.network_share);
    let limits = Arc::new(limits);
    let handler = Arc::new(
        SmtpHandler::new(engine.clone(), config.smtp.relay_networks.clone(), config.smtp.relay_domains.clone(), users)
            .with_verifier(verifier)
            .with_backpressure(backpressure.clone(), limits.clone()),
    );

    let mut listeners: Vec<(SocketAddr, SmtpMode, bool)> =
        config.smtp.listen.iter().map(|a| (*a, SmtpMode::Smtp, false)).collect();
    for l in &config.smtp.listener {
        let mode = match l.mode {
            ListenerMode::Smtp => SmtpMode::Smtp,
            ListenerMode::Submission => SmtpMode::Submission,
            ListenerMode::Smtps => SmtpMode::Smtps,
        };
        listeners.push((l.address, mode, l.proxy_protocol));
    }
    let mut smtp_tasks = JoinSet::new();
    for (addr, mode, proxy) in listeners {
        let listener = bind(addr, "SMTP").await?;
        tracing::info!(%addr, ?mode, proxy_protocol = proxy, "SMTP listening");
        let options = if proxy {
            // Both lists name the load balancers in front of us (http.trusted_proxies has always counted for PROXY headers too).
            let trusted: Vec<_> =
                config.smtp.trusted_proxies.iter().chain(&config.http.trusted_proxies).copied().collect();
            if trusted.is_empty() {
                tracing::warn!(%addr, "PROXY protocol listener without smtp.trusted_proxies: every connection is refused");
            }
            ListenerOptions::proxied(mode, &trusted)
        } else {
            ListenerOptions::new(mode)
        };
        let fut =
            mta_smtp::serve(listener, options, session.clone(), handler.clone(), limits.clone(), shutdown_rx.clone());
        smtp_tasks.spawn(fut);
    }

    let http_listener = bind(config.http.listen, "HTTP").await?;
    tracing::info!(addr = %config.http.listen, "HTTP listening");
    let http_state =
        HttpState::new(engine.clone(), &config, prometheus, preflight.clone())?.with_backpressure(backpressure);
    let mut http_shutdown = shutdown_rx.clone();
    let http_task = tokio::spawn(http::serve(http_listener, http_state, async move {
        let _ = http_shutdown.wait_for(|stop| *stop).await;
    }));

    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sighup = signal(SignalKind::hangup())?;
    loop {
        tokio::select! {
            _ = sigterm.recv() => break,
            _ = sigint.recv() => break,
            _ = sighup.recv() => engine.events().reopen().await,
        }
    }
    tracing::info!(timeout = %config.server.shutdown_timeout, "graceful stop: no new work, finishing in-flight");
    let stop_started = std::time::Instant::now();
    let _ = shutdown_tx.send(true);
    let drain = async {
        while smtp_tasks.join_next().await.is_some() {}
        let _ = http_task.await;
    };
    if tokio::time::timeout(config.server.shutdown_timeout.get(), drain).await.is_err() {
        tracing::warn!("shutdown timeout reached; unfinished work stays queued");
    }
    // Deliveries get what is left of the shutdown budget to finish and record their results.
    let left = config.server.shutdown_timeout.get().saturating_sub(stop_started.elapsed());
    engine.shutdown_within(left.max(std::time::Duration::from_secs(1))).await;
    tracing::info!("stopped");
    Ok(())
}
