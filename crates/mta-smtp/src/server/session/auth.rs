//! STARTTLS (RFC 3207) and AUTH PLAIN/LOGIN (RFC 4954).

use super::{Flow, Input, Session, SessionError, State};
use crate::proto::line::{LineEvent, LineReader};
use crate::server::handler::Handler;
use crate::server::stream::MaybeTls;
use crate::Reply;
use base64::Engine;
use tokio::io::{AsyncRead, AsyncWrite};

/// RFC 4954 §4: a SASL response line may be up to 12288 octets.
const SASL_MAX_LINE: usize = 12288;

/// One client response in a SASL exchange.
enum Response {
    Value(Vec<u8>),
    /// The reply (and whether to close) is already queued.
    Ended(Flow),
}

impl<S, H> Session<S, H>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
    H: Handler,
{
    pub(super) async fn starttls(&mut self) -> Result<Flow, SessionError> {
        if self.config.tls.is_none() {
            return Ok(self.error(Reply::fixed(502, 5, 5, 1, "Error: STARTTLS not available")));
        }
        if self.info.tls {
            return Ok(self.error(Reply::fixed(503, 5, 5, 1, "Error: TLS already active")));
        }
        if matches!(self.state, State::Mail(_) | State::Bdat(..)) {
            return Ok(self.error(Reply::fixed(503, 5, 5, 1, "Error: MAIL transaction in progress")));
        }
        self.reply(&Reply::fixed(220, 2, 0, 0, "Ready to start TLS"));
        self.flush().await?;
        // STARTTLS injection (CVE-2011-0411 class): whatever the client sent after STARTTLS in plaintext is
        // dropped unanswered, never read as commands of the TLS session.
        self.inbuf.clear();
        self.lines.reset();
        self.tls_handshake().await?;
        self.state = State::Connected;
        self.esmtp = false;
        self.info.helo = None;
        self.info.auth_user = None;
        Ok(Flow::Continue)
    }

    /// Replaces the plaintext stream by TLS over it.
    pub(super) async fn tls_handshake(&mut self) -> Result<(), SessionError> {
        let Some(acceptor) = self.config.tls.clone() else {
            return Err(SessionError::Tls(std::io::Error::other("no TLS certificate configured")));
        };
        let MaybeTls::Plain(plain) = std::mem::replace(&mut self.stream, MaybeTls::Closed) else {
            return Err(SessionError::Tls(std::io::Error::other("TLS already active")));
        };
        match tokio::time::timeout(self.config.timeout_command, acceptor.accept(plain)).await {
            Ok(Ok(tls)) => {
                self.stream = MaybeTls::Tls(Box::new(tls));
                self.info.tls = true;
                Ok(())
            }
            Ok(Err(e)) => Err(SessionError::Tls(e)),
            Err(_) => Err(SessionError::Tls(std::io::ErrorKind::TimedOut.into())),
        }
    }

    pub(super) async fn auth(&mut self, mechanism: &str, initial: Option<String>) -> Result<Flow, SessionError> {
        if !self.handler.auth_enabled() {
            return Ok(self.error(Reply::fixed(503, 5, 5, 1, "Error: authentication not enabled")));
        }
        if !self.auth_offered() {
            return Ok(self.error(Reply::fixed(
                538,
                5,
                7,
                11,
                "Encryption required for requested authentication mechanism",
            )));
        }
        match self.state {
            State::Connected => return Ok(self.error(Reply::fixed(503, 5, 5, 1, "Error: send EHLO first"))),
            State::Mail(_) | State::Bdat(..) => {
                return Ok(self.error(Reply::fixed(503, 5, 5, 1, "Error: MAIL transaction in progress")))
            }
            State::Greeted => {}
        }
        if self.info.auth_user.is_some() {
            return Ok(self.error(Reply::fixed(503, 5, 5, 1, "Error: already authenticated")));
        }
        let (user, password) = match mechanism {
            "PLAIN" => {
                let response = match self.response(initial, "").await? {
                    Response::Value(v) => v,
                    Response::Ended(flow) => return Ok(flow),
                };
                let mut parts = response.split(|b| *b == 0);
                let (Some(authzid), Some(user), Some(password), None) =
                    (parts.next(), parts.next(), parts.next(), parts.next())
                else {
                    return Ok(self.error(Reply::fixed(501, 5, 5, 2, "Error: malformed PLAIN response")));
                };
                if !authzid.is_empty() && authzid != user {
                    return Ok(self.error(invalid_credentials()));
                }
                (user.to_vec(), password.to_vec())
            }
            "LOGIN" => {
                let user = match self.response(initial, "VXNlcm5hbWU6").await? {
                    Response::Value(v) => v,
                    Response::Ended(flow) => return Ok(flow),
                };
                let password = match self.response(None, "UGFzc3dvcmQ6").await? {
                    Response::Value(v) => v,
                    Response::Ended(flow) => return Ok(flow),
                };
                (user, password)
            }
            _ => return Ok(self.error(Reply::fixed(504, 5, 5, 4, "Error: unsupported authentication mechanism"))),
        };
        let (Ok(user), Ok(password)) = (String::from_utf8(user), String::from_utf8(password)) else {
            return Ok(self.error(invalid_credentials()));
        };
        if self.handler.authenticate(&user, &password).await {
            self.info.auth_user = Some(user);
            Ok(self.reply(&Reply::fixed(235, 2, 7, 0, "Authentication successful")))
        } else {
            Ok(self.error(invalid_credentials()))
        }
    }

    /// The initial response if given, else a `334 challenge` and the client's answer; base64-decoded.
    async fn response(&mut self, initial: Option<String>, challenge: &'static str) -> Result<Response, SessionError> {
        let line = match initial {
            Some(text) => text.into_bytes(),
            None => {
                self.reply(&Reply::basic(334, challenge));
                let mut reader = LineReader::new(SASL_MAX_LINE);
                let deadline = tokio::time::Instant::now() + self.config.timeout_command;
                loop {
                    match reader.next(&mut self.inbuf) {
                        Some(LineEvent::Line(line)) => break line.to_vec(),
                        Some(LineEvent::TooLong) => {
                            let reply = Reply::fixed(500, 5, 5, 6, "Error: authentication exchange line too long");
                            return Ok(Response::Ended(self.error(reply)));
                        }
                        None => {
                            let input = self.read_more(super::Wait::Command(deadline)).await?;
                            if input != Input::More {
                                return Ok(Response::Ended(self.end_on(input)));
                            }
                        }
                    }
                }
            }
        };
        if line == b"*" {
            return Ok(Response::Ended(self.error(Reply::fixed(501, 5, 0, 0, "Authentication cancelled"))));
        }
        if line == b"=" {
            return Ok(Response::Value(Vec::new()));
        }
        match base64::engine::general_purpose::STANDARD.decode(&line) {
            Ok(v) => Ok(Response::Value(v)),
            Err(_) => Ok(Response::Ended(self.error(Reply::fixed(501, 5, 5, 2, "Error: invalid base64 data")))),
        }
    }
}

fn invalid_credentials() -> Reply {
    Reply::fixed(535, 5, 7, 8, "Authentication credentials invalid")
}
