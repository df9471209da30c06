//! `mta-server serve`: open the engine, bind listeners, run until a signal, stop gracefully.
//!
//! Graceful stop (docs/operations.md): new SMTP connections get `421 4.3.2` and HTTP `503`, in-flight injections finish,
//! all within `server.shutdown_timeout`; then the spool is flushed and closed. Whatever is unfinished stays
//! queued. SIGHUP reopens the event log.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

use anyhow::Context;
use mta_core::cluster::{Cluster, NodeStatus, StatusFn};
use mta_core::{Engine, EngineConfig};
use mta_smtp::{ConnectionLimits, ListenerOptions, SessionConfig};
use tokio::net::TcpListener;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::config::Config;
use crate::http::{self, HttpState};
use crate::secrets::UserStore;
use crate::smtp_handler::SmtpHandler;

/// The session settings of `[smtp]`, with TLS when a certificate is configured.
fn session_config(config: &Config) -> anyhow::Result<SessionConfig> {
    let tls = match (&config.smtp.tls_cert, &config.smtp.tls_key) {
        (Some(cert), Some(key)) => Some(tokio_rustls::TlsAcceptor::from(crate::tls::server_config(cert, key)?)),
        _ => None,
    };
    Ok(SessionConfig { tls, ..config.smtp.session_config(&config.server.hostname) })
}

async fn bind(addr: SocketAddr, what: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr).await.with_context(|| format!("cannot listen for {what} on {addr}"))
}

/// Run the server until SIGTERM/SIGINT, then stop gracefully.
pub async fn run(config: Config) -> anyhow::Result<()> {
    let prometheus = crate::telemetry::init_metrics()?;
    // The cluster starts before the engine (delivery takes its limits from the start); its heartbeat reads
    // the engine once it is open.
    let opened: Arc<OnceLock<Engine>> = Arc::new(OnceLock::new());
    let cluster = start_cluster(&config, opened.clone())?;
    let mut engine_config = EngineConfig::from(&config);
    if let Some(c) = &cluster {
        engine_config.delivery.fleet = Some(mta_core::delivery::Fleet(c.clone()));
    }
    let (engine, report) = Engine::open(engine_config).await.context("cannot open the spool")?;
    let _ = opened.set(engine.clone());
    tracing::info!(
        messages = report.messages,
        quarantined = report.quarantined.len(),
        path = %config.spool.path.display(),
        "spool opened"
    );
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    // TLS reporting (RFC 8460): ends by itself once the engine stops accepting work.

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
            .with_complaint_address(config.suppression.complaint_address())
            .with_backpressure(backpressure.clone(), limits.clone()),
    );

    let mut smtp_tasks = JoinSet::new();
    for l in config.smtp.listeners() {
        let (addr, mode, proxy) = (l.address, mta_smtp::ListenerMode::from(l.mode), l.proxy_protocol);
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
    let http_state = HttpState::new(engine.clone(), &config, prometheus, preflight.clone())?
        .with_backpressure(backpressure)
        .with_cluster(cluster.clone());
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
    if let Some(c) = &cluster {
        c.shutdown().await;
    }
    tracing::info!("stopped");
    Ok(())
}

/// Join the fleet's Redis when `cluster.redis_url` is set; the heartbeat reports the engine's state and queue.
fn start_cluster(config: &Config, engine: Arc<OnceLock<Engine>>) -> anyhow::Result<Option<Arc<Cluster>>> {
    let Some(cluster) = config.cluster.to_core(&config.server.node_id) else { return Ok(None) };
    let status: StatusFn = Arc::new(move || match engine.get() {
        Some(e) => NodeStatus {
            state: e.backpressure().state().as_str().to_string(),
            queued: e
                .delivery()
                .summary()
                .iter()
                .map(|r| r.counts.scheduled + r.counts.ready + r.counts.in_flight + r.counts.held)
                .sum(),
        },
        None => NodeStatus { state: "healthy".to_string(), queued: 0 },
    });
    tracing::info!(name = %cluster.name, "fleet-wide limits on Redis");
    Ok(Some(Cluster::start(cluster, status)?))
}
