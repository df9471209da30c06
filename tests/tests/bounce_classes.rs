//! End to end: a scripted receiving server answers real provider replies (the examples of the shipped bounce
//! rules, each naming its source) at the greeting, `MAIL`, `RCPT` and end of data; every reply lands in its
//! rule's bounce class in the events, and the DSN and message status carry it too.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mta_core::bounce::{rules, SHIPPED_RULES};
use mta_core::dns::testing::{TestDnsServer, TestZone};
use mta_tests::sink::{SinkConfig, SinkHandle};
use mta_tests::{queued_id, RawSmtp, TestServer};

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum At {
    Greeting,
    Mail,
    Rcpt,
    DataEnd,
}

struct Case {
    at: At,
    reply: String,
    class: u8,
    source: String,
}

/// Where each real reply is given: where the provider gives it (connection-level blocks at the greeting,
/// sender-level ones at `MAIL`, content verdicts after the data, the rest at `RCPT`).
fn stage_of(reply: &str) -> At {
    let greeting = ["IP address is block listed", "Barracuda Reputation", "blocked using zen.spamhaus.org"];
    let mail = ["[TSS04]", "Message not accepted for policy reasons", "envelope blocked", "AOL will not accept"];
    let data = [
        "likely unsolicited",
        "potential security issue",
        "suspicion of SPAM",
        "spam message rejected",
        "[HM08]",
        "rejected as spam by Content Filtering",
        "Message size exceeds fixed limit",
        "exceeded Google's message size limits",
        "prohibited attachment",
    ];
    if greeting.iter().any(|g| reply.contains(g)) {
        At::Greeting
    } else if mail.iter().any(|m| reply.contains(m)) {
        At::Mail
    } else if data.iter().any(|d| reply.contains(d)) {
        At::DataEnd
    } else {
        At::Rcpt
    }
}

/// The table: every shipped rule's real example.
fn cases() -> Vec<Case> {
    rules::parse(SHIPPED_RULES)
        .unwrap()
        .into_iter()
        .filter_map(|r| {
            let reply = r.example?;
            Some(Case { at: stage_of(&reply), reply, class: r.class.code(), source: r.source.unwrap_or_default() })
        })
        .collect()
}

/// A reply written on one line as `554-a 554-b 554 c` sent as the multi-line reply it was.
fn wire(reply: &str) -> String {
    let code = &reply[..3];
    if reply.as_bytes().get(3) != Some(&b'-') {
        return reply.to_string();
    }
    let mut out = reply.replace(&format!(" {code}-"), &format!("\r\n{code}-"));
    if let Some(i) = out.rfind(&format!(" {code} ")) {
        out.replace_range(i..i + 1, "\r\n");
    }
    out
}

fn send(server: &TestServer, from: &str, to: &str) -> String {
    tokio::task::block_in_place(|| {
        let (mut c, _) = RawSmtp::connect(server.smtp);
        c.cmd("EHLO client.test", "250");
        c.cmd(&format!("MAIL FROM:<{from}>"), "250");
        c.cmd(&format!("RCPT TO:<{to}>"), "250");
        c.cmd("DATA", "354");
        c.send(b"From: a@sender.test\r\nSubject: classes\r\n\r\nHello.\r\n");
        let r = c.cmd(".", "250");
        c.cmd("QUIT", "221");
        queued_id(&r).unwrap()
    })
}

/// The failure events of `rcpt` whose response is `reply`'s code (the first line of a multi-line one).
fn failures<'a>(events: &'a [serde_json::Value], rcpt: &str, reply: &str) -> Vec<&'a serde_json::Value> {
    events
        .iter()
        .filter(|e| e["recipient"] == rcpt && (e["type"] == "bounce" || e["type"] == "transient_failure"))
        .filter(|e| e["response"].as_str().is_some_and(|r| r.starts_with(&reply[..3])))
        .collect()
}

