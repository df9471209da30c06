//! A DSN built from arbitrary replies, recipients, sender and original message (layout in
//! `mta_core::fuzzing::DsnInput::from_bytes`): must never panic and must be well-formed mail (CRLF only,
//! short lines, three parts, valid Status fields). The same function runs on stable in
//! crates/mta-core/tests/proptests.rs.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| mta_core::fuzzing::dsn(&mta_core::fuzzing::DsnInput::from_bytes(data)));
