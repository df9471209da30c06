//! `[log]`: process logs and the delivery event log.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// `log.format`: how process logs are written on stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

/// `[log]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogSection {
    /// Delivery event log (JSON lines).
    pub events: PathBuf,
    /// `text` or `json` process logs on stderr (added key).
    pub format: LogFormat,
}

impl Default for LogSection {
    fn default() -> Self {
        LogSection { events: PathBuf::from("./mta-data/events.jsonl"), format: LogFormat::Text }
    }
}
