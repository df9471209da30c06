//! The fuzz targets' logic, shared by `fuzz/` (cargo-fuzz, nightly) and the property tests (stable, CI), so both
//! exercise exactly the same code. Not a stable API.

use crate::record::{MessageRecord, RECORD_FORMAT_JSON, RECORD_FORMAT_VERSION};

/// Arbitrary bytes as a stored record (a corrupt or hostile disk): decoding must never panic, and a record that
/// decodes re-encodes to bytes that decode to the same record. The bytes are tried as they are, and again with
/// their checksum made right (as payload after a 5-byte header, in both formats), since random bytes almost
/// never carry a valid CRC and would otherwise never reach the payload decoders.
pub fn spool_record(data: &[u8]) {
    check(data);
    let payload = data.get(5..).unwrap_or(data);
    for version in [RECORD_FORMAT_VERSION, RECORD_FORMAT_JSON] {
        check(&with_header(version, payload));
    }
}

/// `[version][crc32 of payload][payload]`, the record framing.
pub fn with_header(version: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 5);
    out.push(version);
    out.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
    out.extend_from_slice(payload);
    out
}

fn check(bytes: &[u8]) {
    let decoded = MessageRecord::decode(bytes);
    // The start-up survey reads only the body location, by a faster path; it may give up (the spool then
    // counts the record as unknown and keeps every segment), but must never name another location.
    if let (Some(loc), Ok(record)) = (crate::index::body_of(bytes), &decoded) {
        assert_eq!(loc, record.body, "the survey's body location differs from the record's");
    }
    let Ok(record) = decoded else { return };
    let _ = record.is_done();
    let again = MessageRecord::decode(&record.encode());
    assert_eq!(again.as_ref(), Ok(&record), "a decoded record does not survive encode + decode");
    // The JSON form (what version 1 spools hold) round-trips too.
    if let Ok(json) = serde_json::to_vec(&record) {
        assert_eq!(MessageRecord::decode(&with_header(RECORD_FORMAT_JSON, &json)).as_ref(), Ok(&record));
    }
}
