//! `[debug]`: test-only switches.

use serde::{Deserialize, Serialize};

/// `[debug]`
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DebugSection {
    /// Enables `PUT /api/v1/debug/faults` (tests only).
    pub fault_injection: bool,
}
