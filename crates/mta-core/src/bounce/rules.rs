//! Classification rules: a TOML list of patterns on the reply code, the enhanced code and the text, each naming
//! a class, compiled so that one pass over the text finds every rule that may apply (a `RegexSet`).
//!
//! ```toml
//! [[rule]]
//! class = 10                      # the bounce class when every given pattern matches
//! code = "^5"                     # regex on the three-digit reply code (optional)
//! enhanced = "^5\\.1\\.1$"        # regex on the enhanced code, "x.y.z"; "" when the reply had none (optional)
//! text = "user unknown"           # regex on the text, case-insensitive (optional)
//! source = "where the reply text comes from"   # documentation only
//! example = "550 5.1.1 <a@b>: User unknown"    # a real reply; tests check it lands in `class`
//! ```
//!
//! The first rule (in file order) whose patterns all match decides.

use regex::{Regex, RegexBuilder, RegexSet, RegexSetBuilder};
use serde::Deserialize;

use super::BounceClass;
use crate::Response;

/// Most rules one file may hold.
pub const MAX_RULES: usize = 10_000;
/// Longest pattern accepted (a rule file is operator input, but a typo should not build a huge automaton).
const MAX_PATTERN: usize = 4096;
/// Compiled size cap per pattern set (the `regex` crate's own default is 10 MiB per regex).
const SIZE_LIMIT: usize = 64 << 20;

/// One rule as written.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RuleSpec {
    /// The class a matching reply gets.
    pub class: BounceClass,
    /// Regex on the three-digit reply code.
    #[serde(default)]
    pub code: Option<String>,
    /// Regex on the enhanced status code (`"5.1.1"`; `""` when the reply had none).
    #[serde(default)]
    pub enhanced: Option<String>,
    /// Regex on the reply text (case-insensitive).
    #[serde(default)]
    pub text: Option<String>,
    /// Where the reply comes from (documentation).
    #[serde(default)]
    pub source: Option<String>,
    /// A real reply this rule is for, as one line (`550 5.1.1 text`); the shipped set's tests check each.
    #[serde(default)]
    pub example: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleFile {
    #[serde(default)]
    rule: Vec<RuleSpec>,
}

/// Why a rule file cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RulesError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The system error.
        #[source]
        source: std::io::Error,
    },
    /// Not valid TOML, or not a list of `[[rule]]` tables.
    #[error("{0}")]
    Syntax(String),
    /// A pattern does not compile (or is too large).
    #[error("rule {index}: {field} pattern: {message}")]
    Pattern {
        /// 0-based rule number.
        index: usize,
        /// `code`, `enhanced` or `text`.
        field: &'static str,
        /// What is wrong.
        message: String,
    },
    /// More than [`MAX_RULES`] rules.
    #[error("{0} rules: at most {MAX_RULES} are accepted")]
    TooMany(usize),
}

/// Parse a rule file's text.
pub fn parse(text: &str) -> Result<Vec<RuleSpec>, RulesError> {
    let file: RuleFile = toml::from_str(text).map_err(|e| RulesError::Syntax(e.to_string()))?;
    if file.rule.len() > MAX_RULES {
        return Err(RulesError::TooMany(file.rule.len()));
    }
    Ok(file.rule)
}

/// Read and parse the rule file at `path`.
pub fn load(path: &std::path::Path) -> Result<Vec<RuleSpec>, RulesError> {
    let text = std::fs::read_to_string(path)
        .map_err(|source| RulesError::Read { path: path.display().to_string(), source })?;
    parse(&text)
}

#[derive(Debug)]
struct Compiled {
    class: BounceClass,
    code: Option<Regex>,
    enhanced: Option<Regex>,
}

/// Compiled rules, checked in order.
#[derive(Debug)]
pub struct RuleSet {
    /// One entry per rule: its text pattern, or one that matches anything.
    texts: RegexSet,
    rules: Vec<Compiled>,
}

fn check_len(index: usize, field: &'static str, p: &str) -> Result<(), RulesError> {
    if p.len() > MAX_PATTERN {
        return Err(RulesError::Pattern { index, field, message: format!("longer than {MAX_PATTERN} octets") });
    }
    Ok(())
}

