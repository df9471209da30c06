//! DKIM (RFC 6376, RFC 8463) against a reference implementation: dkimpy signs a table of cases
//! (`tests/dkim/dkimpy_cases.py`: rsa-sha256 and ed25519-sha256, simple/relaxed both ways, `l=`,
//! several signatures, folded and over-signed headers, keys with `t=y`, revoked or of the wrong
//! type, messages changed after signing) and gives its verdict for each signature; our verifier
//! must give the same verdict on the same bytes, with the key records served by a loopback DNS
//! server through our resolver pool:
//! - library level, every case, through `mta_core::auth::Verifier`;
//! - end to end, some cases, over SMTP to the real binary, reading `Authentication-Results`.
//!
//! A verdict is `pass` or not: dkimpy says `fail` for everything else, where we distinguish
//! fail / neutral / permerror / temperror (the table prints ours too).
//!
//! Skips (with a message) when python3, dkimpy or PyNaCl is missing (`scripts/test.sh` installs them).

use std::io::Write;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use mta_core::auth::{self, AuthPolicy, KeyAlgorithm, KeyConfig, Outcome, Policy, Signer, Verifier};
use mta_core::dns::testing::{TestDnsServer, TestZone};
use mta_core::dns::{DnsConfig, Resolver};
use mta_tests::{queued_id, RawSmtp, TestServer};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../crates/mta-core/tests/fixtures/auth")
}

fn dkimpy_available() -> bool {
    match Command::new("python3").args(["-c", "import dkim, nacl"]).output() {
        Ok(o) if o.status.success() => true,
        _ => {
            eprintln!(
                "SKIPPED dkim_table: python3 with dkimpy and PyNaCl is needed \
                 (python3 -m pip install --quiet dkimpy pynacl)"
            );
            false
        }
    }
}

struct Case {
    id: String,
    what: String,
    message: Vec<u8>,
    dkimpy: Vec<String>,
}

/// Our published key records (the fixtures' keys; the script adds more), then dkimpy's cases.
fn dkimpy_cases() -> (Vec<(String, String)>, Vec<Case>) {
    let key = |selector: &str, algorithm, file: &str| KeyConfig {
        domain: "interop.test".into(),
        selector: selector.into(),
        algorithm,
        key_file: fixtures().join(file),
        headers: Vec::new(),
    };
    let published = Signer::load_keys(&[
        key("rsa", KeyAlgorithm::RsaSha256, "rsa2048.pem"),
        key("ed", KeyAlgorithm::Ed25519Sha256, "ed25519.pem"),
    ])
    .expect("fixture keys");
    let dir = tempfile::tempdir().unwrap();
    let records_path = dir.path().join("records.txt");
    let mut f = std::fs::File::create(&records_path).unwrap();
    for (name, value) in published.dns_records() {
        writeln!(f, "{name} {value}").unwrap();
    }
    drop(f);
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("dkim/dkimpy_cases.py");
    let out = Command::new("python3").arg(&script).arg(fixtures()).arg(&records_path).output().expect("python3");
    assert!(out.status.success(), "dkimpy_cases.py: {}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON from dkimpy_cases.py");
    let records = v["records"]
        .as_object()
        .expect("records")
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
        .collect();
    let cases = v["cases"]
        .as_array()
        .expect("cases")
        .iter()
        .map(|c| Case {
            id: c["id"].as_str().unwrap_or_default().into(),
            what: c["what"].as_str().unwrap_or_default().into(),
            // latin-1 code points back to bytes
            message: c["message"].as_str().unwrap_or_default().chars().map(|ch| ch as u32 as u8).collect(),
            dkimpy: c["dkimpy"].as_array().unwrap().iter().map(|s| s.as_str().unwrap().to_string()).collect(),
        })
        .collect();
    (records, cases)
}

/// `name TXT value`, split into 255-byte character-strings.
fn zone(records: &[(String, String)]) -> TestZone {
    let mut z = TestZone::new("test");
    for (name, value) in records {
        let parts: Vec<&str> = value.as_bytes().chunks(255).map(|c| std::str::from_utf8(c).unwrap()).collect();
        z = z.txt(name, &parts);
    }
    z
}

