//! `[[amqp]]` export to a real RabbitMQ (Debian `rabbitmq-server`, started here as a child on loopback ports with
//! its own node name and data dirs) across a `kill -9` of our server: 500 messages with delivered, bounced and
//! deferred recipients; every event of every acknowledged message arrives (by `event_id`), duplicates counted;
//! every message is persistent (delivery mode 2), JSON, routed by its type. And `amqps://`: the broker's TLS
//! certificate (from a CA of the test's own) is verified against `ca_file`; an endpoint without it never connects.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties, ExchangeKind};
use mta_core::dns::testing::{TestDnsServer, TestZone};
use mta_tests::export_load::{inject, Acked};
use mta_tests::sink::{SinkConfig, SinkHandle};
use mta_tests::TestServer;

const MESSAGES: usize = 500;
const EXCHANGE: &str = "mta-events";
const QUEUE: &str = "app-events";

/// A RabbitMQ node (and its own epmd) as children of the test, on loopback ports; killed on drop.
struct Broker {
    epmd: Child,
    server: Child,
    port: u16,
}

/// A TLS listener for the broker: its port and PEM files (certificate chain, key).
struct BrokerTls {
    port: u16,
    cert: std::path::PathBuf,
    key: std::path::PathBuf,
}

impl Broker {
    fn start(dir: &Path) -> Broker {
        Broker::start_with(dir, None)
    }

