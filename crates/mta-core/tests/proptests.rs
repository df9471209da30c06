//! Property tests: the `dsn` fuzz target's logic on stable (see fuzz/README.md), over generated replies,
//! recipients, senders and original messages, and over the seed files.

use mta_core::delivery::dsn::FailedRecipient;
use mta_core::fuzzing::{dsn, response_of, DsnInput};
use mta_smtp::{EnhancedCode, Reply};
use proptest::prelude::*;

/// Replies as the delivery client records them (a parsed reply printed back), as local reasons, or any text.
fn reply() -> impl Strategy<Value = String> {
    let parsed = (200u16..600, proptest::option::of((1u16..1000, 0u16..1000)), "[ -~]{0,60}(\n[ -~]{0,60}){0,3}")
        .prop_map(|(code, e, text)| {
            let enhanced = e.map(|(subject, detail)| EnhancedCode { class: (code / 100) as u8, subject, detail });
            Reply { code, enhanced, text: text.into() }.to_string()
        });
    prop_oneof![
        4 => parsed,
        2 => "[245][0-9][0-9] [0-9]{1,4}\\.[0-9]{1,4}\\.[0-9]{1,4} [ -~]{0,30}",
        1 => "4\\.4\\.7 Message expired; last error: [ -~]{0,40}",
        1 => ".{0,40}",
        1 => "[ -~]{900,1200}",
    ]
}

/// Original messages: header blocks with CRLF, LF or CR line ends, long lines, bodies, or any bytes.
fn original() -> impl Strategy<Value = Vec<u8>> {
    let line = prop_oneof!["[A-Za-z-]{1,20}: [ -~]{0,60}", "[ \t][ -~]{0,40}", "[ -~]{990,1010}", ".{0,30}"];
    let end = prop_oneof![4 => Just("\r\n"), 1 => Just("\n"), 1 => Just("\r")];
    prop_oneof![
        4 => (prop::collection::vec((line, end), 0..20), any::<bool>(), "[ -~\r\n]{0,100}").prop_map(|(lines, blank, body)| {
            let mut m: String = lines.into_iter().map(|(l, e)| format!("{l}{e}")).collect();
            if blank {
                m.push_str("\r\n");
            }
            m.push_str(&body);
            m.into_bytes()
        }),
        1 => prop::collection::vec(any::<u8>(), 0..300),
    ]
}

fn input() -> impl Strategy<Value = DsnInput> {
    let failed = (".{0,40}", reply(), proptest::option::of("[a-z0-9.-]{0,30}|.{0,10}")).prop_map(
        |(address, reply, remote_mta)| FailedRecipient {
            address,
            response: response_of(&reply),
            remote_mta,
            bounce_class: None,
        },
    );
    (".{0,40}", prop::collection::vec(failed, 0..5), original(), any::<bool>(), any::<u64>()).prop_map(
        |(sender, failed, original, expired, received_at_ms)| DsnInput {
            sender,
            failed,
            original,
            expired,
            received_at_ms,
        },
    )
}

proptest! {
    #[test]
    fn dsn_is_well_formed(input in input()) {
        dsn(&input);
    }

    #[test]
    fn dsn_from_any_bytes(data in prop::collection::vec(any::<u8>(), 0..400)) {
        dsn(&DsnInput::from_bytes(&data));
    }

    #[test]
    fn dsn_input_bytes_round_trip(mut input in input()) {
        // The seed format reads back what it wrote, for fields without NUL (its separator).
        let no_nul = |s: &mut String| *s = s.replace('\0', " ");
        no_nul(&mut input.sender);
        input.original.retain(|b| *b != 0);
        for f in &mut input.failed {
            no_nul(&mut f.address);
            // Response text has no control characters (NUL included) once typed.
            f.remote_mta = f.remote_mta.take().map(|m| m.replace('\0', " ")).filter(|m| !m.is_empty());
        }
        let back = DsnInput::from_bytes(&input.to_bytes());
        prop_assert_eq!(back.to_bytes(), input.to_bytes());
        prop_assert_eq!(back.failed.len(), input.failed.len());
    }
}

#[test]
fn seeds_pass() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/seeds/dsn");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        eprintln!("{}", path.display());
        dsn(&DsnInput::from_bytes(&std::fs::read(&path).unwrap()));
        n += 1;
    }
    assert!(n > 0, "no seeds in {}", dir.display());
}
