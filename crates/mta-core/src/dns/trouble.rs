//! Is an upstream in trouble (failing across many names at once) or answering (so a failing name
//! is that name's trouble)? A small synchronous state machine over the upstream's recent
//! outcomes, fed one packet outcome at a time with the time passed in, so it is tested without
//! sockets or sleeps.
//!
//! Why: per-name back-off (the failure memo, doubled per consecutive failure) is right for a name
//! that fails while the upstream answers others. When every name fails at once the failures say
//! nothing about the names: escalating each of them kept healthy domains waiting minutes after
//! the upstream had healed (measured: 16 of 200 domains still failing 2 minutes after a 15 s
//! storm of 50% SERVFAIL, every failure served from our own memo). So while an upstream is in
//! trouble, failures do not escalate, and when it recovers the single-failure memos made before
//! the recovery are void (see `cache.rs`, `pool.rs`).
//!
//! - **Enter** on a failure when, among the last [`WINDOW`] outcomes of the last [`ENTER_SPAN`],
//!   at least [`ENTER_FAILURE_RATIO`] failed, from at least [`ENTER_MIN_NAMES`] distinct names.
//!   One broken name, however often asked, never makes its upstream look in trouble.
//! - **Leave** on an answer when the upstream answers again: either [`EXIT_RUN`] answers in a
//!   row with the last failure at least [`EXIT_QUIET`] old (few queries: during trouble the
//!   retry budget lets ~1 retry a second through), or at most [`EXIT_FAILURE_RATIO`] failures
//!   among at least [`EXIT_MIN_OUTCOMES`] outcomes of the last [`EXIT_SPAN`] (busy upstream,
//!   where a few broken names always fail somewhere). Leaving clears the window: a new trouble
//!   needs new evidence, so a broken name failing just after the heal is that name's trouble.
//!   A leave during a storm that goes on (possible only with few queries: two answers in a row)
//!   costs a few first attempts until [`ENTER_MIN_NAMES`] names have failed again; memos not yet
//!   voided then come back into force.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Outcomes kept (the most recent ones): bounded, and enough for the ratios below.
pub(crate) const WINDOW: usize = 32;
/// Outcomes older than this do not count for entering.
pub(crate) const ENTER_SPAN: Duration = Duration::from_secs(10);
/// Fraction of failed outcomes that makes the upstream's trouble (a 50% SERVFAIL storm does).
pub(crate) const ENTER_FAILURE_RATIO: f64 = 0.4;
/// Distinct failing names needed as well: a few broken names are the names' trouble.
pub(crate) const ENTER_MIN_NAMES: usize = 4;
/// Answers in a row that end the trouble once the last failure is [`EXIT_QUIET`] old.
pub(crate) const EXIT_RUN: u32 = 2;
/// Age of the last failure for [`EXIT_RUN`] answers to end the trouble.
pub(crate) const EXIT_QUIET: Duration = Duration::from_secs(1);
/// Span of the ratio test for leaving on a busy upstream.
pub(crate) const EXIT_SPAN: Duration = Duration::from_secs(2);
/// Outcomes within [`EXIT_SPAN`] needed for the ratio test.
pub(crate) const EXIT_MIN_OUTCOMES: usize = 8;
/// At most this fraction of failures within [`EXIT_SPAN`] to leave by the ratio test.
pub(crate) const EXIT_FAILURE_RATIO: f64 = 0.1;

#[derive(Debug, Clone, Copy)]
struct Outcome {
    at: Instant,
    /// Hash of the query name (distinct names, not their text).
    name: u64,
    failed: bool,
}

/// A change of state reported by [`Trouble::observe`] (for metrics and logs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Change {
    /// The upstream fails across many names: per-name back-off is suspended.
    Entered,
    /// The upstream answers again: failures memoized before now are void.
    Recovered,
}

/// Trouble state of one upstream (see the module docs).
#[derive(Debug, Default)]
pub(crate) struct Trouble {
    recent: VecDeque<Outcome>,
    /// Start of the current trouble; `None` while the upstream answers.
    since: Option<Instant>,
    /// End of the last trouble.
    recovered_at: Option<Instant>,
    /// Answers since the last failure.
    run: u32,
    last_failure: Option<Instant>,
}

impl Trouble {
    /// Record the outcome of one packet (`failed`: SERVFAIL, REFUSED, timeout, network error;
    /// an answer, NXDOMAIN and NODATA included, is not a failure).
    pub fn observe(&mut self, now: Instant, name: u64, failed: bool) -> Option<Change> {
        if self.recent.len() >= WINDOW {
            self.recent.pop_front();
        }
        self.recent.push_back(Outcome { at: now, name, failed });
        if failed {
            self.run = 0;
            self.last_failure = Some(now);
            if self.since.is_none() && self.storm(now) {
                self.since = Some(now);
                return Some(Change::Entered);
            }
        } else {
            self.run = self.run.saturating_add(1);
            if self.since.is_some() && self.answering(now) {
                self.since = None;
                self.recovered_at = Some(now);
                self.recent.clear();
                return Some(Change::Recovered);
            }
        }
        None
    }

    /// Failing across many names now.
    pub fn in_trouble(&self) -> bool {
        self.since.is_some()
    }

    /// The upstream answers now and came out of trouble after `at`: a failure it gave at `at`
    /// was (most likely) part of that trouble.
    pub fn recovered_since(&self, at: Instant) -> bool {
        self.since.is_none() && self.recovered_at.is_some_and(|r| r > at)
    }

