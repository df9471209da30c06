//! [`Throughput`]: per-minute counts of what happened to recipients (received, delivered, deferred, bounced,
//! expired) and of bounce classes, for the last hour, in a fixed ring of one slot per minute.
//!
//! Fed by [`crate::EventLog::emit`] (every event passes there), read by the operator console's time-series
//! route. Memory is fixed: [`Throughput::MINUTES`] slots, each a few hundred bytes.

use std::time::{SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;

use crate::bounce::{BounceClass, ALL_CLASSES};
use crate::events::EventType;

/// Milliseconds in a minute.
const MINUTE_MS: u64 = 60_000;

/// The counts of one minute.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MinuteCounts {
    /// Start of the minute, milliseconds since the epoch.
    pub start_ms: u64,
    /// Recipients accepted into the spool.
    pub received: u64,
    /// Recipients accepted by the next hop.
    pub delivered: u64,
    /// Attempts that failed for now (a retry is scheduled).
    pub deferred: u64,
    /// Recipients failed permanently.
    pub bounced: u64,
    /// Recipients bounced at `max_age`.
    pub expired: u64,
}

/// How often one bounce class was seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClassCounts {
    /// The class.
    pub class: BounceClass,
    /// Permanent failures and expirations of this class.
    pub bounced: u64,
    /// Deferrals (transient failures) of this class.
    pub deferred: u64,
}

/// One minute of the ring.
#[derive(Debug, Clone, Copy)]
struct Slot {
    /// Minutes since the epoch this slot holds; a slot from an older minute is stale (counts as zero).
    minute: u64,
    counts: MinuteCounts,
    /// Indexed like [`ALL_CLASSES`].
    bounced_by_class: [u32; ALL_CLASSES.len()],
    deferred_by_class: [u32; ALL_CLASSES.len()],
}

impl Slot {
    fn empty(minute: u64) -> Slot {
        Slot {
            minute,
            counts: MinuteCounts { start_ms: minute.saturating_mul(MINUTE_MS), ..MinuteCounts::default() },
            bounced_by_class: [0; ALL_CLASSES.len()],
            deferred_by_class: [0; ALL_CLASSES.len()],
        }
    }
}

/// Per-minute counters for the last hour; shared by reference, locked briefly per batch of events.
#[derive(Debug)]
pub struct Throughput {
    slots: Mutex<Vec<Slot>>,
}

impl Default for Throughput {
    fn default() -> Self {
        Throughput::new()
    }
}

impl Throughput {
    /// How many minutes the ring keeps.
    pub const MINUTES: usize = 60;

    /// An empty ring.
    pub fn new() -> Throughput {
        Throughput { slots: Mutex::new(vec![Slot::empty(u64::MAX); Self::MINUTES]) }
    }

    /// Count `events` (type and bounce class) in the current minute.
    pub fn record(&self, events: impl IntoIterator<Item = (EventType, Option<BounceClass>)>) {
        self.record_at(now_ms(), events);
    }

    /// Count `events` in the minute of `now_ms`.
    pub fn record_at(&self, now_ms: u64, events: impl IntoIterator<Item = (EventType, Option<BounceClass>)>) {
        let minute = now_ms / MINUTE_MS;
        let mut slots = self.slots.lock();
        let slot = &mut slots[(minute % Self::MINUTES as u64) as usize];
        if slot.minute != minute {
            *slot = Slot::empty(minute);
        }
        for (kind, class) in events {
            let c = &mut slot.counts;
            let (counter, by_class) = match kind {
                EventType::Reception => (&mut c.received, None),
                EventType::Delivery => (&mut c.delivered, None),
                EventType::TransientFailure => (&mut c.deferred, Some(&mut slot.deferred_by_class)),
                EventType::Bounce => (&mut c.bounced, Some(&mut slot.bounced_by_class)),
                EventType::Expiration => (&mut c.expired, Some(&mut slot.bounced_by_class)),
                // Not message outcomes: a refused recipient was never queued, a rule action is about a site.
                EventType::Suppressed | EventType::ResponseRule => continue,
            };
            *counter += 1;
            if let (Some(by_class), Some(i)) = (by_class, class.and_then(class_index)) {
                by_class[i] = by_class[i].saturating_add(1);
            }
        }
    }

    /// The last `n` minutes (at most [`Throughput::MINUTES`]) up to the one of `now_ms` included, oldest first;
    /// a minute without events has zero counts.
    pub fn minutes(&self, now_ms: u64, n: usize) -> Vec<MinuteCounts> {
        let now = now_ms / MINUTE_MS;
        let n = n.clamp(1, Self::MINUTES) as u64;
        let slots = self.slots.lock();
        (0..n)
            .rev()
            .filter_map(|back| now.checked_sub(back))
            .map(|minute| {
                let slot = &slots[(minute % Self::MINUTES as u64) as usize];
                if slot.minute == minute {
                    slot.counts
                } else {
                    MinuteCounts { start_ms: minute * MINUTE_MS, ..MinuteCounts::default() }
                }
            })
            .collect()
    }

