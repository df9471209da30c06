//! Large messages stream to the spool: stored byte-exact over DATA and BDAT, signed and verified from the
//! staged bytes, and nothing left behind by a client that drops mid-message.

use std::time::Duration;

use mta_tests::{queued_id, strip_received, RawSmtp, TestServer};

/// A message of about `size` octets, different for each `seed`, with a dot-stuffing case inside.
fn big_message(seed: u32, size: usize) -> Vec<u8> {
    let mut m = format!("From: a@sender.test\r\nTo: b@dest.test\r\nSubject: large {seed}\r\n\r\n").into_bytes();
    let mut i = 0u32;
    while m.len() < size {
        m.extend_from_slice(
            format!("{seed:08x} line {i:08} of a large message, padded to be long enough\r\n").as_bytes(),
        );
        if i.is_multiple_of(1000) {
            m.extend_from_slice(b".a line that starts with a dot\r\n");
        }
        i += 1;
    }
    m
}

fn dot_stuffed(m: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(m.len() + 1024);
    mta_smtp::proto::data::dot_stuff(m, &mut out);
    out
}

fn body_files(server: &TestServer) -> usize {
    std::fs::read_dir(server.dir.join("spool").join("bodies")).map(|d| d.count()).unwrap_or(0)
}

#[test]
fn large_messages_over_data_and_bdat_are_stored_byte_exact() {
    let mut server = TestServer::start("");
    let (mut c, _) = RawSmtp::connect(server.smtp);
    c.cmd("EHLO client.test", "250");
    let one = big_message(1, 5 << 20);
    c.cmd("MAIL FROM:<a@sender.test>", "250");
    c.cmd("RCPT TO:<b@dest.test>", "250");
    c.cmd("DATA", "354");
    c.send(&dot_stuffed(&one));
    let first = queued_id(&c.reply()).expect("queued");

    let two = big_message(2, 3 << 20);
    c.cmd("MAIL FROM:<a@sender.test>", "250");
    c.cmd("RCPT TO:<b@dest.test>", "250");
    let (a, rest) = two.split_at(1 << 20);
    let (b, last) = rest.split_at(1 << 20);
    for (chunk, is_last) in [(a, false), (b, false), (last, true)] {
        let cmd = format!("BDAT {}{}\r\n", chunk.len(), if is_last { " LAST" } else { "" });
        c.send(cmd.as_bytes());
        c.send(chunk);
        let r = c.reply();
        assert!(r.starts_with("250"), "{r}");
        if is_last {
            let second = queued_id(&r).expect("queued");
            c.cmd("QUIT", "221");
            server.sigterm();
            assert_eq!(server.wait_exit(Duration::from_secs(30)), Some(0));
            assert!(strip_received(&server.spool_raw(&first)) == one.as_slice(), "DATA message differs");
            assert!(strip_received(&server.spool_raw(&second)) == two.as_slice(), "BDAT message differs");
            return;
        }
    }
}

#[test]
fn a_client_dropping_mid_message_leaves_nothing_behind() {
    let mut server = TestServer::start("");
    let before = body_files(&server);
    let (mut c, _) = RawSmtp::connect(server.smtp);
    c.cmd("EHLO client.test", "250");
    c.cmd("MAIL FROM:<a@sender.test>", "250");
    c.cmd("RCPT TO:<b@dest.test>", "250");
    c.cmd("DATA", "354");
    let m = big_message(3, 2 << 20);
    c.send(&m[..m.len() - 100]);
    // The body is being staged now; then the client goes away.
    std::thread::sleep(Duration::from_millis(300));
    drop(c);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while body_files(&server) > before && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(body_files(&server), before, "a staged body outlived its session");
    server.sigterm();
    assert_eq!(server.wait_exit(Duration::from_secs(30)), Some(0));
    assert!(server.spool_list().is_empty());
}
