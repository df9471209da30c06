//! The fuzz targets' logic, shared by `fuzz/` (cargo-fuzz, nightly) and the property tests (stable, CI), so both
//! exercise exactly the same code.

use crate::proto::data::{BdatReceiver, DataReceiver, Progress};
use crate::proto::line::{LineEvent, LineReader};
use crate::Command;

/// Arbitrary bytes into `Command::parse` and the command line reader: must never panic.
pub fn command_parser(data: &[u8]) {
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
}

/// Arbitrary bytes split at `split` into the DATA and BDAT receivers (size cap `max`): must never panic, never
/// claim more bytes than given, never return more than the cap.
pub fn data_reader(data: &[u8], split: usize, max: usize) {
    let split = split.min(data.len());
    let mut r = DataReceiver::new(998, max as u64);
    let mut done = false;
    for part in [&data[..split], &data[split..]] {
        if let Progress::Done { consumed } = r.feed(part) {
            assert!(consumed <= part.len());
            done = true;
            break;
        }
    }
    if done {
        if let Ok(m) = r.finish() {
            assert!(m.len() <= max);
        }
    }
    let mut b = BdatReceiver::new(998, max as u64);
    b.start_chunk(split as u64);
    let _ = b.feed(data);
    b.start_chunk((data.len() - split) as u64);
    let _ = b.feed(&data[split..]);
    let _ = b.finish();
}
