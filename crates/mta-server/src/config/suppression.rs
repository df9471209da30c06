//! `[suppression]` (automatic entries, the complaint address) and `[[response_rule]]` (replies that suspend,
//! throttle or bounce), with `[deliverability] default_response_rules` to turn the shipped rules off.

use std::sync::Arc;

use mta_core::bounce::BounceClass;
use mta_core::delivery::response_rules::{ResponseRule, ResponseRules, RuleAction};
use serde::{Deserialize, Serialize};

use super::Invalid;
use crate::duration::HumanDuration;

/// `[suppression]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SuppressionSection {
    /// Bounce classes whose bounce adds the recipient to the suppression list.
    pub auto_classes: Vec<u8>,
    /// Address whose incoming mail is read as ARF feedback reports (complaints) and consumed, never relayed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub complaint_address: Option<String>,
}

impl Default for SuppressionSection {
    fn default() -> Self {
        SuppressionSection { auto_classes: vec![10, 30], complaint_address: None }
    }
}

impl SuppressionSection {
    /// The classes as the engine's type (unknown codes were refused by `check`).
    pub fn classes(&self) -> Vec<BounceClass> {
        self.auto_classes.iter().filter_map(|c| BounceClass::from_code(*c)).collect()
    }

    /// The complaint address, lowercase.
    pub fn complaint_address(&self) -> Option<String> {
        self.complaint_address.as_ref().map(|a| a.trim().to_ascii_lowercase())
    }

    pub(super) fn check(&self) -> Result<(), Invalid> {
        if let Some(c) = self.auto_classes.iter().find(|c| BounceClass::from_code(**c).is_none()) {
            return Err(Invalid::new("suppression.auto_classes", format!("{c} is not a bounce class")));
        }
        if let Some(a) = &self.complaint_address {
            if mta_core::reception::check_address(a.trim()).is_err() || !a.contains('@') {
                return Err(Invalid::new("suppression.complaint_address", format!("{a:?} is not an address")));
            }
        }
        Ok(())
    }
}

/// `[deliverability]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeliverabilitySection {
    /// Check the shipped `[[response_rule]]` defaults after the configured ones (`false`: only the configured).
    pub default_response_rules: bool,
}

impl Default for DeliverabilitySection {
    fn default() -> Self {
        DeliverabilitySection { default_response_rules: true }
    }
}

/// What a `[[response_rule]]` does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ActionName {
    /// Hold the destination for `duration`.
    Suspend,
    /// Keep `factor` of the site's connections for `duration`.
    Throttle,
    /// Fail the recipient permanently.
    Bounce,
}

/// One `[[response_rule]]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResponseRuleSection {
    /// Regex on the whole reply as one line (`<code> <enhanced code> <text>`).
    pub pattern: String,
    /// Destination domain or `"*"` (the default): every destination.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    /// `suspend`, `throttle` or `bounce`.
    pub action: ActionName,
    /// How long a suspension or throttle lasts (default `30m`).
    #[serde(default = "default_duration")]
    pub duration: HumanDuration,
    /// Throttle: fraction of connections kept (default `0.5`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub factor: Option<f64>,
}

fn default_duration() -> HumanDuration {
    HumanDuration::secs(1800)
}

impl ResponseRuleSection {
    fn to_core(&self) -> Result<ResponseRule, String> {
        let action = match self.action {
            ActionName::Suspend => RuleAction::Suspend,
            ActionName::Throttle => RuleAction::Throttle { factor: self.factor.unwrap_or(0.5) },
            ActionName::Bounce => RuleAction::Bounce,
        };
        ResponseRule::new(&self.pattern, self.domain.as_deref(), action, self.duration.get()).map_err(|e| e.to_string())
    }
}

/// The rules delivery checks: the configured ones, then the shipped ones unless turned off.
pub fn response_rules(rules: &[ResponseRuleSection], defaults: bool) -> Arc<ResponseRules> {
    ResponseRules::new(rules.iter().filter_map(|r| r.to_core().ok()).collect(), defaults)
}

pub(super) fn check_rules(rules: &[ResponseRuleSection]) -> Result<(), Invalid> {
    for (n, r) in rules.iter().enumerate() {
        r.to_core().map_err(|m| Invalid::new(format!("response_rule[{n}]"), m))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::super::Config;

    #[test]
    fn rules_and_suppression_keys_parse_and_check() {
        let c = Config::parse(
            "[suppression]\nauto_classes = [10]\ncomplaint_address = \"FBL@example.com\"\n\
             [deliverability]\ndefault_response_rules = false\n\
             [[response_rule]]\npattern = \"^421 4\\\\.7\\\\.28 \"\naction = \"throttle\"\nfactor = 0.25\nduration = \"10m\"\n",
            Path::new("t.toml"),
        )
        .unwrap();
        assert_eq!(c.suppression.complaint_address().as_deref(), Some("fbl@example.com"));
        assert_eq!(c.suppression.classes().len(), 1);
        let rules = super::response_rules(&c.response_rule, c.deliverability.default_response_rules);
        assert_eq!(rules.len(), 1);
        for (bad, key) in [
            ("[suppression]\nauto_classes = [11]\n", "suppression.auto_classes"),
            ("[[response_rule]]\npattern = \"(\"\naction = \"bounce\"\n", "response_rule[0]"),
            ("[[response_rule]]\npattern = \"x\"\naction = \"throttle\"\nfactor = 2.0\n", "response_rule[0]"),
        ] {
            let e = Config::parse(bad, Path::new("t.toml")).unwrap_err().to_string();
            assert!(e.contains(key), "{bad}: {e}");
        }
    }
}
