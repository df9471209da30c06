//! `[[response_rule]]`: a regex on the whole reply (`<code> <enhanced code> <text>`, one line) decides an
//! action for the destination: `suspend` its queue for a while, `throttle` its site's connections, or
//! `bounce` the recipient. User rules are checked first, then the shipped defaults (unless turned off).
//!
//! The shipped defaults follow what the large providers publish for rate limiting and temporary blocks; each
//! names its source. A rule's `domain` scopes it to one destination domain; none (or `"*"`) is every site.

use std::sync::Arc;
use std::time::Duration;

use regex::Regex;

/// What a matching rule does.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RuleAction {
    /// Hold the destination's queue for the rule's duration: scheduled, not bounced; resumes by itself.
    Suspend,
    /// Keep `factor` of the site's connection limit for the rule's duration.
    Throttle {
        /// Fraction of connections kept (0 < factor ≤ 1).
        factor: f64,
    },
    /// Fail the recipient permanently.
    Bounce,
}

impl RuleAction {
    /// The name config and events use.
    pub fn name(self) -> &'static str {
        match self {
            RuleAction::Suspend => "suspend",
            RuleAction::Throttle { .. } => "throttle",
            RuleAction::Bounce => "bounce",
        }
    }
}

/// One rule.
#[derive(Debug, Clone)]
pub struct ResponseRule {
    /// Regex on the whole reply as one line.
    pub pattern: Regex,
    /// Destination domain (lowercase); `None` matches every destination.
    pub domain: Option<String>,
    /// What to do.
    pub action: RuleAction,
    /// How long a suspension or throttle lasts.
    pub duration: Duration,
}

/// Why a rule could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RuleError {
    /// The pattern is not a valid regex.
    #[error("invalid pattern {pattern:?}: {message}")]
    Pattern {
        /// The pattern as given.
        pattern: String,
        /// The regex crate's message.
        message: String,
    },
    /// `factor` outside (0, 1].
    #[error("factor must be above 0 and at most 1, not {0}")]
    Factor(f64),
}

impl ResponseRule {
    /// A rule from its config values (`domain` `"*"` or `None`: every destination).
    pub fn new(
        pattern: &str,
        domain: Option<&str>,
        action: RuleAction,
        duration: Duration,
    ) -> Result<ResponseRule, RuleError> {
        if let RuleAction::Throttle { factor } = action {
            if !(factor > 0.0 && factor <= 1.0) {
                return Err(RuleError::Factor(factor));
            }
        }
        // Bounded compiled size: a rule comes from a trusted file, but a typo should not eat memory.
        let pattern_re = regex::RegexBuilder::new(pattern)
            .size_limit(1 << 20)
            .build()
            .map_err(|e| RuleError::Pattern { pattern: pattern.to_string(), message: e.to_string() })?;
        let domain = domain.filter(|d| *d != "*").map(|d| d.trim_end_matches('.').to_ascii_lowercase());
        Ok(ResponseRule { pattern: pattern_re, domain, action, duration })
    }

    fn applies(&self, domain: &str, line: &str) -> bool {
        self.domain.as_deref().is_none_or(|d| d.eq_ignore_ascii_case(domain)) && self.pattern.is_match(line)
    }
}

