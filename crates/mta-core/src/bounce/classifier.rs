//! [`Classifier`]: user rules first, then the shipped set, then the codes alone.

use std::sync::{Arc, OnceLock};

use super::fallback::{by_codes, local};
use super::line::parse_line;
use super::rules::{RuleSet, RuleSpec, RulesError};
use super::BounceClass;
use crate::Response;

/// The shipped rules (TOML, sources and a real example reply on each rule).
pub const SHIPPED_RULES: &str = include_str!("shipped.toml");

/// The text our expiry puts before the reply that last deferred the message.
const EXPIRED_PREFIX: &str = "Message expired; last error: ";

/// Classifies delivery responses. Cheap to share (`Arc`); classification takes no lock.
pub struct Classifier {
    user: RuleSet,
    shipped: Arc<RuleSet>,
}

/// The shipped rules, compiled once per process (compiling the set costs milliseconds; configs are made often).
fn shipped_rules() -> Arc<RuleSet> {
    static SHIPPED: OnceLock<Arc<RuleSet>> = OnceLock::new();
    SHIPPED
        .get_or_init(|| {
            // The shipped set is checked by tests; should it ever fail to build, classification still works
            // from the codes alone.
            let set = super::rules::parse(SHIPPED_RULES).and_then(|s| RuleSet::compile(&s));
            Arc::new(set.unwrap_or_else(|e| {
                tracing::error!(error = %e, "shipped bounce rules do not compile; classifying by codes only");
                RuleSet::empty()
            }))
        })
        .clone()
}

impl std::fmt::Debug for Classifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Classifier")
            .field("user_rules", &self.user.len())
            .field("shipped_rules", &self.shipped.len())
            .finish()
    }
}

impl Classifier {
    /// The shipped rules only.
    pub fn shipped() -> Arc<Classifier> {
        static CLASSIFIER: OnceLock<Arc<Classifier>> = OnceLock::new();
        CLASSIFIER.get_or_init(|| Arc::new(Classifier { user: RuleSet::empty(), shipped: shipped_rules() })).clone()
    }

    /// `user` rules checked before the shipped ones.
    pub fn with_user_rules(user: &[RuleSpec]) -> Result<Arc<Classifier>, RulesError> {
        let user = RuleSet::compile(user)?;
        Ok(Arc::new(Classifier { user, shipped: shipped_rules() }))
    }

    /// The class of a failure response (a positive one is [`BounceClass::Undetermined`]).
    pub fn classify(&self, r: &Response) -> BounceClass {
        if r.is_positive() {
            return BounceClass::Undetermined;
        }
        // An expiry is classified by the reply that kept the message from going (when there was one).
        if let Some(inner) = r.text.strip_prefix(EXPIRED_PREFIX).and_then(parse_line) {
            let inner = Response { stage: r.stage, origin: inner.origin, ..inner };
            return match self.classify(&inner) {
                BounceClass::TransientFailure | BounceClass::Undetermined => BounceClass::Timeout,
                c => c,
            };
        }
        local(r)
            .or_else(|| self.user.first_match(r))
            .or_else(|| self.shipped.first_match(r))
            .unwrap_or_else(|| by_codes(r))
    }

    /// The class of a reply kept as one line (message status), `None` when it is not a reply line.
    pub fn classify_line(&self, line: &str) -> Option<BounceClass> {
        parse_line(line).map(|r| self.classify(&r))
    }
}
