//! `GET /api/v1/stats/timeseries`: per-minute event counts for the last 15 minutes and bounce classes over the
//! last hour, from the engine's ring ([`mta_core::throughput::Throughput`]); what the console charts.

use axum::extract::State;
use axum::Json;
use mta_core::throughput::{ClassCounts, MinuteCounts};
use serde::Serialize;
use utoipa::ToSchema;

use super::status::rfc3339_ms;
use super::HttpState;

/// Minutes in the series.
const SERIES_MINUTES: usize = 15;
/// Minutes the bounce classes are summed over.
const CLASS_MINUTES: usize = 60;

/// The body of `GET /api/v1/stats/timeseries`.
#[derive(Debug, Serialize, ToSchema)]
pub struct TimeSeries {
    /// When the answer was made (RFC 3339 UTC).
    #[schema(format = DateTime)]
    pub now: Option<String>,
    /// Length of one bucket, seconds (always 60).
    pub bucket_secs: u64,
    /// The last 15 minutes, oldest first; the last one is the current (partial) minute.
    pub minutes: Vec<MinuteBucket>,
    /// The window of `bounce_classes`, minutes (always 60).
    pub bounce_window_minutes: u64,
    /// Bounce classes seen over the last hour (permanent failures, expirations and deferrals), in code order;
    /// classes not seen are left out.
    pub bounce_classes: Vec<BounceClassCount>,
}

/// One minute of [`TimeSeries`]: recipients by what happened to them.
#[derive(Debug, Serialize, ToSchema)]
pub struct MinuteBucket {
    /// Start of the minute (RFC 3339 UTC).
    #[schema(format = DateTime)]
    pub start: Option<String>,
    /// Recipients accepted into the spool.
    pub received: u64,
    /// Recipients accepted by the next hop.
    pub delivered: u64,
    /// Attempts that failed for now (retried later).
    pub deferred: u64,
    /// Recipients failed permanently.
    pub bounced: u64,
    /// Recipients bounced at `max_age`.
    pub expired: u64,
}

/// One bounce class in [`TimeSeries`].
#[derive(Debug, Serialize, ToSchema)]
pub struct BounceClassCount {
    /// SparkPost's class code (10 invalid recipient, 22 mailbox full, 51 spam block, ...).
    #[schema(minimum = 1, maximum = 100)]
    pub class: u8,
    /// The class's name.
    pub name: &'static str,
    /// Permanent failures and expirations of this class.
    pub bounced: u64,
    /// Deferrals of this class.
    pub deferred: u64,
}

impl From<MinuteCounts> for MinuteBucket {
    fn from(m: MinuteCounts) -> Self {
        MinuteBucket {
            start: rfc3339_ms(m.start_ms),
            received: m.received,
            delivered: m.delivered,
            deferred: m.deferred,
            bounced: m.bounced,
            expired: m.expired,
        }
    }
}

impl From<ClassCounts> for BounceClassCount {
    fn from(c: ClassCounts) -> Self {
        BounceClassCount { class: c.class.code(), name: c.class.name(), bounced: c.bounced, deferred: c.deferred }
    }
}

/// `GET /api/v1/stats/timeseries`.
#[utoipa::path(get, path = "/api/v1/stats/timeseries", operation_id = "getTimeSeries",
    summary = "Per-minute recipient counts (last 15 minutes) and bounce classes (last hour).",
    description = "Counted in memory since the process started (a restart starts from zero). Buckets are whole UTC minutes; the last bucket is the current minute so far.",
    responses((status = 200, description = "The series.", body = TimeSeries)))]
pub async fn get_timeseries(State(state): State<HttpState>) -> Json<TimeSeries> {
    let ring = state.inner.engine.events().throughput();
    let now = mta_core::throughput::now_ms();
    Json(TimeSeries {
        now: rfc3339_ms(now),
        bucket_secs: 60,
        minutes: ring.minutes(now, SERIES_MINUTES).into_iter().map(MinuteBucket::from).collect(),
        bounce_window_minutes: CLASS_MINUTES as u64,
        bounce_classes: ring.classes(now, CLASS_MINUTES).into_iter().map(BounceClassCount::from).collect(),
    })
}
