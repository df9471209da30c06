//! DMARC (RFC 7489) as a table: each row a message (From: domain, MAIL FROM with an SPF pass or
//! fail, an optional DKIM signature by `d=`) against `_dmarc` records in the in-process DNS
//! server, with the result and the policy the RFC gives. Covers relaxed / strict alignment for
//! SPF and DKIM (§3.1), the organisational domain from the Public Suffix List (§3.2, not "the
//! last two labels": `a.b.example.co.uk`), `p` / `sp` (§6.3), `pct` (§6.6.4), records that are
//! missing, broken, not DMARC or several (§6.6.3), and a subdomain with its own record.

mod auth_support;

use auth_support::{env, message, publish, rsa, signed, signer, CLIENT, HOST, STRANGER};
use mta_core::auth::{AuthPolicy, DmarcPolicy, Outcome, Policy, Verifier};
use mta_core::dns::testing::TestZone;

const SPF_PASS: &[&str] = &[
    "example.test",
    "bounce.example.test",
    "strict.test",
    "bounce.strict.test",
    "other.test",
    "example.co.uk",
    "other.co.uk",
    "other.own2.test",
];

const RECORDS: &[(&str, &str)] = &[
    ("_dmarc.example.test", "v=DMARC1; p=reject; sp=quarantine"),
    ("_dmarc.strict.test", "v=DMARC1; p=reject; adkim=s; aspf=s"),
    ("_dmarc.example.co.uk", "v=DMARC1; p=reject"),
    // a trap for "the last two labels": co.uk is a public suffix, never an organisational domain
    ("_dmarc.co.uk", "v=DMARC1; p=none"),
    ("_dmarc.own.test", "v=DMARC1; p=reject"),
    ("_dmarc.sub.own.test", "v=DMARC1; p=none"),
    ("_dmarc.sub.own2.test", "v=DMARC1; p=reject"),
    ("_dmarc.pct0.test", "v=DMARC1; p=reject; pct=0"),
    ("_dmarc.pct100.test", "v=DMARC1; p=reject; pct=100"),
    ("_dmarc.q.test", "v=DMARC1; p=quarantine; pct=0"),
    ("_dmarc.broken.test", "v=DMARC1; p=bogus"),
    ("_dmarc.brokenrua.test", "v=DMARC1; p=bogus; rua=mailto:d@brokenrua.test"),
    ("_dmarc.notdmarc.test", "v=spf1 -all"),
    ("_dmarc.nop.test", "v=DMARC1; sp=reject"),
];

/// `(id, From: domain, MAIL FROM domain, SPF passes?, DKIM d= (or ""), expected result, expected policy)`.
type Row = (&'static str, &'static str, &'static str, bool, &'static str, Outcome, DmarcPolicy);

