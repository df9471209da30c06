//! Property tests: the `spool_record` fuzz target's logic on stable (see fuzz/README.md), over random bytes,
//! over real records with bytes changed, and over the seed files.

use mta_spool::fuzzing::{spool_record, with_header};
use mta_spool::record::{RECORD_FORMAT_JSON, RECORD_FORMAT_VERSION};
use mta_spool::{BodyLocation, IdGenerator, MessageKind, MessageRecord, Priority, RecipientState};
use proptest::prelude::*;

fn seed_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/seeds/spool_record")
}

/// Records with every field used, in shapes the spool writes.
fn record() -> impl Strategy<Value = MessageRecord> {
    let state = prop_oneof![
        Just(RecipientState::Queued),
        Just(RecipientState::Deferred),
        Just(RecipientState::Delivered),
        Just(RecipientState::Bounced)
    ];
    let rcpt = ("[a-z0-9.+]{1,12}@[a-z0-9.-]{1,20}", state, any::<u32>(), proptest::option::of(".{0,40}"));
    (
        prop::collection::vec(rcpt, 1..5),
        ".{0,30}",
        proptest::option::of("[a-z0-9-]{1,10}"),
        any::<bool>(),
        any::<u64>(),
        any::<(u64, u64, u64, u32)>(),
        proptest::option::of(any::<u64>()),
    )
        .prop_map(|(rcpts, sender, tenant, dsn, received, body, last)| {
            let addrs: Vec<String> = rcpts.iter().map(|r| r.0.clone()).collect();
            let mut r = MessageRecord::new(IdGenerator::new("prop").next_id(), sender, &addrs, received);
            for (rec, (_, state, attempts, reply)) in r.recipients.iter_mut().zip(rcpts) {
                rec.state = state;
                rec.attempts = attempts;
                rec.last_reply = reply;
            }
            if let Some(s) = r.schedules.first_mut() {
                s.attempts = 3;
                s.next_attempt_ms = received / 2;
                s.last_attempt_ms = last;
            }
            r.tenant = tenant.clone();
            r.pool = tenant;
            r.priority = if dsn { Priority::Transactional } else { Priority::Bulk };
            r.kind = if dsn { MessageKind::Dsn } else { MessageKind::Normal };
            r.source.protocol = "smtp".into();
            r.source.peer = Some("192.0.2.1:4000".into());
            r.body = BodyLocation { segment: body.0, offset: body.1, len: body.2, crc32: body.3 };
            r
        })
}

proptest! {
    #[test]
    fn random_bytes_never_panic(data in prop::collection::vec(any::<u8>(), 0..400)) {
        spool_record(&data);
    }

    #[test]
    fn changed_records_never_panic(
        r in record(),
        json in any::<bool>(),
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..4),
        cut in any::<prop::sample::Index>(),
    ) {
        // A real record of either format with a few bytes changed and maybe truncated, as a bad disk makes it.
        let mut bytes = if json {
            with_header(RECORD_FORMAT_JSON, &serde_json::to_vec(&r).unwrap_or_default())
        } else {
            r.encode()
        };
        spool_record(&bytes);
        for (at, value) in edits {
            let at = at.index(bytes.len());
            bytes[at] = value;
        }
        spool_record(&bytes);
        bytes.truncate(cut.index(bytes.len() + 1));
        spool_record(&bytes);
    }
}

#[test]
fn seeds_pass() {
    let mut n = 0;
    for entry in std::fs::read_dir(seed_dir()).unwrap() {
        let path = entry.unwrap().path();
        let data = std::fs::read(&path).unwrap();
        // Every seed is a valid record, so the fuzzer starts from inputs that reach the payload decoders.
        assert!(MessageRecord::decode(&data).is_ok(), "{} does not decode", path.display());
        spool_record(&data);
        n += 1;
    }
    assert!(n > 0, "no seeds");
}

/// Writes `fuzz/seeds/spool_record/` (run by hand after a record format change:
/// `cargo test -p mta-spool --test proptests -- --ignored write_seeds`).
#[test]
#[ignore]
fn write_seeds() {
    let g = IdGenerator::new("mx1.example.com");
    let dir = seed_dir();
    std::fs::create_dir_all(&dir).unwrap();
    let mut fresh =
        MessageRecord::new(g.next_id(), "bounces@sender.example", &["a@dest.example".into()], 1_717_000_000_000);
    fresh.source.protocol = "http".into();
    fresh.source.auth = Some("api-key-1".into());
    fresh.body = BodyLocation { segment: u64::MAX, offset: 0, len: 812, crc32: 0x1234_5678 };
    let rcpts: Vec<String> = ["x@gmail.com", "y@gmail.com", "z@outlook.com", "w@[192.0.2.7]"].map(String::from).into();
    let mut busy = MessageRecord::new(g.next_id(), "news@shop.example", &rcpts, 1_717_000_000_000);
    busy.recipients[0].state = RecipientState::Delivered;
    busy.recipients[0].last_reply = Some("250 2.0.0 OK 1717000001 a1si1234qkb.12 - gsmtp".into());
    busy.recipients[1].state = RecipientState::Bounced;
    busy.recipients[1].attempts = 1;
    busy.recipients[1].last_reply = Some("550 5.1.1 The email account that you tried to reach does not exist.".into());
    busy.recipients[2].state = RecipientState::Deferred;
    busy.recipients[2].attempts = 4;
    busy.recipients[2].last_reply = Some("451 4.7.500 Server busy. Please try again later".into());
    busy.schedules[1].attempts = 4;
    busy.schedules[1].next_attempt_ms = 1_717_000_900_000;
    busy.schedules[1].last_attempt_ms = Some(1_717_000_600_000);
    busy.tenant = Some("acme".into());
    busy.pool = Some("pool-1".into());
    busy.source.peer = Some("[2001:db8::5]:41000".into());
    busy.source.helo = Some("app1.shop.example".into());
    busy.source.protocol = "smtp".into();
    busy.body = BodyLocation { segment: 3, offset: 1_048_576, len: 48_213, crc32: 0xdead_beef };
    let mut dsn = MessageRecord::new(g.next_id(), "", &["news@shop.example".into()], 1_717_000_700_000);
    dsn.kind = MessageKind::Dsn;
    dsn.priority = Priority::Transactional;
    dsn.source.protocol = "dsn".into();
    for (name, r) in [("fresh", &fresh), ("busy", &busy), ("dsn", &dsn)] {
        std::fs::write(dir.join(format!("{name}.v2")), r.encode()).unwrap();
        let json = serde_json::to_vec(r).unwrap();
        std::fs::write(dir.join(format!("{name}.v1")), with_header(RECORD_FORMAT_JSON, &json)).unwrap();
    }
    assert_eq!(RECORD_FORMAT_VERSION, 2, "name the seed files after the new version");
}
