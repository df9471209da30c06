//! End to end: two nodes behind HAProxy (`bench/haproxy/two-nodes.cfg`), on loopback.
//!
//! Clients inject continuously through HAProxy — HTTP with an `Idempotency-Key` per message, retrying on `503`,
//! `502`/`504` and connection errors with the same key; SMTP from 127.0.0.2 (the relay network), retrying on
//! `4xx` and connection errors. Node A is made slow (`spool_flush_delay_ms`): it sheds, fails `/health/ready`,
//! HAProxy takes it out and new work goes to node B; the fault clears, A recovers and takes work again.
//! Afterwards both spools are read offline: every message a client had acknowledged is in exactly one spool,
//! on the node its queue id names, and nothing else is there. A client outside `relay_networks` (127.0.0.1)
//! relaying through HAProxy is refused: the PROXY v2 header carries its real address.
//!
//! Skipped, with a message, when `haproxy` is not installed (scripts/test.sh installs it).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use mta_tests::{free_port, http_request, server_binary};
use serde_json::{json, Value};

fn haproxy_installed() -> bool {
    Command::new("haproxy").arg("-v").stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok_and(|s| s.success())
}

/// One mta-server node with its own spool, a plain SMTP listener, a PROXY-protocol SMTP listener and HTTP.
struct Node {
    name: &'static str,
    child: Option<Child>,
    dir: PathBuf,
    config: PathBuf,
    http: SocketAddr,
    smtp_proxied: SocketAddr,
}

