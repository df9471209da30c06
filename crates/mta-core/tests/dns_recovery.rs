//! Recovery from upstream trouble: when every name fails at once (the upstream's trouble), the
//! names recover with the upstream; a name that fails while the upstream answers others (the
//! name's trouble) still backs off on its own.

mod dns_support;

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use dns_support::{config, fixture_with, resolver};
use mta_core::dns::testing::TestZone;
use mta_core::dns::DnsConfig;

/// `d0.storm.test` ... `d{n-1}.storm.test`, each `MX 10 mx.dN.storm.test` with an A record.
fn storm_zone(n: usize) -> TestZone {
    let mut z = TestZone::new("storm.test");
    for i in 0..n {
        let ip = IpAddr::V4(Ipv4Addr::new(127, 10, (i >> 8) as u8, i as u8));
        z = z.mail_domain(&domain(i), &[(10, &format!("mx.{}", domain(i)), ip)]);
    }
    z
}

fn domain(i: usize) -> String {
    format!("d{i}.storm.test")
}

/// 100 new destinations arrive during 4 s of 50% SERVFAIL, each retried every 250 ms (like a
/// short delivery retry interval) until its MX plan resolves. After the heal the upstream
/// answers everything, so every name must resolve within a couple of seconds: the failures of
/// the storm were the upstream's, not the names', and must not hold the names back.
#[tokio::test]
async fn dns_names_recover_with_the_upstream_after_a_servfail_storm() {
    const NAMES: usize = 100;
    const STORM: Duration = Duration::from_secs(4);
    const RETRY_EVERY: Duration = Duration::from_millis(250);
    const GIVE_UP_AFTER_HEAL: Duration = Duration::from_secs(10);
    // The pool sees the heal from two answered retries; during the trouble the retry budget lets
    // about one a second through, so ~2 s, plus one retry interval, plus slack for a loaded
    // machine. (Before per-upstream trouble: most names still failing 10 s after the heal.)
    const RECOVERED_WITHIN: Duration = Duration::from_secs(4);
    let f = fixture_with(vec![storm_zone(NAMES)]).await;
    let r = resolver(config(&f));
    f.proxy.set_servfail_ratio(0.5);
    let t0 = Instant::now();
    let give_up = t0 + STORM + GIVE_UP_AFTER_HEAL;
    let tasks: Vec<_> = (0..NAMES)
        .map(|i| {
            let r = r.clone();
            tokio::spawn(async move {
                // new names keep arriving during the first half of the storm
                tokio::time::sleep(Duration::from_millis(20 * i as u64)).await;
                let mut failures = 0u32;
                loop {
                    match r.resolve_mx(&domain(i)).await {
                        Ok(_) => return (Some(Instant::now()), failures),
                        Err(e) => {
                            assert!(!e.is_permanent(), "{}: {e}", domain(i));
                            failures += 1;
                        }
                    }
                    if Instant::now() >= give_up {
                        return (None, failures);
                    }
                    tokio::time::sleep(RETRY_EVERY).await;
                }
            })
        })
        .collect();
    tokio::time::sleep_until((t0 + STORM).into()).await;
    f.proxy.heal();
    let healed = Instant::now();
    let storm_packets = f.proxy.received();
    let mut storm_failures = 0;
    let mut late = Vec::new();
    let mut last = Duration::ZERO;
    for (i, t) in tasks.into_iter().enumerate() {
        let (done, failures) = t.await.expect("caller task");
        storm_failures += failures;
        match done {
            Some(at) => {
                let after = at.saturating_duration_since(healed);
                last = last.max(after);
                if after > RECOVERED_WITHIN {
                    late.push((domain(i), Some(after), failures));
                }
            }
            None => late.push((domain(i), None, failures)),
        }
    }
    assert!(storm_failures > 0, "the storm made no lookup fail");
    assert!(!r.upstream_health()[0].in_trouble, "{:?}", r.upstream_health());
    assert!(
        late.is_empty(),
        "{} of {NAMES} names resolved more than {RECOVERED_WITHIN:?} after the heal or never (name, after heal, failures): {:?}",
        late.len(),
        &late[..late.len().min(10)]
    );
    eprintln!(
        "last name resolved {last:?} after the heal; {storm_failures} failed lookups in all; \
         {storm_packets} packets during the storm, {} in all",
        f.proxy.received()
    );
}

/// One name always SERVFAILs while the upstream answers every other name: that is the name's
/// trouble, so its failure memo keeps doubling and the upstream sees few queries for it even
/// though a caller asks for it every 20 ms.
#[tokio::test]
async fn dns_a_broken_name_backs_off_while_the_upstream_answers_others() {
    let f = fixture_with(vec![storm_zone(200)]).await;
    f.proxy.set_servfail_names(&["d0.storm.test"]);
    // a short memo keeps the test short: 100, 200, 400, 800, 1600 ms ... when it escalates
    let r = resolver(DnsConfig { failure_memo: Duration::from_millis(100), ..config(&f) });
    let until = Instant::now() + Duration::from_secs(4);
    let mut next = 1;
    while Instant::now() < until {
        assert!(!r.upstream_health()[0].in_trouble, "one broken name is not the upstream's trouble");
        let e = r.resolve_mx(&domain(0)).await.expect_err("d0 always fails");
        assert!(!e.is_permanent(), "{e}");
        if next < 200 {
            r.resolve_mx(&domain(next)).await.expect("other names resolve");
            next += 1;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let broken = f.proxy.received_for("d0.storm.test");
    // Escalating: ~6 queries in 4 s. A flat 100 ms memo would allow ~40 (the retry budget,
    // funded by the ~400 first attempts of the other names, would not stop them).
    assert!(broken <= 10, "the broken name was asked {broken} times in 4 s");
    assert!(f.proxy.received_for("d1.storm.test") == 1);
}