const TABLE: &[Row] = &[
    ("spf_aligned_same_domain", "example.test", "example.test", true, "", Outcome::Pass, DmarcPolicy::Reject),
    ("spf_relaxed_subdomain", "example.test", "bounce.example.test", true, "", Outcome::Pass, DmarcPolicy::Reject),
    (
        "spf_relaxed_from_subdomain_sp",
        "news.example.test",
        "example.test",
        true,
        "",
        Outcome::Pass,
        DmarcPolicy::Quarantine,
    ),
    (
        "spf_strict_subdomain_not_aligned",
        "strict.test",
        "bounce.strict.test",
        true,
        "",
        Outcome::Fail,
        DmarcPolicy::Reject,
    ),
    ("spf_strict_same_domain", "strict.test", "strict.test", true, "", Outcome::Pass, DmarcPolicy::Reject),
    ("spf_aligned_but_failed", "example.test", "example.test", false, "", Outcome::Fail, DmarcPolicy::Reject),
    (
        "dkim_relaxed_subdomain",
        "example.test",
        "other.test",
        true,
        "mail.example.test",
        Outcome::Pass,
        DmarcPolicy::Reject,
    ),
    (
        "dkim_strict_subdomain_not_aligned",
        "strict.test",
        "other.test",
        true,
        "mail.strict.test",
        Outcome::Fail,
        DmarcPolicy::Reject,
    ),
    ("dkim_strict_same_domain", "strict.test", "other.test", true, "strict.test", Outcome::Pass, DmarcPolicy::Reject),
    (
        "dkim_aligned_spf_failed",
        "example.test",
        "other.test",
        false,
        "example.test",
        Outcome::Pass,
        DmarcPolicy::Reject,
    ),
    ("neither_aligned", "example.test", "other.test", true, "other.test", Outcome::Fail, DmarcPolicy::Reject),
    ("subdomain_policy_sp", "news.example.test", "other.test", true, "", Outcome::Fail, DmarcPolicy::Quarantine),
    ("subdomain_without_sp_uses_p", "news.strict.test", "other.test", true, "", Outcome::Fail, DmarcPolicy::Reject),
    ("psl_deep_subdomain_relaxed", "a.b.example.co.uk", "example.co.uk", true, "", Outcome::Pass, DmarcPolicy::Reject),
    (
        "psl_deep_subdomain_fails_with_org_policy",
        "a.b.example.co.uk",
        "other.co.uk",
        true,
        "",
        Outcome::Fail,
        DmarcPolicy::Reject,
    ),
    (
        "psl_public_suffix_siblings_not_aligned",
        "example.co.uk",
        "other.co.uk",
        true,
        "",
        Outcome::Fail,
        DmarcPolicy::Reject,
    ),
    ("subdomain_own_record", "sub.own.test", "other.test", true, "", Outcome::Fail, DmarcPolicy::None),
    (
        "subdomain_record_siblings_aligned",
        "sub.own2.test",
        "other.own2.test",
        true,
        "",
        Outcome::Pass,
        DmarcPolicy::Reject,
    ),
    ("pct_0_reject_becomes_quarantine", "pct0.test", "other.test", true, "", Outcome::Fail, DmarcPolicy::Quarantine),
    ("pct_100_reject", "pct100.test", "other.test", true, "", Outcome::Fail, DmarcPolicy::Reject),
    ("pct_0_quarantine_becomes_none", "q.test", "other.test", true, "", Outcome::Fail, DmarcPolicy::None),
    ("no_record", "norecord.test", "other.test", true, "", Outcome::None, DmarcPolicy::None),
    ("broken_p_without_rua", "broken.test", "other.test", true, "", Outcome::None, DmarcPolicy::None),
    ("broken_p_with_rua_is_p_none", "brokenrua.test", "other.test", true, "", Outcome::Fail, DmarcPolicy::None),
    ("not_a_dmarc_record", "notdmarc.test", "other.test", true, "", Outcome::None, DmarcPolicy::None),
    ("two_records", "multi.test", "other.test", true, "", Outcome::None, DmarcPolicy::None),
    ("no_p_no_rua", "nop.test", "other.test", true, "", Outcome::None, DmarcPolicy::None),
];

fn zones() -> Vec<TestZone> {
    let mut test = TestZone::new("test");
    let mut uk = TestZone::new("uk");
    let pick = |name: &str| name.ends_with(".uk");
    for d in SPF_PASS {
        let rec = ["v=spf1 ip4:192.0.2.1 -all"];
        if pick(d) {
            uk = uk.txt(d, &rec);
        } else {
            test = test.txt(d, &rec);
        }
    }
    for (name, value) in RECORDS {
        if pick(name) {
            uk = uk.txt(name, &[value]);
        } else {
            test = test.txt(name, &[value]);
        }
    }
    test = test.txt("_dmarc.multi.test", &["v=DMARC1; p=reject"]).txt("_dmarc.multi.test", &["v=DMARC1; p=none"]);
    let mut signers: Vec<&str> = TABLE.iter().map(|r| r.4).filter(|d| !d.is_empty()).collect();
    signers.dedup();
    for d in signers {
        test = publish(test, &signer(&[rsa(d, "sel")]));
    }
    vec![test, uk]
}

#[tokio::test]
async fn rfc_7489_table() {
    let e = env(zones()).await;
    let policy = AuthPolicy { spf: Policy::Record, dkim: Policy::Record, dmarc: Policy::Record };
    let v = Verifier::new(e.auth.clone(), policy, HOST);
    let mut wrong = Vec::new();
    for &(id, from, mail_from, spf_pass, d, result, dmarc_policy) in TABLE {
        let mut m = message(&format!("alice@{from}"), id, "body\r\n");
        if !d.is_empty() {
            m = signed(&signer(&[rsa(d, "sel")]).with_fixed_domain(d).unwrap(), &m);
        }
        let ip = if spf_pass { CLIENT } else { STRANGER };
        let verdict = v.verify(ip, "mail.other.test", &format!("bounce@{mail_from}"), &m).await;
        let got = verdict.summary.dmarc.clone().map(|(o, p, _)| (o, p));
        if got != Some((result, dmarc_policy)) {
            wrong.push(format!("{id}: expected {result:?}/{dmarc_policy:?}, got {got:?}\n{}", verdict.header));
        }
    }
    eprintln!("DMARC RFC 7489 table: {}/{} rows as the RFC says", TABLE.len() - wrong.len(), TABLE.len());
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}
