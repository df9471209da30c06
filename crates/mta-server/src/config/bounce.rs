//! `[bounce]`: bounce classification rules of our own, checked before the shipped ones.

use std::path::PathBuf;
use std::sync::Arc;

use mta_core::bounce::{rules, Classifier};
use serde::{Deserialize, Serialize};

use super::Invalid;

/// `[bounce]`
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BounceSection {
    /// TOML file of `[[rule]]` tables (pattern on code / enhanced code / text → class) checked first.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rules_file: Option<PathBuf>,
}

impl BounceSection {
    /// The classifier: our rules first, then the shipped ones.
    pub fn classifier(&self) -> Result<Arc<Classifier>, String> {
        match &self.rules_file {
            None => Ok(Classifier::shipped()),
            Some(path) => {
                let specs = rules::load(path).map_err(|e| e.to_string())?;
                Classifier::with_user_rules(&specs).map_err(|e| format!("{}: {e}", path.display()))
            }
        }
    }

    pub(super) fn check(&self) -> Result<(), Invalid> {
        self.classifier().map(|_| ()).map_err(|m| Invalid::new("bounce.rules_file", m))
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::super::Config;

    #[test]
    fn a_bad_rules_file_names_the_key_and_the_rule() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("rules.toml");
        std::fs::write(&file, "[[rule]]\nclass = 10\ntext = \"(\"\n").unwrap();
        let text = format!("[bounce]\nrules_file = {:?}\n", file.display().to_string());
        let e = Config::parse(&text, Path::new("t.toml")).unwrap_err().to_string();
        assert!(e.contains("bounce.rules_file") && e.contains("rule 0"), "{e}");
        std::fs::write(&file, "[[rule]]\nclass = 20\ntext = \"does not exist\"\n").unwrap();
        let c = Config::parse(&text, Path::new("t.toml")).unwrap();
        let classifier = c.bounce.classifier().unwrap();
        assert_eq!(classifier.classify_line("550 5.1.1 does not exist").map(|c| c.code()), Some(20));
    }
}
