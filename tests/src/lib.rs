//! Helpers for the end-to-end tests: start the real `mta-server` binary on loopback ports, speak raw SMTP,
//! make test certificates, and read the spool back with the real offline tools.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Path of the `mta-server` binary built next to the test executables.
pub fn server_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let bin = dir.join("mta-server");
    assert!(
        bin.exists(),
        "{} not found: run `cargo build --workspace --bins` first (scripts/test.sh does)",
        bin.display()
    );
    bin
}

/// A free loopback port, never the same twice in one test process.
///
/// Ports come from below the kernel's ephemeral range (32768+), so a port handed out here cannot be taken
/// meanwhile by some process's outgoing connection, and from a counter that starts at an offset derived from
/// the process id, so test binaries running side by side start far apart. Asking the kernel for port 0 is
/// not enough: two calls in a row can return the same port once the first listener is dropped (CI saw the
/// SMTP and HTTP listeners of one server get the same port).
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const LOW: u32 = 10_000;
    const SPAN: u32 = 22_000;
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    let _ = NEXT.compare_exchange(
        u32::MAX,
        (std::process::id().wrapping_mul(2_654_435_761)) % SPAN,
        Ordering::SeqCst,
        Ordering::SeqCst,
    );
    for _ in 0..SPAN {
        let port = (LOW + NEXT.fetch_add(1, Ordering::SeqCst) % SPAN) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A running server process with its own spool directory.
pub struct TestServer {
    /// The child process.
    pub child: Option<Child>,
    /// The plain SMTP listener.
    pub smtp: SocketAddr,
    /// The HTTP API.
    pub http: SocketAddr,
    /// Spool, event log and config live here.
    pub dir: PathBuf,
    /// The config file.
    pub config_path: PathBuf,
    _tmp: Option<tempfile::TempDir>,
    stderr_log: PathBuf,
}

impl TestServer {
    /// Start a server with `extra` TOML appended to a config with fresh ports and a fresh spool.
    pub fn start(extra: &str) -> TestServer {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        let mut s = TestServer::start_in(&dir, extra, None, None);
        s._tmp = Some(tmp);
        s
    }

    /// Start a server in `dir` (reusing a spool across restarts), optionally on given ports.
    pub fn start_in(dir: &Path, extra: &str, smtp_port: Option<u16>, http_port: Option<u16>) -> TestServer {
        TestServer::start_full(dir, extra, smtp_port, http_port, "127.0.0.1", "t1")
    }

    /// Start one node of a fleet: like [`TestServer::start`], with its own `server.node_id`.
    pub fn start_node(node_id: &str, extra: &str) -> TestServer {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        let mut s = TestServer::start_full(&dir, extra, None, None, "127.0.0.1", node_id);
        s._tmp = Some(tmp);
        s
    }

    /// Start a server whose HTTP API listens on `http_host` (`"[::]"`: dual-stack) at a free port; clients
    /// still reach it through [`TestServer::http`] on 127.0.0.1.
    pub fn start_http_on(http_host: &str, extra: &str) -> TestServer {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        let mut s = TestServer::start_full(&dir, extra, None, None, http_host, "t1");
        s._tmp = Some(tmp);
        s
    }

    fn start_full(
        dir: &Path,
        extra: &str,
        smtp_port: Option<u16>,
        http_port: Option<u16>,
        http_host: &str,
        node_id: &str,
    ) -> TestServer {
        let smtp: SocketAddr = format!("127.0.0.1:{}", smtp_port.unwrap_or_else(free_port)).parse().unwrap();
        let http: SocketAddr = format!("127.0.0.1:{}", http_port.unwrap_or_else(free_port)).parse().unwrap();
        let config = format!(
            "[server]\nhostname = \"mx.test\"\nnode_id = \"{node_id}\"\nshutdown_timeout = \"10s\"\n\
             [spool]\npath = \"{spool}\"\n[log]\nevents = \"{events}\"\n\
             [http]\nlisten = \"{http_host}:{http_port}\"\n\
             {extra}\n",
            http_port = http.port(),
            spool = dir.join("spool").display(),
            events = dir.join("events.jsonl").display(),
        );
        // Tests never send DNS traffic off the machine: without a test DNS server, a closed loopback port.
        let config = if config.contains("[dns]") {
            config
        } else {
            format!("{config}\n[dns]\nnameservers = [\"127.0.0.1:9\"]\n")
        };
        // `[smtp] listen` must be inside the user's [smtp] table if they have one.
        let config = if config.contains("[smtp]") {
            config.replacen("[smtp]", &format!("[smtp]\nlisten = [\"{smtp}\"]"), 1)
        } else {
            format!("{config}\n[smtp]\nlisten = [\"{smtp}\"]\n")
        };
        let config_path = dir.join("config.toml");
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(&config_path, config).unwrap();
        let stderr_log = dir.join("server.stderr");
        let child = Command::new(server_binary())
            .arg("serve")
            .arg("--config")
            .arg(&config_path)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr_log).unwrap())
            .spawn()
            .expect("spawn mta-server");
        let mut s =
            TestServer { child: Some(child), smtp, http, dir: dir.to_path_buf(), config_path, _tmp: None, stderr_log };
        s.wait_ready();
        s
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if TcpStream::connect(self.smtp).is_ok() && TcpStream::connect(self.http).is_ok() {
                return;
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!("server exited early with {status}: {}", self.stderr());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("server did not start listening: {}", self.stderr());
    }

    /// What the server wrote on stderr so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_log).unwrap_or_default()
    }

    /// SIGKILL: a crash at an arbitrary instant.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM without waiting.
    pub fn sigterm(&self) {
        if let Some(c) = &self.child {
            // SAFETY: plain kill(2) on our own child's pid.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        }
    }

    /// Wait for the process to exit (after a signal), with a time limit; returns its exit code.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<i32> {
        let mut child = self.child.take()?;
        let deadline = Instant::now() + limit;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return status.code();
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("server did not exit within {limit:?}: {}", self.stderr());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Run the binary's offline `spool list --json` (server must be stopped).
    pub fn spool_list(&self) -> Vec<serde_json::Value> {
        let out = self.run_cli(&["spool", "list", "--json"]);
        assert!(out.status.success(), "spool list failed: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect()
    }

    /// Run the binary's offline `spool show ID --raw`: the stored bytes.
    pub fn spool_raw(&self, id: &str) -> Vec<u8> {
        let out = self.run_cli(&["spool", "show", id, "--raw"]);
        assert!(out.status.success(), "spool show failed: {}", String::from_utf8_lossy(&out.stderr));
        out.stdout
    }

    /// Run the binary with this server's config.
    pub fn run_cli(&self, args: &[&str]) -> std::process::Output {
        Command::new(server_binary()).args(args).arg("--config").arg(&self.config_path).output().unwrap()
    }

    /// The event log lines so far.
    pub fn events(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.dir.join("events.jsonl"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A raw SMTP client for protocol-level tests (pipelining, smuggling, injection).
pub struct RawSmtp {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl RawSmtp {
    /// Connect and read the greeting; returns the client and the greeting reply.
    pub fn connect(addr: SocketAddr) -> (RawSmtp, String) {
        let stream = TcpStream::connect(addr).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let writer = stream.try_clone().unwrap();
        let mut c = RawSmtp { reader: BufReader::new(stream), writer };
        let greeting = c.reply();
        (c, greeting)
    }

    /// Send raw bytes.
    pub fn send(&mut self, bytes: &[u8]) {
        self.writer.write_all(bytes).unwrap();
    }

    /// Read one (possibly multiline) reply; empty string on EOF.
    pub fn reply(&mut self) -> String {
        let mut all = String::new();
        loop {
            let mut line = String::new();
            match self.reader.read_line(&mut line) {
                Ok(0) | Err(_) => return all,
                Ok(_) => {}
            }
            all.push_str(&line);
            if line.len() < 4 || line.as_bytes()[3] != b'-' {
                return all;
            }
        }
    }

    /// Send a command line and check the reply starts with `code`; returns the reply.
    pub fn cmd(&mut self, line: &str, code: &str) -> String {
        self.send(format!("{line}\r\n").as_bytes());
        let r = self.reply();
        assert!(r.starts_with(code), "{line:?}: expected {code}, got {r:?}");
        r
    }

    /// True when the server closed the connection.
    pub fn is_closed(&mut self) -> bool {
        let mut buf = [0u8; 1];
        matches!(self.reader.read(&mut buf), Ok(0) | Err(_))
    }

    /// The underlying stream (for TLS upgrades in tests).
    pub fn into_stream(self) -> TcpStream {
        self.writer
    }
}

/// Extract the queue id from `250 2.0.0 Ok: queued as <ID>`.
pub fn queued_id(reply: &str) -> Option<String> {
    reply.trim_end().rsplit_once("queued as ").map(|(_, id)| id.trim().to_string())
}

/// A self-signed certificate and key for `localhost`, written as PEM files into `dir`.
pub fn test_certificate(dir: &Path) -> (PathBuf, PathBuf) {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string(), "mx.test".to_string()]).unwrap();
    let cert_path = dir.join("cert.pem");
    let key_path = dir.join("key.pem");
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.signing_key.serialize_pem()).unwrap();
    (cert_path, key_path)
}

/// A self-signed certificate for `name`: (certificate PEM, key PEM, SubjectPublicKeyInfo DER).
pub fn self_signed(name: &str) -> (String, String, Vec<u8>) {
    use rcgen::PublicKeyData;
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec![name.to_string()]).unwrap().self_signed(&key).unwrap();
    (cert.pem(), key.serialize_pem(), key.subject_public_key_info())
}

/// A TLS acceptor serving the PEM `chain` with `key` (test HTTPS endpoints).
pub fn tls_acceptor(chain: &str, key: &str) -> tokio_rustls::TlsAcceptor {
    use rustls::pki_types::pem::PemObject;
    let certs = rustls::pki_types::CertificateDer::pem_slice_iter(chain.as_bytes()).collect::<Result<Vec<_>, _>>();
    let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap();
    let config =
        rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(certs.unwrap(), key)
            .unwrap();
    tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config))
}

