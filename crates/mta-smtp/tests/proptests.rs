//! Property tests: the fuzz targets' logic on stable (see fuzz/README.md), plus a dot-stuffing round trip.

use mta_smtp::proto::data::{dot_stuff, BdatReceiver, DataReceiver, Progress};
use proptest::prelude::*;

use mta_smtp::fuzzing::command_parser;

/// What fuzz/fuzz_targets/data_reader.rs runs (with a smaller cap so the cap is reached).
fn data_reader(data: &[u8], split: usize) {
    mta_smtp::fuzzing::data_reader(data, split, 4096);
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