/// The shipped defaults: (pattern, action, duration, source).
const DEFAULTS: &[(&str, RuleAction, u64, &str)] = &[
    // Gmail: "421 4.7.28 ... unusual rate of unsolicited mail ... temporarily rate limited" (Google Workspace
    // Admin Help, "SMTP error reference"): back off from the whole site for a while.
    (r"^421 4\.7\.28 ", RuleAction::Suspend, 1800, "Google SMTP error reference"),
    // Gmail: "421 4.7.0 ... has been temporarily rate limited" / "Try again later, closing connection".
    (
        r"^421 4\.7\.0 .*temporarily rate limited",
        RuleAction::Throttle { factor: 0.5 },
        1800,
        "Google SMTP error reference",
    ),
    // Microsoft: "451 4.7.500 Server busy. Please try again later from [...]" and the 4.7.500-4.7.699 range
    // (Exchange Online NDR reference, "Fix email delivery issues for error code 451 4.7.500-699").
    (
        r"^451 4\.7\.(5\d\d|6\d\d) ",
        RuleAction::Throttle { factor: 0.5 },
        1800,
        "Microsoft Exchange Online NDR reference",
    ),
    // Yahoo/AOL: "421 4.7.0 [TSS04] Messages from x.x.x.x temporarily deferred due to unexpected volume or user
    // complaints" (Yahoo Sender Hub, "SMTP error codes").
    (r"^421 4\.7\.0 \[TSS04\]", RuleAction::Suspend, 3600, "Yahoo Sender Hub SMTP error codes"),
];

/// The rules delivery checks, in order: user rules, then the shipped defaults.
#[derive(Debug, Clone, Default)]
pub struct ResponseRules {
    rules: Vec<ResponseRule>,
}

impl ResponseRules {
    /// `user` rules first, then the shipped defaults when `defaults` is true.
    pub fn new(user: Vec<ResponseRule>, defaults: bool) -> Arc<ResponseRules> {
        let mut rules = user;
        if defaults {
            rules.extend(Self::shipped());
        }
        Arc::new(ResponseRules { rules })
    }

    /// The shipped default rules.
    pub fn shipped() -> Vec<ResponseRule> {
        DEFAULTS
            .iter()
            .filter_map(|(p, a, secs, _)| ResponseRule::new(p, None, *a, Duration::from_secs(*secs)).ok())
            .collect()
    }

    /// The first rule for a reply `line` from `domain`, if any.
    pub fn find(&self, domain: &str, line: &str) -> Option<&ResponseRule> {
        self.rules.iter().find(|r| r.applies(domain, line))
    }

    /// Number of rules.
    pub fn len(&self) -> usize {
        self.rules.len()
    }

    /// True when there is no rule.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_defaults_match_the_providers_replies() {
        let r = ResponseRules::new(Vec::new(), true);
        assert_eq!(r.len(), DEFAULTS.len(), "every default compiles");
        let cases = [
            ("421 4.7.28 Our system has detected an unusual rate of unsolicited mail originating from your IP address. To protect our users from spam, mail sent from your IP address has been temporarily rate limited.", Some("suspend")),
            ("421 4.7.0 Try again later, closing connection. This message has been temporarily rate limited.", Some("throttle")),
            ("451 4.7.500 Server busy. Please try again later from [192.0.2.1]. (S77719)", Some("throttle")),
            ("421 4.7.0 [TSS04] Messages from 192.0.2.1 temporarily deferred due to unexpected volume or user complaints - 4.16.55.1", Some("suspend")),
            ("550 5.1.1 The email account that you tried to reach does not exist.", None),
            ("451 4.7.1 Greylisted, try again later", None),
        ];
        for (line, want) in cases {
            assert_eq!(r.find("gmail.com", line).map(|x| x.action.name()), want, "{line}");
        }
    }

    #[test]
    fn user_rules_come_first_and_scope_by_domain() {
        let user = ResponseRule::new("^550 5\\.7\\.1 ", Some("Example.net"), RuleAction::Bounce, Duration::ZERO);
        let r = ResponseRules::new(user.into_iter().collect(), false);
        assert!(r.find("example.net", "550 5.7.1 blocked").is_some());
        assert!(r.find("other.test", "550 5.7.1 blocked").is_none());
        assert!(r.find("example.net", "421 4.7.28 x").is_none(), "defaults off");
        assert!(ResponseRule::new("(", None, RuleAction::Bounce, Duration::ZERO).is_err());
        assert!(ResponseRule::new("x", None, RuleAction::Throttle { factor: 0.0 }, Duration::ZERO).is_err());
    }
}