    /// Bounce classes seen over the last `n` minutes up to the one of `now_ms` included, in code order; classes
    /// never seen are left out.
    pub fn classes(&self, now_ms: u64, n: usize) -> Vec<ClassCounts> {
        let now = now_ms / MINUTE_MS;
        let n = n.clamp(1, Self::MINUTES) as u64;
        let mut bounced = [0u64; ALL_CLASSES.len()];
        let mut deferred = [0u64; ALL_CLASSES.len()];
        let slots = self.slots.lock();
        for slot in slots.iter().filter(|s| s.minute <= now && now - s.minute < n) {
            for i in 0..ALL_CLASSES.len() {
                bounced[i] += u64::from(slot.bounced_by_class[i]);
                deferred[i] += u64::from(slot.deferred_by_class[i]);
            }
        }
        drop(slots);
        ALL_CLASSES
            .iter()
            .enumerate()
            .filter(|(i, _)| bounced[*i] + deferred[*i] > 0)
            .map(|(i, class)| ClassCounts { class: *class, bounced: bounced[i], deferred: deferred[i] })
            .collect()
    }
}

/// Position of `class` in [`ALL_CLASSES`].
fn class_index(class: BounceClass) -> Option<usize> {
    ALL_CLASSES.iter().position(|c| *c == class)
}

/// Milliseconds since the epoch (0 if the clock is before it).
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: u64 = 1_800_000_000_000; // a minute boundary

    #[test]
    fn counts_land_in_their_minute_and_empty_minutes_are_zero() {
        let t = Throughput::new();
        t.record_at(T0 + 1_000, [(EventType::Reception, None), (EventType::Delivery, None)]);
        t.record_at(T0 + 59_999, [(EventType::Delivery, None)]);
        t.record_at(T0 + 2 * MINUTE_MS, [(EventType::Bounce, Some(BounceClass::InvalidRecipient))]);
        let m = t.minutes(T0 + 2 * MINUTE_MS + 5, 4);
        assert_eq!(m.len(), 4);
        assert_eq!(m[0], MinuteCounts { start_ms: T0 - MINUTE_MS, ..Default::default() });
        assert_eq!((m[1].start_ms, m[1].received, m[1].delivered), (T0, 1, 2));
        assert_eq!(m[2], MinuteCounts { start_ms: T0 + MINUTE_MS, ..Default::default() });
        assert_eq!((m[3].bounced, m[3].delivered), (1, 0));
    }

    #[test]
    fn the_ring_forgets_minutes_older_than_an_hour() {
        let t = Throughput::new();
        t.record_at(T0, [(EventType::Delivery, None)]);
        // The same slot, one hour later: the old minute is replaced, not added to.
        let later = T0 + Throughput::MINUTES as u64 * MINUTE_MS;
        t.record_at(later, [(EventType::Bounce, None)]);
        let m = t.minutes(later, Throughput::MINUTES);
        assert_eq!(m.iter().map(|c| c.delivered).sum::<u64>(), 0);
        assert_eq!(m.iter().map(|c| c.bounced).sum::<u64>(), 1);
        // Asking for more than the ring holds gives the ring.
        assert_eq!(t.minutes(later, 10_000).len(), Throughput::MINUTES);
    }

    #[test]
    fn classes_sum_over_the_window_by_kind() {
        let t = Throughput::new();
        t.record_at(T0, [(EventType::TransientFailure, Some(BounceClass::SpamBlock))]);
        t.record_at(T0 + MINUTE_MS, [(EventType::Bounce, Some(BounceClass::SpamBlock))]);
        t.record_at(T0 + MINUTE_MS, [(EventType::Expiration, Some(BounceClass::Timeout))]);
        t.record_at(T0 + MINUTE_MS, [(EventType::Delivery, None), (EventType::Bounce, None)]);
        let c = t.classes(T0 + MINUTE_MS, 60);
        assert_eq!(
            c,
            vec![
                ClassCounts { class: BounceClass::Timeout, bounced: 1, deferred: 0 },
                ClassCounts { class: BounceClass::SpamBlock, bounced: 1, deferred: 1 },
            ]
        );
        // A one-minute window leaves the deferral of the minute before out.
        assert_eq!(
            t.classes(T0 + MINUTE_MS, 1)[1],
            ClassCounts { class: BounceClass::SpamBlock, bounced: 1, deferred: 0 }
        );
    }
}
