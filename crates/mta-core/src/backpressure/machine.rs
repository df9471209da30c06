//! The state machine: readings in, at most one transition out. No clock of its own, no I/O.
//!
//! Each [`Rule`] turns one signal's value into the state it asks for. Entering uses the high marks; staying
//! uses the low marks (`high × low_mark_ratio`; for "lower is worse" signals `high ÷ ratio`). So:
//! - a value above a high mark moves the node up at once (protecting the node does not wait);
//! - the node moves down only when every signal is below the low mark of the current state, and only after
//!   `min_dwell` in that state; it moves to the highest state some signal still holds.
//!
//! A signal hovering at a high mark therefore enters once and stays; one hovering at a low mark leaves once
//! and does not come back (it would have to cross the high mark again).

use std::time::{Duration, Instant};

use super::{Marks, Signal, State};

/// How one signal maps to a state.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rule {
    /// Which signal.
    pub signal: Signal,
    /// High marks (enter).
    pub marks: Marks,
    /// Worse when lower (free disk).
    pub lower_is_worse: bool,
    /// The highest state this signal may cause (DNS with `dns_action = "defer"`: degraded).
    pub cap: State,
}

impl Rule {
    /// A signal that is worse when higher.
    pub fn higher(signal: Signal, marks: Marks) -> Rule {
        Rule { signal, marks, lower_is_worse: false, cap: State::Shedding }
    }

    /// A signal that is worse when lower: shed at or below `shed_at`.
    pub fn lower(signal: Signal, shed_at: f64) -> Rule {
        Rule {
            signal,
            marks: Marks { degraded: None, shed: Some(shed_at) },
            lower_is_worse: true,
            cap: State::Shedding,
        }
    }

    /// Never ask for more than `cap`.
    pub fn capped_at(mut self, cap: State) -> Rule {
        self.cap = cap;
        self
    }

    fn crosses(&self, value: f64, mark: f64) -> bool {
        if self.lower_is_worse {
            value <= mark
        } else {
            value >= mark
        }
    }

    /// The low mark of `high`.
    pub fn low_mark(&self, high: f64, ratio: f64) -> f64 {
        if self.lower_is_worse {
            high / ratio
        } else {
            high * ratio
        }
    }

    /// The state `value` asks for when entering (high marks).
    pub fn enter_level(&self, value: f64) -> State {
        self.level(value, 1.0)
    }

    /// The state `value` holds (low marks): the node does not go below it.
    pub fn hold_level(&self, value: f64, ratio: f64) -> State {
        self.level(value, ratio)
    }

    fn level(&self, value: f64, ratio: f64) -> State {
        let level = if self.marks.shed.is_some_and(|m| self.crosses(value, self.low_mark(m, ratio))) {
            State::Shedding
        } else if self.marks.degraded.is_some_and(|m| self.crosses(value, self.low_mark(m, ratio))) {
            State::Degraded
        } else {
            State::Healthy
        };
        level.min(self.cap)
    }

    /// Human-readable: why this value holds `state`.
    fn explain(&self, value: f64, state: State, ratio: f64) -> String {
        let (mark, name) = match state {
            State::Shedding => (self.marks.shed, "shed"),
            _ => (self.marks.degraded, "degraded"),
        };
        let unit = self.signal.unit();
        let mark = mark.unwrap_or(f64::NAN);
        if self.crosses(value, mark) {
            let op = if self.lower_is_worse { "<=" } else { ">=" };
            format!("{} {} {unit} {op} {name} mark {} {unit}", self.signal.as_str(), fmt(value), fmt(mark))
        } else {
            let op = if self.lower_is_worse { "<" } else { ">" };
            let low = self.low_mark(mark, ratio);
            format!(
                "{} {} {unit} {op} {name} low mark {} {unit} (entered at {} {unit})",
                self.signal.as_str(),
                fmt(value),
                fmt(low),
                fmt(mark)
            )
        }
    }
}

fn fmt(v: f64) -> String {
    if v.abs() >= 10.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.3}")
    }
}

/// One signal's value at a sample; `None` when the window holds no evidence.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Reading {
    /// Which signal.
    pub signal: Signal,
    /// Its value.
    pub value: Option<f64>,
}

/// A change of state.
#[derive(Debug, Clone, PartialEq)]
pub struct Transition {
    /// Left.
    pub from: State,
    /// Entered.
    pub to: State,
    /// The signal that caused it (its `as_str()`), or `recovered` when moving down.
    pub reason: &'static str,
    /// Every signal holding the new state, human-readable (empty when healthy).
    pub reasons: Vec<String>,
}

/// The state machine (see the module doc).
#[derive(Debug, Clone)]
pub struct Machine {
    rules: Vec<Rule>,
    ratio: f64,
    min_dwell: Duration,
    state: State,
    since: Instant,
}

