//! Message history: `GET /api/v1/messages/{id}` keeps answering with final states after every recipient is done
//! and the spool record is gone — for a delivered, a bounced and an expired message, across a restart.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use mta_core::dns::testing::{TestDnsServer, TestZone};
use mta_tests::sink::{SinkConfig, SinkHandle};
use mta_tests::{http_post_json, http_request, TestServer};

fn inject(http: SocketAddr, rcpt: &str) -> String {
    let body = serde_json::json!({
        "envelope_sender": "app@sender.test",
        "recipients": [rcpt],
        "content": format!("From: app@sender.test\r\nTo: {rcpt}\r\nSubject: history\r\n\r\nbody\r\n"),
        "tenant": "acme",
    });
    let r = http_post_json(http, "/api/v1/messages", &[], &body);
    assert_eq!(r.status, 202, "{}", r.text());
    r.json()["id"].as_str().unwrap().to_string()
}

fn status(http: SocketAddr, id: &str) -> (u16, serde_json::Value) {
    let r = http_request(http, "GET", &format!("/api/v1/messages/{id}"), &[], b"");
    let v = if r.status == 200 { r.json() } else { serde_json::Value::Null };
    (r.status, v)
}

/// The one recipient's state, once it is final (`None` while queued or deferred).
fn final_state(v: &serde_json::Value) -> Option<String> {
    let s = v["recipients"][0]["state"].as_str()?;
    matches!(s, "delivered" | "bounced").then(|| s.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finished_messages_answer_with_final_states_after_a_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let port = mta_tests::free_port();
    let zone =
        TestZone::new("test").mail_domain("d.test", &[(10, "mx.d.test", "127.0.0.2".parse::<IpAddr>().unwrap())]);
    let dns = TestDnsServer::start(vec![zone]).await.unwrap();
    let sink = SinkHandle::start(SocketAddr::new("127.0.0.2".parse().unwrap(), port), SinkConfig::default()).await;
    sink.set_rcpt_rule(|r| {
        if r.starts_with("bad") {
            Some("550 5.1.1 no such user".to_string())
        } else if r.starts_with("later") {
            Some("451 4.3.0 try again later".to_string())
        } else {
            None
        }
    });
    // A short max_age so the deferred recipient expires within the test.
    let extra = format!(
        "[dns]\nnameservers = [\"{dns}\"]\n\
         [delivery]\nport = {port}\nretry_intervals = [\"1s\"]\nmax_age = \"3s\"\nsmtp_timeout = \"5s\"\n",
        dns = dns.addr(),
    );
    let mut server = tokio::task::block_in_place(|| TestServer::start_in(&dir, &extra, None, None));
    let http = server.http;
    let ids: Vec<(String, &str, &str)> = tokio::task::block_in_place(|| {
        vec![
            (inject(http, "ok@d.test"), "delivered", "250"),
            (inject(http, "bad@d.test"), "bounced", "550 5.1.1"),
            (inject(http, "later@d.test"), "bounced", "4.4.7"),
        ]
    });

    // Each reaches its final state (the spool record is removed in the same commit that writes the history).
    let deadline = Instant::now() + Duration::from_secs(60);
    for (id, want, _) in &ids {
        loop {
            let (code, v) = tokio::task::block_in_place(|| status(http, id));
            if code == 200 && final_state(&v).is_some() {
                assert_eq!(final_state(&v).as_deref(), Some(*want), "{id}: {v}");
                break;
            }
            assert!(Instant::now() < deadline, "{id} never finished: {code} {v}\n{}", server.stderr());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    server.sigterm();
    tokio::task::block_in_place(|| server.wait_exit(Duration::from_secs(30)));
    // The spool holds none of them any more (the bounce DSNs went to sender.test, which has no MX: they may stay).
    let listed: Vec<String> = server.spool_list().iter().filter_map(|m| m["id"].as_str().map(str::to_string)).collect();
    for (id, _, _) in &ids {
        assert!(!listed.contains(id), "{id} is still spooled: {listed:?}");
    }

    let server = tokio::task::block_in_place(|| TestServer::start_in(&dir, &extra, None, Some(http.port())));
    for (id, want, reply) in &ids {
        let (code, v) = tokio::task::block_in_place(|| status(server.http, id));
        assert_eq!(code, 200, "{id} after restart: {v}");
        assert_eq!(v["id"], id.as_str());
        assert_eq!(v["envelope_sender"], "app@sender.test");
        assert_eq!(v["tenant"], "acme");
        assert!(v["received_at"].is_string(), "{v}");
        let r = &v["recipients"][0];
        assert_eq!(r["state"], *want, "{v}");
        assert_eq!(r["email"], id_rcpt(&ids, id));
        assert!(r["next_attempt_at"].is_null(), "{v}");
        let last = r["last_reply"].as_str().unwrap_or_default();
        assert!(last.contains(reply), "{id}: last reply {last:?} lacks {reply:?}");
        if *want == "bounced" {
            assert!(r["bounce_class"].is_u64(), "bounced recipients carry a bounce class: {v}");
        }
        assert!(r["attempts"].as_u64().unwrap_or(0) >= 1, "{v}");
    }
    // An id never seen is still 404.
    let (code, _) = tokio::task::block_in_place(|| status(server.http, "0000000000000000.t1"));
    assert_eq!(code, 404);
}

fn id_rcpt(ids: &[(String, &str, &str)], id: &str) -> &'static str {
    match ids.iter().position(|(i, _, _)| i == id) {
        Some(0) => "ok@d.test",
        Some(1) => "bad@d.test",
        _ => "later@d.test",
    }
}
