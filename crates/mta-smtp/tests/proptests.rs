//! Property tests: the fuzz targets' logic on stable (see fuzz/README.md), plus a dot-stuffing round trip.

use mta_smtp::proto::data::{dot_stuff, BdatReceiver, DataReceiver, Progress};
use proptest::prelude::*;

use mta_smtp::fuzzing::{command_parser, proxy_header, reply_parser};

/// The v2 signature, for generating binary headers.
const V2: &[u8] = b"\r\n\r\n\0\r\nQUIT\n";

/// Every file of `fuzz/seeds/<target>/`, so the seeds stay valid inputs and CI runs them.
fn seeds(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/seeds").join(target);
    let mut out: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| {
            let path = e.unwrap().path();
            (path.display().to_string(), std::fs::read(&path).unwrap())
        })
        .collect();
    out.sort();
    assert!(!out.is_empty(), "no seeds in {}", dir.display());
    out
}

/// A v1 line from parts that are often valid and sometimes not.
fn proxy_v1() -> impl Strategy<Value = Vec<u8>> {
    let addr = prop_oneof![
        any::<std::net::Ipv4Addr>().prop_map(|a| a.to_string()),
        any::<std::net::Ipv6Addr>().prop_map(|a| a.to_string()),
        "[0-9a-f:.]{0,45}",
    ];
    let port = prop_oneof![any::<u16>().prop_map(|p| p.to_string()), "[0-9]{0,7}"];
    (prop_oneof![Just("TCP4"), Just("TCP6"), Just("UNKNOWN"), Just("UDP4")], addr.clone(), addr, port.clone(), port)
        .prop_map(|(family, src, dst, sport, dport)| {
            format!("PROXY {family} {src} {dst} {sport} {dport}\r\nEHLO x\r\n")
        })
        .prop_map(String::into_bytes)
}

/// A v2 header with a random version/command, family, length and body.
fn proxy_v2() -> impl Strategy<Value = Vec<u8>> {
    (any::<u8>(), any::<u8>(), prop::collection::vec(any::<u8>(), 0..80), any::<bool>()).prop_map(
        |(version_command, family, body, honest_length)| {
            let mut h = V2.to_vec();
            h.push(version_command);
            h.push(family);
            let len = if honest_length { body.len() as u16 } else { (body.len() as u16).wrapping_mul(3) };
            h.extend_from_slice(&len.to_be_bytes());
            h.extend_from_slice(&body);
            h
        },
    )
}

/// Reply lines as servers write them, well-formed or nearly.
fn reply_lines() -> impl Strategy<Value = Vec<u8>> {
    let line = "[2-5][0-9][0-9]([- ]|)([245]\\.[0-9]{1,3}\\.[0-9]{1,3} )?[ -~]{0,40}(\r\n|\n)";
    prop::collection::vec(prop_oneof![8 => line, 1 => "[ -~\r\n]{0,20}"], 0..40).prop_map(|l| l.concat().into_bytes())
}

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
    fn proxy_header_never_panics(data in prop_oneof![proxy_v1(), proxy_v2(), prop::collection::vec(any::<u8>(), 0..200)]) {
        proxy_header(&data);
    }

    #[test]
    fn proxy_header_cut_anywhere(data in prop_oneof![proxy_v1(), proxy_v2()], cut in any::<prop::sample::Index>()) {
        let cut = cut.index(data.len() + 1);
        proxy_header(&data[..cut]);
    }

    #[test]
    fn reply_parser_any_split(data in prop_oneof![reply_lines(), prop::collection::vec(any::<u8>(), 0..600)], chunk in 1usize..300) {
        reply_parser(&data, chunk);
    }

    #[test]
    fn reply_parser_long_lines(code in "[2-5][0-9][0-9]", sep in "[- ]", len in 4000usize..4200, chunk in 1usize..5000) {
        // Around MAX_REPLY_LINE, where the cap and the terminator meet.
        let mut data = format!("{code}{sep}").into_bytes();
        data.resize(len, b'x');
        data.extend_from_slice(b"\r\n250 ok\r\n");
        reply_parser(&data, chunk);
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

#[test]
fn seeds_pass() {
    for (name, data) in seeds("command_parser") {
        eprintln!("{name}");
        command_parser(&data);
    }
    for (name, data) in seeds("data_reader") {
        eprintln!("{name}");
        let split = data.first().map_or(0, |b| usize::from(*b) * data.len() / 256);
        mta_smtp::fuzzing::data_reader(&data, split, 1 << 20);
    }
    for (name, data) in seeds("proxy_header") {
        eprintln!("{name}");
        proxy_header(&data);
    }
    for (name, data) in seeds("reply_parser") {
        eprintln!("{name}");
        reply_parser(&data, data.first().map_or(1, |b| usize::from(*b) + 1));
    }
}
