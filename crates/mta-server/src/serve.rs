//! `mta-server serve`: open the engine, bind listeners, run until a signal, stop gracefully.
//!
//! Graceful stop (contract): new SMTP connections get `421 4.3.2` and HTTP `503`, in-flight injections finish,
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

use crate::config::{Config, ListenerMode};
use crate::http::{self, HttpState};
use crate::secrets::UserStore;
use crate::smtp_handler::SmtpHandler;

/// Build the engine's config from the file's.
pub fn engine_config(config: &Config) -> EngineConfig {
    let mut ec = EngineConfig::new(config.spool.path.clone());
    ec.hostname = config.server.hostname.clone();
    ec.node_id = config.server.node_id.clone();
    ec.spool_cache_bytes = config.spool.cache_bytes;
    ec.event_log = Some(config.log.events.clone());
    ec.max_recipients = config.smtp.max_recipients;
    ec.max_message_size = config.smtp.max_message_size;
    ec
}

fn session_config(config: &Config) -> anyhow::Result<SessionConfig> {
    let tls = match (&config.smtp.tls_cert, &config.smtp.tls_key) {
        (Some(cert), Some(key)) => Some(tokio_rustls::TlsAcceptor::from(crate::tls::server_config(cert, key)?)),
        _ => None,
    };
    let mut sc = SessionConfig::default();
    sc.hostname = config.server.hostname.clone();
    sc.max_message_size = config.smtp.max_message_size;
    sc.max_recipients = config.smtp.max_recipients;
    sc.max_errors = u32::try_from(config.smtp.max_errors).unwrap_or(u32::MAX);
    sc.max_hops = config.smtp.max_hops;
    sc.timeout_command = config.smtp.timeout_command.get();
    sc.timeout_data = config.smtp.timeout_data.get();
    sc.allow_plaintext_auth = config.smtp.allow_plaintext_auth;
    sc.tls = tls;
    Ok(sc)
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

    let session = Arc::new(session_config(&config)?);
    let users = UserStore::new(config.smtp.users.iter().map(|u| (u.name.clone(), u.password_hash.clone())));
    let handler = Arc::new(SmtpHandler::new(
        engine.clone(),
        config.smtp.relay_networks.clone(),
        config.smtp.relay_domains.clone(),
        users,
    ));
    let limits = Arc::new(ConnectionLimits::new(config.smtp.max_connections, config.smtp.max_connections_per_ip));

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
        let fut = mta_smtp::serve(
            listener,
            ListenerOptions { mode, proxy_protocol: proxy },
            session.clone(),
            handler.clone(),
            limits.clone(),
            shutdown_rx.clone(),
        );
        smtp_tasks.spawn(fut);
    }

    let http_listener = bind(config.http.listen, "HTTP").await?;
    tracing::info!(addr = %config.http.listen, "HTTP listening");
    let http_state = HttpState::new(engine.clone(), &config, prometheus)?;
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
    let _ = shutdown_tx.send(true);
    let drain = async {
        while smtp_tasks.join_next().await.is_some() {}
        let _ = http_task.await;
    };
    if tokio::time::timeout(config.server.shutdown_timeout.get(), drain).await.is_err() {
        tracing::warn!("shutdown timeout reached; unfinished work stays queued");
    }
    engine.shutdown().await;
    tracing::info!("stopped");
    Ok(())
}
