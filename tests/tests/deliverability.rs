//! End to end: the suppression list (a `550 5.1.1` bounce suppresses; SMTP and HTTP injection refuse as the
//! contract says; tenant scoping; manual add and remove; entries survive `kill -9`; an ARF complaint report
//! suppresses and is consumed) and `[[response_rule]]` (a suspend rule holds a destination for its duration
//! without bouncing and resumes by itself; a throttle rule halves a site's concurrent connections).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mta_tests::sink::{SinkConfig, SinkHandle};
use mta_tests::{free_port, http_post_json, http_request, HttpResponse, RawSmtp, TestServer};
use serde_json::json;

fn get(server: &TestServer, path: &str) -> HttpResponse {
    http_request(server.http, "GET", path, &[], b"")
}

fn put(server: &TestServer, path: &str, body: &serde_json::Value) -> HttpResponse {
    http_request(server.http, "PUT", path, &[("Content-Type", "application/json")], body.to_string().as_bytes())
}

fn inject(server: &TestServer, recipients: &[&str], tenant: Option<&str>) -> HttpResponse {
    let mut body = json!({
        "envelope_sender": "bounces@sender.test",
        "recipients": recipients,
        "content": "From: a@sender.test\r\nTo: x@x.test\r\nSubject: s\r\n\r\nHello.\r\n",
    });
    if let Some(t) = tenant {
        body["tenant"] = json!(t);
    }
    http_post_json(server.http, "/api/v1/messages", &[], &body)
}

/// One SMTP transaction to `rcpt`; returns the RCPT reply (and finishes the message when it was accepted).
fn smtp_rcpt(server: &TestServer, rcpt: &str) -> String {
    let (mut c, _) = RawSmtp::connect(server.smtp);
    c.cmd("EHLO client.test", "250");
    c.cmd("MAIL FROM:<a@sender.test>", "250");
    c.send(format!("RCPT TO:<{rcpt}>\r\n").as_bytes());
    let reply = c.reply();
    if reply.starts_with("250") {
        c.cmd("DATA", "354");
        c.send(b"From: a@sender.test\r\nSubject: s\r\n\r\nHello.\r\n");
        c.cmd(".", "250");
    }
    c.cmd("QUIT", "221");
    reply
}

/// Wait (bounded) until `check` holds for the event log.
async fn wait_events(server: &TestServer, what: &str, check: impl Fn(&[serde_json::Value]) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if check(&server.events()) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}: {:#?}", server.events());
}

fn has(events: &[serde_json::Value], kind: &str, rcpt: &str) -> bool {
    events.iter().any(|e| e["type"] == kind && e["recipient"] == rcpt)
}

