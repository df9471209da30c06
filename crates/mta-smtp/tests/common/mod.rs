//! Test harness: a recording handler and a line-oriented SMTP client over an in-memory duplex.
#![allow(dead_code)]

use mta_smtp::{Handler, ListenerMode, Reply, Session, SessionConfig, SessionInfo, Transaction};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// A message the handler queued: the envelope and the content its sink collected.
#[derive(Debug, Clone)]
pub struct Queued {
    pub sender: String,
    pub recipients: Vec<String>,
    pub data: bytes::Bytes,
    pub body_8bit: bool,
    pub smtputf8: bool,
}

/// Records what the session asked; refuses recipients at `outside.example`; user `user` / `pass`.
#[derive(Default)]
pub struct TestHandler {
    pub users: bool,
    pub mails: Mutex<Vec<String>>,
    pub queued: Mutex<Vec<Queued>>,
    pub infos: Mutex<Vec<SessionInfo>>,
}

impl TestHandler {
    pub fn with_users() -> TestHandler {
        TestHandler { users: true, ..TestHandler::default() }
    }

    pub fn mails(&self) -> Vec<String> {
        self.mails.lock().map(|m| m.clone()).unwrap_or_default()
    }

    pub fn queued(&self) -> Vec<Queued> {
        self.queued.lock().map(|m| m.clone()).unwrap_or_default()
    }
}

impl Handler for TestHandler {
    type Content = Vec<u8>;

    fn on_connect(&self, _info: &SessionInfo) -> Result<(), Reply> {
        Ok(())
    }

    fn on_mail(&self, info: &SessionInfo, sender: &str) -> Result<(), Reply> {
        if let Ok(mut m) = self.mails.lock() {
            m.push(sender.to_owned());
        }
        if let Ok(mut i) = self.infos.lock() {
            i.push(info.clone());
        }
        Ok(())
    }

    fn on_rcpt(&self, _info: &SessionInfo, _sender: &str, rcpt: &str) -> Result<(), Reply> {
        if rcpt.ends_with("@outside.example") {
            return Err(Reply::RELAY_DENIED);
        }
        Ok(())
    }

    fn auth_enabled(&self) -> bool {
        self.users
    }

    async fn authenticate(&self, user: &str, password: &str) -> bool {
        user == "user" && password == "pass"
    }

    async fn begin_content(&self, _info: &SessionInfo, _txn: &Transaction) -> Result<Vec<u8>, Reply> {
        Ok(Vec::new())
    }

    async fn queue(&self, _info: &SessionInfo, txn: Transaction, content: Vec<u8>) -> Result<String, Reply> {
        let mut q = self.queued.lock().map_err(|_| Reply::LOCAL_ERROR)?;
        q.push(Queued {
            sender: txn.sender,
            recipients: txn.recipients,
            data: content.into(),
            body_8bit: txn.body_8bit,
            smtputf8: txn.smtputf8,
        });
        Ok(format!("ID{}", q.len()))
    }
}

pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// The client side of a session.
pub struct Client {
    pub io: Box<dyn Stream>,
    pub buf: Vec<u8>,
    pub timeout: Duration,
}

impl Client {
    pub fn new(io: Box<dyn Stream>) -> Client {
        Client { io, buf: Vec::new(), timeout: Duration::from_secs(10) }
    }

    /// Writes raw bytes.
    pub async fn send(&mut self, raw: &str) {
        self.send_bytes(raw.as_bytes()).await;
    }

    pub async fn send_bytes(&mut self, raw: &[u8]) {
        self.io.write_all(raw).await.expect("write");
        self.io.flush().await.expect("flush");
    }

    /// Reads one (possibly multiline) reply; `None` at end of stream.
    pub async fn reply(&mut self) -> Option<String> {
        let mut text = String::new();
        loop {
            let line = self.line().await?;
            text.push_str(&line);
            text.push('\n');
            if line.len() < 4 || line.as_bytes()[3] == b' ' {
                return Some(text.trim_end().to_owned());
            }
        }
    }