    /// A broker with a plain listener and, with `tls`, an `amqps` one too.
    fn start_with(dir: &Path, tls: Option<&BrokerTls>) -> Broker {
        let (port, dist, epmd_port) = (mta_tests::free_port(), mta_tests::free_port(), mta_tests::free_port());
        let base = dir.join("rabbitmq");
        std::fs::create_dir_all(&base).unwrap();
        std::fs::write(base.join("enabled_plugins"), "[].\n").unwrap();
        if let Some(t) = tls {
            let conf = format!(
                "listeners.ssl.1 = 127.0.0.1:{}\nssl_options.certfile = {}\nssl_options.keyfile = {}\n\
                 ssl_options.verify = verify_none\nssl_options.fail_if_no_peer_cert = false\n",
                t.port,
                t.cert.display(),
                t.key.display()
            );
            std::fs::write(base.join("rabbitmq.conf"), conf).unwrap();
        }
        // Our own epmd on a loopback port, so nothing listens on the default 4369 and we can stop it by pid.
        let epmd = Command::new("epmd")
            .args(["-port", &epmd_port.to_string(), "-address", "127.0.0.1"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("epmd (erlang) is installed with rabbitmq-server");
        let server = Command::new("/usr/lib/rabbitmq/bin/rabbitmq-server")
            .env("HOME", &base)
            .env("RABBITMQ_NODENAME", format!("mta-test-{port}@localhost"))
            .env("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1")
            .env("RABBITMQ_NODE_PORT", port.to_string())
            .env("RABBITMQ_DIST_PORT", dist.to_string())
            .env("ERL_EPMD_PORT", epmd_port.to_string())
            .env("ERL_EPMD_ADDRESS", "127.0.0.1")
            .env("RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS", "-kernel inet_dist_use_interface {127,0,0,1}")
            .env("RABBITMQ_MNESIA_BASE", base.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", base.join("log"))
            .env("RABBITMQ_PID_FILE", base.join("pid"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", base.join("enabled_plugins"))
            .env("RABBITMQ_CONFIG_FILE", base.join("rabbitmq"))
            .stdout(std::fs::File::create(base.join("stdout.log")).unwrap())
            .stderr(std::fs::File::create(base.join("stderr.log")).unwrap())
            // A group of its own: the script's Erlang VM is killed with it.
            .process_group(0)
            .spawn()
            .expect("rabbitmq-server is installed (scripts/test.sh)");
        Broker { epmd, server, port }
    }

    fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    /// Connect once the broker accepts AMQP (it takes ~10 s to boot).
    async fn connect(&self) -> Connection {
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            if TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                if let Ok(c) = Connection::connect(&self.url(), ConnectionProperties::default()).await {
                    return c;
                }
            }
            assert!(Instant::now() < deadline, "RabbitMQ did not start");
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        // SAFETY: kill(2) on the process group of our own child (made its leader by `process_group(0)`).
        unsafe { libc::kill(-(self.server.id() as i32), libc::SIGKILL) };
        let _ = self.server.wait();
        let _ = self.epmd.kill();
        let _ = self.epmd.wait();
    }
}

/// One received AMQP message: its routing key, delivery mode and content type, and the event.
type Received = (String, Option<u8>, Option<String>, serde_json::Value);

/// Declare the exchange and a durable queue bound to every key, and consume it into `into` (acking each).
async fn consume(conn: &Connection, into: Arc<Mutex<Vec<Received>>>) {
    let ch = conn.create_channel().await.unwrap();
    let durable = ExchangeDeclareOptions { durable: true, ..Default::default() };
    ch.exchange_declare(EXCHANGE.into(), ExchangeKind::Topic, durable, FieldTable::default()).await.unwrap();
    let q = QueueDeclareOptions { durable: true, ..Default::default() };
    ch.queue_declare(QUEUE.into(), q, FieldTable::default()).await.unwrap();
    ch.queue_bind(QUEUE.into(), EXCHANGE.into(), "#".into(), QueueBindOptions::default(), FieldTable::default())
        .await
        .unwrap();
    let mut consumer = ch
        .basic_consume(QUEUE.into(), "test".into(), BasicConsumeOptions::default(), FieldTable::default())
        .await
        .unwrap();
    tokio::spawn(async move {
        while let Some(Ok(d)) = consumer.next().await {
            let event = serde_json::from_slice(&d.data).unwrap_or(serde_json::Value::Null);
            let mode = *d.properties.delivery_mode();
            let ctype = d.properties.content_type().as_ref().map(|c| c.to_string());
            into.lock().unwrap().push((d.routing_key.to_string(), mode, ctype, event));
            let _ = d.ack(BasicAckOptions::default()).await;
        }
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn amqp_gets_every_event_across_a_kill9() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let broker = Broker::start(&dir);
    let conn = broker.connect().await;
    let received = Arc::new(Mutex::new(Vec::<Received>::new()));
    consume(&conn, received.clone()).await;

    let port = mta_tests::free_port();
    let mut zone = TestZone::new("test");
    for i in 0..3 {
        zone = zone.mail_domain(
            &format!("d{i}.test"),
            &[(10, &format!("mx.d{i}.test"), "127.0.0.2".parse::<IpAddr>().unwrap())],
        );
    }
    let dns = TestDnsServer::start(vec![zone]).await.unwrap();
    let sink = SinkHandle::start(
        SocketAddr::new("127.0.0.2".parse().unwrap(), port),
        SinkConfig { response_delay: Duration::from_millis(2), ..Default::default() },
    )
    .await;
    sink.set_rcpt_rule(|r| {
        if r.starts_with("bad") {
            Some("550 5.1.1 no such user".to_string())
        } else if r.starts_with("later") {
            Some("451 4.3.0 try again later".to_string())
        } else {
            None
        }
    });
    let extra = format!(
        "[dns]\nnameservers = [\"{dns}\"]\n\
         [delivery]\nport = {port}\nretry_intervals = [\"3s\"]\nsmtp_timeout = \"5s\"\nconnections_per_domain = 4\n\
         [[amqp]]\nname = \"broker\"\nurl = \"{url}\"\nexchange = \"{EXCHANGE}\"\n\
         batch_size = 50\nbatch_delay = \"100ms\"\ntimeout = \"5s\"\n",
        dns = dns.addr(),
        url = broker.url(),
    );
    let acked = Arc::new(Mutex::new(Vec::<Acked>::new()));
    let mut server = tokio::task::block_in_place(|| TestServer::start_in(&dir, &extra, None, None));
    let (smtp_port, http_port) = (server.smtp.port(), server.http.port());

    // One crash in the middle of injection, delivery and export.
    let smtp = server.smtp;
    let shared = acked.clone();
    let injector = std::thread::spawn(move || inject(smtp, 0, MESSAGES, &shared));
    let deadline = Instant::now() + Duration::from_secs(60);
    while acked.lock().unwrap().len() < 200 && !injector.is_finished() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let published_at_kill = received.lock().unwrap().len();
    server.kill9();
    let stopped = tokio::task::block_in_place(|| injector.join().unwrap());
    assert!(stopped < MESSAGES, "the kill must come in the middle of injection");
    let server = tokio::task::block_in_place(|| TestServer::start_in(&dir, &extra, Some(smtp_port), Some(http_port)));
    let end = tokio::task::block_in_place(|| inject(server.smtp, stopped, MESSAGES, &acked));
    assert_eq!(end, MESSAGES, "the last injection runs to the end");
    let acked: Vec<Acked> = acked.lock().unwrap().clone();

    let mut expected: Vec<(String, String, &str)> = Vec::new();
    for (id, rcpts) in &acked {
        for r in rcpts {
            expected.push((id.clone(), r.clone(), "reception"));
            let outcome = if r.starts_with("bad") {
                "bounce"
            } else if r.starts_with("later") {
                "transient_failure"
            } else {
                "delivery"
            };
            expected.push((id.clone(), r.clone(), outcome));
        }
    }
    let events = || -> Vec<serde_json::Value> { received.lock().unwrap().iter().map(|r| r.3.clone()).collect() };
    let deadline = Instant::now() + Duration::from_secs(120);
    let missing = loop {
        let got: HashSet<(String, String, String)> = events()
            .iter()
            .map(|e| {
                let s = |k: &str| e[k].as_str().unwrap_or_default().to_string();
                (s("id"), s("recipient"), s("type"))
            })
            .collect();
        let missing =
            expected.iter().filter(|(id, r, t)| !got.contains(&(id.clone(), r.clone(), t.to_string()))).count();
        if missing == 0 || Instant::now() > deadline {
            break missing;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(missing, 0, "events of acknowledged messages never arrived\n{}", server.stderr());

    // Every event the server logged (it logs only what is durable) arrives too, by event_id.
    let logged: Vec<String> =
        server.events().iter().filter_map(|e| e["event_id"].as_str().map(str::to_string)).collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    let not_published = loop {
        let all = events();
        let ids: HashSet<&str> = all.iter().filter_map(|e| e["event_id"].as_str()).collect();
        let n = logged.iter().filter(|id| !ids.contains(id.as_str())).count();
        if n == 0 || Instant::now() > deadline {
            break n;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(not_published, 0, "logged events never published");

    // Every recipient the receiving SMTP server accepted was reported delivered.
    let all = events();
    let delivered: HashSet<&str> =
        all.iter().filter(|e| e["type"] == "delivery").filter_map(|e| e["recipient"].as_str()).collect();
    let at_sink: HashSet<String> = sink.messages().into_iter().flat_map(|m| m.recipients).collect();
    let unreported: Vec<&String> = at_sink.iter().filter(|r| !delivered.contains(r.as_str())).collect();
    assert!(unreported.is_empty(), "delivered but never reported: {unreported:?}");

    // Persistent JSON messages, one event each, routed by type (the default `{type}` template).
    for (key, mode, ctype, event) in received.lock().unwrap().iter() {
        assert_eq!(*mode, Some(2), "not persistent: {event}");
        assert_eq!(ctype.as_deref(), Some("application/json"));
        assert_eq!(event["type"].as_str(), Some(key.as_str()), "routing key {key} for {event}");
    }
    let mut per_id: HashMap<&str, usize> = HashMap::new();
    for e in &all {
        *per_id.entry(e["event_id"].as_str().unwrap_or_default()).or_default() += 1;
    }
    let duplicates: usize = per_id.values().map(|n| n - 1).sum();
    eprintln!(
        "kill after {stopped} messages ({published_at_kill} events published by then); acknowledged messages {} of \
         {MESSAGES}; expected events {}; received {} ({} distinct, {duplicates} duplicates)",
        acked.len(),
        expected.len(),
        all.len(),
        per_id.len()
    );
    let mut server = server;
    server.sigterm();
    tokio::task::block_in_place(|| server.wait_exit(Duration::from_secs(30)));
    drop(conn);
}

/// A CA of the test's own and a broker certificate for 127.0.0.1 it signed: (CA PEM, chain PEM, key PEM).
fn private_ca() -> (String, String, String) {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
    let key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap().signed_by(&key, &ca).unwrap();
    (ca.pem(), leaf.pem(), key.serialize_pem())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn amqps_verifies_the_broker_against_the_configured_ca() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let (ca, chain, key) = private_ca();
    let tls = BrokerTls { port: mta_tests::free_port(), cert: dir.join("broker.pem"), key: dir.join("broker.key") };
    std::fs::write(&tls.cert, &chain).unwrap();
    std::fs::write(&tls.key, &key).unwrap();
    let ca_file = dir.join("ca.pem");
    std::fs::write(&ca_file, &ca).unwrap();
    let broker = Broker::start_with(&dir, Some(&tls));
    let conn = broker.connect().await;
    let received = Arc::new(Mutex::new(Vec::<Received>::new()));
    consume(&conn, received.clone()).await;

    // Two endpoints to the same amqps listener: one trusts our CA, the other only the system roots.
    let url = format!("amqps://guest:guest@127.0.0.1:{}/%2f", tls.port);
    let extra = format!(
        "[delivery]\nenabled = false\n\
         [[amqp]]\nname = \"trusted\"\nurl = \"{url}\"\nexchange = \"{EXCHANGE}\"\nca_file = \"{ca}\"\n\
         batch_delay = \"100ms\"\ntimeout = \"5s\"\n\
         [[amqp]]\nname = \"untrusted\"\nurl = \"{url}\"\nexchange = \"{EXCHANGE}\"\n\
         batch_delay = \"100ms\"\ntimeout = \"5s\"\n",
        ca = ca_file.display()
    );
    let server = tokio::task::block_in_place(|| TestServer::start_in(&dir, &extra, None, None));
    let acked = Arc::new(Mutex::new(Vec::<Acked>::new()));
    let smtp = server.smtp;
    let n = tokio::task::block_in_place(|| inject(smtp, 0, 20, &acked));
    assert_eq!(n, 20);
    let expected: HashSet<(String, String)> = acked
        .lock()
        .unwrap()
        .iter()
        .flat_map(|(id, rcpts)| rcpts.iter().map(move |r| (id.clone(), r.clone())))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let got: HashSet<(String, String)> = received
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.3["type"] == "reception")
            .map(|r| {
                (
                    r.3["id"].as_str().unwrap_or_default().to_string(),
                    r.3["recipient"].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect();
        if expected.is_subset(&got) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "events never arrived over amqps: {} of {}\n{}",
            got.len(),
            expected.len(),
            server.stderr()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The endpoint without the CA never gets through: the broker's certificate is not trusted.
    let health = mta_tests::http_request(server.http, "GET", "/api/v1/health", &[], b"").json();
    let untrusted = health["export"].as_array().unwrap().iter().find(|e| e["name"] == "untrusted").cloned().unwrap();
    assert_ne!(untrusted["state"], "ok", "{untrusted}");
    let error = untrusted["last_error"].as_str().unwrap_or_default().to_lowercase();
    assert!(error.contains("certificate") || error.contains("tls") || error.contains("issuer"), "{untrusted}");
    let trusted = health["export"].as_array().unwrap().iter().find(|e| e["name"] == "trusted").cloned().unwrap();
    assert_eq!(trusted["state"], "ok", "{trusted}");
    eprintln!("untrusted endpoint: {untrusted}");
    // Every message that arrived came from the trusted endpoint: each event once (nothing failed there).
    let all = received.lock().unwrap().len();
    assert_eq!(all, expected.len(), "one message per reception event");
    drop(server);
    drop(conn);
}