/// An ARF report (RFC 5965 §B.1 shape) about a message to `rcpt`.
fn arf_report(rcpt: &str) -> String {
    format!(
        "From: <fbl@provider.test>\r\nTo: <fbl@mx.test>\r\nSubject: FW: complaint\r\nMIME-Version: 1.0\r\n\
         Content-Type: multipart/report; report-type=feedback-report; boundary=\"b1\"\r\n\r\n\
         --b1\r\nContent-Type: text/plain\r\n\r\nThis is an email abuse report.\r\n\r\n\
         --b1\r\nContent-Type: message/feedback-report\r\n\r\nFeedback-Type: abuse\r\nUser-Agent: FBL/1.0\r\n\
         Version: 1\r\nOriginal-Rcpt-To: <{rcpt}>\r\n\r\n\
         --b1\r\nContent-Type: text/rfc822-headers\r\n\r\nFrom: a@sender.test\r\nTo: {rcpt}\r\nSubject: s\r\n\r\n\
         --b1--\r\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn suppression_end_to_end() {
    let sink = SinkHandle::start("127.0.0.1:0".parse().unwrap(), SinkConfig::default()).await;
    sink.set_rcpt_rule(|r| {
        r.starts_with("dead@")
            .then(|| "550 5.1.1 The email account that you tried to reach does not exist. - gsmtp".to_string())
    });
    let tmp = tempfile::tempdir().unwrap();
    let hooks = tempfile::tempdir().unwrap();
    let receiver = mta_tests::webhook::Receiver::start(hooks.path(), "s", 0.0, 0.0, 0.0);
    let (smtp_port, http_port) = (free_port(), free_port());
    let config = format!(
        "[[route]]\ndomain = \"*\"\nrelay = \"{}\"\n[delivery]\nretry_intervals = [\"1s\"]\nsmtp_timeout = \"5s\"\n\
         [suppression]\ncomplaint_address = \"fbl@mx.test\"\n\
         [[webhook]]\nurl = \"http://127.0.0.1:{}/hook\"\nsecret = \"s\"\nevents = [\"suppressed\"]\nbatch_delay = \"100ms\"\n",
        sink.addr, receiver.port
    );
    let mut server =
        tokio::task::block_in_place(|| TestServer::start_in(tmp.path(), &config, Some(smtp_port), Some(http_port)));

    // A 550 5.1.1 bounce (class 10) puts the recipient on the list, for the message's tenant (none here).
    tokio::task::block_in_place(|| assert!(smtp_rcpt(&server, "dead@x.test").starts_with("250")));
    wait_events(&server, "the bounce", |e| has(e, "bounce", "dead@x.test")).await;
    let entry = tokio::task::block_in_place(|| get(&server, "/api/v1/suppressions/dead@x.test"));
    assert_eq!(entry.status, 200, "{}", entry.text());
    assert_eq!(entry.json()["reason"], "hard_bounce");
    assert_eq!(entry.json()["tenant"], serde_json::Value::Null);

    // SMTP: RCPT refused 550 5.7.1, saying suppressed. HTTP: 202 with the rest, or 422 when none is left.
    tokio::task::block_in_place(|| {
        let r = smtp_rcpt(&server, "dead@x.test");
        assert!(r.starts_with("550 5.7.1") && r.contains("suppressed"), "{r}");
        let r = inject(&server, &["dead@x.test", "live@x.test"], None);
        assert_eq!(r.status, 202, "{}", r.text());
        assert_eq!(
            (r.json()["recipients"].clone(), r.json()["suppressed"].clone()),
            (json!(1), json!(["dead@x.test"]))
        );
        let r = inject(&server, &["DEAD@x.test"], Some("acme"));
        assert_eq!(r.status, 422, "{}", r.text());
        assert_eq!(r.json()["error"]["code"], "all_recipients_suppressed");
    });
    wait_events(&server, "suppressed events", |e| {
        e.iter().filter(|e| e["type"] == "suppressed" && e["recipient"] == "dead@x.test").count() >= 2
    })
    .await;
    // Exported like every other event: the webhook gets both refusals, signed.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let exported = || receiver.events().iter().filter(|e| e["type"] == "suppressed").count();
    while exported() < 2 && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(exported() >= 2, "suppressed events at the webhook: {:?}", receiver.events());
    assert_eq!(receiver.bad_signatures(), 0);

    // Tenant scoping: an entry for acme refuses acme's mail only.
    tokio::task::block_in_place(|| {
        let r = put(&server, "/api/v1/suppressions/t@x.test", &json!({"reason": "unsubscribe", "tenant": "acme"}));
        assert_eq!(r.status, 201, "{}", r.text());
        assert_eq!(inject(&server, &["t@x.test"], Some("acme")).status, 422);
        assert_eq!(inject(&server, &["t@x.test"], Some("other")).status, 202);
        assert_eq!(inject(&server, &["t@x.test"], None).status, 202);
        assert!(smtp_rcpt(&server, "t@x.test").starts_with("250"), "SMTP mail has no tenant");
        assert_eq!(get(&server, "/api/v1/suppressions/t@x.test").status, 404, "not an every-tenant entry");
        assert_eq!(get(&server, "/api/v1/suppressions/t@x.test?tenant=acme").json()["reason"], "unsubscribe");

        // Manual add, replace, list with a cursor, remove.
        assert_eq!(put(&server, "/api/v1/suppressions/m@x.test", &json!({"reason": "manual"})).status, 201);
        assert_eq!(put(&server, "/api/v1/suppressions/m@x.test", &json!({"reason": "manual"})).status, 200);
        assert_eq!(inject(&server, &["m@x.test"], None).status, 422);
        let mut seen = Vec::new();
        let mut cursor: Option<String> = None;
        for _ in 0..10 {
            let path = match &cursor {
                Some(c) => format!("/api/v1/suppressions?limit=1&cursor={c}"),
                None => "/api/v1/suppressions?limit=1".to_string(),
            };
            let page = get(&server, &path).json();
            for e in page["suppressions"].as_array().unwrap() {
                seen.push(e["email"].as_str().unwrap().to_string());
            }
            cursor = page["next"].as_str().map(str::to_string);
            if cursor.is_none() {
                break;
            }
        }
        seen.sort();
        assert_eq!(seen, ["dead@x.test", "m@x.test", "t@x.test"]);
        let only = get(&server, "/api/v1/suppressions?tenant=acme").json();
        assert_eq!(only["suppressions"].as_array().unwrap().len(), 1);
        let del = http_request(server.http, "DELETE", "/api/v1/suppressions/m@x.test", &[], b"");
        assert_eq!(del.status, 204);
        assert_eq!(get(&server, "/api/v1/suppressions/m@x.test").status, 404);
        assert_eq!(inject(&server, &["m@x.test"], None).status, 202);
        assert_eq!(get(&server, "/api/v1/suppressions/not-an-address").status, 400);
    });

    // A complaint (ARF report to the complaint address) suppresses the original recipient; the report is
    // consumed, never relayed.
    tokio::task::block_in_place(|| {
        let (mut c, _) = RawSmtp::connect(server.smtp);
        c.cmd("EHLO provider.test", "250");
        c.cmd("MAIL FROM:<fbl@provider.test>", "250");
        c.cmd("RCPT TO:<fbl@mx.test>", "250");
        c.cmd("DATA", "354");
        c.send(arf_report("Complainer@X.test").as_bytes());
        c.cmd(".", "250");
        c.cmd("MAIL FROM:<fbl@provider.test>", "250");
        c.cmd("RCPT TO:<fbl@mx.test>", "250");
        c.cmd("DATA", "354");
        c.send(b"From: someone@provider.test\r\nSubject: not a report\r\n\r\nhi\r\n");
        c.cmd(".", "550");
        c.cmd("QUIT", "221");
        let e = get(&server, "/api/v1/suppressions/complainer@x.test");
        assert_eq!(e.status, 200, "{}", e.text());
        assert_eq!(e.json()["reason"], "complaint");
        assert!(smtp_rcpt(&server, "complainer@x.test").starts_with("550 5.7.1"));
    });

    // kill -9: every entry is durable (the bounce's with its result, the API's before its answer).
    tokio::task::block_in_place(|| {
        server.kill9();
        server = TestServer::start_in(tmp.path(), &config, Some(smtp_port), Some(http_port));
        assert_eq!(get(&server, "/api/v1/suppressions/dead@x.test").json()["reason"], "hard_bounce");
        assert_eq!(get(&server, "/api/v1/suppressions/t@x.test?tenant=acme").status, 200);
        assert_eq!(get(&server, "/api/v1/suppressions/complainer@x.test").json()["reason"], "complaint");
        assert_eq!(get(&server, "/api/v1/suppressions/m@x.test").status, 404, "the removal is durable too");
        assert!(smtp_rcpt(&server, "dead@x.test").starts_with("550 5.7.1"));
        assert_eq!(inject(&server, &["t@x.test"], Some("acme")).status, 422);
    });
    assert!(
        sink.messages().iter().all(|m| !m.recipients.iter().any(|r| r.starts_with("fbl@"))),
        "the feedback report was consumed, not relayed"
    );

    // CSV export and import through the CLI (offline: the server is stopped).
    tokio::task::block_in_place(|| {
        server.kill9();
        let out = server.run_cli(&["suppression", "export"]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let csv = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(csv.starts_with("email,reason,tenant,created\n"), "{csv}");
        assert!(csv.contains("dead@x.test,hard_bounce,,") && csv.contains("t@x.test,unsubscribe,acme,"), "{csv}");
        let file = tmp.path().join("import.csv");
        std::fs::write(&file, "email,reason,tenant\nbad-row,manual,\nnew1@x.test,unsubscribe,acme\n").unwrap();
        let out = server.run_cli(&["suppression", "import", file.to_str().unwrap()]);
        assert!(!out.status.success(), "a bad row refuses the file");
        assert!(String::from_utf8_lossy(&out.stderr).contains("line 2"), "{}", String::from_utf8_lossy(&out.stderr));
        std::fs::write(&file, "email,reason,tenant\nnew1@x.test,unsubscribe,acme\nnew2@x.test,,\n").unwrap();
        let out = server.run_cli(&["suppression", "import", file.to_str().unwrap()]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        server = TestServer::start_in(tmp.path(), &config, Some(smtp_port), Some(http_port));
        assert_eq!(get(&server, "/api/v1/suppressions/new1@x.test?tenant=acme").json()["reason"], "unsubscribe");
        assert_eq!(get(&server, "/api/v1/suppressions/new2@x.test").json()["reason"], "manual");
        assert_eq!(inject(&server, &["new2@x.test"], Some("acme")).status, 422);
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_suspend_rule_holds_the_destination_for_its_duration_then_resumes() {
    let sink = SinkHandle::start("127.0.0.1:0".parse().unwrap(), SinkConfig::default()).await;
    // The first RCPT gets Gmail's rate-limit reply; later ones are accepted.
    let tries = Arc::new(AtomicUsize::new(0));
    let t = tries.clone();
    sink.set_rcpt_rule(move |_| {
        (t.fetch_add(1, Ordering::SeqCst) == 0).then(|| {
            "421 4.7.28 Our system has detected an unusual rate of unsolicited mail originating from your IP \
             address. To protect our users from spam, mail sent from your IP address has been temporarily rate \
             limited."
                .to_string()
        })
    });
    let config = format!(
        "[[route]]\ndomain = \"*\"\nrelay = \"{}\"\n[delivery]\nretry_intervals = [\"1s\"]\nsmtp_timeout = \"5s\"\n\
         [[response_rule]]\npattern = \"^421 4\\\\.7\\\\.28 \"\ndomain = \"gmail.test\"\naction = \"suspend\"\n\
         duration = \"4s\"\n",
        sink.addr
    );
    let server = tokio::task::block_in_place(|| TestServer::start(&config));
    tokio::task::block_in_place(|| assert_eq!(inject(&server, &["u@gmail.test"], None).status, 202));
    wait_events(&server, "the rule's event", |e| has(e, "response_rule", "u@gmail.test")).await;
    let queue = tokio::task::block_in_place(|| get(&server, "/api/v1/queue").json());
    let row = queue["queues"].as_array().unwrap().iter().find(|q| q["domain"] == "gmail.test").cloned().unwrap();
    assert_eq!(row["suspended"], true, "{row}");
    assert!(row["suspended_reason"].as_str().unwrap().contains("4.7.28"), "{row}");
    assert!(row["suspended_until"].as_str().is_some(), "{row}");
    // The retry is due after 1 s, but the destination is held: nothing is sent meanwhile.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(sink.messages().len(), 0, "held while suspended");
    // It resumes by itself and the message is delivered; nothing bounced.
    assert!(sink.wait_for_messages(1, Duration::from_secs(15)).await, "resumed by itself");
    wait_events(&server, "the delivery", |e| has(e, "delivery", "u@gmail.test")).await;
    let events = server.events();
    assert!(!events.iter().any(|e| e["type"] == "bounce" || e["type"] == "expiration"), "{events:#?}");
    let queue = tokio::task::block_in_place(|| get(&server, "/api/v1/queue").json());
    let suspended = queue["queues"].as_array().unwrap().iter().any(|q| q["suspended"] == true);
    assert!(!suspended, "{queue}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_throttle_rule_halves_the_sites_concurrency() {
    // Slow replies keep connections open, so the sink sees as many at once as the server allows.
    let config = SinkConfig { response_delay: Duration::from_millis(30), ..SinkConfig::default() };
    let sink = SinkHandle::start("127.0.0.1:0".parse().unwrap(), config).await;
    sink.set_rcpt_rule(|r| {
        r.starts_with("busy@")
            .then(|| "451 4.7.500 Server busy. Please try again later from [127.0.0.1]. (S77719)".into())
    });
    let config = format!(
        "[[route]]\ndomain = \"*\"\nrelay = \"{}\"\n[delivery]\nretry_intervals = [\"1m\"]\nsmtp_timeout = \"5s\"\n\
         connections_per_domain = 4\nmessages_per_connection = 4\n\
         [[response_rule]]\npattern = \"^451 4\\\\.7\\\\.5\\\\d\\\\d \"\naction = \"throttle\"\nfactor = 0.5\n\
         duration = \"10m\"\n",
        sink.addr
    );
    let server = tokio::task::block_in_place(|| TestServer::start(&config));
    let burst = |tag: &str| {
        tokio::task::block_in_place(|| {
            for n in 0..80 {
                let to = format!("{tag}{n}@x.test");
                assert_eq!(inject(&server, &[to.as_str()], None).status, 202);
            }
        })
    };
    burst("a");
    assert!(sink.wait_for_messages(80, Duration::from_secs(60)).await, "first burst delivered");
    let before = sink.max_concurrent();
    assert_eq!(before, 4, "the configured limit is reached first");

    tokio::task::block_in_place(|| assert_eq!(inject(&server, &["busy@x.test"], None).status, 202));
    wait_events(&server, "the throttle", |e| has(e, "response_rule", "busy@x.test")).await;
    let queue = tokio::task::block_in_place(|| get(&server, "/api/v1/queue").json());
    let row = queue["queues"].as_array().unwrap().iter().find(|q| q["domain"] == "x.test").cloned().unwrap();
    assert!(row["throttled_reason"].as_str().unwrap().contains("4.7.500"), "{row}");
    // Let the connection that got the reply finish before measuring.
    let deadline = Instant::now() + Duration::from_secs(10);
    while sink.current_connections() > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    sink.reset_max_concurrent();
    burst("b");
    assert!(sink.wait_for_messages(160, Duration::from_secs(90)).await, "second burst delivered");
    let after = sink.max_concurrent();
    assert_eq!(after, 2, "half of {before} while throttled");
    let events = server.events();
    assert!(!events.iter().any(|e| e["type"] == "bounce" && e["recipient"] == "busy@x.test"), "throttled, not bounced");
}
