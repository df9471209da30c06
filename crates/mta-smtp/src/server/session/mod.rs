//! One SMTP connection: reads commands, answers them in order, drives the [`Handler`].
//!
//! Pipelining falls out of the loop's shape: every complete command line already buffered is answered into
//! one output buffer, which is flushed only before the session would block for more input (or before a
//! slow step such as a TLS handshake). A client that pipelines without PIPELINING offered (after HELO) is
//! answered the same way, in order (RFC 2920 §3.1 leaves that to the server).
//!
//! Deadlines cannot be stretched by trickling bytes: a command line must be complete within
//! `timeout_command` of the moment the session started waiting for it, and message content must keep up
//! `min_data_rate` (after `data_rate_grace`), besides arriving at least every `timeout_data`. While waiting
//! for a command the session may be evicted by the listener to admit a new client when every slot is taken.

mod auth;
mod transfer;

use super::config::SessionConfig;
use super::handler::{Handler, ListenerMode, SessionInfo};
use super::limits::IdleSlot;
use super::stream::MaybeTls;
use crate::proto::command::{Body, Command, MailParams};
use crate::proto::data::BdatReceiver;
use crate::proto::line::{LineEvent, LineReader};
use crate::Reply;
use bytes::BytesMut;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;
use tokio::time::Instant;

/// Why a session ended other than by QUIT, shutdown or our own decision to close.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SessionError {
    /// Reading or writing the connection failed; nothing to do but log it.
    #[error("connection: {0}")]
    Io(#[from] std::io::Error),
    /// The TLS handshake failed (STARTTLS or smtps) or TLS was asked for without a configured acceptor.
    #[error("TLS handshake: {0}")]
    Tls(std::io::Error),
}

/// Whether the session goes on after a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flow {
    Continue,
    Close,
}

/// What waiting for input gave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Input {
    More,
    Eof,
    Timeout,
    /// Message content came in slower than `min_data_rate`.
    TooSlow,
    Shutdown,
    /// The listener needs this session's slot for a new client.
    Evicted,
}

/// What the session waits for, and until when.
#[derive(Debug, Clone, Copy)]
enum Wait {
    /// A command line, complete by this instant (shutdown and eviction end the wait).
    Command(Instant),
    /// Message content: the next bytes by `next`, and enough of them to keep up the minimum rate by `rate`.
    Content { next: Instant, rate: Instant },
}

/// A mail transaction: exists only from MAIL FROM on, so "RCPT before MAIL" cannot be represented.
#[derive(Debug)]
struct Txn {
    sender: String,
    params: MailParams,
    rcpts: Vec<String>,
}

/// The dialogue state; `C` is where a message's content goes while it arrives.
#[derive(Debug)]
enum State<C> {
    /// No EHLO/HELO yet (also right after STARTTLS).
    Connected,
    /// Greeted, no transaction.
    Greeted,
    /// MAIL FROM accepted; RCPTs being collected.
    Mail(Txn),
    /// Receiving a message in BDAT chunks: DATA and RCPT are out of sequence now.
    Bdat(Box<transfer::Incoming<C>>, BdatReceiver),
}

/// An SMTP server session over any stream (TCP, TLS, or an in-memory duplex in tests).
pub struct Session<S, H: Handler> {
    stream: MaybeTls<S>,
    inbuf: BytesMut,
    outbuf: Vec<u8>,
    lines: LineReader,
    state: State<H::Content>,
    info: SessionInfo,
    /// EHLO (not HELO) was used: extensions were announced.
    esmtp: bool,
    /// Bad commands so far; at `max_errors` the session ends.
    errors: u32,
    config: Arc<SessionConfig>,
    handler: Arc<H>,
    shutdown: watch::Receiver<bool>,
    /// Set by the listener: lets it evict this session while it waits for a command.
    idle: Option<IdleSlot>,
}