async fn wait_for(server: &TestServer, rcpt: &str, reply: &str) -> Vec<serde_json::Value> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let events = server.events();
        if !failures(&events, rcpt, reply).is_empty() || Instant::now() > deadline {
            return events;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn real_provider_replies_at_every_stage_land_in_their_classes() {
    let table = cases();
    assert!(table.len() >= 40, "a table of at least 40 real replies ({})", table.len());
    for at in [At::Greeting, At::Mail, At::Rcpt, At::DataEnd] {
        assert!(table.iter().any(|c| c.at == at), "{at:?} has cases");
    }
    let port = mta_tests::free_port();
    let zone = TestZone::new("test")
        .mail_domain("rcpt.test", &[(10, "mx.rcpt.test", ip("127.0.0.2"))])
        .mail_domain("mail.test", &[(10, "mx.mail.test", ip("127.0.0.3"))])
        .mail_domain("data.test", &[(10, "mx.data.test", ip("127.0.0.4"))])
        .mail_domain("greet.test", &[(10, "mx.greet.test", ip("127.0.0.5"))])
        .mail_domain("sender.test", &[(10, "mx.sender.test", ip("127.0.0.6"))]);
    let dns = TestDnsServer::start(vec![zone]).await.unwrap();
    let start = |a: &str| SinkHandle::start(SocketAddr::new(ip(a), port), SinkConfig::default());
    let (rcpt_mx, mail_mx, data_mx, greet_mx, sender_mx) = (
        start("127.0.0.2").await,
        start("127.0.0.3").await,
        start("127.0.0.4").await,
        start("127.0.0.5").await,
        start("127.0.0.6").await,
    );

    // Replies are picked by the recipient's (or sender's) number; DATA and greeting replies by the case in play.
    let by_number = |table: &[Case], at: At| -> Vec<Option<String>> {
        table.iter().map(|c| (c.at == at).then(|| wire(&c.reply))).collect()
    };
    let rcpt_replies = by_number(&table, At::Rcpt);
    rcpt_mx.set_rcpt_rule(move |r| {
        let n: usize = r.strip_prefix('r')?.split('@').next()?.parse().ok()?;
        rcpt_replies.get(n).cloned().flatten()
    });
    let mail_replies = by_number(&table, At::Mail);
    mail_mx.set_mail_rule(move |s| {
        let n: usize = s.strip_prefix('s')?.split('@').next()?.parse().ok()?;
        mail_replies.get(n).cloned().flatten()
    });
    let data_reply: Arc<Mutex<Option<String>>> = Arc::default();
    let current = data_reply.clone();
    data_mx.set_data_rule(move |_| current.lock().unwrap().clone());

    let config = format!(
        "[dns]\nnameservers = [\"{}\"]\nmin_ttl = \"1s\"\nnegative_ttl = \"1s\"\n\
         [delivery]\nport = {port}\nretry_intervals = [\"30s\"]\nsmtp_timeout = \"5s\"\ncircuit_open_for = \"1s\"\n\
         [deliverability]\ndefault_response_rules = false\n",
        dns.addr()
    );
    // The scripted replies include provider rate-limit replies (TSS04, 4.7.500) that the shipped
    // `[[response_rule]]`s would turn into suspensions of the scripted sites; this test is about classes only.
    let server = tokio::task::block_in_place(|| TestServer::start(&config));

    let mut ids = Vec::new();
    for (n, case) in table.iter().enumerate() {
        let (from, to) = match case.at {
            At::Rcpt => ("a@sender.test".to_string(), format!("r{n}@rcpt.test")),
            At::Mail => (format!("s{n}@sender.test"), format!("m{n}@mail.test")),
            At::DataEnd => ("a@sender.test".to_string(), format!("d{n}@data.test")),
            At::Greeting => ("a@sender.test".to_string(), format!("g{n}@greet.test")),
        };
        // DATA and greeting replies hold for the whole sink: one case at a time.
        match case.at {
            At::DataEnd => *data_reply.lock().unwrap() = Some(wire(&case.reply)),
            At::Greeting => greet_mx.set_greeting(Some(wire(&case.reply))),
            _ => {}
        }
        ids.push(send(&server, &from, &to));
        if matches!(case.at, At::DataEnd | At::Greeting) {
            wait_for(&server, &to, &case.reply).await;
        }
    }

    let mut wrong = Vec::new();
    for (n, case) in table.iter().enumerate() {
        let to = match case.at {
            At::Rcpt => format!("r{n}@rcpt.test"),
            At::Mail => format!("m{n}@mail.test"),
            At::DataEnd => format!("d{n}@data.test"),
            At::Greeting => format!("g{n}@greet.test"),
        };
        let events = wait_for(&server, &to, &case.reply).await;
        let found = failures(&events, &to, &case.reply);
        let classes: Vec<u64> = found.iter().filter_map(|e| e["bounce_class"].as_u64()).collect();
        if found.is_empty() || classes.len() != found.len() || classes.iter().any(|c| *c != u64::from(case.class)) {
            wrong.push(format!(
                "{:?} {:?} ({}): want class {}, events {:?}",
                case.at,
                case.reply,
                case.source,
                case.class,
                found.iter().map(|e| (e["response"].clone(), e["bounce_class"].clone())).collect::<Vec<_>>()
            ));
        }
    }
    assert!(wrong.is_empty(), "{} of {} replies misclassified:\n{}", wrong.len(), table.len(), wrong.join("\n"));

    // The DSN of a bounce carries the class, and so does the message status of a deferred recipient.
    assert!(sender_mx.wait_for_messages(1, Duration::from_secs(15)).await, "DSNs arrive");
    let dsns: Vec<String> =
        sender_mx.messages().iter().map(|m| String::from_utf8_lossy(&m.data).into_owned()).collect();
    assert!(dsns.iter().any(|d| d.contains("X-Bounce-Class: 10\r\n")), "a DSN names class 10");
    let deferred = table.iter().position(|c| c.at == At::Rcpt && c.reply.starts_with("451 4.7.500")).unwrap();
    let status = tokio::task::block_in_place(|| {
        mta_tests::http_request(server.http, "GET", &format!("/api/v1/messages/{}", ids[deferred]), &[], b"").json()
    });
    assert_eq!(status["recipients"][0]["state"], "deferred", "{status}");
    assert_eq!(status["recipients"][0]["bounce_class"], 70, "{status}");
    drop((rcpt_mx, mail_mx, data_mx, greet_mx));
}
