//! Typed delivery responses: the reply (or our own reason) behind each recipient's outcome, kept as code,
//! enhanced code and text from the SMTP client to results, events and DSNs, and formatted once, at the edge.
//!
//! Bounce classification, response-driven shaping and TLS reporting read the parts, never our own text.

use std::fmt;

use mta_smtp::client::{ClientError, Stage};
use mta_smtp::{EnhancedCode, Reply};

/// Who decided a response.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Origin {
    /// The receiving server answered it.
    Remote,
    /// We decided it ourselves (DNS failure, connection failure, timeout, expiry, routing).
    Local,
}

/// The reply behind a delivery outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// Basic reply code (RFC 5321 §4.2); for our own reasons, the code a server would have used.
    pub code: u16,
    /// Enhanced status code (RFC 3463), when the reply carried one (or we chose one).
    pub enhanced: Option<EnhancedCode>,
    /// Text: the lines of a multi-line reply joined by a space, control characters replaced by spaces.
    pub text: String,
    /// Where in the SMTP session it was decided (`None`: before any connection, e.g. DNS or expiry).
    pub stage: Option<Stage>,
    /// Who decided it.
    pub origin: Origin,
    /// When a TLS policy made the attempt fail: the RFC 8460 result type (for TLS reporting and metrics).
    pub tls_failure: Option<crate::tls_policy::TlsResultType>,
}

/// Longest text kept from a reply: a hostile server may send 128 lines of 4 KiB.
const MAX_TEXT: usize = 2048;

fn one_line(text: &str) -> String {
    let mut out = String::with_capacity(text.len().min(MAX_TEXT));
    for c in text.chars() {
        if out.len() + c.len_utf8() > MAX_TEXT {
            break;
        }
        out.push(if c.is_control() { ' ' } else { c });
    }
    out
}

impl Response {
    /// The receiving server's `reply`, given at `stage`.
    pub fn remote(reply: &Reply, stage: Stage) -> Response {
        Response {
            code: reply.code,
            enhanced: reply.enhanced,
            text: one_line(&reply.text),
            stage: Some(stage),
            origin: Origin::Remote,
            tls_failure: None,
        }
    }

    /// Our own reason, with the codes a server would have used.
    pub fn local(code: u16, enhanced: (u8, u16, u16), text: impl Into<String>) -> Response {
        Response {
            code,
            enhanced: Some(EnhancedCode { class: enhanced.0, subject: enhanced.1, detail: enhanced.2 }),
            text: one_line(&text.into()),
            stage: None,
            origin: Origin::Local,
            tls_failure: None,
        }
    }

    /// A client error: the server's reply behind it when there is one, else a local transient reason naming
    /// the error (`451 4.4.1` for connection trouble, `451 4.4.2` for a lost connection, `554 5.3.4`/`553 5.6.7`
    /// for what no retry can fix).
    pub fn from_error(e: &ClientError) -> Response {
        let stage = error_stage(e);
        if let Some(reply) = e.reply() {
            return Response::remote(reply, stage.unwrap_or(Stage::Mail));
        }
        let (code, enhanced) = match e {
            ClientError::TooLarge { .. } => (552, (5, 3, 4)),
            ClientError::SmtpUtf8NotSupported => (553, (5, 6, 7)),
            ClientError::InvalidAddress(_) => (553, (5, 1, 7)),
            // RFC 3463 X.7.5 "cryptographic failure": transient, a policy failure never bounces on its own.
            ClientError::Certificate { .. } => (451, (4, 7, 5)),
            ClientError::Timeout { .. } | ClientError::Io { .. } | ClientError::Closed { .. } => (451, (4, 4, 2)),
            _ => (451, (4, 4, 1)),
        };
        let tls_failure = crate::tls_policy::TlsResultType::from_client_error(e);
        Response { stage, tls_failure, ..Response::local(code, enhanced, e.to_string()) }
    }

    /// 2xx.
    pub fn is_positive(&self) -> bool {
        (200..300).contains(&self.code)
    }

    /// `421`, or `451 4.7.x` (RFC 3463 "security or policy status"): the receiver asks us to slow down.
    pub fn is_throttle(&self) -> bool {
        self.origin == Origin::Remote
            && (self.code == 421 || (self.code == 451 && self.enhanced.is_some_and(|e| e.class == 4 && e.subject == 7)))
    }

    /// This response with `prefix` put before its text (e.g. `Message expired; last error: …`).
    pub fn with_prefix(mut self, prefix: &str) -> Response {
        self.text = one_line(&format!("{prefix}{}", self.text));
        self
    }
}

/// Where a client error happened, when the error says so.
fn error_stage(e: &ClientError) -> Option<Stage> {
    match e {
        ClientError::Connect { .. } => Some(Stage::Connect),
        ClientError::Timeout { stage } | ClientError::Io { stage, .. } | ClientError::Closed { stage } => Some(*stage),
        ClientError::GreetingRejected(_) => Some(Stage::Greeting),
        ClientError::HeloRejected(_) => Some(Stage::Ehlo),
        ClientError::Tls(_) | ClientError::TlsRequired => Some(Stage::StartTls),
        ClientError::Certificate { .. } => Some(Stage::TlsHandshake),
        ClientError::MessageRejected(_)
        | ClientError::TooLarge { .. }
        | ClientError::SmtpUtf8NotSupported
        | ClientError::InvalidAddress(_) => Some(Stage::Mail),
        _ => None,
    }
}

/// The one text form: `<code> <enhanced code> <text>` (the form events, message status and response rules use).
impl fmt::Display for Response {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.code)?;
        if let Some(e) = self.enhanced {
            write!(f, " {e}")?;
        }
        if !self.text.is_empty() {
            write!(f, " {}", self.text)?;
        }
        Ok(())
    }
}

/// Serializes a response in its one text form (events and status keep the `"response": "550 5.1.1 …"` string).
impl serde::Serialize for Response {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_once_on_one_line() {
        let r = Reply::new(550, (5, 1, 1), "no such user\nreally");
        let resp = Response::remote(&r, Stage::Rcpt);
        assert_eq!(resp.to_string(), "550 5.1.1 no such user really");
        assert_eq!(resp.stage, Some(Stage::Rcpt));
        assert_eq!(Response::remote(&Reply::basic(250, "ok"), Stage::DataTerm).to_string(), "250 ok");
    }

    #[test]
    fn throttle_replies() {
        assert!(Response::remote(&Reply::new(451, (4, 7, 1), "slow"), Stage::Rcpt).is_throttle());
        assert!(Response::remote(&Reply::basic(421, "bye"), Stage::Mail).is_throttle());
        assert!(!Response::remote(&Reply::new(451, (4, 3, 0), "x"), Stage::Rcpt).is_throttle());
        assert!(!Response::local(421, (4, 4, 1), "ours").is_throttle());
    }

    #[test]
    fn errors_keep_their_stage() {
        let e = ClientError::Timeout { stage: Stage::DataTerm };
        let r = Response::from_error(&e);
        assert_eq!((r.code, r.stage, r.origin), (451, Some(Stage::DataTerm), Origin::Local));
        let e = ClientError::MessageRejected(Reply::new(550, (5, 7, 1), "policy"));
        assert_eq!(Response::from_error(&e).to_string(), "550 5.7.1 policy");
    }

    #[test]
    fn hostile_text_is_capped() {
        let r = Reply::basic(550, "x".repeat(10_000));
        assert!(Response::remote(&r, Stage::Rcpt).text.len() <= MAX_TEXT);
    }
}
