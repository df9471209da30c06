//! The shipped rules against their own real examples, and the fallbacks.

use mta_smtp::client::{ClientError, Stage};
use mta_smtp::Reply;

use super::rules::{parse, RuleSet};
use super::*;
use crate::Response;

fn shipped_specs() -> Vec<RuleSpec> {
    match parse(SHIPPED_RULES) {
        Ok(s) => s,
        Err(e) => panic!("shipped rules: {e}"),
    }
}

#[test]
fn the_shipped_rules_compile_and_each_has_a_source_and_a_real_example() {
    let specs = shipped_specs();
    assert!(specs.len() >= 40, "{} rules", specs.len());
    assert!(RuleSet::compile(&specs).is_ok());
    for (i, s) in specs.iter().enumerate() {
        assert!(s.source.as_deref().is_some_and(|t| !t.is_empty()), "rule {i} names its source");
        assert!(s.example.as_deref().and_then(parse_line).is_some(), "rule {i} has an example reply");
    }
}

#[test]
fn every_shipped_example_lands_in_its_rules_class() {
    let c = Classifier::shipped();
    let mut wrong = Vec::new();
    for s in shipped_specs() {
        let Some(example) = s.example.as_deref() else { continue };
        let Some(r) = parse_line(example) else { continue };
        let got = c.classify(&r);
        if got != s.class {
            wrong.push(format!("{example:?}: {got}, rule says {}", s.class));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

fn class_of(line: &str) -> BounceClass {
    Classifier::shipped().classify_line(line).unwrap_or(BounceClass::Undetermined)
}

#[test]
fn replies_no_rule_knows_fall_back_to_their_codes() {
    assert_eq!(class_of("550 5.1.1 gone"), BounceClass::InvalidRecipient);
    assert_eq!(class_of("552 5.2.2 x"), BounceClass::MailboxFull);
    assert_eq!(class_of("554 5.7.1 x"), BounceClass::MailBlock);
    assert_eq!(class_of("451 4.3.0 x"), BounceClass::TransientFailure);
    assert_eq!(class_of("554 x"), BounceClass::GenericBounce);
    // A contradictory enhanced code is not believed.
    assert_eq!(class_of("550 4.1.1 x"), BounceClass::GenericBounce);
    let at_rcpt = Response::remote(&Reply::basic(550, "computer says no"), Stage::Rcpt);
    assert_eq!(Classifier::shipped().classify(&at_rcpt), BounceClass::InvalidRecipient);
    let at_data = Response::remote(&Reply::basic(552, "no"), Stage::DataTerm);
    assert_eq!(Classifier::shipped().classify(&at_data), BounceClass::TooLarge);
}

#[test]
fn our_own_reasons_are_classified_by_what_happened() {
    let c = Classifier::shipped();
    let dns = Response::local(451, (4, 4, 3), "DNS lookup for dest.test failed: timed out");
    assert_eq!(c.classify(&dns), BounceClass::DnsFailure);
    let nx = Response::local(550, (5, 1, 2), "Domain nosuch.test not found: NXDOMAIN");
    assert_eq!(c.classify(&nx), BounceClass::DnsFailure);
    let null_mx = Response::local(556, (5, 1, 10), "Domain x.test does not accept mail (null MX)");
    assert_eq!(c.classify(&null_mx), BounceClass::InvalidRecipient);
    let timeout = Response::from_error(&ClientError::Timeout { stage: Stage::DataTerm });
    assert_eq!(c.classify(&timeout), BounceClass::Timeout);
    let lost = Response::from_error(&ClientError::Closed { stage: Stage::Greeting });
    assert_eq!(c.classify(&lost), BounceClass::Timeout);
    let expired = Response::local(451, (4, 4, 7), "Message expired: not delivered within the maximum queue lifetime");
    assert_eq!(c.classify(&expired), BounceClass::Timeout);
    // An expiry is classified by the last reply, when it says more than "try later".
    let full = Response::local(451, (4, 4, 7), "Message expired; last error: 452 4.2.2 Mailbox full");
    assert_eq!(c.classify(&full), BounceClass::MailboxFull);
    let later = Response::local(451, (4, 4, 7), "Message expired; last error: 451 4.3.0 later");
    assert_eq!(c.classify(&later), BounceClass::Timeout);
    let loop_ = Response::local(554, (5, 4, 6), "MX for x.test points back to us (mail loop)");
    assert_eq!(c.classify(&loop_), BounceClass::AdminFailure);
}

#[test]
fn user_rules_come_before_the_shipped_ones() {
    let user = match parse("[[rule]]\nclass = 20\ntext = \"does not exist\"\n") {
        Ok(u) => u,
        Err(e) => panic!("{e}"),
    };
    let c = match Classifier::with_user_rules(&user) {
        Ok(c) => c,
        Err(e) => panic!("{e}"),
    };
    let r = "550 5.1.1 The email account that you tried to reach does not exist.";
    assert_eq!(c.classify_line(r), Some(BounceClass::SoftBounce));
    assert_eq!(class_of(r), BounceClass::InvalidRecipient);
}
