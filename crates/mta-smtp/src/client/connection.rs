//! One outbound SMTP session over TCP, plaintext or after STARTTLS.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::timeout;

use super::body;
use super::error::{ClientError, Stage};
use super::reply::{Capabilities, ReplyParser};
use super::tls::{self, Stream};
use super::{ClientConfig, Envelope, RecipientOutcome, SendResult, Timeouts, TlsPolicy};
use crate::proto::reply::Reply;

/// Content up to this size goes in the same write as `MAIL`/`RCPT` when `BDAT` is used with `PIPELINING`: the
/// whole transaction in one round trip. Larger content waits for an accepted recipient, so a refused message
/// does not cost its bytes.
const PIPELINE_BODY_MAX: usize = 64 * 1024;
/// Content writes are cut in blocks of this size, each under [`Timeouts::data_block`].
const WRITE_BLOCK: usize = 1024 * 1024;

/// One SMTP session to one server address: greeting, EHLO and STARTTLS done by [`Connection::connect`], then any
/// number of [`Connection::send`] calls, then [`Connection::quit`].
pub struct Connection {
    stream: Stream,
    /// Bytes from the server not yet parsed: at most one partial line, since the parser takes whole lines.
    rbuf: Vec<u8>,
    parser: ReplyParser,
    caps: Capabilities,
    greeting: Reply,
    peer: SocketAddr,
    timeouts: Timeouts,
    /// `ClientConfig::trust`: roots for a verified STARTTLS.
    trust: Option<super::TlsTrust>,
    /// `ClientConfig::dane`: TLSA records for a DANE STARTTLS.
    dane: Option<std::sync::Arc<Vec<super::Tlsa>>>,
    /// `ClientConfig::chunking`: whether to use BDAT when offered.
    chunking: bool,
    tls: bool,
    /// Under [`TlsPolicy::Testing`]: what [`TlsPolicy::Verified`] would have failed with.
    testing_failure: Option<ClientError>,
    /// False once the session failed at connection level: the stream may be mid-transaction or dead.
    usable: bool,
}

/// What was pipelined after the `RCPT` commands.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Tail {
    /// Nothing: content is sent after the replies (no PIPELINING, or large BDAT content).
    Nothing,
    /// `DATA`.
    Data,
    /// `BDAT n LAST` and the whole content.
    Bdat,
}

impl Connection {
    /// TCP connect (bound to `source_address`), read the greeting, EHLO (HELO when EHLO gets a 5xx), STARTTLS when
    /// offered and allowed by the policy (then EHLO again). In [`TlsPolicy::Opportunistic`] mode a failed TLS
    /// handshake makes this call reconnect and continue in plaintext. Errors are connection-level: the caller
    /// tries the next address or MX.
    pub async fn connect(
        addr: SocketAddr,
        server_name: &str,
        config: &ClientConfig,
    ) -> Result<Connection, ClientError> {
        let result = match Connection::open(addr, server_name, config, config.tls).await {
            Err(e) if !requires_tls(config.tls) && is_handshake_failure(&e) => {
                tracing::info!(%addr, server = server_name, error = %e, "TLS handshake failed, retrying in plaintext");
                let retry = Connection::open(addr, server_name, config, TlsPolicy::Disabled).await;
                retry.map(|mut conn| {
                    if config.tls == TlsPolicy::Testing {
                        conn.testing_failure = Some(e);
                    }
                    conn
                })
            }
            other => other,
        };
        let label = match &result {
            Ok(_) => "ok",
            Err(e) => e.label(),
        };
        metrics::counter!("mta_smtp_client_connections_total", "result" => label).increment(1);
        if let Err(e) = &result {
            tracing::debug!(%addr, server = server_name, error = %e, "connection failed");
        }
        result
    }

