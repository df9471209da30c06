//! Property tests: the `config` and `http_inject` fuzz targets' logic on stable (see fuzz/README.md), over
//! generated config files and request bodies, and over the seed files.

use mta_server::fuzzing::{config, http_inject};
use proptest::prelude::*;
use serde_json::{json, Value};

fn seeds(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/seeds").join(target);
    let mut out: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| {
            let path = e.unwrap().path();
            (path.display().to_string(), std::fs::read(&path).unwrap())
        })
        .collect();
    out.sort();
    assert!(!out.is_empty(), "no seeds in {}", dir.display());
    out
}

/// TOML values of the kinds the config uses, valid and not.
fn toml_value() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<i64>().prop_map(|n| n.to_string()),
        (0u64..100_000).prop_map(|n| n.to_string()),
        any::<f64>().prop_map(|f| format!("{f:?}")),
        Just("nan".to_string()),
        Just("inf".to_string()),
        any::<bool>().prop_map(|b| b.to_string()),
        "[0-9]{1,20}(ns|us|ms|s|m|h|d|w|y| ?[a-z]{1,4})".prop_map(|d| format!("{d:?}")),
        "[0-9]{1,6}/(s|m|h|d|x)".prop_map(|r| format!("{r:?}")),
        "(127\\.0\\.0\\.1|\\[::1\\]|0\\.0\\.0\\.0):[0-9]{1,6}".prop_map(|a| format!("{a:?}")),
        "[0-9./:a-f]{1,20}".prop_map(|n| format!("[{n:?}]")),
        ".{0,20}".prop_map(|s| format!("{s:?}")),
        Just("[]".to_string()),
        Just("{}".to_string()),
    ]
}

/// A config file: known sections and keys with generated values.
fn config_text() -> impl Strategy<Value = String> {
    let section = prop::sample::select(vec![
        "[server]",
        "[smtp]",
        "[http]",
        "[spool]",
        "[dns]",
        "[delivery]",
        "[auth]",
        "[dkim]",
        "[backpressure]",
        "[log]",
        "[debug]",
        "[[shaping]]",
        "[[route]]",
        "[[smtp.listener]]",
        "[[smtp.users]]",
        "[[delivery.pool]]",
        "[[dkim.key]]",
    ]);
    let key = prop::sample::select(vec![
        "hostname",
        "node_id",
        "shutdown_timeout",
        "listen",
        "max_message_size",
        "max_recipients",
        "max_connections",
        "timeout_command",
        "relay_networks",
        "relay_domains",
        "max_errors",
        "api_keys",
        "trusted_proxies",
        "rate_limit_per_key",
        "path",
        "cache_bytes",
        "nameservers",
        "min_ttl",
        "max_ttl",
        "ipv6",
        "port",
        "retry_intervals",
        "max_age",
        "connections_per_domain",
        "messages_per_connection",
        "smtp_timeout",
        "domain",
        "relay",
        "rate",
        "connections",
        "address",
        "mode",
        "proxy_protocol",
        "name",
        "password_hash",
        "addresses",
        "spf",
        "dkim",
        "dmarc",
        "selector",
        "algorithm",
        "key_file",
        "on_preflight_mismatch",
        "window",
        "min_dwell",
        "sample_interval",
        "low_mark_ratio",
        "dns_action",
        "commit_p99_shed_ms",
        "retry_after_secs",
        "events",
        "format",
        "fault_injection",
        "tls_cert",
        "tls_key",
    ]);
    prop::collection::vec((section, prop::collection::vec((key, toml_value()), 0..5)), 0..6).prop_map(|sections| {
        sections
            .into_iter()
            .map(|(s, kv)| {
                let body: String = kv.into_iter().map(|(k, v)| format!("{k} = {v}\n")).collect();
                format!("{s}\n{body}")
            })
            .collect()
    })
}

/// Strings for header-ish fields: addresses, names, injection attempts, long and non-ASCII text.
fn field() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z0-9.+-]{1,20}@[a-z0-9.-]{1,20}",
        "[A-Za-z ,\"]{0,20} <[a-z0-9.]{1,10}@[a-z0-9.]{1,15}>",
        "[ -~]{0,60}",
        ".{0,40}",
        "[a-z]{1,10}(\r\n|\n|\r)Bcc: [a-z]{1,5}@x\\.test",
        "[ -~]{990,1100}",
        "[a-z]{990,1100}",
        "<[a-z0-9.]{1,2000}@x\\.test>",
    ]
}

/// Mailboxes, nearly always valid so the content gets built.
fn mailbox() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => "[a-z0-9.+-]{1,20}@[a-z0-9-]{1,20}\\.[a-z]{2,6}",
        3 => "[A-Za-z ,\"]{0,30} <[a-z0-9.]{1,10}@[a-z0-9]{1,15}\\.test>",
        1 => "[A-Za-zü ]{200,400} <[a-z]{1,5}@x\\.test>",
        1 => ".{0,30}@[a-z]{1,5}\\.test",
        1 => field(),
    ]
}

fn request() -> impl Strategy<Value = Value> {
    let raw = prop_oneof!["[ -~]{0,80}((\r\n|\n|\r)[ -~]{0,80}){0,10}", "[ -~]{990,1010}", ".{0,200}",]
        .prop_map(Value::String);
    let header_name = prop_oneof![
        "X-[A-Za-z-]{1,20}",
        "X-[A-Za-z-]{66,80}",
        "(Message-ID|message-id|Date|date|Subject|Bcc)",
        ".{0,10}"
    ];
    let structured = (
        mailbox(),
        prop::collection::vec(mailbox(), 0..3),
        proptest::option::of(field()),
        proptest::option::of(".{0,200}"),
        proptest::option::of(".{0,200}"),
        prop::collection::btree_map(header_name, field(), 0..3),
        proptest::option::of(prop::collection::vec(mailbox(), 0..2)),
    )
        .prop_map(|(from, to, subject, text, html, headers, cc)| {
            let mut c = json!({"from": from, "to": to, "headers": headers});
            if let Some(o) = c.as_object_mut() {
                for (k, v) in [("subject", subject), ("text_body", text), ("html_body", html)] {
                    if let Some(v) = v {
                        o.insert(k.into(), json!(v));
                    }
                }
                if let Some(cc) = cc {
                    o.insert("cc".into(), json!(cc));
                }
            }
            c
        });
    (prop_oneof![raw, structured], prop::collection::vec(field(), 0..3)).prop_map(
        |(content, recipients)| json!({"envelope_sender": "b@s.example", "recipients": recipients, "content": content}),
    )
}

proptest! {
    #[test]
    fn config_never_panics(text in config_text()) {
        config(text.as_bytes());
    }

    #[test]
    fn config_any_text(text in ".{0,300}") {
        config(text.as_bytes());
    }

    #[test]
    fn http_inject_generated(body in request()) {
        http_inject(&serde_json::to_vec(&body).unwrap_or_default());
    }

    #[test]
    fn http_inject_any_bytes(data in prop::collection::vec(any::<u8>(), 0..300)) {
        http_inject(&data);
    }
}

#[test]
fn seeds_pass() {
    for (name, data) in seeds("config") {
        eprintln!("{name}");
        config(&data);
    }
    for (name, data) in seeds("http_inject") {
        eprintln!("{name}");
        http_inject(&data);
    }
}