impl Node {
    fn start(name: &'static str, root: &Path) -> Node {
        let dir = root.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let port = || -> SocketAddr { format!("127.0.0.1:{}", free_port()).parse().unwrap() };
        let (http, smtp, smtp_proxied) = (port(), port(), port());
        let text = format!(
            r#"[server]
hostname = "{name}.mx.test"
node_id = "node{name}"
shutdown_timeout = "10s"
[spool]
path = "{spool}"
[log]
events = "{events}"
[http]
listen = "{http}"
trusted_proxies = ["127.0.0.1/32"]
[smtp]
listen = ["{smtp}"]
relay_networks = ["127.0.0.2/32"]
[[smtp.listener]]
address = "{smtp_proxied}"
mode = "smtp"
proxy_protocol = true
[dns]
nameservers = ["127.0.0.1:9"]
[delivery]
enabled = false
[debug]
fault_injection = true
[backpressure]
window = "2s"
min_dwell = "2s"
commit_p99_degraded_ms = 150
commit_p99_shed_ms = 600
retry_after_secs = 1
degraded_greeting_delay = "100ms"
event_loop_lag_degraded_ms = 2000
event_loop_lag_shed_ms = 5000
min_free_disk_mb = 0
"#,
            spool = dir.join("spool").display(),
            events = dir.join("events.jsonl").display(),
        );
        let config = dir.join("config.toml");
        std::fs::write(&config, text).unwrap();
        let child = Command::new(server_binary())
            .args(["serve", "--config"])
            .arg(&config)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("server.stderr")).unwrap())
            .spawn()
            .expect("spawn mta-server");
        let node = Node { name, child: Some(child), dir, config, http, smtp_proxied };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !(TcpStream::connect(http).is_ok() && TcpStream::connect(smtp_proxied).is_ok()) {
            assert!(Instant::now() < deadline, "node {name} did not start: {}", node.stderr());
            std::thread::sleep(Duration::from_millis(20));
        }
        node
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.join("server.stderr")).unwrap_or_default()
    }

    fn state(&self) -> String {
        http_request(self.http, "GET", "/health/ready", &[], b"").json()["state"].as_str().unwrap_or("").to_string()
    }

    fn set_flush_delay(&self, ms: u64) {
        let body = json!({"spool_flush_delay_ms": ms}).to_string();
        let r = http_request(self.http, "PUT", "/api/v1/debug/faults", &[], body.as_bytes());
        assert_eq!(r.status, 200, "{}", r.text());
    }

    /// SIGTERM, wait, then list the spool offline: recipient address of every message, with its queue id.
    fn stop_and_list(&mut self) -> Vec<(String, String)> {
        if let Some(mut child) = self.child.take() {
            // SAFETY: kill(2) on our own child's pid.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(30);
            while child.try_wait().unwrap().is_none() {
                assert!(Instant::now() < deadline, "node {} did not stop", self.name);
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let out = Command::new(server_binary())
            .args(["spool", "list", "--json", "--config"])
            .arg(&self.config)
            .output()
            .unwrap();
        assert!(out.status.success(), "spool list: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap())
            .flat_map(|v| {
                let id = v["id"].as_str().unwrap().to_string();
                v["recipients"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|r| (r["address"].as_str().unwrap().to_string(), id.clone()))
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    fn raw(&self, id: &str) -> String {
        let out = Command::new(server_binary())
            .args(["spool", "show", id, "--raw", "--config"])
            .arg(&self.config)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// HAProxy in the foreground (`-db`) with `bench/haproxy/two-nodes.cfg`.
struct HaProxy {
    child: Child,
    smtp: SocketAddr,
    http: SocketAddr,
    stats: SocketAddr,
}

impl HaProxy {
    fn start(a: &Node, b: &Node, dir: &Path) -> HaProxy {
        let cfg = Path::new(env!("CARGO_MANIFEST_DIR")).join("../bench/haproxy/two-nodes.cfg");
        let (smtp, http, stats) = (free_port(), free_port(), free_port());
        let child = Command::new("haproxy")
            .args(["-db", "-f"])
            .arg(&cfg)
            .env("FRONT_IP", "127.0.0.1")
            .env("SMTP_FRONT_PORT", smtp.to_string())
            .env("HTTP_FRONT_PORT", http.to_string())
            .env("STATS_PORT", stats.to_string())
            .env("A_IP", "127.0.0.1")
            .env("B_IP", "127.0.0.1")
            .env("A_SMTP_PROXY_PORT", a.smtp_proxied.port().to_string())
            .env("B_SMTP_PROXY_PORT", b.smtp_proxied.port().to_string())
            .env("A_HTTP_PORT", a.http.port().to_string())
            .env("B_HTTP_PORT", b.http.port().to_string())
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(dir.join("haproxy.log")).unwrap())
            .stderr(std::fs::File::create(dir.join("haproxy.err")).unwrap())
            .spawn()
            .expect("spawn haproxy");
        let addr = |p: u16| -> SocketAddr { format!("127.0.0.1:{p}").parse().unwrap() };
        let h = HaProxy { child, smtp: addr(smtp), http: addr(http), stats: addr(stats) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(h.stats).is_err() {
            assert!(
                Instant::now() < deadline,
                "haproxy did not start: {}",
                std::fs::read_to_string(dir.join("haproxy.err")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        h
    }

    /// Status (`UP`, `DOWN`, `UP 1/2`, ...) of server `name` in `backend`, from the CSV stats.
    fn status(&self, backend: &str, name: &str) -> String {
        let csv = http_request(self.stats, "GET", "/stats;csv", &[], b"").text();
        let mut lines = csv.lines();
        let header: Vec<&str> = lines.next().unwrap_or("").trim_start_matches("# ").split(',').collect();
        let col = header.iter().position(|h| *h == "status").expect("status column");
        lines
            .map(|l| l.split(',').collect::<Vec<_>>())
            .find(|f| f.first() == Some(&backend) && f.get(1) == Some(&name))
            .and_then(|f| f.get(col).map(|s| s.to_string()))
            .unwrap_or_default()
    }
}

impl Drop for HaProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One acknowledged message: which client sequence, which node took it (from the queue id), when the
/// successful attempt was sent, how many attempts it took.
#[derive(Debug, Clone)]
struct Accepted {
    rcpt: String,
    node: String,
    id: String,
    sent: Instant,
    attempts: u32,
}

#[derive(Default)]
struct Tally {
    accepted: Vec<Accepted>,
    /// Attempts refused or failed, by kind (`503`, `421`, `451`, `io`, ...).
    refused: BTreeMap<String, u64>,
}

type Shared = Arc<Mutex<Tally>>;

fn node_of(id: &str) -> String {
    id.rsplit('.').next().unwrap_or("").to_string()
}

/// A minimal HTTP/1.1 POST that reports connection errors instead of panicking.
fn try_post(addr: SocketAddr, key: &str, body: &str) -> Result<(u16, Value), String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(30))).map_err(|e| e.to_string())?;
    let req = format!(
        "POST /api/v1/messages HTTP/1.1\r\nHost: mta\r\nConnection: close\r\nContent-Type: application/json\r\n\
         Idempotency-Key: {key}\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).map_err(|e| e.to_string())?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&raw);
    let status = text.split(' ').nth(1).and_then(|c| c.parse().ok()).ok_or("no status line")?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    Ok((status, serde_json::from_str(body).unwrap_or(Value::Null)))
}

/// HTTP through HAProxy: one message per key, retried with the same key until accepted.
fn http_client(front: SocketAddr, stop: Arc<AtomicBool>, tally: Shared) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut seq = 0u64;
        while !stop.load(Ordering::SeqCst) {
            let rcpt = format!("h{seq}@dest.test");
            let key = format!("msg-{seq}");
            let content = format!("From: a@sender.test\r\nTo: {rcpt}\r\nSubject: {seq}\r\n\r\nbody\r\n");
            let body =
                json!({"envelope_sender": "a@sender.test", "recipients": [rcpt], "content": content}).to_string();
            let mut attempts = 0;
            loop {
                attempts += 1;
                assert!(attempts < 600, "message {seq} never accepted");
                let sent = Instant::now();
                match try_post(front, &key, &body) {
                    Ok((202, v)) => {
                        let id = v["id"].as_str().unwrap().to_string();
                        let node = node_of(&id);
                        tally.lock().unwrap().accepted.push(Accepted { rcpt, node, id, sent, attempts });
                        break;
                    }
                    Ok((code @ 502..=504, _)) => {
                        *tally.lock().unwrap().refused.entry(format!("http {code}")).or_insert(0) += 1;
                    }
                    Ok((code, v)) => panic!("unexpected {code}: {v}"),
                    Err(_) => *tally.lock().unwrap().refused.entry("http io".into()).or_insert(0) += 1,
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            seq += 1;
            std::thread::sleep(Duration::from_millis(10));
        }
    })
}

/// A blocking TCP connection from `source` (any 127.0.0.x) to `to`.
fn connect_from(source: IpAddr, to: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    socket.bind(&SocketAddr::new(source, 0).into())?;
    socket.connect_timeout(&to.into(), Duration::from_secs(5))?;
    let stream: TcpStream = socket.into();
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    Ok(stream)
}

/// A line-level SMTP conversation; every error is a retryable `Err`.
struct Smtp {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Smtp {
    fn open(source: IpAddr, to: SocketAddr) -> Result<(Smtp, String), String> {
        let s = connect_from(source, to).map_err(|e| e.to_string())?;
        let writer = s.try_clone().map_err(|e| e.to_string())?;
        let mut c = Smtp { reader: BufReader::new(s), writer };
        let greeting = c.reply()?;
        Ok((c, greeting))
    }

    fn reply(&mut self) -> Result<String, String> {
        let mut all = String::new();
        loop {
            let mut line = String::new();
            if self.reader.read_line(&mut line).map_err(|e| e.to_string())? == 0 {
                return Err(format!("closed after {all:?}"));
            }
            all.push_str(&line);
            if line.len() < 4 || line.as_bytes()[3] != b'-' {
                return Ok(all);
            }
        }
    }

    fn cmd(&mut self, line: &str) -> Result<String, String> {
        self.writer.write_all(format!("{line}\r\n").as_bytes()).map_err(|e| e.to_string())?;
        self.reply()
    }
}

/// One transaction; `Ok(Some(id))` accepted, `Ok(None)` refused with 4xx at `stage`, `Err` I/O.
fn smtp_once(source: IpAddr, to: SocketAddr, rcpt: &str, seq: u64) -> Result<Result<String, String>, String> {
    let (mut c, greeting) = Smtp::open(source, to)?;
    if !greeting.starts_with("220") {
        return Ok(Err(greeting[..3.min(greeting.len())].to_string()));
    }
    c.cmd("EHLO client.test")?;
    let r = c.cmd("MAIL FROM:<a@sender.test>")?;
    if !r.starts_with("250") {
        return Ok(Err(r[..3].to_string()));
    }
    let r = c.cmd(&format!("RCPT TO:<{rcpt}>"))?;
    assert!(r.starts_with("250"), "RCPT from the relay network refused: {r}");
    c.cmd("DATA")?;
    let body = format!("From: a@sender.test\r\nTo: {rcpt}\r\nSubject: {seq}\r\n\r\nbody\r\n.");
    let r = c.cmd(&body)?;
    let _ = c.cmd("QUIT");
    if r.starts_with("250") {
        Ok(Ok(r.trim_end().rsplit_once("queued as ").map(|(_, id)| id.to_string()).ok_or(r.clone())?))
    } else {
        assert!(r.starts_with('4'), "end of data: {r}");
        Ok(Err(r[..3].to_string()))
    }
}

/// SMTP through HAProxy from 127.0.0.2, retrying each message until accepted.
fn smtp_client(front: SocketAddr, stop: Arc<AtomicBool>, tally: Shared) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let source: IpAddr = "127.0.0.2".parse().unwrap();
        let mut seq = 0u64;
        while !stop.load(Ordering::SeqCst) {
            let rcpt = format!("s{seq}@dest.test");
            let mut attempts = 0;
            loop {
                attempts += 1;
                assert!(attempts < 600, "SMTP message {seq} never accepted");
                let sent = Instant::now();
                match smtp_once(source, front, &rcpt, seq) {
                    Ok(Ok(id)) => {
                        let node = node_of(&id);
                        tally.lock().unwrap().accepted.push(Accepted { rcpt, node, id, sent, attempts });
                        break;
                    }
                    Ok(Err(code)) => *tally.lock().unwrap().refused.entry(format!("smtp {code}")).or_insert(0) += 1,
                    Err(_) => *tally.lock().unwrap().refused.entry("smtp io".into()).or_insert(0) += 1,
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            seq += 1;
            std::thread::sleep(Duration::from_millis(10));
        }
    })
}

/// Poll until `f` is true; when it became true, relative to `since`.
fn wait_until(since: Instant, limit: Duration, mut f: impl FnMut() -> bool) -> Option<Duration> {
    while since.elapsed() < limit {
        if f() {
            return Some(since.elapsed());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

fn count_on(accepted: &[Accepted], node: &str, from: Instant, to: Instant) -> usize {
    accepted.iter().filter(|a| a.node == node && a.sent >= from && a.sent < to).count()
}

#[test]
fn haproxy_moves_work_off_a_shedding_node_and_back_without_loss_or_duplicates() {
    if !haproxy_installed() {
        println!("SKIPPED: haproxy is not installed (scripts/test.sh installs the Debian package)");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let mut a = Node::start("a", tmp.path());
    let mut b = Node::start("b", tmp.path());
    let hap = HaProxy::start(&a, &b, tmp.path());
    let up = |backend: &str, name: &str| hap.status(backend, name).starts_with("UP");
    let all_up = || ["smtp_nodes", "http_nodes"].iter().all(|be| up(be, "a") && up(be, "b"));
    assert!(wait_until(Instant::now(), Duration::from_secs(15), all_up).is_some(), "HAProxy sees both nodes");

    let stop = Arc::new(AtomicBool::new(false));
    let tally: Shared = Arc::default();
    let clients =
        [http_client(hap.http, stop.clone(), tally.clone()), smtp_client(hap.smtp, stop.clone(), tally.clone())];

    // Both nodes healthy: both take work.
    let t_start = Instant::now();
    std::thread::sleep(Duration::from_secs(3));

    // Node A is made slow.
    let t_fault = Instant::now();
    a.set_flush_delay(1000);
    let a_shed = wait_until(t_fault, Duration::from_secs(15), || a.state() == "shedding").expect("A sheds");
    let a_out = wait_until(t_fault, Duration::from_secs(20), || !up("http_nodes", "a") && !up("smtp_nodes", "a"))
        .expect("HAProxy takes A out");
    let t_out = t_fault + a_out;
    assert_eq!(b.state(), "healthy", "B stays healthy");
    std::thread::sleep(Duration::from_secs(4));

    // The fault clears: A recovers, HAProxy brings it back.
    let t_clear = Instant::now();
    a.set_flush_delay(0);
    let a_healthy = wait_until(t_clear, Duration::from_secs(20), || a.state() == "healthy").expect("A recovers");
    let a_back = wait_until(t_clear, Duration::from_secs(20), || up("http_nodes", "a") && up("smtp_nodes", "a"))
        .expect("A back");
    let t_back = t_clear + a_back;
    std::thread::sleep(Duration::from_secs(4));
    stop.store(true, Ordering::SeqCst);
    for c in clients {
        c.join().unwrap();
    }
    let t_end = Instant::now();

    // An outside client relaying through HAProxy: its real address (127.0.0.1, PROXY v2) is not in
    // relay_networks, so relaying is refused; the relay network (127.0.0.2) may.
    for (source, want) in [("127.0.0.1", "550 5.7.1"), ("127.0.0.2", "250")] {
        let (mut c, greeting) = Smtp::open(source.parse().unwrap(), hap.smtp).unwrap();
        assert!(greeting.starts_with("220"), "{greeting}");
        c.cmd("EHLO outside.test").unwrap();
        assert!(c.cmd("MAIL FROM:<x@outside.test>").unwrap().starts_with("250"));
        let r = c.cmd("RCPT TO:<victim@elsewhere.test>").unwrap();
        assert!(r.starts_with(want), "relay from {source} through HAProxy: {r}");
        let _ = c.cmd("QUIT");
    }
    // The proxied listener refuses a connection without a PROXY header (no spoofing by skipping HAProxy).
    let mut direct = TcpStream::connect(a.smtp_proxied).unwrap();
    direct.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let _ = direct.write_all(b"EHLO sneaky.test\r\n");
    let mut buf = String::new();
    let _ = direct.read_to_string(&mut buf);
    assert!(!buf.starts_with("220"), "no greeting without a PROXY header: {buf:?}");

    let tally = std::mem::take(&mut *tally.lock().unwrap());
    let accepted = tally.accepted;
    let before = (count_on(&accepted, "nodea", t_start, t_fault), count_on(&accepted, "nodeb", t_start, t_fault));
    // Give HAProxy's view half a second to reach requests already queued to A when it went down.
    let during_a = count_on(&accepted, "nodea", t_out + Duration::from_millis(500), t_clear);
    let during_b = count_on(&accepted, "nodeb", t_out, t_clear);
    let after = (count_on(&accepted, "nodea", t_back, t_end), count_on(&accepted, "nodeb", t_back, t_end));
    let retried = accepted.iter().filter(|x| x.attempts > 1).count();
    let http_n = accepted.iter().filter(|x| x.rcpt.starts_with('h')).count();
    println!(
        "haproxy two nodes: A shedding {:.2}s after the fault, out of HAProxy {:.2}s after; A healthy {:.2}s after \
         clearing, back in HAProxy {:.2}s after",
        a_shed.as_secs_f64(),
        a_out.as_secs_f64(),
        a_healthy.as_secs_f64(),
        a_back.as_secs_f64()
    );
    println!(
        "haproxy two nodes: accepted {} ({} HTTP, {} SMTP), {} after retries; refused/failed attempts {:?}",
        accepted.len(),
        http_n,
        accepted.len() - http_n,
        retried,
        tally.refused
    );
    println!(
        "haproxy two nodes: before the fault A={} B={}; while A was out A={} B={}; after A came back A={} B={}",
        before.0, before.1, during_a, during_b, after.0, after.1
    );
    assert!(before.0 > 0 && before.1 > 0, "both nodes take work while healthy: {before:?}");
    assert_eq!(during_a, 0, "no new work reaches A while HAProxy has it out");
    assert!(during_b > 0, "B takes the work");
    assert!(after.0 > 0, "A takes work again after the fault: {after:?}");
    assert!(a_out < Duration::from_secs(8), "work moved within a few seconds: {a_out:?}");

    // Both spools, offline: every acknowledged message exactly once, on the node its id names; nothing else.
    let mut stored: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
    for node in [&mut a, &mut b] {
        let name = format!("node{}", node.name);
        for (rcpt, id) in node.stop_and_list() {
            stored.entry(rcpt).or_default().push((name.clone(), id));
        }
    }
    let mut lost = Vec::new();
    for x in &accepted {
        match stored.get(&x.rcpt).map(Vec::as_slice) {
            Some([(node, id)]) => assert!(node == &x.node && id == &x.id, "{} stored as {id} on {node}", x.rcpt),
            Some(many) => panic!("{} stored {} times: {many:?}", x.rcpt, many.len()),
            None => lost.push(x.rcpt.clone()),
        }
    }
    assert!(lost.is_empty(), "acknowledged but in no spool: {lost:?}");
    assert_eq!(stored.len(), accepted.len(), "messages in the spools that no client saw acknowledged");
    println!("haproxy two nodes: {} messages in the spools, none lost, none duplicated", stored.len());

    // The PROXY header's address is what the node recorded.
    let smtp_on_b = accepted.iter().find(|x| x.rcpt.starts_with('s') && x.node == "nodeb").expect("SMTP on B");
    let raw = b.raw(&smtp_on_b.id);
    assert!(raw.contains("[127.0.0.2]"), "Received: names the real client: {}", &raw[..raw.len().min(400)]);
    let log = a.stderr();
    assert!(log.contains("back-pressure:") && log.contains("-> shedding"), "A logged its transitions");
}