    async fn open(
        addr: SocketAddr,
        server_name: &str,
        config: &ClientConfig,
        policy: TlsPolicy,
    ) -> Result<Connection, ClientError> {
        if config.ehlo_name.is_empty() || config.ehlo_name.bytes().any(|b| b <= b' ' || b == 0x7f) {
            return Err(ClientError::Protocol(format!("invalid EHLO name {:?}", config.ehlo_name)));
        }
        let t = config.timeouts;
        let tcp = tcp_connect(addr, config.source_address, t.connect).await?;
        let mut conn = Connection {
            stream: Stream::Plain(tcp),
            rbuf: Vec::with_capacity(4096),
            parser: ReplyParser::new(),
            caps: Capabilities::default(),
            greeting: Reply::basic(220, ""),
            peer: addr,
            timeouts: t,
            trust: config.trust.clone(),
            dane: config.dane.clone(),
            chunking: config.chunking,
            tls: false,
            testing_failure: None,
            usable: true,
        };
        let greeting = conn.read_reply(Stage::Greeting, t.greeting).await?;
        if !greeting.is_positive() {
            // RFC 5321 §3.1: after a 554 greeting the client should QUIT. Best effort; a 421 server is gone.
            if greeting.is_permanent() {
                conn.quit_quietly().await;
            }
            return Err(ClientError::GreetingRejected(greeting));
        }
        conn.greeting = greeting;
        conn.hello(&config.ehlo_name).await?;
        if policy != TlsPolicy::Disabled {
            if conn.caps.starttls {
                conn.starttls(server_name, policy).await?;
                if conn.tls {
                    conn.hello(&config.ehlo_name).await?;
                }
            } else {
                metrics::counter!("mta_smtp_client_tls_total", "result" => "not_offered").increment(1);
                if requires_tls(policy) {
                    conn.quit_quietly().await;
                    return Err(ClientError::TlsRequired);
                }
                if policy == TlsPolicy::Testing {
                    conn.testing_failure = Some(ClientError::TlsRequired);
                }
            }
        }
        Ok(conn)
    }

    /// EHLO, or HELO when EHLO gets a 5xx (RFC 5321 §3.2).
    async fn hello(&mut self, name: &str) -> Result<(), ClientError> {
        let t = self.timeouts.ehlo;
        self.write(format!("EHLO {name}\r\n").as_bytes(), Stage::Ehlo, t).await?;
        let reply = self.read_reply(Stage::Ehlo, t).await?;
        if reply.is_positive() {
            self.caps = Capabilities::from_ehlo(&reply);
            return Ok(());
        }
        if !reply.is_permanent() {
            return Err(closing_or(reply, ClientError::HeloRejected));
        }
        self.write(format!("HELO {name}\r\n").as_bytes(), Stage::Ehlo, t).await?;
        let reply = self.read_reply(Stage::Ehlo, t).await?;
        if reply.is_positive() {
            self.caps = Capabilities::from_helo(&reply);
            return Ok(());
        }
        Err(closing_or(reply, ClientError::HeloRejected))
    }

