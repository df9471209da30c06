//! Arbitrary bytes into the command line reader and `Command::parse`: must never panic.
//! The same logic runs on stable in crates/mta-smtp/tests/proptests.rs.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mta_smtp::proto::line::{LineEvent, LineReader};
use mta_smtp::Command;

fuzz_target!(|data: &[u8]| {
    if let Err(e) = Command::parse(data) {
        let _ = e.reply().to_string();
    }
    let mut reader = LineReader::new(512);
    let mut buf = bytes::BytesMut::from(data);
    while let Some(event) = reader.next(&mut buf) {
        if let LineEvent::Line(line) = event {
            let _ = Command::parse(&line);
        }
    }
});
