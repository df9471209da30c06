//! The policy file (RFC 8461 §3.2): `key: value` lines, CRLF or LF; `version`, `mode`, `max_age` and the `mx`
//! patterns a sender must match MX host names against.

use std::time::Duration;

/// Longest `max_age` a policy may ask for (§3.2: 31557600 seconds, one year).
pub const MAX_AGE_LIMIT: u64 = 31_557_600;

/// What the policy asks of senders.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum StsMode {
    /// Deliver only to matching MX hosts over verified TLS; otherwise defer.
    Enforce,
    /// Deliver as usual and report what `enforce` would have refused.
    Testing,
    /// The domain withdrew its policy.
    None,
}

impl StsMode {
    /// The word used in the policy file, events and the API.
    pub fn as_str(self) -> &'static str {
        match self {
            StsMode::Enforce => "enforce",
            StsMode::Testing => "testing",
            StsMode::None => "none",
        }
    }
}

/// A parsed policy.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StsPolicy {
    /// `mode`.
    pub mode: StsMode,
    /// `mx` patterns, lowercase, without a trailing dot (`*.example.net` allowed).
    pub mx: Vec<String>,
    /// `max_age`, capped at [`MAX_AGE_LIMIT`].
    pub max_age_secs: u64,
}

/// Why a policy file was refused (reported as `sts-policy-invalid`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid MTA-STS policy: {0}")]
pub struct PolicyError(pub String);

impl StsPolicy {
    /// Parses a policy body. Unknown keys are ignored; `version`, `mode` and `max_age` are required, `mx` too
    /// unless the mode is `none`.
    pub fn parse(body: &[u8]) -> Result<StsPolicy, PolicyError> {
        let text = std::str::from_utf8(body).map_err(|_| PolicyError("not UTF-8".into()))?;
        let (mut version, mut mode, mut max_age) = (None, None, None);
        let mut mx = Vec::new();
        for line in text.split('\n') {
            let line = line.strip_suffix('\r').unwrap_or(line);
            if line.trim().is_empty() {
                continue;
            }
            let Some((key, value)) = line.split_once(':') else {
                return Err(PolicyError(format!("line {line:?} has no ':'")));
            };
            let value = value.trim();
            match key.trim() {
                "version" => version = Some(value.to_string()),
                "mode" => {
                    mode = Some(match value {
                        "enforce" => StsMode::Enforce,
                        "testing" => StsMode::Testing,
                        "none" => StsMode::None,
                        other => return Err(PolicyError(format!("mode {other:?}"))),
                    })
                }
                "max_age" => {
                    let secs = (value.len() <= 10 && value.bytes().all(|b| b.is_ascii_digit()))
                        .then(|| value.parse::<u64>().ok())
                        .flatten()
                        .ok_or_else(|| PolicyError(format!("max_age {value:?}")))?;
                    max_age = Some(secs.min(MAX_AGE_LIMIT));
                }
                "mx" => {
                    let pattern = value.trim_end_matches('.').to_ascii_lowercase();
                    if !valid_pattern(&pattern) {
                        return Err(PolicyError(format!("mx {value:?}")));
                    }
                    // A policy with thousands of patterns is hostile; the 64 KiB body cap bounds this anyway.
                    if mx.len() < 256 {
                        mx.push(pattern);
                    }
                }
                _ => {}
            }
        }
        if version.as_deref() != Some("STSv1") {
            return Err(PolicyError("version must be STSv1".into()));
        }
        let mode = mode.ok_or_else(|| PolicyError("no mode".into()))?;
        let max_age_secs = max_age.ok_or_else(|| PolicyError("no max_age".into()))?;
        if mx.is_empty() && mode != StsMode::None {
            return Err(PolicyError("no mx".into()));
        }
        Ok(StsPolicy { mode, mx, max_age_secs })
    }

    /// `max_age` as a duration.
    pub fn max_age(&self) -> Duration {
        Duration::from_secs(self.max_age_secs)
    }

    /// The MX host `host` is allowed by a pattern (§4.1: exact, or `*.` matching exactly one leftmost label).
    pub fn allows(&self, host: &str) -> bool {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        self.mx.iter().any(|p| match p.strip_prefix("*.") {
            Some(suffix) => host.split_once('.').is_some_and(|(first, rest)| !first.is_empty() && rest == suffix),
            None => *p == host,
        })
    }
}

fn valid_pattern(p: &str) -> bool {
    let name = p.strip_prefix("*.").unwrap_or(p);
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|l| {
            !l.is_empty() && l.len() <= 63 && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const RFC_EXAMPLE: &[u8] =
        b"version: STSv1\r\nmode: enforce\r\nmx: mail.example.com\r\nmx: *.example.net\r\nmx: backupmx.example.com\r\nmax_age: 604800\r\n";

    #[test]
    fn parses_the_rfc_example() {
        let p = StsPolicy::parse(RFC_EXAMPLE).unwrap();
        assert_eq!(p.mode, StsMode::Enforce);
        assert_eq!(p.max_age_secs, 604_800);
        assert_eq!(p.mx, ["mail.example.com", "*.example.net", "backupmx.example.com"]);
    }

    #[test]
    fn wildcards_match_one_label_only() {
        let p = StsPolicy::parse(RFC_EXAMPLE).unwrap();
        assert!(p.allows("mail.example.com"));
        assert!(p.allows("MAIL.example.com."));
        assert!(p.allows("mx1.example.net"));
        assert!(!p.allows("example.net"));
        assert!(!p.allows("a.b.example.net"));
        assert!(!p.allows("evil.example.com"));
    }

    #[test]
    fn refuses_invalid_policies() {
        assert!(StsPolicy::parse(b"version: STSv1\nmode: enforce\nmax_age: 10\n").is_err()); // no mx
        assert!(StsPolicy::parse(b"version: STSv2\nmode: enforce\nmx: a.b\nmax_age: 10\n").is_err());
        assert!(StsPolicy::parse(b"version: STSv1\nmode: maybe\nmx: a.b\nmax_age: 10\n").is_err());
        assert!(StsPolicy::parse(b"version: STSv1\nmode: enforce\nmx: a.b\nmax_age: -1\n").is_err());
        assert!(StsPolicy::parse(b"version: STSv1\nmode: enforce\nmx: a..b\nmax_age: 1\n").is_err());
        assert!(StsPolicy::parse(b"junk").is_err());
        assert!(StsPolicy::parse(&[0xff, 0xfe]).is_err());
    }

    #[test]
    fn caps_max_age_and_accepts_none_without_mx() {
        let p = StsPolicy::parse(b"version: STSv1\nmode: none\nmax_age: 9999999999\nfuture: x\n").unwrap();
        assert_eq!((p.mode, p.max_age_secs), (StsMode::None, MAX_AGE_LIMIT));
    }

    proptest::proptest! {
        #[test]
        fn never_panics(body in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            let _ = StsPolicy::parse(&body);
            let _ = super::super::record::parse_record(&body);
        }
    }
}
