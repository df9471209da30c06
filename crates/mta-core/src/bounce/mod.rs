//! Bounce classification: every failure response gets one of SparkPost's published classes, from user rules
//! (`bounce.rules_file`), then the shipped rules (real replies of the large mailbox providers and common MTAs,
//! `shipped.toml`), then the reply codes alone.
//!
//! # Layout
//! - `class`: [`BounceClass`], the numbers outputs carry.
//! - `rules`: the TOML rule format and its compiled, one-pass form.
//! - `classifier`: [`Classifier`], the order of the three sources.
//! - `fallback`: classes from RFC 3463 enhanced codes and RFC 5321 reply codes.
//! - `line`: a reply's one-line form read back into its parts.

mod class;
mod classifier;
mod fallback;
mod line;
pub mod rules;
#[cfg(test)]
mod tests;

pub use class::{BounceClass, ALL as ALL_CLASSES};
pub use classifier::{Classifier, SHIPPED_RULES};
pub use line::parse_line;
pub use rules::{RuleSpec, RulesError};
