//! Arbitrary bytes as the JSON body of `POST /api/v1/messages`: raw and structured content are checked and
//! built into message bytes without panicking, and the message is well-formed with no injected header. The
//! same function runs on stable in crates/mta-server/tests/proptests.rs.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| mta_server::fuzzing::http_inject(data));
