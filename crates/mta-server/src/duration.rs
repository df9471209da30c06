//! Humane durations in the config file: `"30s"`, `"5m"`, `"2h"`, `"1d"`, `"250ms"`.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A duration written the way operators write them, printed back the same way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct HumanDuration(pub Duration);

impl HumanDuration {
    /// A duration of `s` seconds.
    pub const fn secs(s: u64) -> Self {
        HumanDuration(Duration::from_secs(s))
    }

    /// The std duration.
    pub fn get(self) -> Duration {
        self.0
    }
}

impl From<Duration> for HumanDuration {
    fn from(d: Duration) -> Self {
        HumanDuration(d)
    }
}

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = self.0;
        let secs = d.as_secs();
        let nanos = d.subsec_nanos();
        if nanos != 0 {
            // Exact, in the largest unit that divides it: `check-config` must print what runs, and its output
            // must load back the same ("1500us" printed as "1ms" did not). Seconds go apart when the total
            // would not fit humantime's u64 count.
            let (per, unit) = match nanos {
                n if n % 1_000_000 == 0 => (1_000_000, "ms"),
                n if n % 1_000 == 0 => (1_000, "us"),
                _ => (1, "ns"),
            };
            let total = u128::from(secs) * u128::from(1_000_000_000 / per) + u128::from(nanos / per);
            return match u64::try_from(total) {
                Ok(total) => write!(f, "{total}{unit}"),
                Err(_) => write!(f, "{secs}s {}{unit}", nanos / per),
            };
        }
        for (unit, n) in [("d", 86_400), ("h", 3_600), ("m", 60)] {
            if secs >= n && secs.is_multiple_of(n) {
                return write!(f, "{}{unit}", secs / n);
            }
        }
        write!(f, "{secs}s")
    }
}

/// Parse `"30s"`, `"5m"`, `"1h30m"`, `"1d"`, `"100ms"`.
pub fn parse(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim())
        .map_err(|e| format!("invalid duration {s:?}: {e} (use forms like \"30s\", \"5m\", \"2h\", \"1d\")"))
}

impl Serialize for HumanDuration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        parse(&s).map(HumanDuration).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        for s in ["30s", "5m", "2h", "1d", "250ms"] {
            let d = HumanDuration(parse(s).unwrap());
            assert_eq!(d.to_string(), s);
        }
        assert!(parse("soon").is_err());
    }

    /// Found by the `config` fuzz logic: sub-millisecond durations printed rounded to milliseconds ("1500us" as
    /// "1ms", "1ns" as "0ms"), and a huge one with milliseconds printed as a count humantime refuses.
    #[test]
    fn printing_is_exact() {
        for (given, printed) in [
            ("1500us", "1500us"),
            ("1ns", "1ns"),
            ("1s 1ns", "1000000001ns"),
            ("1500ms", "1500ms"),
            ("18446744073709551615s 123ms", "18446744073709551615s 123ms"),
        ] {
            let d = HumanDuration(parse(given).unwrap());
            assert_eq!(d.to_string(), printed);
            assert_eq!(parse(&d.to_string()).unwrap(), d.0, "{given}");
        }
    }
}