    /// STARTTLS and the handshake. A refusal leaves the session in plaintext unless TLS is required.
    async fn starttls(&mut self, server_name: &str, policy: TlsPolicy) -> Result<(), ClientError> {
        let t = self.timeouts.starttls;
        self.write(b"STARTTLS\r\n", Stage::StartTls, t).await?;
        let reply = self.read_reply(Stage::StartTls, t).await?;
        if reply.code != 220 {
            if reply.code == 421 {
                return Err(ClientError::ServiceUnavailable(reply));
            }
            metrics::counter!("mta_smtp_client_tls_total", "result" => "refused").increment(1);
            if requires_tls(policy) {
                return Err(ClientError::Tls(format!("STARTTLS refused: {reply}")));
            }
            if policy == TlsPolicy::Testing {
                self.testing_failure = Some(ClientError::Tls(format!("STARTTLS refused: {reply}")));
            }
            return Ok(());
        }
        // Anything already buffered after the 220 was sent in plaintext by someone before the handshake: if we
        // kept it, it would be read as if it came over TLS (CVE-2011-0411, STARTTLS response injection).
        if !self.rbuf.is_empty() {
            return Err(ClientError::Protocol(format!(
                "{} octets after the 220 to STARTTLS (response injection)",
                self.rbuf.len()
            )));
        }
        let Stream::Plain(tcp) = std::mem::replace(&mut self.stream, Stream::Closed) else {
            return Err(ClientError::Protocol("STARTTLS on a TLS session".into()));
        };
        let (connector, name) = if policy == TlsPolicy::Verified {
            // The reference identity is the MX host name (RFC 8461 §4.2); an address cannot be verified.
            let Some(trust) = &self.trust else {
                return Err(ClientError::Tls("verified TLS asked for without trust anchors".into()));
            };
            let name = rustls::pki_types::ServerName::try_from(server_name.trim_end_matches('.').to_string())
                .map_err(|_| ClientError::Tls(format!("{server_name:?} is not a host name to verify")))?;
            (trust.connector(), name)
        } else if policy == TlsPolicy::Dane {
            // SNI is the MX host name (RFC 7672 §8.1); the records, not the name, decide (DANE-EE).
            let Some(records) = &self.dane else {
                return Err(ClientError::Tls("DANE asked for without TLSA records".into()));
            };
            let name = rustls::pki_types::ServerName::try_from(server_name.trim_end_matches('.').to_string())
                .map_err(|_| ClientError::Tls(format!("{server_name:?} is not a host name to verify")))?;
            (super::dane::connector(records.clone()).map_err(ClientError::Tls)?, name)
        } else {
            (tls::connector().map_err(ClientError::Tls)?, tls::server_name(server_name, self.peer.ip()))
        };
        match timeout(t, connector.connect(name, tcp)).await {
            Err(_) => {
                metrics::counter!("mta_smtp_client_tls_total", "result" => "handshake_failed").increment(1);
                Err(ClientError::Timeout { stage: Stage::TlsHandshake })
            }
            Ok(Err(e)) => {
                metrics::counter!("mta_smtp_client_tls_total", "result" => "handshake_failed").increment(1);
                if let Some(failure) = tls::certificate_failure(&e) {
                    return Err(ClientError::Certificate {
                        failure,
                        detail: format!("{} [{}]: {e}", server_name, self.peer),
                    });
                }
                Err(ClientError::Tls(format!("handshake with {}: {e}", self.peer)))
            }
            Ok(Ok(stream)) => {
                metrics::counter!("mta_smtp_client_tls_total", "result" => "negotiated").increment(1);
                if policy == TlsPolicy::Testing {
                    self.testing_failure = self.check_as_verified(server_name, stream.get_ref().1.peer_certificates());
                }
                self.stream = Stream::Tls(Box::new(stream));
                self.tls = true;
                // RFC 3207 §4.2: forget what we knew; the EHLO that follows tells again.
                self.caps = Capabilities::default();
                Ok(())
            }
        }
    }

