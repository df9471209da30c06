//! Arbitrary bytes as the TOML config file: parsing and validation must return errors, never panic, and a
//! valid config must print as TOML that loads back the same. The same function runs on stable in
//! crates/mta-server/tests/proptests.rs.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| mta_server::fuzzing::config(data));
