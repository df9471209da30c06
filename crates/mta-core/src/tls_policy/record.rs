//! The `_mta-sts.<domain>` TXT record (RFC 8461 §3.1): `v=STSv1; id=<1-32 alphanumerics>;`.

/// The policy id announced in DNS: a change means "fetch the policy again".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StsRecord {
    /// `id=` value (1 to 32 ASCII letters and digits).
    pub id: String,
}

/// Why the TXT records give no usable announcement.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// No record starts with `v=STSv1`: the domain publishes no policy.
    #[error("no v=STSv1 record")]
    None,
    /// More than one `v=STSv1` record (§3.1: treat as no policy).
    #[error("several v=STSv1 records")]
    Several,
    /// A `v=STSv1` record without a valid `id`.
    #[error("invalid v=STSv1 record: {0}")]
    Invalid(String),
}

/// Picks the one STSv1 record among a name's TXT records (each given as its joined strings).
pub fn parse_records<'a>(records: impl IntoIterator<Item = &'a [u8]>) -> Result<StsRecord, RecordError> {
    let sts: Vec<&[u8]> = records.into_iter().filter(|r| r.starts_with(b"v=STSv1")).collect();
    match sts.as_slice() {
        [] => Err(RecordError::None),
        [one] => parse_record(one),
        _ => Err(RecordError::Several),
    }
}

/// Parses one record: `;`-separated `key=value` fields, `v` first; unknown fields are ignored (§3.1).
pub fn parse_record(raw: &[u8]) -> Result<StsRecord, RecordError> {
    let text = std::str::from_utf8(raw).map_err(|_| RecordError::Invalid("not UTF-8".into()))?;
    let mut fields = text.split(';').map(str::trim).filter(|f| !f.is_empty());
    if fields.next() != Some("v=STSv1") {
        return Err(RecordError::Invalid("v=STSv1 must come first".into()));
    }
    let mut id = None;
    for field in fields {
        let Some((key, value)) = field.split_once('=') else {
            return Err(RecordError::Invalid(format!("field {field:?} has no '='")));
        };
        if key.trim() == "id" {
            let value = value.trim();
            if value.is_empty() || value.len() > 32 || !value.bytes().all(|b| b.is_ascii_alphanumeric()) {
                return Err(RecordError::Invalid(format!("id {value:?}")));
            }
            id = Some(value.to_string());
        }
    }
    id.map(|id| StsRecord { id }).ok_or_else(|| RecordError::Invalid("no id".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_id_and_ignores_other_records() {
        let recs: Vec<&[u8]> = vec![b"v=spf1 -all", b"v=STSv1; id=20160831085700Z;"];
        assert_eq!(parse_records(recs), Ok(StsRecord { id: "20160831085700Z".into() }));
        assert_eq!(parse_record(b"v=STSv1;id=abc ; ext=1"), Ok(StsRecord { id: "abc".into() }));
    }

    #[test]
    fn refuses_what_is_not_one_valid_record() {
        assert_eq!(parse_records(Vec::<&[u8]>::new()), Err(RecordError::None));
        let two: Vec<&[u8]> = vec![b"v=STSv1; id=a", b"v=STSv1; id=b"];
        assert_eq!(parse_records(two), Err(RecordError::Several));
        assert!(parse_record(b"v=STSv1; id=has-dash").is_err());
        assert!(parse_record(b"v=STSv1;").is_err());
        assert!(parse_record(&[b'v', b'=', 0xff]).is_err());
        assert!(parse_record(b"v=STSv1; id=0123456789012345678901234567890123").is_err());
    }
}
