//! A small, programmable SMTP sink for delivery tests: an independent server (it shares no code with mta-smtp,
//! so a bug there cannot hide itself) that records what it receives and answers 4xx/5xx on demand.
//!
//! It speaks EHLO/HELO, MAIL, RCPT, DATA, BDAT, RSET, NOOP, QUIT and (with a certificate) STARTTLS, reads pipelined
//! input line by line, and counts connections, including the most open at once. Rules (`set_rcpt_rule`,
//! `set_data_rule`, `set_mail_rule`) decide refusals; greeting and blackholing can change while it runs and apply
//! to the next connection.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

/// Longest command line we read; longer input ends the session.
const MAX_LINE: u64 = 64 * 1024;
/// Largest message we keep.
const MAX_MESSAGE: usize = 64 * 1024 * 1024;

/// How a sink behaves. `SinkConfig::default()` is a well-behaved ESMTP server with PIPELINING, 8BITMIME and
/// SMTPUTF8.
#[derive(Debug, Clone)]
pub struct SinkConfig {
    /// Offer PIPELINING (input is handled line by line either way).
    pub pipelining: bool,
    /// Offer CHUNKING (BDAT).
    pub chunking: bool,
    /// Offer STARTTLS with this certificate chain and key (PEM text).
    pub starttls: Option<(String, String)>,
    /// The greeting line(s) instead of `220 <hostname> ESMTP sink`, e.g. `"421 4.3.2 busy"` or `"554 5.7.1 no"`.
    pub greeting: Option<String>,
    /// Accept TCP connections and never say anything.
    pub blackhole: bool,
    /// Wait this long before every reply.
    pub response_delay: Duration,
    /// Announce `SIZE` with this limit (and refuse `MAIL ... SIZE=` above it with 552).
    pub size: Option<u64>,
    /// Offer 8BITMIME.
    pub eightbitmime: bool,
    /// Offer SMTPUTF8.
    pub smtputf8: bool,
    /// Answer EHLO with `502 5.5.2` (HELO still works): an old server.
    pub reject_ehlo: bool,
    /// Bytes sent right after the `220` to STARTTLS, in the same write: a STARTTLS response injection.
    pub starttls_injection: Option<String>,
    /// After the `220` to STARTTLS, send garbage and close instead of a TLS handshake.
    pub tls_garbage: bool,
    /// The name in the greeting and the EHLO reply.
    pub hostname: String,
}

impl Default for SinkConfig {
    fn default() -> Self {
        SinkConfig {
            pipelining: true,
            chunking: false,
            starttls: None,
            greeting: None,
            blackhole: false,
            response_delay: Duration::ZERO,
            size: None,
            eightbitmime: true,
            smtputf8: true,
            reject_ehlo: false,
            starttls_injection: None,
            tls_garbage: false,
            hostname: "sink.test".to_string(),
        }
    }
}

/// One message the sink accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedMessage {
    /// The reverse path, without brackets (`""` for the null sender).
    pub sender: String,
    /// The accepted forward paths, without brackets.
    pub recipients: Vec<String>,
    /// The content: un-dot-stuffed for DATA (with its final CRLF, without the `.` line), raw for BDAT.
    pub data: Vec<u8>,
    /// Received under TLS.
    pub tls: bool,
    /// Which connection carried it (1 = the first accepted).
    pub connection: usize,
    /// The `MAIL FROM` parameters (`SIZE=123`, `BODY=8BITMIME`, ...).
    pub mail_params: Vec<String>,
}

type LineRule = Arc<dyn Fn(&str) -> Option<String> + Send + Sync>;
type CountRule = Arc<dyn Fn(usize) -> Option<String> + Send + Sync>;

struct Shared {
    config: Mutex<SinkConfig>,
    tls: Option<tokio_rustls::TlsAcceptor>,
    messages: Mutex<Vec<ReceivedMessage>>,
    commands: Mutex<Vec<String>>,
    mail_rule: Mutex<Option<LineRule>>,
    rcpt_rule: Mutex<Option<LineRule>>,
    data_rule: Mutex<Option<CountRule>>,
    data_attempts: AtomicUsize,
    connections: AtomicUsize,
    current: AtomicUsize,
    max_concurrent: AtomicUsize,
}

