//! End to end: DANE (RFC 7672) with `dns.dnssec = "trust-ad"`. An in-process DNS server sits behind a proxy
//! that plays the host's validating resolver: it sets the AD bit on the answers of the names we choose (the
//! "signed" ones). The receiving sinks present self-signed certificates for other names: under DANE-EE only the
//! TLSA record decides (no issuer, name or date checks).

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use mta_core::dns::testing::{fqdn, FaultyProxy, TestDnsServer, TestZone};
use mta_tests::sink::{SinkConfig, SinkHandle};
use mta_tests::{http_request, TestServer};
use rcgen::{KeyPair, PublicKeyData};
use sha2::{Digest, Sha256};

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// TLSA `3 1 1`: DANE-EE, SubjectPublicKeyInfo, SHA-256.
fn ee_spki_sha256(spki: &[u8]) -> Vec<u8> {
    Sha256::digest(spki).to_vec()
}

async fn tls_sink(addr: &str, port: u16, cert: &(String, String, Vec<u8>)) -> SinkHandle {
    let config = SinkConfig { starttls: Some((cert.0.clone(), cert.1.clone())), ..Default::default() };
    SinkHandle::start(SocketAddr::new(ip(addr), port), config).await
}

fn policy_view(server: &TestServer, domain: &str) -> serde_json::Value {
    tokio::task::block_in_place(|| {
        http_request(server.http, "GET", &format!("/api/v1/tls/policy/{domain}"), &[], b"").json()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dane_delivers_on_a_match_defers_on_a_mismatch_until_fixed_and_ignores_unauthenticated_tlsa() {
    let port = mta_tests::free_port();
    let good_cert = mta_tests::self_signed("not-the-mx.test");
    let bad_cert = mta_tests::self_signed("mx.bad.test");
    let stranger = KeyPair::generate().unwrap().subject_public_key_info();
    // good.test: signed MX and TLSA naming the receiver's key. bad.test: signed, but the TLSA names another
    // key. unauth.test: signed MX, TLSA (naming another key) not authenticated: ignored, opportunistic TLS.
    let zone = TestZone::new("test")
        .ttl(1)
        .mail_domain("good.test", &[(10, "mx.good.test", ip("127.0.0.2"))])
        .tlsa("_25._tcp.mx.good.test", 3, 1, 1, ee_spki_sha256(&good_cert.2))
        .mail_domain("bad.test", &[(10, "mx.bad.test", ip("127.0.0.3"))])
        .tlsa("_25._tcp.mx.bad.test", 3, 1, 1, ee_spki_sha256(&stranger))
        .mail_domain("unauth.test", &[(10, "mx.unauth.test", ip("127.0.0.4"))])
        .tlsa("_25._tcp.mx.unauth.test", 3, 1, 1, ee_spki_sha256(&stranger));
    let dns = TestDnsServer::start(vec![zone]).await.unwrap();
    let resolver = FaultyProxy::start(dns.addr()).await.unwrap();
    resolver.set_authenticated_names(&[
        "good.test",
        "_25._tcp.mx.good.test",
        "bad.test",
        "_25._tcp.mx.bad.test",
        "unauth.test",
    ]);
    let good = tls_sink("127.0.0.2", port, &good_cert).await;
    let bad = tls_sink("127.0.0.3", port, &bad_cert).await;
    let unauth = tls_sink("127.0.0.4", port, &bad_cert).await;
    let config = format!(
        "[dns]\nnameservers = [\"{}\"]\nmin_ttl = \"1s\"\nnegative_ttl = \"1s\"\ndnssec = \"trust-ad\"\n\
         [delivery]\nport = {port}\nretry_intervals = [\"1s\"]\nsmtp_timeout = \"5s\"\ncircuit_open_for = \"1s\"\n\
         dane = \"enforce\"\n",
        resolver.addr()
    );
    let server = tokio::task::block_in_place(|| TestServer::start(&config));

    tokio::task::block_in_place(|| mta_tests::send_one(server.smtp, "a@good.test", "dane"));
    tokio::task::block_in_place(|| mta_tests::send_one(server.smtp, "b@bad.test", "dane"));
    tokio::task::block_in_place(|| mta_tests::send_one(server.smtp, "c@unauth.test", "dane"));
    assert!(good.wait_for_messages(1, Duration::from_secs(15)).await, "{}", server.stderr());
    assert!(good.messages()[0].tls, "DANE-EE match: delivered over TLS");
    assert!(unauth.wait_for_messages(1, Duration::from_secs(15)).await, "unauthenticated TLSA is ignored");

    let events = mta_tests::wait_events(&server, Duration::from_secs(20), |e| {
        mta_tests::count_events(e, "transient_failure", "b@bad.test") >= 2
    })
    .await;
    assert!(mta_tests::count_events(&events, "transient_failure", "b@bad.test") >= 2, "{events:#?}");
    assert_eq!(
        mta_tests::count_events(&events, "bounce", "b@bad.test")
            + mta_tests::count_events(&events, "delivery", "b@bad.test"),
        0
    );
    let failure = events.iter().find(|e| e["type"] == "transient_failure" && e["recipient"] == "b@bad.test").unwrap();
    let response = failure["response"].as_str().unwrap();
    assert!(response.contains("dane policy") && response.contains("validation-failure"), "{failure}");
    assert_eq!(
        failure["tls"],
        serde_json::json!({"policy": "dane", "mode": "enforce", "tls": false, "failure": "validation-failure"})
    );
    // The deliveries say which policy applied: DANE, and none for the unauthenticated TLSA (opportunistic TLS).
    let tls = |rcpt: &str| {
        let e = events.iter().find(|e| e["type"] == "delivery" && e["recipient"] == rcpt);
        e.map(|e| e["tls"].clone()).unwrap_or_else(|| panic!("no delivery of {rcpt}: {events:#?}"))
    };
    assert_eq!(tls("a@good.test"), serde_json::json!({"policy": "dane", "mode": "enforce", "tls": true}));
    assert_eq!(tls("c@unauth.test"), serde_json::json!({"policy": "none", "mode": null, "tls": true}));
    assert!(bad.messages().is_empty(), "nothing sent to a certificate the TLSA record does not name");
    assert!(!bad.commands().iter().any(|c| c.to_ascii_uppercase().starts_with("MAIL")), "no plaintext fallback");
    assert!(resolver.dnssec_asked() > 0, "queries ask for DNSSEC (AD/DO bits)");

    let view = policy_view(&server, "good.test");
    assert_eq!(view["source"], "dane", "{view}");
    assert_eq!(view["mx"], serde_json::json!(["mx.good.test"]));
    assert!(view["expires"].is_string(), "{view}");
    assert_eq!(policy_view(&server, "unauth.test")["source"], "none");

    // The destination publishes the record of its real key: delivered, over TLS (the receiver restarts so
    // the retry is not waiting on a closed circuit from a stale connection).
    let fixed = hickory_proto::rr::Record::from_rdata(
        fqdn("_25._tcp.mx.bad.test"),
        1,
        hickory_proto::rr::RData::TLSA(hickory_proto::rr::rdata::TLSA::new(
            3.into(),
            1.into(),
            1.into(),
            ee_spki_sha256(&bad_cert.2),
        )),
    );
    assert!(dns.upsert(fixed).await);
    bad.stop().await;
    let bad = tls_sink("127.0.0.3", port, &bad_cert).await;
    assert!(bad.wait_for_messages(1, Duration::from_secs(20)).await, "{}", server.stderr());
    assert!(bad.messages()[0].tls);
}
