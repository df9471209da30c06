//! Arbitrary bytes into the DATA and BDAT receivers, split at a point taken from the input: must never panic,
//! never claim more bytes than given, never return more than the size cap.
//! The same function runs on stable in crates/mta-smtp/tests/proptests.rs.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let split = data.first().map_or(0, |b| usize::from(*b) * data.len() / 256);
    mta_smtp::fuzzing::data_reader(data, split, 1 << 20);
});
