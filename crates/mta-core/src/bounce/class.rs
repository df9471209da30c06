//! [`BounceClass`]: SparkPost's published bounce classification codes, the numbers events, message status and
//! DSNs carry as `"bounce_class": N`.

use std::fmt;

/// A bounce class (SparkPost's codes; the number is what every output shows).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum BounceClass {
    /// The reply could not be identified.
    Undetermined = 1,
    /// The recipient does not exist (or is disabled for good).
    InvalidRecipient = 10,
    /// A bounce that may succeed later.
    SoftBounce = 20,
    /// The destination could not be resolved.
    DnsFailure = 21,
    /// The mailbox is over quota.
    MailboxFull = 22,
    /// The message is too large for the receiver.
    TooLarge = 23,
    /// The delivery timed out (no answer, or the queue lifetime ran out).
    Timeout = 24,
    /// Failed by our own policy (suppression, routing, configuration).
    AdminFailure = 25,
    /// No recipient could be determined.
    GenericNoRcpt = 30,
    /// Failed for an unspecified reason.
    GenericBounce = 40,
    /// Blocked by the receiver.
    MailBlock = 50,
    /// Blocked as coming from a known spam source (IP or domain reputation, block lists).
    SpamBlock = 51,
    /// Blocked because the content looks like spam.
    SpamContent = 52,
    /// Blocked because of an attachment.
    ProhibitedAttachment = 53,
    /// The receiver does not relay for us.
    RelayingDenied = 54,
    /// An auto-reply (vacation message).
    AutoReply = 60,
    /// Failed for now; will be retried.
    TransientFailure = 70,
    /// A subscribe request.
    Subscribe = 80,
    /// An unsubscribe request.
    Unsubscribe = 90,
    /// A challenge-response probe.
    ChallengeResponse = 100,
}

/// Every class, in code order.
pub const ALL: [BounceClass; 20] = [
    BounceClass::Undetermined,
    BounceClass::InvalidRecipient,
    BounceClass::SoftBounce,
    BounceClass::DnsFailure,
    BounceClass::MailboxFull,
    BounceClass::TooLarge,
    BounceClass::Timeout,
    BounceClass::AdminFailure,
    BounceClass::GenericNoRcpt,
    BounceClass::GenericBounce,
    BounceClass::MailBlock,
    BounceClass::SpamBlock,
    BounceClass::SpamContent,
    BounceClass::ProhibitedAttachment,
    BounceClass::RelayingDenied,
    BounceClass::AutoReply,
    BounceClass::TransientFailure,
    BounceClass::Subscribe,
    BounceClass::Unsubscribe,
    BounceClass::ChallengeResponse,
];

impl BounceClass {
    /// The published number.
    pub fn code(self) -> u8 {
        self as u8
    }

    /// The class with published number `code`, if there is one.
    pub fn from_code(code: u8) -> Option<BounceClass> {
        ALL.iter().copied().find(|c| c.code() == code)
    }

    /// SparkPost's name of the class.
    pub fn name(self) -> &'static str {
        match self {
            BounceClass::Undetermined => "Undetermined",
            BounceClass::InvalidRecipient => "Invalid Recipient",
            BounceClass::SoftBounce => "Soft Bounce",
            BounceClass::DnsFailure => "DNS Failure",
            BounceClass::MailboxFull => "Mailbox Full",
            BounceClass::TooLarge => "Too Large",
            BounceClass::Timeout => "Timeout",
            BounceClass::AdminFailure => "Admin Failure",
            BounceClass::GenericNoRcpt => "Generic Bounce: No RCPT",
            BounceClass::GenericBounce => "Generic Bounce",
            BounceClass::MailBlock => "Mail Block",
            BounceClass::SpamBlock => "Spam Block",
            BounceClass::SpamContent => "Spam Content",
            BounceClass::ProhibitedAttachment => "Prohibited Attachment",
            BounceClass::RelayingDenied => "Relaying Denied",
            BounceClass::AutoReply => "Auto-Reply",
            BounceClass::TransientFailure => "Transient Failure",
            BounceClass::Subscribe => "Subscribe",
            BounceClass::Unsubscribe => "Unsubscribe",
            BounceClass::ChallengeResponse => "Challenge-Response",
        }
    }
}

impl fmt::Display for BounceClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.code(), self.name())
    }
}

/// A class serializes as its number (`"bounce_class": 10`).
impl serde::Serialize for BounceClass {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u8(self.code())
    }
}

/// A class deserializes from its number; unknown numbers are refused.
impl<'de> serde::Deserialize<'de> for BounceClass {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let n = <u8 as serde::Deserialize>::deserialize(d)?;
        BounceClass::from_code(n).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "{n} is not a bounce class (1, 10, 20-25, 30, 40, 50-54, 60, 70, 80, 90, 100)"
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_round_trip_and_unknown_ones_are_refused() {
        for c in ALL {
            assert_eq!(BounceClass::from_code(c.code()), Some(c));
        }
        assert_eq!(BounceClass::from_code(11), None);
        assert_eq!(serde_json::to_string(&BounceClass::SpamBlock).ok().as_deref(), Some("51"));
        assert!(serde_json::from_str::<BounceClass>("26").is_err());
    }
}