impl<S, H> Session<S, H>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
    H: Handler,
{
    /// A session for a connection from `peer` to `local`. In [`ListenerMode::Smtps`] the TLS handshake is done
    /// first by [`Session::run`]. `shutdown` turning `true` ends the session at the next command boundary
    /// with `421 4.3.2` (a message being received is allowed to finish).
    pub fn new(
        stream: S,
        peer: SocketAddr,
        local: SocketAddr,
        mode: ListenerMode,
        config: Arc<SessionConfig>,
        handler: Arc<H>,
        shutdown: watch::Receiver<bool>,
    ) -> Session<S, H> {
        Session {
            stream: MaybeTls::Plain(stream),
            inbuf: BytesMut::with_capacity(8192),
            outbuf: Vec::with_capacity(1024),
            lines: LineReader::new(config.max_command_line),
            state: State::Connected,
            info: SessionInfo { peer, local, helo: None, tls: false, auth_user: None, mode },
            esmtp: false,
            errors: 0,
            config,
            handler,
            shutdown,
            idle: None,
        }
    }

    /// Let `slot`'s listener close this session while it waits for a command, to admit a new client.
    pub fn with_idle_slot(mut self, slot: IdleSlot) -> Self {
        self.idle = Some(slot);
        self
    }

    /// Runs the session to its end. `Ok` for every orderly end (QUIT, client gone, timeout, error limit,
    /// shutdown), `Err` when the connection itself failed.
    pub async fn run(mut self) -> Result<(), SessionError> {
        let result = self.run_inner().await;
        let flushed = self.flush().await;
        let _ = self.stream.shutdown().await;
        result.and(flushed)
    }

    async fn run_inner(&mut self) -> Result<(), SessionError> {
        if self.info.mode == ListenerMode::Smtps {
            self.tls_handshake().await?;
        }
        if let Err(reply) = self.handler.on_connect(&self.info) {
            self.reply(&reply);
            return Ok(());
        }
        let delay = self.handler.greeting_delay(&self.info);
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        let greeting = Reply::basic(220, format!("{} ESMTP", self.config.hostname));
        self.reply(&greeting);
        let mut deadline = Instant::now() + self.config.timeout_command;
        loop {
            while let Some(event) = self.lines.next(&mut self.inbuf) {
                if *self.shutdown.borrow() {
                    self.reply(&Reply::SHUTTING_DOWN);
                    return Ok(());
                }
                let flow = match event {
                    LineEvent::TooLong => self.error(Reply::fixed(500, 5, 5, 2, "Error: line too long")),
                    LineEvent::Line(line) => {
                        if let Some(slot) = self.idle.as_mut() {
                            slot.set_spoke();
                        }
                        self.command(&line).await?
                    }
                };
                if flow == Flow::Close {
                    return Ok(());
                }
                // The next command's deadline runs from the end of this one, however its bytes trickle in.
                deadline = Instant::now() + self.config.timeout_command;
            }
            let input = self.read_more(Wait::Command(deadline)).await?;
            if self.end_on(input) == Flow::Close {
                return Ok(());
            }
        }
    }

    async fn command(&mut self, line: &[u8]) -> Result<Flow, SessionError> {
        let command = match Command::parse(line) {
            Ok(c) => c,
            Err(e) => {
                let flow = self.error(e.reply());
                // A BDAT we cannot parse has a chunk we cannot skip: its bytes would be read as commands.
                let bdat = line.len() >= 4 && line[..4].eq_ignore_ascii_case(b"BDAT");
                return Ok(if bdat { Flow::Close } else { flow });
            }
        };
        Ok(match command {
            Command::Ehlo(name) => self.ehlo(name, true),
            Command::Helo(name) => self.ehlo(name, false),
            Command::Mail { sender, params } => self.mail(sender, params),
            Command::Rcpt { recipient } => self.rcpt(recipient),
            Command::Data => self.data().await?,
            Command::Bdat { size, last } => self.bdat(size, last).await?,
            Command::Rset => {
                if !matches!(self.state, State::Connected) {
                    self.state = State::Greeted;
                }
                self.reply(&Reply::OK)
            }
            Command::Noop => self.reply(&Reply::OK),
            Command::Quit => {
                self.reply(&Reply::fixed(221, 2, 0, 0, "Bye"));
                Flow::Close
            }
            Command::Vrfy => self.reply(&Reply::fixed(252, 2, 5, 0, "Cannot VRFY user, but will accept message")),
            Command::Help => self.reply(&Reply::fixed(214, 2, 0, 0, "See RFC 5321")),
            Command::StartTls => self.starttls().await?,
            Command::Auth { mechanism, initial_response } => self.auth(&mechanism, initial_response).await?,
        })
    }

    fn ehlo(&mut self, name: String, esmtp: bool) -> Flow {
        self.state = State::Greeted;
        self.esmtp = esmtp;
        self.info.helo = Some(name);
        let host = &self.config.hostname;
        if !esmtp {
            return self.reply(&Reply::basic(250, host.clone()));
        }
        let mut text = format!(
            "{host}\nPIPELINING\nSIZE {}\n8BITMIME\nSMTPUTF8\nENHANCEDSTATUSCODES\nCHUNKING",
            self.config.max_message_size
        );
        if self.config.tls.is_some() && !self.info.tls {
            text.push_str("\nSTARTTLS");
        }
        if self.auth_offered() {
            text.push_str("\nAUTH PLAIN LOGIN");
        }
        self.reply(&Reply::basic(250, text))
    }

    fn auth_offered(&self) -> bool {
        self.handler.auth_enabled() && (self.info.tls || self.config.allow_plaintext_auth)
    }

    fn mail(&mut self, sender: String, params: MailParams) -> Flow {
        match self.state {
            State::Connected => return self.error(Reply::fixed(503, 5, 5, 1, "Error: send HELO/EHLO first")),
            State::Mail(_) | State::Bdat(..) => {
                return self.error(Reply::fixed(503, 5, 5, 1, "Error: nested MAIL command"))
            }
            State::Greeted => {}
        }
        if self.info.mode == ListenerMode::Submission && self.info.auth_user.is_none() {
            return self.error(Reply::fixed(530, 5, 7, 0, "Authentication required"));
        }
        if params.body == Some(Body::BinaryMime) {
            return self.error(Reply::fixed(504, 5, 5, 4, "BODY=BINARYMIME not supported"));
        }
        if params.size.is_some_and(|s| s > self.config.max_message_size) {
            return self.reply(&Reply::TOO_BIG);
        }
        if !params.smtputf8 && !sender.is_ascii() {
            return self.error(Reply::fixed(553, 5, 6, 7, "Must declare SMTPUTF8 to send UTF-8 addresses"));
        }
        if let Err(reply) = self.handler.on_mail(&self.info, &sender) {
            return self.reply(&reply);
        }
        self.state = State::Mail(Txn { sender, params, rcpts: Vec::new() });
        self.reply(&Reply::fixed(250, 2, 1, 0, "Ok"))
    }

    fn rcpt(&mut self, recipient: String) -> Flow {
        let txn = match &mut self.state {
            State::Mail(txn) => txn,
            State::Bdat(..) => return self.error(Reply::fixed(503, 5, 5, 1, "Error: RCPT after BDAT")),
            State::Connected | State::Greeted => {
                return self.error(Reply::fixed(503, 5, 5, 1, "Error: need MAIL command"))
            }
        };
        let reply = if txn.rcpts.len() >= self.config.max_recipients {
            Reply::fixed(452, 4, 5, 3, "Error: too many recipients")
        } else if !txn.params.smtputf8 && !recipient.is_ascii() {
            Reply::fixed(553, 5, 6, 7, "Must declare SMTPUTF8 to send UTF-8 addresses")
        } else {
            match self.handler.on_rcpt(&self.info, &txn.sender, &recipient) {
                Ok(()) => {
                    txn.rcpts.push(recipient);
                    Reply::fixed(250, 2, 1, 5, "Ok")
                }
                Err(reply) => reply,
            }
        };
        self.reply(&reply)
    }

    /// Queues a reply; it goes out with the next flush.
    fn reply(&mut self, reply: &Reply) -> Flow {
        reply.write_to(&mut self.outbuf);
        Flow::Continue
    }

    /// Queues the reply to a bad command and counts it; at `max_errors` the session ends with `421 4.7.0`.
    fn error(&mut self, reply: Reply) -> Flow {
        self.reply(&reply);
        self.errors += 1;
        if self.errors >= self.config.max_errors {
            let host = &self.config.hostname;
            let reply = Reply::new(421, (4, 7, 0), format!("{host} Error: too many errors"));
            self.reply(&reply);
            return Flow::Close;
        }
        Flow::Continue
    }

    /// Reacts to an end of input: timeout and shutdown get their `421`; in every case the session ends.
    fn end_on(&mut self, input: Input) -> Flow {
        match input {
            Input::More => return Flow::Continue,
            Input::Eof => {}
            Input::Timeout => {
                metrics::counter!("mta_smtp_timeouts_total", "kind" => "deadline").increment(1);
                let host = &self.config.hostname;
                let reply = Reply::new(421, (4, 4, 2), format!("{host} Error: timeout exceeded"));
                self.reply(&reply);
            }
            Input::TooSlow => {
                metrics::counter!("mta_smtp_timeouts_total", "kind" => "min_data_rate").increment(1);
                let host = &self.config.hostname;
                let reply = Reply::new(421, (4, 4, 2), format!("{host} Error: data transfer too slow"));
                self.reply(&reply);
            }
            Input::Shutdown => {
                self.reply(&Reply::SHUTTING_DOWN);
            }
            Input::Evicted => {
                metrics::counter!("mta_smtp_idle_evictions_total").increment(1);
                let host = &self.config.hostname;
                let reply = Reply::new(421, (4, 7, 0), format!("{host} Idle too long, closing to admit other clients"));
                self.reply(&reply);
            }
        }
        Flow::Close
    }

    async fn flush(&mut self) -> Result<(), SessionError> {
        if self.outbuf.is_empty() {
            return Ok(());
        }
        let write = async {
            self.stream.write_all(&self.outbuf).await?;
            self.stream.flush().await
        };
        match tokio::time::timeout(self.config.timeout_command, write).await {
            Ok(result) => result?,
            Err(_) => return Err(std::io::Error::from(std::io::ErrorKind::TimedOut).into()),
        }
        self.outbuf.clear();
        Ok(())
    }

    /// Flushes pending replies, then waits for more input, the deadline, or (for commands) shutdown or
    /// eviction.
    async fn read_more(&mut self, wait: Wait) -> Result<Input, SessionError> {
        self.flush().await?;
        if self.inbuf.capacity() - self.inbuf.len() < 4096 {
            self.inbuf.reserve(16 * 1024);
        }
        let (deadline, late) = match wait {
            Wait::Command(at) => (at, Input::Timeout),
            Wait::Content { next, rate } if rate < next => (rate, Input::TooSlow),
            Wait::Content { next, .. } => (next, Input::Timeout),
        };
        let command = matches!(wait, Wait::Command(_));
        if command {
            if let Some(slot) = self.idle.as_mut() {
                slot.set_idle();
            }
        }
        let read = tokio::time::timeout_at(deadline, self.stream.read_buf(&mut self.inbuf));
        let shutdown = &mut self.shutdown;
        let idle = &self.idle;
        let evicted = async {
            match (idle, command) {
                (Some(slot), true) => slot.evicted().await,
                _ => std::future::pending().await,
            }
        };
        let outcome = tokio::select! {
            r = read => r,
            () = wait_for_shutdown(shutdown), if command => return Ok(Input::Shutdown),
            () = evicted => return Ok(Input::Evicted),
        };
        if let Some(slot) = self.idle.as_mut() {
            slot.set_busy();
        }
        match outcome {
            Err(_) => Ok(late),
            Ok(Ok(0)) => Ok(Input::Eof),
            Ok(Ok(_)) => Ok(Input::More),
            Ok(Err(e)) => Err(e.into()),
        }
    }

    /// The wait for message content that started at `started` and has brought `received` octets so far.
    fn content_wait(&self, started: Instant, received: u64) -> Wait {
        let next = Instant::now() + self.config.timeout_data;
        let rate = match self.config.min_data_rate {
            0 => next,
            per_second => {
                let earned = Duration::from_secs_f64(received as f64 / per_second as f64);
                started + self.config.data_rate_grace + earned
            }
        };
        Wait::Content { next, rate }
    }
}

/// Resolves once shutdown is signalled; never if the sender is gone without signalling.
async fn wait_for_shutdown(rx: &mut watch::Receiver<bool>) {
    if rx.wait_for(|stop| *stop).await.is_err() {
        std::future::pending::<()>().await;
    }
}
