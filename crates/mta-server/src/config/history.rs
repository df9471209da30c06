//! `[history]`: how long and how much of finished messages' outcomes `GET /api/v1/messages/{id}` keeps answering
//! from; converts into [`mta_core::history::HistoryConfig`], whose defaults these are.

use mta_core::history::{self, HistoryConfig};
use serde::{Deserialize, Serialize};

use super::Invalid;
use crate::duration::HumanDuration;

/// `[history]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HistorySection {
    /// Finished messages are kept this long after their last recipient became final.
    pub retention: HumanDuration,
    /// Bytes of history kept at most; beyond it the oldest entries go first.
    pub max_bytes: u64,
}

impl Default for HistorySection {
    fn default() -> Self {
        HistorySection { retention: history::DEFAULT_RETENTION.into(), max_bytes: history::DEFAULT_MAX_BYTES }
    }
}

impl HistorySection {
    /// The checks serde cannot express.
    pub(super) fn check(&self) -> Result<(), Invalid> {
        if self.max_bytes == 0 && !self.retention.get().is_zero() {
            return Err(Invalid::new("history.max_bytes", "must be above 0 (set retention = \"0s\" to keep none)"));
        }
        Ok(())
    }

    /// The engine's form.
    pub fn to_core(&self) -> HistoryConfig {
        HistoryConfig { retention: self.retention.get(), max_bytes: self.max_bytes }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::super::Config;

    #[test]
    fn defaults_are_the_contracts() {
        let c = Config::parse("", Path::new("t")).unwrap();
        let h = c.history.to_core();
        assert_eq!(h.retention.as_secs(), 7 * 24 * 3600);
        assert_eq!(h.max_bytes, 1_073_741_824);
        let c = Config::parse("[history]\nretention = \"1h\"\nmax_bytes = 1000\n", Path::new("t")).unwrap();
        assert_eq!(c.history.to_core().retention.as_secs(), 3600);
    }
}
