//! No open relay behind a proxy, checked by someone else's scanner: Debian's `nmap --script smtp-open-relay`
//! against the real binary, through a small TCP forwarder in the test that prepends a PROXY v1 header to every
//! connection it forwards to a `proxy_protocol = true` listener.
//!
//! 1. The forwarder (peer 127.0.0.1) is **not** a trusted proxy and claims `10.99.0.7`, inside
//!    `relay_networks = ["10.99.0.0/16"]`: anyone who can reach such a listener could claim to be a relay client.
//!    The header must not be believed: the connection is refused (closed or `421`) and logged, nmap finds no relay.
//! 2. The forwarder is a trusted proxy (`smtp.trusted_proxies`, and in a third case the older
//!    `http.trusted_proxies`, which counts too) and claims `203.0.113.9`, outside `relay_networks`: nmap finds no
//!    relay; the same forwarder claiming `10.99.0.7` may relay (the header is believed: the check is not vacuous).
//!
//! Besides nmap, each case checks the relay attempt with a raw SMTP client through the forwarder (that part
//! runs without nmap too). Skipped with a message when `nmap` is not installed and `CI` is not set (in CI a
//! missing nmap fails); scripts/test.sh installs it.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use mta_tests::{free_port, TestServer};

/// Inside `relay_networks`.
const RELAY_CLIENT: &str = "10.99.0.7";
/// Outside `relay_networks` (TEST-NET-3).
const OUTSIDER: &str = "203.0.113.9";

fn nmap_installed() -> bool {
    Command::new("nmap")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// `Some(reason)` when the nmap part must be skipped; panics when nmap is missing in CI.
fn nmap_skip() -> Option<&'static str> {
    if nmap_installed() {
        return None;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "nmap is not installed but CI is set: scripts/test.sh installs the Debian package `nmap`"
    );
    println!("SKIPPED (nmap part): nmap is not installed (scripts/test.sh installs the Debian package)");
    Some("nmap missing")
}

/// A server whose second SMTP listener expects PROXY headers; `relay_networks` = 10.99.0.0/16 only (not
/// loopback); `smtp_extra` / `http_extra` go into those tables. Delivery off: nothing may leave anyway.
fn start(smtp_extra: &str, http_extra: &str) -> (TestServer, SocketAddr) {
    let proxied: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    // TestServer appends `extra` right after its `[http] listen` line: leading keys land in [http]; it adds
    // `listen` to our [smtp] table.
    let extra = format!(
        "{http_extra}\n\
         [smtp]\nrelay_networks = [\"10.99.0.0/16\"]\n{smtp_extra}\n\
         [[smtp.listener]]\naddress = \"{proxied}\"\nmode = \"smtp\"\nproxy_protocol = true\n\
         [delivery]\nenabled = false\n"
    );
    let server = TestServer::start(&extra);
    (server, proxied)
}