    /// What [`TlsPolicy::Verified`] would say of the chain a [`TlsPolicy::Testing`] handshake accepted.
    fn check_as_verified(
        &self,
        server_name: &str,
        chain: Option<&[rustls::pki_types::CertificateDer<'static>]>,
    ) -> Option<ClientError> {
        let Some(trust) = &self.trust else {
            return Some(ClientError::Tls("verified TLS asked for without trust anchors".into()));
        };
        let Some((end_entity, intermediates)) = chain.and_then(|c| c.split_first()) else {
            return Some(ClientError::Tls("no certificate presented".into()));
        };
        let name = match rustls::pki_types::ServerName::try_from(server_name.trim_end_matches('.').to_string()) {
            Ok(n) => n,
            Err(_) => return Some(ClientError::Tls(format!("{server_name:?} is not a host name to verify"))),
        };
        let e = trust.verify(end_entity, intermediates, &name).err()?;
        let failure = tls::failure_of(&e).unwrap_or(super::CertificateFailure::Other);
        Some(ClientError::Certificate { failure, detail: format!("{} [{}]: {e}", server_name, self.peer) })
    }

    /// Under [`TlsPolicy::Testing`]: what [`TlsPolicy::Verified`] would have refused in this session (STARTTLS
    /// not offered or refused, a failed handshake, a certificate not verified for the host), or `None`.
    pub fn testing_failure(&self) -> Option<&ClientError> {
        self.testing_failure.as_ref()
    }

    /// Sends one message: `MAIL FROM` (with `SIZE=`, `BODY=8BITMIME`, `SMTPUTF8` as needed and offered), one
    /// `RCPT TO` per recipient, then the content by `DATA` (dot-stuffed) or `BDAT` (when `CHUNKING` is offered),
    /// all pipelined when `PIPELINING` is offered. When no recipient is accepted no content is sent. After any
    /// failed transaction the session is reset (`RSET`), so on `Ok` and on message-level errors the connection
    /// can carry the next message. See the module documentation for what `Ok` and `Err` mean.
    pub async fn send(&mut self, env: &Envelope<'_>, data: &[u8]) -> Result<SendResult, ClientError> {
        let result = self.send_inner(env, data).await;
        let label = match &result {
            Ok(r) if r.delivered() == r.recipients.len() => "delivered",
            Ok(r) if r.delivered() > 0 => "partial",
            Ok(_) => "failed",
            Err(e) => e.label(),
        };
        metrics::counter!("mta_smtp_client_messages_total", "result" => label).increment(1);
        if let Err(e) = &result {
            if e.is_connection_level() {
                self.usable = false;
            }
        }
        result
    }

    async fn send_inner(&mut self, env: &Envelope<'_>, data: &[u8]) -> Result<SendResult, ClientError> {
        if !self.usable {
            return Err(ClientError::Unusable);
        }
        if !address_ok(env.sender) {
            return Err(ClientError::InvalidAddress(env.sender.to_string()));
        }
        let needs_utf8 = env.needs_smtputf8 || !env.sender.is_ascii() || env.recipients.iter().any(|r| !r.is_ascii());
        if needs_utf8 && !self.caps.smtputf8 {
            return Err(ClientError::SmtpUtf8NotSupported);
        }
        let size = data.len() as u64;
        if let Some(max) = self.caps.max_size() {
            if size > max {
                return Err(ClientError::TooLarge { size, max });
            }
        }

        let mut outcomes: Vec<Option<RecipientOutcome>> = env
            .recipients
            .iter()
            .map(|r| {
                (r.is_empty() || !address_ok(r))
                    .then(|| RecipientOutcome::Permanent(Reply::new(553, (5, 1, 3), "invalid address, not sent")))
            })
            .collect();
        let to_send: Vec<usize> = (0..outcomes.len()).filter(|&i| outcomes[i].is_none()).collect();
        if to_send.is_empty() {
            return Ok(SendResult { recipients: outcomes.into_iter().flatten().collect(), data_reply: None });
        }

        let t = self.timeouts;
        let use_bdat = self.chunking && self.caps.chunking;
        let content = body::encode(data, !use_bdat);

        let mut batch = Vec::with_capacity(64 + 48 * to_send.len());
        batch.extend_from_slice(b"MAIL FROM:<");
        batch.extend_from_slice(env.sender.as_bytes());
        batch.push(b'>');
        if self.caps.size.is_some() {
            batch.extend_from_slice(format!(" SIZE={size}").as_bytes());
        }
        if env.needs_8bit && self.caps.eight_bit_mime {
            batch.extend_from_slice(b" BODY=8BITMIME");
        }
        if needs_utf8 {
            batch.extend_from_slice(b" SMTPUTF8");
        }
        batch.extend_from_slice(b"\r\n");

        let mut accepted = Vec::with_capacity(to_send.len());
        let tail = if self.caps.pipelining {
            for &i in &to_send {
                push_rcpt(&mut batch, &env.recipients[i]);
            }
            let tail = if !use_bdat {
                batch.extend_from_slice(b"DATA\r\n");
                Tail::Data
            } else if content.len() <= PIPELINE_BODY_MAX {
                batch.extend_from_slice(format!("BDAT {} LAST\r\n", content.len()).as_bytes());
                batch.extend_from_slice(&content);
                Tail::Bdat
            } else {
                Tail::Nothing
            };
            self.write(&batch, Stage::Mail, t.mail).await?;
            let mail = self.read_reply(Stage::Mail, t.mail).await?;
            check_closing(&mail)?;
            let mut rcpt_replies = Vec::with_capacity(to_send.len());
            for _ in &to_send {
                let reply = self.read_reply(Stage::Rcpt, t.rcpt).await?;
                check_closing(&reply)?;
                rcpt_replies.push(reply);
            }
            if !mail.is_positive() {
                // Keep in step: the pipelined DATA/BDAT got its own (refusal) reply.
                self.finish_refused_tail(tail).await?;
                return Err(ClientError::MessageRejected(mail));
            }
            for (&i, reply) in to_send.iter().zip(rcpt_replies) {
                record_rcpt(&mut outcomes, &mut accepted, i, reply);
            }
            tail
        } else {
            self.write(&batch, Stage::Mail, t.mail).await?;
            let mail = self.read_reply(Stage::Mail, t.mail).await?;
            if !mail.is_positive() {
                return Err(closing_or(mail, ClientError::MessageRejected));
            }
            for &i in &to_send {
                let mut cmd = Vec::with_capacity(16 + env.recipients[i].len());
                push_rcpt(&mut cmd, &env.recipients[i]);
                self.write(&cmd, Stage::Rcpt, t.rcpt).await?;
                let reply = self.read_reply(Stage::Rcpt, t.rcpt).await?;
                check_closing(&reply)?;
                record_rcpt(&mut outcomes, &mut accepted, i, reply);
            }
            Tail::Nothing
        };

        let final_reply = if accepted.is_empty() {
            self.finish_refused_tail(tail).await?;
            None
        } else {
            Some(match tail {
                Tail::Data => {
                    let reply = self.read_reply(Stage::DataInit, t.data_init).await?;
                    self.after_data_command(reply, &content).await?
                }
                Tail::Bdat => self.read_reply(Stage::DataTerm, t.data_term).await?,
                Tail::Nothing if use_bdat => {
                    let header = format!("BDAT {} LAST\r\n", content.len());
                    self.write_content(header.as_bytes(), &content, b"").await?;
                    self.read_reply(Stage::DataTerm, t.data_term).await?
                }
                Tail::Nothing => {
                    self.write(b"DATA\r\n", Stage::DataInit, t.data_init).await?;
                    let reply = self.read_reply(Stage::DataInit, t.data_init).await?;
                    self.after_data_command(reply, &content).await?
                }
            })
        };
        if let Some(reply) = &final_reply {
            check_closing(reply)?;
            if !(200..600).contains(&reply.code) || reply.code / 100 == 3 {
                return Err(ClientError::Protocol(format!("unexpected reply to the message content: {reply}")));
            }
        }
        if final_reply.as_ref().is_none_or(|r| !r.is_positive()) {
            self.rset_quietly().await;
        }
        if let Some(reply) = &final_reply {
            for &i in &accepted {
                outcomes[i] = Some(RecipientOutcome::from_reply(reply.clone()));
            }
        }
        Ok(SendResult { recipients: outcomes.into_iter().flatten().collect(), data_reply: final_reply })
    }

    /// After the reply to `DATA`: on 354 send the content and return the final reply; a refusal is the final
    /// reply itself.
    async fn after_data_command(&mut self, reply: Reply, content: &[u8]) -> Result<Reply, ClientError> {
        check_closing(&reply)?;
        match reply.code {
            354 => {
                self.write_content(b"", content, body::data_terminator(content)).await?;
                self.read_reply(Stage::DataTerm, self.timeouts.data_term).await
            }
            400..=599 => Ok(reply),
            _ => Err(ClientError::Protocol(format!("unexpected reply to DATA: {reply}"))),
        }
    }

    /// Reads the reply to a pipelined `DATA` or `BDAT` that must not carry content (every recipient or `MAIL`
    /// refused). A server that says 354 anyway gets an empty message (`.` alone), which it must refuse.
    async fn finish_refused_tail(&mut self, tail: Tail) -> Result<(), ClientError> {
        let t = self.timeouts;
        match tail {
            Tail::Nothing => {}
            Tail::Data => {
                let reply = self.read_reply(Stage::DataInit, t.data_init).await?;
                check_closing(&reply)?;
                if reply.code == 354 {
                    self.write(b".\r\n", Stage::DataTerm, t.data_term).await?;
                    let reply = self.read_reply(Stage::DataTerm, t.data_term).await?;
                    check_closing(&reply)?;
                }
            }
            Tail::Bdat => {
                let reply = self.read_reply(Stage::DataTerm, t.data_term).await?;
                check_closing(&reply)?;
            }
        }
        self.rset_quietly().await;
        Ok(())
    }

    /// `RSET`, so the connection can carry the next message. [`Connection::send`] already does this after a failed
    /// transaction; this is for callers that abandon a transaction some other way.
    pub async fn reset(&mut self) -> Result<(), ClientError> {
        if !self.usable {
            return Err(ClientError::Unusable);
        }
        let result = self.rset().await;
        if result.is_err() {
            self.usable = false;
        }
        result
    }

    async fn rset(&mut self) -> Result<(), ClientError> {
        let t = self.timeouts.mail;
        self.write(b"RSET\r\n", Stage::Rset, t).await?;
        let reply = self.read_reply(Stage::Rset, t).await?;
        if reply.is_positive() {
            Ok(())
        } else {
            Err(closing_or(reply, |r| ClientError::Protocol(format!("RSET refused: {r}"))))
        }
    }

    async fn rset_quietly(&mut self) {
        if let Err(e) = self.rset().await {
            tracing::debug!(peer = %self.peer, error = %e, "RSET failed; connection dropped from reuse");
            self.usable = false;
        }
    }

    /// `QUIT` and close, best effort within [`Timeouts::quit`]. Skipped on a session that failed mid-transaction
    /// (the server could take `QUIT` as content).
    pub async fn quit(mut self) {
        if self.usable {
            self.quit_quietly().await;
        }
        let _ = timeout(self.timeouts.quit, self.stream.shutdown()).await;
    }

    async fn quit_quietly(&mut self) {
        let t = self.timeouts.quit;
        if self.write(b"QUIT\r\n", Stage::Quit, t).await.is_ok() {
            let _ = self.read_reply(Stage::Quit, t).await;
        }
        self.usable = false;
    }

    /// Whether the session runs under TLS (STARTTLS succeeded).
    pub fn is_tls(&self) -> bool {
        self.tls
    }

    /// What the server offered in its (last) EHLO reply.
    pub fn capabilities(&self) -> &Capabilities {
        &self.caps
    }

    /// The server's greeting.
    pub fn greeting(&self) -> &Reply {
        &self.greeting
    }

    /// The host name the server gave in its greeting (first word), for logs and `Received:`-style records.
    pub fn greeting_host(&self) -> &str {
        self.greeting.text.split_whitespace().next().unwrap_or("")
    }

    /// The server address.
    pub fn peer_addr(&self) -> SocketAddr {
        self.peer
    }

    /// Our end of the connection (shows the source address actually used).
    pub fn local_addr(&self) -> Option<SocketAddr> {
        match &self.stream {
            Stream::Plain(s) => s.local_addr().ok(),
            Stream::Tls(s) => s.get_ref().0.local_addr().ok(),
            Stream::Closed => None,
        }
    }

    /// Whether the connection can carry another message (false after a connection-level failure or a failed
    /// `RSET`): a pool should drop it instead of reusing it.
    pub fn is_usable(&self) -> bool {
        self.usable
    }

    /// Reads one whole reply within `limit`.
    async fn read_reply(&mut self, stage: Stage, limit: Duration) -> Result<Reply, ClientError> {
        match timeout(limit, self.read_reply_unbounded(stage)).await {
            Ok(result) => result,
            Err(_) => Err(ClientError::Timeout { stage }),
        }
    }

    async fn read_reply_unbounded(&mut self, stage: Stage) -> Result<Reply, ClientError> {
        loop {
            if !self.rbuf.is_empty() {
                let (used, reply) =
                    self.parser.feed(&self.rbuf).map_err(|e| ClientError::Protocol(format!("{stage}: {e}")))?;
                self.rbuf.drain(..used);
                if let Some(reply) = reply {
                    return Ok(reply);
                }
            }
            self.rbuf.reserve(8192);
            match self.stream.read_buf(&mut self.rbuf).await {
                Ok(0) => return Err(ClientError::Closed { stage }),
                Ok(_) => {}
                Err(source) => return Err(ClientError::Io { stage, source }),
            }
        }
    }

    /// Writes and flushes `bytes` within `limit`.
    async fn write(&mut self, bytes: &[u8], stage: Stage, limit: Duration) -> Result<(), ClientError> {
        let stream = &mut self.stream;
        let io = async {
            stream.write_all(bytes).await?;
            stream.flush().await
        };
        match timeout(limit, io).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(source)) => Err(ClientError::Io { stage, source }),
            Err(_) => Err(ClientError::Timeout { stage }),
        }
    }

    /// Writes `prefix`, the content and `suffix`: in one write when small, else in blocks, each block under the
    /// data-block limit.
    async fn write_content(&mut self, prefix: &[u8], content: &[u8], suffix: &[u8]) -> Result<(), ClientError> {
        let limit = self.timeouts.data_block;
        if prefix.len() + content.len() + suffix.len() <= PIPELINE_BODY_MAX {
            let mut all = Vec::with_capacity(prefix.len() + content.len() + suffix.len());
            all.extend_from_slice(prefix);
            all.extend_from_slice(content);
            all.extend_from_slice(suffix);
            return self.write(&all, Stage::DataBlock, limit).await;
        }
        if !prefix.is_empty() {
            self.write(prefix, Stage::DataBlock, limit).await?;
        }
        for block in content.chunks(WRITE_BLOCK) {
            self.write(block, Stage::DataBlock, limit).await?;
        }
        if !suffix.is_empty() {
            self.write(suffix, Stage::DataBlock, limit).await?;
        }
        Ok(())
    }
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("peer", &self.peer)
            .field("tls", &self.tls)
            .field("usable", &self.usable)
            .field("server_name", &self.caps.server_name)
            .finish_non_exhaustive()
    }
}