fn small(index: usize, field: &'static str, p: &Option<String>) -> Result<Option<Regex>, RulesError> {
    let Some(p) = p else { return Ok(None) };
    check_len(index, field, p)?;
    RegexBuilder::new(p).size_limit(1 << 20).build().map(Some).map_err(|e| RulesError::Pattern {
        index,
        field,
        message: e.to_string(),
    })
}

impl RuleSet {
    /// No rules.
    pub fn empty() -> RuleSet {
        RuleSet { texts: RegexSet::empty(), rules: Vec::new() }
    }

    /// Compile `specs` (in order).
    pub fn compile(specs: &[RuleSpec]) -> Result<RuleSet, RulesError> {
        if specs.len() > MAX_RULES {
            return Err(RulesError::TooMany(specs.len()));
        }
        let mut texts = Vec::with_capacity(specs.len());
        let mut rules = Vec::with_capacity(specs.len());
        for (index, s) in specs.iter().enumerate() {
            let text = s.text.clone().unwrap_or_default();
            check_len(index, "text", &text)?;
            // Each pattern alone first, so an error names its rule (the set's error would not).
            RegexBuilder::new(&text)
                .case_insensitive(true)
                .size_limit(1 << 20)
                .build()
                .map_err(|e| RulesError::Pattern { index, field: "text", message: e.to_string() })?;
            texts.push(text);
            rules.push(Compiled {
                class: s.class,
                code: small(index, "code", &s.code)?,
                enhanced: small(index, "enhanced", &s.enhanced)?,
            });
        }
        let texts = RegexSetBuilder::new(&texts)
            .case_insensitive(true)
            .size_limit(SIZE_LIMIT)
            .build()
            .map_err(|e| RulesError::Pattern { index: 0, field: "text", message: e.to_string() })?;
        Ok(RuleSet { texts, rules })
    }

    /// Number of rules.
    pub fn len(&self) -> usize {
        self.rules.len()
    }

    /// True when there is no rule.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// The class of the first rule matching `r`, if any.
    pub fn first_match(&self, r: &Response) -> Option<BounceClass> {
        if self.rules.is_empty() {
            return None;
        }
        let code = r.code.to_string();
        let enhanced = r.enhanced.map(|e| e.to_string()).unwrap_or_default();
        // `matches` yields indices in ascending order: file order.
        self.texts.matches(&r.text).into_iter().find_map(|i| {
            let rule = self.rules.get(i)?;
            let code_ok = rule.code.as_ref().is_none_or(|re| re.is_match(&code));
            let enhanced_ok = rule.enhanced.as_ref().is_none_or(|re| re.is_match(&enhanced));
            (code_ok && enhanced_ok).then_some(rule.class)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resp(line: &str) -> Response {
        super::super::line::parse_line(line).unwrap_or_else(|| Response::local(550, (5, 0, 0), line))
    }

    #[test]
    fn first_rule_in_file_order_wins_and_every_pattern_must_match() {
        let specs = parse(
            r#"
            [[rule]]
            class = 70
            code = "^4"
            text = "mailbox"
            [[rule]]
            class = 10
            enhanced = "^5\\.1\\.1$"
            [[rule]]
            class = 22
            text = "MAILBOX FULL"
            "#,
        )
        .unwrap_or_default();
        let set = RuleSet::compile(&specs).ok();
        let set = set.as_ref().map(|s| (s.len(), s));
        let Some((3, set)) = set else { panic!("three rules compile") };
        assert_eq!(set.first_match(&resp("450 4.2.2 mailbox full")), Some(BounceClass::TransientFailure));
        assert_eq!(set.first_match(&resp("552 5.2.2 Mailbox full")), Some(BounceClass::MailboxFull));
        assert_eq!(set.first_match(&resp("550 5.1.1 nope")), Some(BounceClass::InvalidRecipient));
        assert_eq!(set.first_match(&resp("550 nope")), None);
    }

    #[test]
    fn errors_name_the_rule() {
        let specs = parse("[[rule]]\nclass = 10\n[[rule]]\nclass = 50\ntext = \"(unclosed\"\n").unwrap_or_default();
        match RuleSet::compile(&specs) {
            Err(RulesError::Pattern { index: 1, field: "text", .. }) => {}
            other => panic!("{other:?}"),
        }
        assert!(matches!(parse("[[rule]]\nclass = 11\n"), Err(RulesError::Syntax(_))));
        assert!(matches!(parse("[[rule]]\nclass = 10\ncolour = 1\n"), Err(RulesError::Syntax(_))));
    }
}