impl Machine {
    /// Starts `healthy` at `now`. `low_mark_ratio` is clamped to `(0, 1]` (1: no hysteresis).
    pub fn new(rules: Vec<Rule>, low_mark_ratio: f64, min_dwell: Duration, now: Instant) -> Machine {
        let ratio = if low_mark_ratio.is_finite() && low_mark_ratio > 0.0 { low_mark_ratio.min(1.0) } else { 1.0 };
        Machine { rules, ratio, min_dwell, state: State::Healthy, since: now }
    }

    /// The current state.
    pub fn state(&self) -> State {
        self.state
    }

    /// When the current state was entered.
    pub fn since(&self) -> Instant {
        self.since
    }

    /// The rules.
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// The low mark ratio in use.
    pub fn ratio(&self) -> f64 {
        self.ratio
    }

    fn value_of(readings: &[Reading], signal: Signal) -> Option<f64> {
        readings.iter().find(|r| r.signal == signal).and_then(|r| r.value).filter(|v| v.is_finite())
    }

    /// Feed one sample taken at `now`; returns the transition it caused, if any.
    pub fn observe(&mut self, now: Instant, readings: &[Reading]) -> Option<Transition> {
        let mut enter = State::Healthy;
        let mut cause = "recovered";
        let mut hold = State::Healthy;
        for rule in &self.rules {
            let Some(v) = Self::value_of(readings, rule.signal) else { continue };
            let e = rule.enter_level(v);
            if e > enter {
                enter = e;
                cause = rule.signal.as_str();
            }
            hold = hold.max(rule.hold_level(v, self.ratio));
        }
        let to = if enter > self.state {
            enter
        } else if hold < self.state && now.saturating_duration_since(self.since) >= self.min_dwell {
            cause = "recovered";
            hold
        } else {
            return None;
        };
        let from = self.state;
        self.state = to;
        self.since = now;
        Some(Transition { from, to, reason: cause, reasons: self.reasons(readings) })
    }

    /// The signals holding the current state, human-readable (empty when healthy).
    pub fn reasons(&self, readings: &[Reading]) -> Vec<String> {
        if self.state == State::Healthy {
            return Vec::new();
        }
        self.rules
            .iter()
            .filter_map(|rule| {
                let v = Self::value_of(readings, rule.signal)?;
                (rule.hold_level(v, self.ratio) >= self.state).then(|| rule.explain(v, self.state, self.ratio))
            })
            .collect()
    }