async fn tcp_connect(addr: SocketAddr, source: Option<IpAddr>, limit: Duration) -> Result<TcpStream, ClientError> {
    let err = |source| ClientError::Connect { addr, source };
    let socket = if addr.is_ipv4() { TcpSocket::new_v4() } else { TcpSocket::new_v6() }.map_err(err)?;
    if let Some(ip) = source {
        socket.bind(SocketAddr::new(ip, 0)).map_err(err)?;
    }
    let stream = match timeout(limit, socket.connect(addr)).await {
        Ok(result) => result.map_err(err)?,
        Err(_) => return Err(ClientError::Timeout { stage: Stage::Connect }),
    };
    // We batch our own writes; Nagle would only delay the small ones (RSET, QUIT, non-pipelined commands).
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

/// The policy fails the connection rather than continue without TLS.
fn requires_tls(policy: TlsPolicy) -> bool {
    matches!(policy, TlsPolicy::Required | TlsPolicy::Verified | TlsPolicy::Dane)
}

/// A handshake failure that opportunistic TLS answers with a plaintext retry.
fn is_handshake_failure(e: &ClientError) -> bool {
    matches!(e, ClientError::Tls(_) | ClientError::Timeout { stage: Stage::TlsHandshake })
}

/// An address we can put between angle brackets without changing the command: no control characters (CR/LF
/// would inject commands), no brackets.
fn address_ok(address: &str) -> bool {
    address.len() <= 1024 && !address.bytes().any(|b| b < 0x20 || b == 0x7f || b == b'<' || b == b'>')
}

fn push_rcpt(out: &mut Vec<u8>, rcpt: &str) {
    out.extend_from_slice(b"RCPT TO:<");
    out.extend_from_slice(rcpt.as_bytes());
    out.extend_from_slice(b">\r\n");
}

fn record_rcpt(outcomes: &mut [Option<RecipientOutcome>], accepted: &mut Vec<usize>, i: usize, reply: Reply) {
    if reply.is_positive() {
        accepted.push(i);
    } else {
        outcomes[i] = Some(RecipientOutcome::from_reply(reply));
    }
}

/// A 421 means the server is closing the connection, whatever the command was.
fn check_closing(reply: &Reply) -> Result<(), ClientError> {
    if reply.code == 421 {
        Err(ClientError::ServiceUnavailable(reply.clone()))
    } else {
        Ok(())
    }
}

fn closing_or(reply: Reply, other: impl FnOnce(Reply) -> ClientError) -> ClientError {
    if reply.code == 421 {
        ClientError::ServiceUnavailable(reply)
    } else {
        other(reply)
    }
}
