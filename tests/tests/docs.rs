//! The repository documents itself: every key `check-config` prints is described in
//! `docs/configuration.md`, every metric family in `docs/operations.md`, and `/metrics` passes Prometheus's own
//! linter (`promtool check metrics`, from Debian's `prometheus` package; `scripts/test.sh` fetches it).

use std::path::PathBuf;
use std::process::Command;

use mta_tests::{server_binary, RawSmtp, TestServer};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Dotted key names in TOML text as `check-config` prints it (`[section]`, `[[array.table]]`, `key = ...`).
fn printed_keys(toml: &str) -> Vec<String> {
    let mut section = String::new();
    let mut keys = Vec::new();
    for line in toml.lines() {
        let t = line.trim();
        if let Some(h) = t.strip_prefix("[[").and_then(|h| h.strip_suffix("]]")) {
            section = h.to_string();
        } else if let Some(h) = t.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
            section = h.to_string();
        } else if let Some((key, _)) = line.split_once(" = ") {
            if !key.starts_with(' ') && key.chars().all(|c| c.is_ascii_lowercase() || c == '_' || c.is_ascii_digit()) {
                keys.push(if section.is_empty() { key.to_string() } else { format!("{section}.{key}") });
            }
        }
    }
    keys
}

#[test]
fn configuration_doc_names_every_key_check_config_prints() {
    let dir = tempfile::tempdir().unwrap();
    let key = repo().join("crates/mta-core/tests/fixtures/auth/rsa2048.pem");
    // Every array table once, so their fields are printed too.
    let config = format!(
        "[smtp]\n[[smtp.listener]]\naddress = \"127.0.0.1:2526\"\n[[smtp.users]]\nname = \"u\"\npassword_hash = \"sha256:00\"\n\
         [delivery]\nsource_address = \"127.0.0.1\"\nsmtp_timeout = \"10s\"\n[[delivery.pool]]\nname = \"p\"\naddresses = [\"127.0.0.1\"]\n\
         [[shaping]]\ndomain = \"example.net\"\nconnections = 2\nmessages_per_connection = 5\nrate = \"10/s\"\n\
         [[route]]\ndomain = \"*\"\nrelay = \"127.0.0.1:25\"\n\
         [[dkim.key]]\ndomain = \"example.org\"\nselector = \"s\"\nalgorithm = \"rsa-sha256\"\nkey_file = \"{}\"\n\
         [[webhook]]\nname = \"app\"\nurl = \"https://app.example/hook\"\nsecret = \"s\"\n\
         [[amqp]]\nname = \"broker\"\nurl = \"amqp://u:p@127.0.0.1:5672/%2f\"\nexchange = \"mta\"\n",
        key.display()
    );
    let path = dir.path().join("c.toml");
    std::fs::write(&path, config).unwrap();
    let out = Command::new(server_binary()).args(["check-config", "--config"]).arg(&path).output().unwrap();
    assert!(out.status.success(), "check-config: {}", String::from_utf8_lossy(&out.stderr));
    let printed = String::from_utf8_lossy(&out.stdout);
    let keys = printed_keys(&printed);
    assert!(keys.len() > 80, "too few keys parsed: {keys:?}");
    let doc = std::fs::read_to_string(repo().join("docs/configuration.md")).unwrap();
    let missing: Vec<&String> = keys.iter().filter(|k| !doc.contains(&format!("`{k}`"))).collect();
    assert!(missing.is_empty(), "docs/configuration.md does not describe: {missing:?}");
}

#[test]
fn operations_doc_lists_every_metric() {
    let doc = std::fs::read_to_string(repo().join("docs/operations.md")).unwrap();
    let missing: Vec<&str> = mta_core::metrics_catalog::METRICS
        .iter()
        .map(|m| m.name)
        .filter(|n| !doc.contains(&format!("`{n}`")))
        .collect();
    assert!(missing.is_empty(), "docs/operations.md does not list: {missing:?}");
}

fn promtool() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("MTA_PROMTOOL") {
        return Some(PathBuf::from(p));
    }
    let local = repo().join("target/tools/promtool");
    if local.exists() {
        return Some(local);
    }
    Command::new("promtool").arg("--version").output().ok().filter(|o| o.status.success()).map(|_| "promtool".into())
}

#[test]
fn metrics_pass_promtool_check_metrics() {
    let Some(promtool) = promtool() else {
        assert!(std::env::var("CI").is_err(), "promtool missing in CI: scripts/test.sh installs it");
        eprintln!("SKIPPED: promtool not found (scripts/test.sh fetches it into target/tools)");
        return;
    };
    let server = TestServer::start("");
    // Some traffic, so counters and histograms of the injection path exist.
    let (mut c, _) = RawSmtp::connect(server.smtp);
    c.cmd("EHLO docs.test", "250");
    c.cmd("MAIL FROM:<a@sender.test>", "250");
    c.cmd("RCPT TO:<b@dest.test>", "250");
    c.cmd("DATA", "354");
    c.send(b"Subject: x\r\n\r\nhello\r\n.\r\n");
    assert!(c.reply().starts_with("250"));
    let metrics = mta_tests::http_request(server.http, "GET", "/metrics", &[], b"");
    assert_eq!(metrics.status, 200);
    let text = metrics.text();
    assert!(text.contains("# HELP mta_messages_received_total"), "no help text: {text}");
    let mut child = Command::new(&promtool)
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let report = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && report.trim().is_empty(), "promtool check metrics:\n{report}");
}

#[test]
fn logs_written_to_a_file_carry_no_colour_codes() {
    let server = TestServer::start("");
    let (mut c, _) = RawSmtp::connect(server.smtp);
    c.cmd("EHLO logs.test", "250");
    c.cmd("QUIT", "221");
    let log = server.stderr();
    assert!(log.contains("INFO"), "nothing logged: {log}");
    assert!(!log.contains('\u{1b}'), "ANSI escape codes in a redirected log: {log:?}");
}
