//! `[[shaping]]`: per-destination overrides of delivery limits, with rates written `"100/s"`.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// One `[[shaping]]` override; converts into [`mta_core::delivery::Shaping`].
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShapingSection {
    /// Destination domain (or MX site name) the override applies to.
    pub domain: String,
    /// Connection cap.
    pub connections: Option<usize>,
    /// Messages per connection.
    pub messages_per_connection: Option<usize>,
    /// Rate such as `"100/s"`, `"6000/m"`, `"50000/h"`.
    pub rate: Option<Rate>,
}

impl From<&ShapingSection> for mta_core::delivery::Shaping {
    fn from(s: &ShapingSection) -> Self {
        mta_core::delivery::Shaping {
            domain: s.domain.to_ascii_lowercase(),
            connections: s.connections,
            messages_per_connection: s.messages_per_connection,
            rate: s.rate.as_ref().map(Rate::per_second),
        }
    }
}

/// A message rate as written (`"100/s"`), kept as text so `check-config` prints it back unchanged.
#[derive(Debug, Clone, PartialEq)]
pub struct Rate {
    text: String,
    per_second: f64,
}

impl Rate {
    /// Parse `"100/s"`, `"6000/m"`, `"50000/h"` or `"1000/d"`.
    pub fn parse(text: &str) -> Result<Rate, String> {
        match parse_rate(text) {
            Some(per_second) => Ok(Rate { text: text.to_string(), per_second }),
            None => Err(format!("invalid rate {text:?}; use forms like \"100/s\", \"6000/m\"")),
        }
    }

    /// Messages per second.
    pub fn per_second(&self) -> f64 {
        self.per_second
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl Serialize for Rate {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
}

impl<'de> Deserialize<'de> for Rate {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Rate::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// Parse a rate such as `"100/s"`, `"6000/m"` or `"50000/h"` into messages per second.
pub fn parse_rate(s: &str) -> Option<f64> {
    let (n, unit) = s.trim().split_once('/')?;
    let n: f64 = n.trim().parse().ok()?;
    let per = match unit.trim() {
        "s" | "sec" => 1.0,
        "m" | "min" => 60.0,
        "h" | "hour" => 3600.0,
        "d" | "day" => 86_400.0,
        _ => return None,
    };
    (n > 0.0).then_some(n / per)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates() {
        assert_eq!(parse_rate("100/s"), Some(100.0));
        assert_eq!(parse_rate("60/m"), Some(1.0));
        assert_eq!(parse_rate("fast"), None);
    }

    #[test]
    fn a_rate_prints_as_written() {
        let r = Rate::parse(" 6000/min").unwrap();
        assert_eq!(r.to_string(), " 6000/min");
        assert_eq!(r.per_second(), 100.0);
        assert!(Rate::parse("0/s").unwrap_err().contains("invalid rate"));
    }
}
