//! `[auth]`: inbound SPF/DKIM/DMARC policy. The table is the core's [`AuthPolicy`] itself.

use mta_core::auth::{AuthPolicy, Policy};

use super::Invalid;

/// The checks serde cannot express: DKIM has no `enforce`.
pub(super) fn check(auth: &AuthPolicy) -> Result<(), Invalid> {
    if auth.dkim == Policy::Enforce {
        return Err(Invalid::new(
            "auth.dkim",
            "only \"off\" or \"record\" (a failed signature counts as none; DMARC may reject)",
        ));
    }
    Ok(())
}
