//! Every metric the workspace emits is in the catalog (so it gets help text and a line in the docs), and the
//! catalog names nothing that is no longer emitted.

use std::collections::BTreeSet;
use std::path::Path;

fn sources(dir: &Path, out: &mut Vec<String>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            sources(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(std::fs::read_to_string(&p).unwrap_or_default());
        }
    }
}

/// Names in `counter!("…"`, `gauge!("…"` and `histogram!("…"` (whitespace and line breaks allowed).
fn emitted(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for mac in ["counter!(", "gauge!(", "histogram!("] {
        let mut rest = text;
        while let Some(i) = rest.find(mac) {
            rest = &rest[i + mac.len()..];
            let t = rest.trim_start();
            if let Some(q) = t.strip_prefix('"') {
                if let Some(end) = q.find('"') {
                    let name = &q[..end];
                    if name.starts_with("mta_") {
                        names.insert(name.to_string());
                    }
                }
            }
        }
    }
    names
}

#[test]
fn every_emitted_metric_is_described_and_every_described_one_is_emitted() {
    let crates = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut texts = Vec::new();
    for c in ["mta-core", "mta-spool", "mta-smtp", "mta-server"] {
        sources(&crates.join(c).join("src"), &mut texts);
    }
    let used: BTreeSet<String> = texts.iter().flat_map(|t| emitted(t)).collect();
    assert!(used.len() > 40, "scan found too few metrics: {used:?}");
    let described: BTreeSet<String> = mta_core::metrics_catalog::METRICS.iter().map(|m| m.name.to_string()).collect();
    let undocumented: Vec<_> = used.difference(&described).collect();
    assert!(undocumented.is_empty(), "add these to metrics_catalog.rs: {undocumented:?}");
    let stale: Vec<_> = described.difference(&used).collect();
    assert!(stale.is_empty(), "no longer emitted: {stale:?}");
}