fn verdict(o: Outcome) -> &'static str {
    if o == Outcome::Pass {
        "pass"
    } else {
        "fail"
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_dkim_verdicts_equal_dkimpys_on_every_case() {
    if !dkimpy_available() {
        return;
    }
    let (records, cases) = dkimpy_cases();
    assert!(cases.len() >= 40, "{} cases", cases.len());
    let dns = TestDnsServer::start(vec![zone(&records)]).await.expect("dns");
    let resolver = Resolver::new(DnsConfig {
        nameservers: vec![dns.addr()],
        min_ttl: Duration::ZERO,
        lookup_timeout: Duration::from_secs(2),
        query_timeout: Duration::from_secs(1),
        ..DnsConfig::default()
    })
    .expect("resolver");
    let (stub, task) = resolver.serve_stub("127.0.0.1:0".parse().unwrap()).await.expect("stub");
    let ma = auth::authenticator(stub, resolver.config().lookup_timeout).expect("authenticator");
    let policy = AuthPolicy { spf: Policy::Off, dkim: Policy::Record, dmarc: Policy::Off };
    let v = Verifier::new(ma, policy, "mx.receiver.test");

    let mut table = String::new();
    let mut disagree = Vec::new();
    let mut signatures = 0;
    for c in &cases {
        let result = v.verify("192.0.2.1".parse().unwrap(), "client.example", "", &c.message).await;
        let ours: Vec<Outcome> = result.summary.dkim.iter().map(|(_, o)| *o).collect();
        let ours_v: Vec<&str> = ours.iter().map(|o| verdict(*o)).collect();
        signatures += c.dkimpy.len();
        let same = ours_v == c.dkimpy;
        let ours_s: Vec<&str> = ours.iter().map(|o| o.as_str()).collect();
        table.push_str(&format!(
            "{:<40} dkimpy {:<16} ours {:<24} {}\n",
            c.id,
            c.dkimpy.join(","),
            ours_s.join(","),
            if same { "" } else { "DIFFERENT" }
        ));
        if !same {
            disagree
                .push(format!("{} ({}): dkimpy {:?}, ours {:?}\n{}", c.id, c.what, c.dkimpy, ours_s, result.header));
        }
    }
    eprintln!("{table}");
    eprintln!("DKIM vs dkimpy: {}/{} cases agree ({signatures} signatures)", cases.len() - disagree.len(), cases.len());
    task.abort();
    assert!(disagree.is_empty(), "{}", disagree.join("\n"));
}

/// A few cases end to end: SMTP from an outsider, our `Authentication-Results: ... dkim=` read back
/// from the spool.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dkim_results_over_smtp_equal_dkimpys() {
    if !dkimpy_available() {
        return;
    }
    let (records, cases) = dkimpy_cases();
    let dns = TestDnsServer::start(vec![zone(&records)]).await.expect("dns");
    let mut server = tokio::task::block_in_place(|| {
        TestServer::start(&format!(
            "[dns]\nnameservers = [\"{}\"]\n[smtp]\nrelay_networks = []\nrelay_domains = [\"inbound.test\"]\n\
             [[route]]\ndomain = \"inbound.test\"\nrelay = \"127.0.0.1:9\"\n\
             [auth]\nspf = \"off\"\ndkim = \"record\"\ndmarc = \"off\"\n[delivery]\nenabled = false\n",
            dns.addr()
        ))
    });
    let picked = [
        "rsa_rr",
        "ed25519_ss",
        "body_modified_rr",
        "l_tag_appended_ss",
        "two_signatures_one_revoked",
        "oversigned_subject_added",
        "key_wrong_type",
        "whitespace_in_body_rr",
    ];
    let mut sent = Vec::new();
    for id in picked {
        let c = cases.iter().find(|c| c.id == id).unwrap_or_else(|| panic!("case {id}"));
        let reply = tokio::task::block_in_place(|| {
            let (mut s, _) = RawSmtp::connect(server.smtp);
            s.cmd("EHLO client.example", "250");
            s.cmd("MAIL FROM:<sender@interop.test>", "250");
            s.cmd("RCPT TO:<user@inbound.test>", "250");
            s.cmd("DATA", "354");
            s.send(&c.message);
            s.send(b".\r\n");
            let r = s.reply();
            s.cmd("QUIT", "221");
            r
        });
        sent.push((c, queued_id(&reply).unwrap_or_else(|| panic!("{id}: {reply}"))));
    }
    server.sigterm();
    tokio::task::block_in_place(|| server.wait_exit(Duration::from_secs(20)));
    for (c, id) in sent {
        let stored = String::from_utf8_lossy(&tokio::task::block_in_place(|| server.spool_raw(&id))).into_owned();
        let ar_end = stored.find("\r\nReceived:").expect("our Received:");
        let ar = &stored[..ar_end];
        assert!(ar.starts_with("Authentication-Results: "), "{}: {stored}", c.id);
        let ours: Vec<&str> =
            ar.split("dkim=").skip(1).map(|r| if r.starts_with("pass") { "pass" } else { "fail" }).collect();
        assert_eq!(ours, c.dkimpy, "{} ({}): {ar}", c.id, c.what);
    }
}
