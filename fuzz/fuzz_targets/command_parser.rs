//! Arbitrary bytes into the command line reader and `Command::parse`: must never panic.
//! The same function runs on stable in crates/mta-smtp/tests/proptests.rs.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| mta_smtp::fuzzing::command_parser(data));