/// A TCP forwarder on 127.0.0.1: every accepted connection is forwarded to `to`, preceded by
/// `PROXY TCP4 <claimed> 127.0.0.1 40000 25\r\n`. Stops accepting when dropped.
struct Forwarder {
    addr: SocketAddr,
    /// Local addresses of the forwarder's connections to the server (the peers the server sees).
    peers: Arc<Mutex<Vec<SocketAddr>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Forwarder {
    fn start(to: SocketAddr, claimed: &str) -> Forwarder {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let header = format!("PROXY TCP4 {claimed} 127.0.0.1 40000 25\r\n");
        let peers = Arc::new(Mutex::new(Vec::new()));
        let (flag, seen) = (stop.clone(), peers.clone());
        let thread = std::thread::spawn(move || {
            while !flag.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((client, _)) => {
                        let (header, seen) = (header.clone(), seen.clone());
                        std::thread::spawn(move || forward(client, to, header.as_bytes(), &seen));
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(5))
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        Forwarder { addr, peers, stop, thread: Some(thread) }
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One forwarded connection: header, then bytes both ways until either side closes (bounded by read timeouts).
fn forward(client: TcpStream, to: SocketAddr, header: &[u8], peers: &Mutex<Vec<SocketAddr>>) {
    let _ = client.set_nonblocking(false);
    let Ok(mut upstream) = TcpStream::connect_timeout(&to, Duration::from_secs(5)) else {
        let _ = client.shutdown(Shutdown::Both);
        return;
    };
    if let Ok(local) = upstream.local_addr() {
        peers.lock().unwrap().push(local);
    }
    if upstream.write_all(header).is_err() {
        return;
    }
    for s in [&client, &upstream] {
        let _ = s.set_read_timeout(Some(Duration::from_secs(60)));
    }
    let (Ok(client2), Ok(upstream2)) = (client.try_clone(), upstream.try_clone()) else { return };
    let up = std::thread::spawn(move || pipe(client2, upstream2));
    pipe(upstream, client);
    let _ = up.join();
}

fn pipe(mut from: TcpStream, mut to: TcpStream) {
    let mut buf = [0u8; 16 * 1024];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    }
    let _ = to.shutdown(Shutdown::Write);
    let _ = from.shutdown(Shutdown::Read);
}

/// `nmap -p PORT --script smtp-open-relay 127.0.0.1`: connect scan, no DNS, no ping; `+` runs the script
/// although the port is not 25/465/587 (its portrule); `-vv` lists the combinations that worked. Returns stdout.
fn nmap_open_relay(port: u16) -> String {
    let out = Command::new("nmap")
        .args(["-Pn", "-n", "-sT", "-vv", "-p", &port.to_string(), "--script", "+smtp-open-relay", "127.0.0.1"])
        .stdin(Stdio::null())
        .output()
        .expect("run nmap");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    println!("nmap -p {port} --script smtp-open-relay 127.0.0.1:\n{text}");
    assert!(out.status.success(), "nmap failed: {}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("smtp-open-relay"), "the smtp-open-relay script did not run: {text}");
    text
}

/// One (possibly multi-line) reply; what was read so far on EOF or timeout.
fn reply(reader: &mut BufReader<TcpStream>) -> String {
    let mut all = String::new();
    loop {
        let mut line = String::new();
        match reader.read_line(&mut line) {
            Ok(0) | Err(_) => return all,
            Ok(_) => all.push_str(&line),
        }
        if line.len() < 4 || line.as_bytes()[3] != b'-' {
            return all;
        }
    }
}

/// What a would-be relayer gets through `addr`: the greeting, and (only after a `220`) the reply to
/// `RCPT TO:<victim@elsewhere.test>`.
fn try_relay(addr: SocketAddr) -> (String, Option<String>) {
    let stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut writer = stream.try_clone().unwrap();
    let mut reader = BufReader::new(stream);
    let greeting = reply(&mut reader);
    if !greeting.starts_with("220") {
        return (greeting, None);
    }
    let mut cmd = |line: &str| {
        let _ = writer.write_all(format!("{line}\r\n").as_bytes());
        reply(&mut reader)
    };
    cmd("EHLO relay-test.example");
    let mail = cmd("MAIL FROM:<spammer@relay-test.example>");
    let rcpt = if mail.starts_with("250") { cmd("RCPT TO:<victim@elsewhere.test>") } else { mail };
    cmd("QUIT");
    (greeting, Some(rcpt))
}

fn assert_no_relay(nmap: &str, how: &str) {
    assert!(!nmap.contains("Server is an open relay"), "{how}: nmap found an open relay:\n{nmap}");
}

#[test]
fn untrusted_peer_claiming_a_relay_network_address_is_not_believed() {
    let skip = nmap_skip();
    // No trusted proxies at all: the forwarder on 127.0.0.1 is an arbitrary client of the proxied listener.
    let (server, proxied) = start("", "");
    let fwd = Forwarder::start(proxied, RELAY_CLIENT);
    if skip.is_none() {
        let nmap = nmap_open_relay(fwd.addr.port());
        assert_no_relay(&nmap, "untrusted peer claiming 10.99.0.7 (inside relay_networks)");
    }
    let (greeting, rcpt) = try_relay(fwd.addr);
    println!("untrusted peer: greeting {greeting:?}, RCPT {rcpt:?}");
    assert!(
        !rcpt.as_deref().unwrap_or("").starts_with("250"),
        "relay accepted for an untrusted peer claiming {RELAY_CLIENT}: {rcpt:?}"
    );
    assert!(
        !greeting.starts_with("220"),
        "a PROXY listener serves a peer outside the trusted proxies (must be refused: closed or 421): {greeting:?}"
    );
    // Refusals are logged, naming the peer (with its port, or at least its address next to "trusted").
    let peers: Vec<String> = fwd.peers.lock().unwrap().iter().map(|p| p.to_string()).collect();
    assert!(!peers.is_empty(), "the forwarder connected to the server");
    let deadline = Instant::now() + Duration::from_secs(5);
    let logged = loop {
        let log = server.stderr();
        let names_peer = |l: &str| {
            peers.iter().any(|p| l.contains(p.as_str()))
                || (l.contains("127.0.0.1") && l.to_ascii_lowercase().contains("trusted"))
        };
        if log.lines().any(names_peer) {
            break true;
        }
        if Instant::now() > deadline {
            break false;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(logged, "no log line about the refused PROXY peer 127.0.0.1:\n{}", server.stderr());
    drop(fwd);
}

/// Case 2 with a given way of trusting 127.0.0.1.
fn trusted_proxy_case(smtp_extra: &str, http_extra: &str, what: &str) {
    let skip = nmap_skip();
    let (_server, proxied) = start(smtp_extra, http_extra);
    let outsider = Forwarder::start(proxied, OUTSIDER);
    if skip.is_none() {
        let nmap = nmap_open_relay(outsider.addr.port());
        assert_no_relay(&nmap, &format!("trusted proxy ({what}) claiming {OUTSIDER} (outside relay_networks)"));
    }
    let (greeting, rcpt) = try_relay(outsider.addr);
    println!("{what}, claimed {OUTSIDER}: greeting {greeting:?}, RCPT {rcpt:?}");
    assert!(greeting.starts_with("220"), "a trusted proxy's connection is served: {greeting:?}");
    let rcpt = rcpt.unwrap_or_default();
    assert!(rcpt.starts_with("550 5.7.1"), "relay from {OUTSIDER} through a trusted proxy: {rcpt:?}");
    // Control: the same trusted proxy claiming a relay-network client may relay, so the header is believed.
    let insider = Forwarder::start(proxied, RELAY_CLIENT);
    let (greeting, rcpt) = try_relay(insider.addr);
    println!("{what}, claimed {RELAY_CLIENT}: greeting {greeting:?}, RCPT {rcpt:?}");
    assert!(
        rcpt.as_deref().unwrap_or("").starts_with("250"),
        "a trusted proxy's header claiming {RELAY_CLIENT} is believed: {greeting:?} {rcpt:?}"
    );
}

#[test]
fn trusted_proxy_claiming_an_outside_address_finds_no_relay() {
    trusted_proxy_case("trusted_proxies = [\"127.0.0.1/32\"]\n", "", "smtp.trusted_proxies");
}

#[test]
fn http_trusted_proxies_count_for_smtp_too() {
    trusted_proxy_case("", "trusted_proxies = [\"127.0.0.1/32\"]\n", "http.trusted_proxies");
}
