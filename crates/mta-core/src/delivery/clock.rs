//! Delivery's clock: wall-clock milliseconds for what is stored (due times, reception times, `max_age`) and
//! monotonic instants for limits and waits. Both come from tokio's clock in tests, so paused time drives a
//! whole runtime (retries an hour apart run in milliseconds).

use std::time::{SystemTime, UNIX_EPOCH};

use tokio::time::Instant;

/// Where "now" comes from.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Clock {
    /// The system clock.
    System,
    /// `base_ms` at `origin`, advancing with tokio's (possibly paused) clock.
    #[cfg_attr(not(test), allow(dead_code))]
    Virtual { base_ms: u64, origin: Instant },
}

impl Clock {
    /// A clock that starts at `base_ms` now and follows tokio's clock (tests with paused time).
    #[cfg(test)]
    pub(crate) fn virtual_at(base_ms: u64) -> Clock {
        Clock::Virtual { base_ms, origin: Instant::now() }
    }

    /// Unix time in milliseconds.
    pub(crate) fn now_ms(&self) -> u64 {
        match self {
            Clock::System => SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0),
            Clock::Virtual { base_ms, origin } => base_ms + origin.elapsed().as_millis() as u64,
        }
    }

    /// A monotonic instant (tokio's: paused in tests).
    pub(crate) fn instant(&self) -> Instant {
        Instant::now()
    }
}
