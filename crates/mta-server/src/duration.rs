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

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = self.0;
        let secs = d.as_secs();
        if d.subsec_nanos() != 0 {
            return write!(f, "{}ms", d.as_millis());
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
}
