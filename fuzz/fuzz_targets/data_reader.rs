//! Arbitrary bytes into the DATA and BDAT receivers, split at a point taken from the input: must never panic,
//! never claim more bytes than given, never return more than the size cap.
//! The same logic runs on stable in crates/mta-smtp/tests/proptests.rs.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mta_smtp::proto::data::{BdatReceiver, DataReceiver, Progress};

fuzz_target!(|data: &[u8]| {
    let split = data.first().map_or(0, |b| usize::from(*b) * data.len() / 256);
    let mut r = DataReceiver::new(998, 1 << 20);
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
            assert!(m.len() <= 1 << 20);
        }
    }
    let mut b = BdatReceiver::new(998, 1 << 20);
    b.start_chunk(split as u64);
    let _ = b.feed(data);
    b.start_chunk((data.len() - split) as u64);
    let _ = b.feed(&data[split..]);
    let _ = b.finish();
});
