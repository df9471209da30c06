//! The class of a reply no rule matched: from the enhanced status code (RFC 3463) when it agrees with the reply
//! code, else from the reply code (RFC 5321 §4.2.3) and where it was given.

use mta_smtp::client::Stage;

use super::BounceClass;
use crate::{Origin, Response};

/// The class of `r` from its codes alone.
pub fn by_codes(r: &Response) -> BounceClass {
    let permanent = r.code / 100 == 5;
    if !(400..600).contains(&r.code) {
        return BounceClass::Undetermined;
    }
    // A hostile or confused server's `550 4.1.1` says nothing reliable: only an enhanced code of the reply's
    // own class is read.
    if let Some(e) = r.enhanced.filter(|e| u16::from(e.class) == r.code / 100) {
        if let Some(c) = by_enhanced(permanent, e.subject, e.detail) {
            return c;
        }
    }
    match (r.code, r.stage) {
        (552, Some(Stage::DataTerm | Stage::DataBlock)) => BounceClass::TooLarge,
        (552, _) | (452, Some(Stage::Rcpt)) => BounceClass::MailboxFull,
        (550 | 551 | 553, Some(Stage::Rcpt)) => BounceClass::InvalidRecipient,
        (554, Some(Stage::Greeting | Stage::Connect)) => BounceClass::MailBlock,
        _ if permanent => BounceClass::GenericBounce,
        _ => BounceClass::TransientFailure,
    }
}

/// Our own decisions (DNS, connections, expiry, routing), by the codes we chose: our texts quote resolvers and
/// servers, so no text rule should decide them.
pub(super) fn local(r: &Response) -> Option<BounceClass> {
    if r.origin != Origin::Local {
        return None;
    }
    let e = r.enhanced?;
    Some(match (e.subject, e.detail) {
        // DNS failures (`4.4.3`, and `5.1.2` domain not found).
        (4, 3) | (1, 2) => BounceClass::DnsFailure,
        // Null MX: the domain says it takes no mail.
        (1, 10) => BounceClass::InvalidRecipient,
        // No answer, lost connection, queue lifetime over.
        (4, 1) | (4, 2) | (4, 7) => BounceClass::Timeout,
        // Mail loop, invalid route: our configuration.
        (4, 6) | (3, 5) => BounceClass::AdminFailure,
        _ => return None,
    })
}

/// RFC 3463 subjects and details, for the classes that follow from them.
fn by_enhanced(permanent: bool, subject: u16, detail: u16) -> Option<BounceClass> {
    Some(match (subject, detail) {
        // Bad mailbox, bad system, mailbox moved, null MX.
        (1, 1 | 2 | 3 | 4 | 6 | 10) if permanent => BounceClass::InvalidRecipient,
        // Our sender's address refused.
        (1, 7 | 8) => BounceClass::MailBlock,
        // Mailbox disabled: for good when permanent.
        (2, 1) if permanent => BounceClass::InvalidRecipient,
        (2, 1) => BounceClass::SoftBounce,
        (2, 2) | (3, 1) => BounceClass::MailboxFull,
        (2, 3) | (3, 4) => BounceClass::TooLarge,
        (4, 1 | 2 | 7) => BounceClass::Timeout,
        (4, 3 | 4) => BounceClass::DnsFailure,
        (7, 1) if !permanent => BounceClass::TransientFailure,
        (7, _) if permanent => BounceClass::MailBlock,
        (6, _) if permanent => BounceClass::GenericBounce,
        _ if !permanent => BounceClass::TransientFailure,
        _ => return None,
    })
}