/// Send one message from `a@sender.test` to `rcpt` over SMTP at `smtp`; its queue id.
pub fn send_one(smtp: SocketAddr, rcpt: &str, subject: &str) -> String {
    let (mut c, _) = RawSmtp::connect(smtp);
    c.cmd("EHLO client.test", "250");
    c.cmd("MAIL FROM:<a@sender.test>", "250");
    c.cmd(&format!("RCPT TO:<{rcpt}>"), "250");
    c.cmd("DATA", "354");
    c.send(format!("From: a@sender.test\r\nSubject: {subject}\r\n\r\nHello.\r\n").as_bytes());
    let r = c.cmd(".", "250");
    c.cmd("QUIT", "221");
    queued_id(&r).unwrap()
}

/// The server's events once `pred` holds for them, or when `limit` is over (the caller asserts).
pub async fn wait_events(
    server: &TestServer,
    limit: Duration,
    pred: impl Fn(&[serde_json::Value]) -> bool,
) -> Vec<serde_json::Value> {
    let deadline = Instant::now() + limit;
    loop {
        let events = server.events();
        if pred(&events) || Instant::now() > deadline {
            return events;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// How many `events` are of type `kind` for recipient `rcpt`.
pub fn count_events(events: &[serde_json::Value], kind: &str, rcpt: &str) -> usize {
    events.iter().filter(|e| e["type"] == kind && e["recipient"] == rcpt).count()
}

/// Strip our `Received:` header (first header, with its folded continuation lines) from stored bytes.
pub fn strip_received(stored: &[u8]) -> &[u8] {
    assert!(stored.starts_with(b"Received: "), "stored message does not start with our Received: header");
    let mut i = 0;
    loop {
        let Some(nl) = stored[i..].iter().position(|&b| b == b'\n') else { return &stored[stored.len()..] };
        i += nl + 1;
        if i >= stored.len() || !(stored[i] == b' ' || stored[i] == b'\t') {
            return &stored[i..];
        }
    }
}

/// A response read by [`http_request`].
#[derive(Debug, Clone)]
pub struct HttpResponse {
    /// Status code.
    pub status: u16,
    /// Headers, names lowercased, in order.
    pub headers: Vec<(String, String)>,
    /// The body (chunked encoding removed).
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// The first header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers.iter().find(|(k, _)| *k == name).map(|(_, v)| v.as_str())
    }

    /// The body as JSON (panics with the body when it is not).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// One HTTP/1.1 request on a fresh connection (`Connection: close`), read to the end: a tiny client over
/// `std::net`, so tests see exactly what goes on the wire. `headers` are added as given.
pub fn http_request(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> HttpResponse {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut req =
        format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n", body.len());
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    let mut bytes = req.into_bytes();
    bytes.extend_from_slice(body);
    stream.write_all(&bytes).unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).unwrap();
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").expect("no end of response headers");
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line.split(' ').nth(1).and_then(|s| s.parse().ok()).expect("status line");
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let mut body = raw[split + 4..].to_vec();
    let chunked = headers.iter().any(|(k, v)| k == "transfer-encoding" && v.eq_ignore_ascii_case("chunked"));
    if chunked {
        let mut out = Vec::new();
        let mut rest = &body[..];
        while let Some(eol) = rest.windows(2).position(|w| w == b"\r\n") {
            let size_text = String::from_utf8_lossy(&rest[..eol]).into_owned();
            let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("0").trim(), 16).unwrap_or(0);
            if size == 0 || rest.len() < eol + 2 + size {
                break;
            }
            out.extend_from_slice(&rest[eol + 2..eol + 2 + size]);
            rest = &rest[(eol + 4 + size).min(rest.len())..];
        }
        body = out;
    }
    HttpResponse { status, headers, body }
}

/// `POST` a JSON body to `path` with `Content-Type: application/json` plus `headers`.
pub fn http_post_json(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
    body: &serde_json::Value,
) -> HttpResponse {
    let mut all = vec![("Content-Type", "application/json")];
    all.extend_from_slice(headers);
    http_request(addr, "POST", path, &all, body.to_string().as_bytes())
}

/// A programmable SMTP sink (independent server) for delivery tests.
pub mod export_load;
pub mod sink;
pub mod webhook;
