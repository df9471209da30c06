//! The keys `[[webhook]]` and `[[amqp]]` share (which events, batching, time limits): their defaults, their
//! checks and their conversion into the engine's [`EndpointSettings`], written once for both sections.

use mta_core::export::{self, EndpointSettings};
use mta_core::EventType;

use super::Invalid;
use crate::duration::HumanDuration;

/// Largest `batch_size` (a batch is held in memory while it is retried).
const MAX_BATCH_SIZE: usize = 10_000;

pub(super) fn all_events() -> Vec<EventType> {
    EventType::ALL.to_vec()
}
pub(super) fn default_batch_size() -> usize {
    export::DEFAULT_BATCH_SIZE
}
pub(super) fn default_batch_delay() -> HumanDuration {
    export::DEFAULT_BATCH_DELAY.into()
}
pub(super) fn default_timeout() -> HumanDuration {
    export::DEFAULT_TIMEOUT.into()
}
pub(super) fn default_max_retry_age() -> HumanDuration {
    export::DEFAULT_MAX_RETRY_AGE.into()
}

/// The shared keys of one export section, as read.
pub(super) struct ExportKeys<'a> {
    pub name: &'a Option<String>,
    pub events: &'a [EventType],
    pub batch_size: usize,
    pub batch_delay: &'a HumanDuration,
    pub timeout: &'a HumanDuration,
    pub max_retry_age: &'a HumanDuration,
}

impl ExportKeys<'_> {
    /// The checks serde cannot express; `key` makes the dotted name of a key of this section.
    pub fn check(&self, key: impl Fn(&str) -> String) -> Result<(), Invalid> {
        if self.events.is_empty() {
            return Err(Invalid::new(key("events"), "lists no event type (leave it out for all)"));
        }
        if self.batch_size == 0 || self.batch_size > MAX_BATCH_SIZE {
            return Err(Invalid::new(key("batch_size"), format!("must be 1 to {MAX_BATCH_SIZE}")));
        }
        if self.timeout.get().is_zero() {
            return Err(Invalid::new(key("timeout"), "must be above 0"));
        }
        Ok(())
    }

    /// The engine's endpoint settings; `fallback_name` when `name` is not set.
    pub fn settings(&self, fallback_name: String) -> EndpointSettings {
        let mut endpoint = EndpointSettings::defaults(self.name.clone().unwrap_or(fallback_name));
        endpoint.events = self.events.iter().copied().collect();
        endpoint.batch_size = self.batch_size;
        endpoint.batch_delay = self.batch_delay.get();
        endpoint.timeout = self.timeout.get();
        endpoint.max_retry_age = self.max_retry_age.get();
        endpoint
    }
}