    fn storm(&self, now: Instant) -> bool {
        let (mut total, mut failures, mut names) = (0usize, 0usize, Vec::with_capacity(WINDOW));
        for o in self.recent.iter().filter(|o| now.saturating_duration_since(o.at) <= ENTER_SPAN) {
            total += 1;
            if o.failed {
                failures += 1;
                if !names.contains(&o.name) {
                    names.push(o.name);
                }
            }
        }
        names.len() >= ENTER_MIN_NAMES && failures as f64 >= ENTER_FAILURE_RATIO * total as f64
    }

    fn answering(&self, now: Instant) -> bool {
        let quiet = self.last_failure.is_none_or(|t| now.saturating_duration_since(t) >= EXIT_QUIET);
        if self.run >= EXIT_RUN && quiet {
            return true;
        }
        let (mut total, mut failures) = (0usize, 0usize);
        for o in self.recent.iter().filter(|o| now.saturating_duration_since(o.at) <= EXIT_SPAN) {
            total += 1;
            failures += usize::from(o.failed);
        }
        total >= EXIT_MIN_OUTCOMES && failures as f64 <= EXIT_FAILURE_RATIO * total as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn one_broken_name_is_not_the_upstreams_trouble() {
        let mut t = Trouble::default();
        let t0 = Instant::now();
        // the broken name (0) fails every other query, among answers for other names
        for i in 0..200u64 {
            let failed = i % 2 == 0;
            let name = if failed { 0 } else { i };
            assert_eq!(t.observe(t0 + ms(i * 10), name, failed), None, "query {i}");
        }
        assert!(!t.in_trouble());
        // three broken names are not enough either
        for i in 0..200u64 {
            t.observe(t0 + ms(2000 + i * 10), i % 3, true);
        }
        assert!(!t.in_trouble());
    }

    #[test]
    fn failures_across_names_enter_and_answers_leave() {
        let mut t = Trouble::default();
        let t0 = Instant::now();
        let mut changes = Vec::new();
        // 50% storm, one query every 10 ms, every query a different name
        for i in 0..300u64 {
            if let Some(c) = t.observe(t0 + ms(i * 10), i, i % 2 == 0) {
                changes.push((i, c));
            }
        }
        assert_eq!(changes.first().map(|c| c.1), Some(Change::Entered));
        assert!(changes[0].0 < 16, "entered late: {changes:?}");
        // busy: never a quiet second, never a mostly-answering span
        assert_eq!(changes.len(), 1, "{changes:?}");
        let storm_failure_at = t0 + ms(2980);
        assert!(t.in_trouble() && !t.recovered_since(storm_failure_at));
        // healed; the retry budget lets one retry a second through
        let healed = t0 + ms(3000);
        assert_eq!(t.observe(healed + ms(400), 1000, false), None);
        assert_eq!(t.observe(healed + ms(1400), 1001, false), Some(Change::Recovered));
        assert!(!t.in_trouble());
        assert!(t.recovered_since(storm_failure_at));
        assert!(!t.recovered_since(healed + ms(1500)), "a failure after the recovery is not the storm's");
    }

    #[test]
    fn a_leave_during_the_storm_is_undone_by_new_failures() {
        let mut t = Trouble::default();
        let t0 = Instant::now();
        for i in 0..21u64 {
            t.observe(t0 + ms(i * 10), i, i % 2 == 0);
        }
        assert!(t.in_trouble());
        // a slow storm: two answers 1 s apart, then failures again, across names
        assert_eq!(t.observe(t0 + ms(1200), 100, false), None);
        assert_eq!(t.observe(t0 + ms(2200), 101, false), Some(Change::Recovered));
        let mut entered = None;
        for i in 0..20u64 {
            if t.observe(t0 + ms(2300 + i), 200 + i, i % 2 == 0) == Some(Change::Entered) {
                entered = Some(i);
                break;
            }
        }
        assert_eq!(entered, Some(6), "fourth failing name");
        assert!(t.in_trouble() && !t.recovered_since(t0));
    }

    #[test]
    fn a_broken_name_after_the_heal_is_the_names_trouble() {
        let mut t = Trouble::default();
        let t0 = Instant::now();
        for i in 0..20u64 {
            t.observe(t0 + ms(i * 10), i, true);
        }
        t.observe(t0 + ms(1500), 100, false);
        assert_eq!(t.observe(t0 + ms(2000), 101, false), Some(Change::Recovered));
        // the storm's failures are still recent, but they are not this name's evidence
        for i in 0..10u64 {
            assert_eq!(t.observe(t0 + ms(2100 + i * 100), 999, true), None);
        }
        assert!(!t.in_trouble());
    }

    #[test]
    fn a_busy_upstream_with_a_few_broken_names_leaves_trouble() {
        let mut t = Trouble::default();
        let t0 = Instant::now();
        for i in 0..20u64 {
            t.observe(t0 + ms(i), i, true);
        }
        assert!(t.in_trouble());
        // healed, busy: 1 query per ms, one in 20 for a broken name
        let mut left = None;
        for i in 0..200u64 {
            if t.observe(t0 + ms(100 + i), 1000 + i, i % 20 == 0) == Some(Change::Recovered) {
                left = Some(i);
                break;
            }
        }
        assert!(left.is_some_and(|i| i < 60), "{left:?}");
    }
}
