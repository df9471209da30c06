//! Arbitrary bytes as a PROXY protocol v1/v2 header (what a load balancer, or anyone who can reach a
//! proxy-protocol listener, sends first): `parse`, `parse_v1`, `parse_v2` and `read_header` must never panic
//! and must agree. The same function runs on stable in crates/mta-smtp/tests/proptests.rs.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| mta_smtp::fuzzing::proxy_header(data));
