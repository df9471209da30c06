//! TLS reporting (RFC 8460): per policy domain and period, how many sessions under an MTA-STS or DANE policy
//! succeeded and which failed and why; at the end of each period a JSON report goes to the domain's `rua`.
//!
//! # Layout
//! - `counts`: [`TlsReports`], the counters (recorded by delivery connections), persisted in the spool.
//! - `report`: the `_smtp._tls` record, the JSON report, its gzip and mail forms.
//! - `send`: [`Sender`]: HTTPS upload and mail through our own queue.
//!
//! Only destinations with a policy (MTA-STS or DANE) are counted: they are the ones whose operators publish
//! reporting addresses in practice, and it spares a `_smtp._tls` lookup per destination of plain traffic.

mod counts;
mod report;
mod send;

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub use counts::{DomainCounts, Due, FailureKey, PolicyDesc, TlsReports};
pub use report::{parse_record, Rua, Submitter};
pub use send::{Sender, Sent};

use crate::engine::Engine;

/// `tls_report.*`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsReportConfig {
    /// Count sessions and send reports.
    pub enabled: bool,
    /// Length of a report period (RFC 8460: a day; tests use seconds).
    pub interval: Duration,
    /// `organization-name`; `None`: the host name.
    pub organization: Option<String>,
    /// `contact-info` and the sender of mailed reports; `None`: `postmaster@<hostname>`.
    pub contact: Option<String>,
}

impl Default for TlsReportConfig {
    fn default() -> Self {
        TlsReportConfig { enabled: false, interval: Duration::from_secs(86_400), organization: None, contact: None }
    }
}

/// After a period ends, a report that could not be delivered is retried for this long, then dropped.
const GIVE_UP_AFTER: u64 = 86_400;

/// Runs the reporting loop of `engine` until it stops accepting work or is gone: flushes the counters every
/// tick (a quarter of the period, between 1 s and 1 min) and sends the reports of ended periods. `None` when
/// reporting is off. [`Engine::open`] starts it (embedders get it with the engine); it holds the engine only
/// while a tick runs, so the loop never keeps a dropped engine alive.
pub(crate) fn spawn(engine: &Engine) -> Option<tokio::task::JoinHandle<()>> {
    let reports = engine.delivery().tls_reports()?.clone();
    let sender = engine.delivery().tls_report_sender()?;
    let interval = engine.config().delivery.tls_report.interval;
    let tick = (interval / 4).clamp(Duration::from_secs(1), Duration::from_secs(60));
    let weak = engine.downgrade();
    Some(tokio::spawn(async move {
        reports.load().await;
        loop {
            tokio::time::sleep(tick).await;
            let Some(engine) = weak.upgrade() else { return };
            reports.flush().await;
            if !engine.is_accepting() {
                return;
            }
            send_due(&engine, &reports, &sender).await;
        }
    }))
}

async fn send_due(engine: &Engine, reports: &Arc<TlsReports>, sender: &Arc<Sender>) {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    for due in reports.due(now) {
        let error = match sender.send(engine, &due).await {
            Ok(sent) => {
                for rua in &sent.delivered {
                    reports.sent_to(due.start, &due.domain, rua).await;
                }
                match sent.failed.into_iter().next() {
                    None => {
                        let n = due.counts.sent_to.len() + sent.delivered.len();
                        tracing::info!(domain = %due.domain, destinations = n, "TLS report for a period sent");
                        reports.done(due.start, &due.domain).await;
                        continue;
                    }
                    Some((rua, e)) => format!("{rua}: {e}"),
                }
            }
            Err(e) => e,
        };
        if now > due.end + GIVE_UP_AFTER {
            tracing::warn!(domain = %due.domain, error = %error, "TLS report given up after a day of failures");
            reports.done(due.start, &due.domain).await;
        } else {
            tracing::info!(domain = %due.domain, error = %error, "TLS report not sent everywhere; retried later");
        }
    }
}
