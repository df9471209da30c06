//! The RFC 7208 test suite (`tests/data/spf/rfc7208-tests.yml`): its scenarios, each with its
//! zone data as a [`ScriptedZone`] and its cases. Shared by the evaluator-level suite
//! (`crates/mta-core/tests/spf_suite.rs`) and the SMTP one (`tests/tests/spf_suite_smtp.rs`).
//!
//! Zone semantics follow the suite's reference driver (pyspf's `testspf.py`): an `SPF` entry
//! is served as `TXT` too unless the name has a `TXT` entry (`TXT: NONE` only suppresses);
//! `TIMEOUT` leaves queries for types the name has no record of unanswered; other names are
//! NXDOMAIN. We never query type SPF (RFC 7208 §3.1), so it is not served.
#![allow(dead_code)]

use std::net::IpAddr;
use std::path::PathBuf;

use mta_core::dns::testing::{Scripted, ScriptedZone};
use yaml_rust2::{Yaml, YamlLoader};

/// One case of a scenario.
#[derive(Debug, Clone)]
pub struct Case {
    /// The case's name (`a-cidr6-0-ip4mapped`).
    pub name: String,
    /// HELO name.
    pub helo: String,
    /// Client address.
    pub host: IpAddr,
    /// MAIL FROM (`""`: the null sender).
    pub mailfrom: String,
    /// Acceptable results, preferred first.
    pub results: Vec<String>,
    /// Expected explanation of a `fail` (`DEFAULT`: none from the domain).
    pub explanation: Option<String>,
}

/// One scenario: a zone and the cases run against it.
pub struct Scenario {
    /// Its `description:`.
    pub description: String,
    /// The zone data.
    pub zone: ScriptedZone,
    /// The cases, in file order.
    pub cases: Vec<Case>,
}

/// The suite file (`tests/data/spf/` of the workspace, from either crate that includes this).
pub fn suite_path() -> PathBuf {
    let here = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let core = here.join("../../tests/data/spf/rfc7208-tests.yml");
    if core.exists() {
        core
    } else {
        here.join("data/spf/rfc7208-tests.yml")
    }
}

fn s(y: &Yaml) -> String {
    match y {
        Yaml::String(v) | Yaml::Real(v) => v.clone(),
        Yaml::Integer(i) => i.to_string(),
        Yaml::Boolean(b) => b.to_string(),
        _ => String::new(),
    }
}

fn strings(y: &Yaml) -> Vec<String> {
    match y {
        Yaml::Array(v) => v.iter().map(s).collect(),
        other => vec![s(other)],
    }
}

fn zone(data: &Yaml) -> ScriptedZone {
    let mut z = ScriptedZone::new();
    let Some(names) = data.as_hash() else {
        return z;
    };
    for (name, entries) in names {
        let name = s(name);
        z.touch(&name);
        let entries = entries.as_vec().cloned().unwrap_or_default();
        let has_txt = entries.iter().any(|e| e.as_hash().is_some_and(|h| h.contains_key(&Yaml::String("TXT".into()))));
        for e in &entries {
            if s(e) == "TIMEOUT" {
                z.add(&name, Scripted::Timeout);
                continue;
            }
            let Some(h) = e.as_hash() else { continue };
            for (t, v) in h {
                let txt = |v: &Yaml| {
                    let parts = strings(v);
                    (parts != ["NONE"]).then(|| Scripted::Txt(parts.into_iter().map(String::into_bytes).collect()))
                };
                let entry = match s(t).as_str() {
                    "A" => s(v).parse().ok().map(Scripted::A),
                    "AAAA" => s(v).parse().ok().map(Scripted::Aaaa),
                    "MX" => {
                        let v = v.as_vec().cloned().unwrap_or_default();
                        let pref = v.first().and_then(Yaml::as_i64).unwrap_or(0) as u16;
                        Some(Scripted::Mx(pref, v.get(1).map(s).unwrap_or_default()))
                    }
                    "PTR" => Some(Scripted::Ptr(s(v))),
                    "CNAME" => Some(Scripted::Cname(s(v))),
                    "TXT" => txt(v),
                    "SPF" if !has_txt => txt(v),
                    _ => None,
                };
                if let Some(entry) = entry {
                    z.add(&name, entry);
                }
            }
        }
    }
    z
}

/// Load every scenario of the suite.
pub fn load() -> Vec<Scenario> {
    let text = std::fs::read_to_string(suite_path()).expect("rfc7208-tests.yml");
    let docs = YamlLoader::load_from_str(&text).expect("valid YAML");
    docs.iter()
        .map(|doc| {
            let mut cases = Vec::new();
            if let Some(tests) = doc["tests"].as_hash() {
                for (name, t) in tests {
                    let host = s(&t["host"]);
                    cases.push(Case {
                        name: s(name),
                        helo: s(&t["helo"]),
                        host: host.parse().unwrap_or_else(|_| panic!("bad host {host}")),
                        mailfrom: s(&t["mailfrom"]),
                        results: strings(&t["result"]),
                        explanation: t["explanation"].as_str().map(str::to_string),
                    });
                }
            }
            Scenario { description: s(&doc["description"]), zone: zone(&doc["zonedata"]), cases }
        })
        .collect()
}

/// Does `result` (and `explanation`) agree with the case?
pub fn agrees(case: &Case, result: &str, explanation: Option<&str>) -> bool {
    if !case.results.iter().any(|r| r == result) {
        return false;
    }
    match case.explanation.as_deref() {
        None => true,
        Some("DEFAULT") => explanation.is_none(),
        Some(want) => explanation == Some(want),
    }
}
