//! Arbitrary bytes as a stored envelope record (a corrupt disk), as they are and with a valid checksum in
//! both formats (postcard and JSON): decoding must never panic, and what decodes must re-encode and decode
//! equal. The same function runs on stable in crates/mta-spool/tests/proptests.rs.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| mta_spool::fuzzing::spool_record(data));