    /// The state one reading asks for given the current state (for display).
    pub fn level_of(&self, rule: &Rule, value: f64) -> State {
        rule.enter_level(value).max(rule.hold_level(value, self.ratio).min(self.state))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn machine(dwell: Duration) -> (Machine, Instant) {
        let t0 = Instant::now();
        let rules = vec![
            Rule::higher(Signal::SpoolCommitP99, Marks::new(250.0, 1000.0)),
            Rule::higher(Signal::DnsRtt, Marks::new(500.0, 2000.0)).capped_at(State::Degraded),
            Rule::lower(Signal::DiskFree, 1024.0),
        ];
        (Machine::new(rules, 0.5, dwell, t0), t0)
    }

    fn commit(v: f64) -> Vec<Reading> {
        vec![Reading { signal: Signal::SpoolCommitP99, value: Some(v) }]
    }

    /// Feed `values` one per 250 ms from `start`; returns the transitions and the time after the last.
    fn feed(m: &mut Machine, start: Instant, values: impl IntoIterator<Item = f64>) -> (Vec<Transition>, Instant) {
        let mut t = start;
        let mut out = Vec::new();
        for v in values {
            t += 250 * MS;
            out.extend(m.observe(t, &commit(v)));
        }
        (out, t)
    }

    #[test]
    fn enters_at_high_marks_at_once_and_names_the_cause() {
        let (mut m, t0) = machine(Duration::from_secs(5));
        assert_eq!(m.observe(t0, &commit(100.0)), None);
        let t = m.observe(t0 + MS, &commit(300.0)).unwrap();
        assert_eq!((t.from, t.to, t.reason), (State::Healthy, State::Degraded, "spool_commit_p99"));
        assert!(t.reasons[0].contains("spool_commit_p99 300 ms >= degraded mark 250 ms"), "{:?}", t.reasons);
        // Going up does not wait for the dwell time.
        let t = m.observe(t0 + 2 * MS, &commit(1500.0)).unwrap();
        assert_eq!((t.from, t.to), (State::Degraded, State::Shedding));
        // Straight from healthy to shedding is one transition.
        let (mut m, t0) = machine(Duration::from_secs(5));
        let t = m.observe(t0, &commit(5000.0)).unwrap();
        assert_eq!((t.from, t.to), (State::Healthy, State::Shedding));
    }

    #[test]
    fn leaves_below_the_low_mark_only_after_the_dwell_time() {
        let dwell = Duration::from_secs(5);
        let (mut m, t0) = machine(dwell);
        m.observe(t0, &commit(1200.0)).unwrap();
        // 600 ms is below the shed mark but above its low mark (500): stays shedding forever.
        let (tr, t) = feed(&mut m, t0, std::iter::repeat_n(600.0, 100));
        assert!(tr.is_empty(), "{tr:?}");
        assert_eq!(m.state(), State::Shedding);
        // Below every low mark but within the dwell time of the last entry? The entry was at t0, long ago:
        // leaves at the first sample. Down to healthy directly when below the degraded low mark too.
        let tr = m.observe(t + MS, &commit(100.0)).unwrap();
        assert_eq!((tr.from, tr.to, tr.reason), (State::Shedding, State::Healthy, "recovered"));
        assert!(tr.reasons.is_empty());
        // Enter again, then fall at once: must wait the dwell time.
        let t1 = t + 2 * MS;
        m.observe(t1, &commit(1200.0)).unwrap();
        let (tr, _) = feed(&mut m, t1, std::iter::repeat_n(200.0, 19)); // 4.75 s
        assert!(tr.is_empty(), "left before the dwell time: {tr:?}");
        let tr = m.observe(t1 + dwell, &commit(200.0)).unwrap();
        // 200 is above the degraded low mark (125): holds degraded.
        assert_eq!((tr.from, tr.to), (State::Shedding, State::Degraded));
        assert!(tr.reasons[0].contains("degraded low mark 125 ms"), "{:?}", tr.reasons);
    }

    #[test]
    fn no_flapping_when_the_signal_hovers_at_a_threshold() {
        let (mut m, t0) = machine(Duration::from_secs(2));
        // Around the degraded mark for a minute: enters once.
        let hover = (0..240).map(|i| if i % 2 == 0 { 245.0 } else { 255.0 });
        let (tr, t) = feed(&mut m, t0, hover);
        assert_eq!(tr.len(), 1, "{tr:?}");
        assert_eq!(m.state(), State::Degraded);
        // Around the shed mark, with noise: one more.
        let noisy = (0..240).map(|i| 1000.0 + [-30.0, 20.0, -5.0, 40.0, -60.0][i % 5]);
        let (tr, t) = feed(&mut m, t, noisy);
        assert_eq!(tr.len(), 1, "{tr:?}");
        assert_eq!(m.state(), State::Shedding);
        // Around the shed low mark (500): leaves once, to degraded, never back to shedding.
        let (tr, t) = feed(&mut m, t, (0..240).map(|i| if i % 2 == 0 { 490.0 } else { 510.0 }));
        assert_eq!(tr.len(), 1, "{tr:?}");
        assert_eq!((tr[0].from, tr[0].to), (State::Shedding, State::Degraded));
        // Around the degraded low mark (125): leaves once, to healthy.
        let (tr, _) = feed(&mut m, t, (0..240).map(|i| if i % 2 == 0 { 120.0 } else { 130.0 }));
        assert_eq!(tr.len(), 1, "{tr:?}");
        assert_eq!(m.state(), State::Healthy);
    }

    #[test]
    fn hysteresis_band_holds_the_state_in_both_directions() {
        let (mut m, t0) = machine(Duration::ZERO);
        // Inside the band (between low and high) from below: stays healthy.
        let (tr, t) = feed(&mut m, t0, std::iter::repeat_n(200.0, 20));
        assert!(tr.is_empty());
        // Inside the band from above: stays degraded even with zero dwell.
        m.observe(t + MS, &commit(260.0)).unwrap();
        let (tr, _) = feed(&mut m, t + MS, std::iter::repeat_n(130.0, 20));
        assert!(tr.is_empty(), "{tr:?}");
        assert_eq!(m.state(), State::Degraded);
    }

    #[test]
    fn missing_readings_are_no_evidence_and_caps_and_lower_is_worse_apply() {
        let (mut m, t0) = machine(Duration::ZERO);
        assert_eq!(m.observe(t0, &[Reading { signal: Signal::SpoolCommitP99, value: None }]), None);
        // DNS is capped at degraded (dns_action = defer).
        let dns = [Reading { signal: Signal::DnsRtt, value: Some(10_000.0) }];
        let tr = m.observe(t0 + MS, &dns).unwrap();
        assert_eq!((tr.to, tr.reason), (State::Degraded, "dns_rtt"));
        // Free disk: shed at or below 1024 MiB, leave above 2048 MiB.
        let disk = |v| [Reading { signal: Signal::DiskFree, value: Some(v) }];
        let tr = m.observe(t0 + 2 * MS, &disk(1000.0)).unwrap();
        assert_eq!((tr.to, tr.reason), (State::Shedding, "disk_free"));
        assert!(tr.reasons[0].contains("disk_free 1000 MiB <= shed mark 1024 MiB"), "{:?}", tr.reasons);
        assert_eq!(m.observe(t0 + 3 * MS, &disk(2000.0)), None);
        assert_eq!(m.observe(t0 + 4 * MS, &disk(3000.0)).unwrap().to, State::Healthy);
    }
}
