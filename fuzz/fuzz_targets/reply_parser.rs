//! Arbitrary bytes from a hostile receiving server into the delivery client's `ReplyParser`, fed in chunks
//! whose size comes from the first byte: must never panic, never claim more bytes than given, and yield the
//! same replies whatever the split. The same function runs on stable in crates/mta-smtp/tests/proptests.rs.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let chunk = data.first().map_or(1, |b| usize::from(*b) + 1);
    mta_smtp::fuzzing::reply_parser(data, chunk);
});