/// A running sink; stops (with all its sessions) when dropped.
pub struct SinkHandle {
    /// Where it listens.
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl Drop for SinkHandle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl SinkHandle {
    /// Binds `bind` (any 127.0.0.x works on Linux loopback; port 0 picks one) and starts serving. Panics when the
    /// address cannot be bound.
    pub async fn start(bind: SocketAddr, config: SinkConfig) -> SinkHandle {
        let tls = config.starttls.as_ref().map(|(cert, key)| acceptor(cert, key));
        // A sink restarted on the same address may find the old listener not yet dropped (task abort is
        // asynchronous): retry for a moment.
        let deadline = Instant::now() + Duration::from_secs(3);
        let listener = loop {
            match TcpListener::bind(bind).await {
                Ok(l) => break l,
                Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => panic!("sink cannot bind {bind}: {e}"),
            }
        };
        let addr = listener.local_addr().expect("sink local address");
        let shared = Arc::new(Shared {
            config: Mutex::new(config),
            tls,
            messages: Mutex::new(Vec::new()),
            commands: Mutex::new(Vec::new()),
            mail_rule: Mutex::new(None),
            rcpt_rule: Mutex::new(None),
            data_rule: Mutex::new(None),
            data_attempts: AtomicUsize::new(0),
            connections: AtomicUsize::new(0),
            current: AtomicUsize::new(0),
            max_concurrent: AtomicUsize::new(0),
        });
        let task = tokio::spawn(accept_loop(listener, shared.clone()));
        SinkHandle { addr, shared, task }
    }

    /// Stops listening and ends every session, and waits until the address is free again.
    pub async fn stop(mut self) {
        self.task.abort();
        let _ = (&mut self.task).await;
    }

    /// Every message accepted so far, in order.
    pub fn messages(&self) -> Vec<ReceivedMessage> {
        self.shared.messages.lock().unwrap().clone()
    }

    /// Every command line received so far (all connections, without CRLF; message content excluded).
    pub fn commands(&self) -> Vec<String> {
        self.shared.commands.lock().unwrap().clone()
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.shared.connections.load(Ordering::SeqCst)
    }

    /// The most sessions open at the same time so far.
    pub fn max_concurrent(&self) -> usize {
        self.shared.max_concurrent.load(Ordering::SeqCst)
    }

    /// Start counting the peak of concurrent sessions again from the sessions open now (phases of a test).
    pub fn reset_max_concurrent(&self) {
        let now = self.shared.current.load(Ordering::SeqCst);
        self.shared.max_concurrent.store(now, Ordering::SeqCst);
    }

    /// Sessions open now.
    pub fn current_connections(&self) -> usize {
        self.shared.current.load(Ordering::SeqCst)
    }

    /// Decides each `MAIL FROM` (given the sender): `Some("451 4.7.1 slow down")` refuses it, `None` accepts.
    pub fn set_mail_rule(&self, rule: impl Fn(&str) -> Option<String> + Send + Sync + 'static) {
        *self.shared.mail_rule.lock().unwrap() = Some(Arc::new(rule));
    }

    /// Decides each `RCPT TO` (given the recipient): `Some("550 5.1.1 no such user")` refuses it, `None` accepts.
    pub fn set_rcpt_rule(&self, rule: impl Fn(&str) -> Option<String> + Send + Sync + 'static) {
        *self.shared.rcpt_rule.lock().unwrap() = Some(Arc::new(rule));
    }

    /// Decides each complete message (end of DATA or BDAT LAST), given how many messages were decided before it
    /// (0 for the first): `Some("451 4.3.0 later")` refuses it, `None` accepts and records it.
    pub fn set_data_rule(&self, rule: impl Fn(usize) -> Option<String> + Send + Sync + 'static) {
        *self.shared.data_rule.lock().unwrap() = Some(Arc::new(rule));
    }

    /// Greeting for the next connections (`None`: the normal 220).
    pub fn set_greeting(&self, greeting: Option<String>) {
        self.shared.config.lock().unwrap().greeting = greeting;
    }

    /// Blackhole the next connections (accept, never answer).
    pub fn set_blackhole(&self, on: bool) {
        self.shared.config.lock().unwrap().blackhole = on;
    }

    /// Delay before every reply, from now on.
    pub fn set_response_delay(&self, delay: Duration) {
        self.shared.config.lock().unwrap().response_delay = delay;
    }

    /// Waits until at least `n` messages were accepted; false on timeout.
    pub async fn wait_for_messages(&self, n: usize, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.shared.messages.lock().unwrap().len() >= n {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

fn acceptor(cert_pem: &str, key_pem: &str) -> tokio_rustls::TlsAcceptor {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(cert_pem.as_bytes()).collect::<Result<_, _>>().expect("sink certificate PEM");
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).expect("sink key PEM");
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .expect("sink certificate and key");
    tokio_rustls::TlsAcceptor::from(Arc::new(config))
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    // Owned here, so aborting this task ends every session too.
    let mut sessions = JoinSet::new();
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let id = shared.connections.fetch_add(1, Ordering::SeqCst) + 1;
        let now = shared.current.fetch_add(1, Ordering::SeqCst) + 1;
        shared.max_concurrent.fetch_max(now, Ordering::SeqCst);
        let shared = shared.clone();
        sessions.spawn(async move {
            let open = AtomicBool::new(true);
            let _ = session(&shared, stream, id, &open).await;
            if open.swap(false, Ordering::SeqCst) {
                shared.current.fetch_sub(1, Ordering::SeqCst);
            }
        });
        while sessions.try_join_next().is_some() {}
    }
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

type Conn = BufReader<Box<dyn Io>>;

/// The open transaction.
#[derive(Default)]
struct Txn {
    sender: Option<String>,
    params: Vec<String>,
    recipients: Vec<String>,
    bdat: Vec<u8>,
    bdat_failed: bool,
}

/// `open` is cleared (and the session no longer counted as concurrent) once the client said QUIT: a client may
/// close without waiting for a (delayed) 221, and is then free to open its next connection.
async fn session(shared: &Shared, stream: TcpStream, id: usize, open: &AtomicBool) -> std::io::Result<()> {
    let config = shared.config.lock().unwrap().clone();
    if config.blackhole {
        let mut stream = stream;
        let mut buf = [0u8; 4096];
        while stream.read(&mut buf).await? > 0 {}
        return Ok(());
    }
    let mut io: Conn = BufReader::new(Box::new(stream));
    let delay = || shared.config.lock().unwrap().response_delay;
    let greeting = config.greeting.clone().unwrap_or_else(|| format!("220 {} ESMTP sink", config.hostname));
    reply(&mut io, delay(), &greeting).await?;
    if !greeting.starts_with('2') {
        if greeting.starts_with("421") {
            return Ok(());
        }
        // RFC 5321 §3.1: after a 554 greeting, wait for QUIT and refuse everything else.
        while let Some(line) = read_line(&mut io).await? {
            shared.commands.lock().unwrap().push(line.trim_end_matches(['\r', '\n']).to_string());
            if line.trim().eq_ignore_ascii_case("QUIT") {
                return reply(&mut io, delay(), "221 2.0.0 Bye").await;
            }
            reply(&mut io, delay(), "503 5.5.1 No service").await?;
        }
        return Ok(());
    }
    let mut tls = false;
    let mut txn = Txn::default();
    while let Some(line) = read_line(&mut io).await? {
        let line = line.trim_end_matches(['\r', '\n']).to_string();
        shared.commands.lock().unwrap().push(line.clone());
        let (verb, arg) = line.split_once(' ').unwrap_or((&line, ""));
        let verb = verb.to_ascii_uppercase();
        let d = delay();
        match verb.as_str() {
            "EHLO" if config.reject_ehlo => reply(&mut io, d, "502 5.5.2 Command not recognized").await?,
            "EHLO" => {
                txn = Txn::default();
                let mut lines = vec![format!("{} greets {}", config.hostname, arg.trim())];
                if config.pipelining {
                    lines.push("PIPELINING".into());
                }
                if let Some(n) = config.size {
                    lines.push(format!("SIZE {n}"));
                }
                if config.eightbitmime {
                    lines.push("8BITMIME".into());
                }
                if config.smtputf8 {
                    lines.push("SMTPUTF8".into());
                }
                if config.chunking {
                    lines.push("CHUNKING".into());
                }
                if shared.tls.is_some() && !tls {
                    lines.push("STARTTLS".into());
                }
                lines.push("ENHANCEDSTATUSCODES".into());
                let text: Vec<String> = lines
                    .iter()
                    .enumerate()
                    .map(|(i, l)| format!("250{}{l}", if i + 1 == lines.len() { ' ' } else { '-' }))
                    .collect();
                reply(&mut io, d, &text.join("\r\n")).await?;
            }
            "HELO" => {
                txn = Txn::default();
                reply(&mut io, d, &format!("250 {}", config.hostname)).await?;
            }
            "MAIL" => {
                let Some(rest) = strip_prefix_ci(arg, "FROM:") else {
                    reply(&mut io, d, "501 5.5.4 Syntax: MAIL FROM:<address>").await?;
                    continue;
                };
                let Some((sender, params)) = bracketed(rest) else {
                    reply(&mut io, d, "501 5.1.7 Bad sender address syntax").await?;
                    continue;
                };
                if txn.sender.is_some() {
                    reply(&mut io, d, "503 5.5.1 Nested MAIL command").await?;
                    continue;
                }
                let params: Vec<String> = params.split_whitespace().map(str::to_string).collect();
                let size = params.iter().find_map(|p| strip_prefix_ci(p, "SIZE=").and_then(|n| n.parse::<u64>().ok()));
                if let (Some(max), Some(size)) = (config.size, size) {
                    if size > max {
                        reply(&mut io, d, "552 5.3.4 Message size exceeds fixed limit").await?;
                        continue;
                    }
                }
                let rule = shared.mail_rule.lock().unwrap().clone();
                if let Some(refusal) = rule.and_then(|r| r(&sender)) {
                    reply(&mut io, d, &refusal).await?;
                    continue;
                }
                txn = Txn { sender: Some(sender), params, ..Txn::default() };
                reply(&mut io, d, "250 2.1.0 Ok").await?;
            }
            "RCPT" => {
                let Some((rcpt, _)) = strip_prefix_ci(arg, "TO:").and_then(bracketed) else {
                    reply(&mut io, d, "501 5.1.3 Bad recipient address syntax").await?;
                    continue;
                };
                if txn.sender.is_none() {
                    reply(&mut io, d, "503 5.5.1 Need MAIL first").await?;
                    continue;
                }
                let rule = shared.rcpt_rule.lock().unwrap().clone();
                if let Some(refusal) = rule.and_then(|r| r(&rcpt)) {
                    reply(&mut io, d, &refusal).await?;
                    continue;
                }
                txn.recipients.push(rcpt);
                reply(&mut io, d, "250 2.1.5 Ok").await?;
            }
            "DATA" => {
                if txn.sender.is_none() {
                    reply(&mut io, d, "503 5.5.1 Need MAIL first").await?;
                    continue;
                }
                if txn.recipients.is_empty() {
                    reply(&mut io, d, "554 5.5.1 No valid recipients").await?;
                    continue;
                }
                reply(&mut io, d, "354 End data with <CR><LF>.<CR><LF>").await?;
                let Some(data) = read_data(&mut io).await? else { return Ok(()) };
                let answer = finish_message(shared, &mut txn, data, tls, id);
                reply(&mut io, delay(), &answer).await?;
            }
            "BDAT" => {
                let mut words = arg.split_whitespace();
                let size = words.next().and_then(|n| n.parse::<usize>().ok());
                let last = words.next().is_some_and(|w| w.eq_ignore_ascii_case("LAST"));
                let Some(size) = size.filter(|&n| n <= MAX_MESSAGE) else {
                    reply(&mut io, d, "501 5.5.4 Syntax: BDAT size [LAST]").await?;
                    return Ok(()); // cannot know where the chunk ends
                };
                let mut chunk = vec![0u8; size];
                io.read_exact(&mut chunk).await?;
                if txn.sender.is_none() || txn.recipients.is_empty() || txn.bdat_failed {
                    txn.bdat_failed = true;
                    reply(&mut io, d, "554 5.5.1 No valid recipients").await?;
                    continue;
                }
                txn.bdat.extend_from_slice(&chunk);
                if last {
                    let data = std::mem::take(&mut txn.bdat);
                    let answer = finish_message(shared, &mut txn, data, tls, id);
                    reply(&mut io, d, &answer).await?;
                } else {
                    reply(&mut io, d, &format!("250 2.0.0 {size} octets received")).await?;
                }
            }
            "RSET" => {
                txn = Txn::default();
                reply(&mut io, d, "250 2.0.0 Ok").await?;
            }
            "NOOP" => reply(&mut io, d, "250 2.0.0 Ok").await?,
            "QUIT" => {
                if open.swap(false, Ordering::SeqCst) {
                    shared.current.fetch_sub(1, Ordering::SeqCst);
                }
                return reply(&mut io, d, "221 2.0.0 Bye").await;
            }
            "STARTTLS" => {
                let Some(acceptor) = shared.tls.clone().filter(|_| !tls) else {
                    reply(&mut io, d, "502 5.5.1 STARTTLS not available").await?;
                    continue;
                };
                let mut ready = b"220 2.0.0 Ready to start TLS\r\n".to_vec();
                if let Some(extra) = &config.starttls_injection {
                    ready.extend_from_slice(extra.as_bytes());
                }
                tokio::time::sleep(d).await;
                io.get_mut().write_all(&ready).await?;
                io.get_mut().flush().await?;
                if config.tls_garbage {
                    // Wait for the ClientHello, then answer it with something that is not TLS.
                    let mut hello = [0u8; 512];
                    let _ = io.read(&mut hello).await?;
                    io.get_mut().write_all(b"this is not a TLS record\r\n").await?;
                    io.get_mut().shutdown().await?;
                    return Ok(());
                }
                // into_inner drops whatever the client pipelined after STARTTLS (RFC 3207 §4.2 / injection).
                let stream = io.into_inner();
                let Ok(stream) = acceptor.accept(stream).await else { return Ok(()) };
                io = BufReader::new(Box::new(stream));
                tls = true;
                txn = Txn::default();
            }
            _ => reply(&mut io, d, "500 5.5.2 Command not recognized").await?,
        }
    }
    Ok(())
}

/// Records or refuses a complete message per the data rule; returns the reply line.
fn finish_message(shared: &Shared, txn: &mut Txn, data: Vec<u8>, tls: bool, connection: usize) -> String {
    let done = std::mem::take(txn);
    let attempt = shared.data_attempts.fetch_add(1, Ordering::SeqCst);
    let rule = shared.data_rule.lock().unwrap().clone();
    if let Some(refusal) = rule.and_then(|r| r(attempt)) {
        return refusal;
    }
    let mut messages = shared.messages.lock().unwrap();
    messages.push(ReceivedMessage {
        sender: done.sender.unwrap_or_default(),
        recipients: done.recipients,
        data,
        tls,
        connection,
        mail_params: done.params,
    });
    format!("250 2.0.0 Ok: queued as SINK{}", messages.len())
}

/// One line with its terminator; `None` at EOF. Over-long lines end the session (an error).
async fn read_line(io: &mut Conn) -> std::io::Result<Option<String>> {
    let mut buf = Vec::new();
    let n = (&mut *io).take(MAX_LINE).read_until(b'\n', &mut buf).await?;
    if n == 0 {
        return Ok(None);
    }
    if !buf.ends_with(b"\n") {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "line too long or truncated"));
    }
    Ok(Some(String::from_utf8_lossy(&buf).into_owned()))
}

/// DATA content up to the `.` line, un-dot-stuffed; `None` at EOF.
async fn read_data(io: &mut Conn) -> std::io::Result<Option<Vec<u8>>> {
    let mut data = Vec::new();
    loop {
        let mut line = Vec::new();
        let n = (&mut *io).take(MAX_LINE).read_until(b'\n', &mut line).await?;
        if n == 0 {
            return Ok(None);
        }
        if line == b".\r\n" || line == b".\n" {
            return Ok(Some(data));
        }
        let content = if line.first() == Some(&b'.') { &line[1..] } else { &line[..] };
        if data.len() + content.len() > MAX_MESSAGE {
            return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "message too large"));
        }
        data.extend_from_slice(content);
    }
}

/// Writes reply text (lines separated by CRLF; the final CRLF is added) after the configured delay.
async fn reply(io: &mut Conn, delay: Duration, text: &str) -> std::io::Result<()> {
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let w = io.get_mut();
    w.write_all(format!("{text}\r\n").as_bytes()).await?;
    w.flush().await
}

fn strip_prefix_ci<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix).then(|| &s[prefix.len()..])
}

/// `<addr> params` → (addr, params).
fn bracketed(s: &str) -> Option<(String, &str)> {
    let s = s.trim_start();
    let rest = s.strip_prefix('<')?;
    let end = rest.find('>')?;
    Some((rest[..end].to_string(), rest[end + 1..].trim()))
}