    async fn line(&mut self) -> Option<String> {
        loop {
            if let Some(i) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line: Vec<u8> = self.buf.drain(..i + 2).collect();
                return Some(String::from_utf8_lossy(&line[..i]).into_owned());
            }
            let mut chunk = [0u8; 4096];
            let n =
                tokio::time::timeout(self.timeout, self.io.read(&mut chunk)).await.expect("no reply in time").ok()?;
            if n == 0 {
                return None;
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Reads a reply and checks its code; returns the reply.
    #[track_caller]
    pub fn expect(&mut self, code: &str) -> impl std::future::Future<Output = String> + '_ {
        let caller = std::panic::Location::caller();
        let code = code.to_owned();
        async move {
            let reply = self.reply().await.unwrap_or_else(|| panic!("{caller}: connection closed, wanted {code}"));
            assert!(reply.starts_with(&code), "{caller}: wanted {code}, got {reply:?}");
            reply
        }
    }

    /// Sends a command line and checks the reply code.
    #[track_caller]
    pub fn cmd<'a>(&'a mut self, line: &str, code: &str) -> impl std::future::Future<Output = String> + 'a {
        let caller = std::panic::Location::caller();
        let line = format!("{line}\r\n");
        let code = code.to_owned();
        async move {
            self.send(&line).await;
            let reply = self.reply().await.unwrap_or_else(|| panic!("{caller}: closed after {line:?}"));
            assert!(reply.starts_with(&code), "{caller}: {line:?}: wanted {code}, got {reply:?}");
            reply
        }
    }

    /// Asserts the server closed the connection without sending anything more.
    pub async fn expect_closed(&mut self) {
        if let Some(r) = self.reply().await {
            panic!("expected close, got {r:?}");
        }
    }
}

/// A running session plus what the test needs to steer it.
pub struct Harness {
    pub client: Client,
    pub handler: Arc<TestHandler>,
    pub shutdown: watch::Sender<bool>,
    pub task: JoinHandle<()>,
}

pub fn start(config: SessionConfig, mode: ListenerMode, handler: TestHandler) -> Harness {
    let (client_io, server_io) = tokio::io::duplex(1 << 20);
    let handler = Arc::new(handler);
    let (shutdown, rx) = watch::channel(false);
    let peer = "192.0.2.10:40000".parse().expect("addr");
    let local = "192.0.2.1:25".parse().expect("addr");
    let session = Session::new(server_io, peer, local, mode, Arc::new(config), Arc::clone(&handler), rx);
    let task = tokio::spawn(async move {
        let _ = session.run().await;
    });
    Harness { client: Client::new(Box::new(client_io)), handler, shutdown, task }
}

/// A session on a plain `smtp` listener with default config, greeting already read.
pub async fn plain(config: SessionConfig) -> Harness {
    let mut h = start(config, ListenerMode::Smtp, TestHandler::default());
    h.client.expect("220 mx.test ESMTP").await;
    h
}

pub fn config() -> SessionConfig {
    SessionConfig { hostname: "mx.test".to_owned(), ..SessionConfig::default() }
}

/// A self-signed certificate for `localhost`: the server acceptor and a client connector trusting it.
pub fn tls_pair() -> (tokio_rustls::TlsAcceptor, tokio_rustls::TlsConnector) {
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("cert");
    let cert_der = certified.cert.der().clone();
    let key_der = rustls::pki_types::PrivateKeyDer::Pkcs8(rustls::pki_types::PrivatePkcs8KeyDer::from(
        certified.signing_key.serialize_der(),
    ));
    let server = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(vec![cert_der.clone()], key_der)
        .expect("server config");
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert_der).expect("root");
    let client = rustls::ClientConfig::builder().with_root_certificates(roots).with_no_client_auth();
    (tokio_rustls::TlsAcceptor::from(Arc::new(server)), tokio_rustls::TlsConnector::from(Arc::new(client)))
}

/// Upgrades the client to TLS (after a 220 to STARTTLS, or at once for smtps). Asserts nothing was buffered.
pub async fn client_tls(client: Client, connector: &tokio_rustls::TlsConnector) -> Client {
    assert!(client.buf.is_empty(), "plaintext bytes buffered before the handshake: {:?}", client.buf);
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
    let tls = connector.connect(name, client.io).await.expect("TLS handshake");
    Client::new(Box::new(tls))
}

/// The base64 of `s`.
pub fn b64(s: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(s)
}

impl Harness {
    /// Takes the client out of the harness and upgrades it to TLS.
    pub async fn upgrade(&mut self, connector: &tokio_rustls::TlsConnector) -> Client {
        let placeholder = Client::new(Box::new(tokio::io::join(tokio::io::empty(), tokio::io::sink())));
        client_tls(std::mem::replace(&mut self.client, placeholder), connector).await
    }
}
