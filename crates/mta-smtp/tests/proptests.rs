//! Property tests: the fuzz targets' logic on stable (see fuzz/README.md), plus a dot-stuffing round trip.

use mta_smtp::proto::data::{dot_stuff, BdatReceiver, DataReceiver, Progress};
use mta_smtp::proto::line::{LineEvent, LineReader};
use mta_smtp::Command;
use proptest::prelude::*;

/// What fuzz/fuzz_targets/command_parser.rs runs.
fn command_parser(data: &[u8]) {
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

/// What fuzz/fuzz_targets/data_reader.rs runs: the input split at `split`, fed to both receivers.
fn data_reader(data: &[u8], split: usize) {
    let split = split.min(data.len());
    let mut r = DataReceiver::new(998, 4096);
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
            assert!(m.len() <= 4096);
        }
    }
    let mut b = BdatReceiver::new(998, 4096);
    b.start_chunk(split as u64);
    let _ = b.feed(data);
    b.start_chunk((data.len() - split) as u64);
    let _ = b.feed(&data[split..]);
    let _ = b.finish();
}

fn content_line() -> impl Strategy<Value = Vec<u8>> {
    // Any bytes but CR and LF, dots frequent, up to the line limit.
    prop::collection::vec(
        prop_oneof![Just(b'.'), any::<u8>().prop_filter("no CR/LF", |b| *b != b'\r' && *b != b'\n')],
        0..200,
    )
}

proptest! {
    #[test]
    fn command_parse_never_panics(data in prop::collection::vec(any::<u8>(), 0..600)) {
        command_parser(&data);
    }

    #[test]
    fn command_parse_smtp_like_never_panics(s in "(MAIL FROM:|RCPT TO:|BDAT |AUTH |EHLO )[<>@\\[\\]\":.,a-zA-Z0-9= \\\\-]{0,80}") {
        command_parser(s.as_bytes());
    }

    #[test]
    fn receivers_never_panic(data in prop::collection::vec(prop_oneof![Just(b'\r'), Just(b'\n'), Just(b'.'), any::<u8>()], 0..2000), split in any::<usize>()) {
        data_reader(&data, split);
    }

    #[test]
    fn dot_stuffing_round_trip(lines in prop::collection::vec(content_line(), 0..20), splits in prop::collection::vec(any::<usize>(), 0..4)) {
        let mut content = Vec::new();
        for l in &lines {
            content.extend_from_slice(l);
            content.extend_from_slice(b"\r\n");
        }
        let mut wire = Vec::new();
        dot_stuff(&content, &mut wire);
        wire.extend_from_slice(b"NEXT COMMAND\r\n");
        let mut cuts: Vec<usize> = splits.iter().map(|s| s % (wire.len() + 1)).collect();
        cuts.push(0);
        cuts.push(wire.len());
        cuts.sort_unstable();
        let mut r = DataReceiver::new(998, 1 << 20);
        let mut end = None;
        for w in cuts.windows(2) {
            if let Progress::Done { consumed } = r.feed(&wire[w[0]..w[1]]) {
                end = Some(w[0] + consumed);
                break;
            }
        }
        prop_assert_eq!(end, Some(wire.len() - b"NEXT COMMAND\r\n".len()));
        prop_assert_eq!(r.finish().ok().map(|b| b.to_vec()), Some(content.clone()));
        // The same content in BDAT chunks comes back unchanged too.
        let mut b = BdatReceiver::new(998, 1 << 20);
        let mid = content.len() / 2;
        for part in [&content[..mid], &content[mid..]] {
            b.start_chunk(part.len() as u64);
            prop_assert_eq!(b.feed(part), Progress::Done { consumed: part.len() });
        }
        prop_assert_eq!(b.finish().ok().map(|b| b.to_vec()), Some(content));
    }
}
