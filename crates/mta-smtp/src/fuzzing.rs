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

/// Arbitrary bytes as what a load balancer sent before SMTP: `proxy::parse` and `proxy::read_header` (over
/// an in-memory stream) must never panic and must agree, a parsed header is never longer than the input,
/// every shorter prefix of a header asks for more bytes, and a parsed address block round-trips through its
/// own wire form.
pub fn proxy_header(data: &[u8]) {
    use crate::proxy::{self, ProxyHeader};

    let parsed = proxy::parse(data);
    let mut rest = data;
    let read = poll_ready(proxy::read_header(&mut rest));
    let consumed = data.len() - rest.len();
    match &parsed {
        Ok(Some((header, len))) => {
            assert!(*len <= data.len(), "header length {len} past the {} given", data.len());
            let again = proxy::parse(&data[..*len]).ok().flatten();
            assert_eq!(again, Some((*header, *len)), "the header alone parses the same");
            for cut in [0, len / 2, len.saturating_sub(1)] {
                if cut < *len {
                    assert!(
                        matches!(proxy::parse(&data[..cut]), Ok(None)),
                        "prefix of {cut} octets must be incomplete"
                    );
                }
            }
            assert_eq!(read.as_ref().ok(), Some(header), "read_header disagrees with parse");
            assert_eq!(consumed, *len, "read_header must stop at the end of the header");
            if data.starts_with(b"PROXY ") {
                assert_eq!(proxy::parse_v1(&data[..*len]).ok(), Some(*header));
            } else {
                assert_eq!(proxy::parse_v2(&data[..*len]).ok(), Some(*header));
            }
            round_trip(header);
        }
        Ok(None) => assert!(read.is_err(), "read_header found a header in bytes parse calls incomplete"),
        Err(_) => {
            if let Ok(h) = read {
                panic!("read_header accepted {h:?} that parse refuses");
            }
        }
    }
    // The two parsers on their own, whatever the framing said.
    let _ = proxy::parse_v1(data);
    let _ = proxy::parse_v2(data);

    fn round_trip(h: &ProxyHeader) {
        let (Some(src), Some(dst)) = (h.source, h.destination) else { return };
        if src.is_ipv4() != dst.is_ipv4() {
            return;
        }
        let family = if src.is_ipv4() { "TCP4" } else { "TCP6" };
        let line = format!("PROXY {family} {} {} {} {}\r\n", src.ip(), dst.ip(), src.port(), dst.port());
        assert_eq!(proxy::parse(line.as_bytes()).ok().flatten(), Some((*h, line.len())), "v1 {line:?}");
        let mut v2 = b"\r\n\r\n\0\r\nQUIT\n\x21".to_vec();
        match (src, dst) {
            (std::net::SocketAddr::V4(s), std::net::SocketAddr::V4(d)) => {
                v2.extend_from_slice(&[0x11, 0, 12]);
                v2.extend_from_slice(&s.ip().octets());
                v2.extend_from_slice(&d.ip().octets());
            }
            (std::net::SocketAddr::V6(s), std::net::SocketAddr::V6(d)) => {
                v2.extend_from_slice(&[0x21, 0, 36]);
                v2.extend_from_slice(&s.ip().octets());
                v2.extend_from_slice(&d.ip().octets());
            }
            _ => return,
        }
        v2.extend_from_slice(&src.port().to_be_bytes());
        v2.extend_from_slice(&dst.port().to_be_bytes());
        assert_eq!(proxy::parse(&v2).ok().flatten(), Some((*h, v2.len())), "v2 {v2:?}");
    }
}

/// Polls a future that never waits (its I/O is an in-memory slice) to completion.
fn poll_ready<F: std::future::Future>(fut: F) -> F::Output {
    let mut fut = std::pin::pin!(fut);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match fut.as_mut().poll(&mut cx) {
        std::task::Poll::Ready(out) => out,
        // Reading from a slice never returns Pending; if it did, the fuzz input found something new.
        std::task::Poll::Pending => panic!("an in-memory read returned Pending"),
    }
}

/// Arbitrary bytes from a hostile server, fed to the client's reply parser in `chunk`-byte pieces the way the
/// connection does (keep what was not consumed, append the next read): must never panic, never consume more
/// than given, never leave more than one line unconsumed, and must yield the same replies (and the same error)
/// whatever the split. Parsed replies must survive formatting and parsing again unchanged (after the first
/// round, which turns control characters into spaces).
pub fn reply_parser(data: &[u8], chunk: usize) {
    use crate::client::reply::{Capabilities, MAX_REPLY_LINE, MAX_REPLY_LINES};

    let whole = replies_in_chunks(data, data.len().max(1));
    let split = replies_in_chunks(data, chunk.max(1));
    assert_eq!(whole, split, "replies depend on how the bytes were split (chunk {chunk})");
    let one_byte = replies_in_chunks(&data[..data.len().min(2048)], 1);
    let prefix = replies_in_chunks(&data[..data.len().min(2048)], data.len().max(1));
    assert_eq!(prefix, one_byte, "byte-at-a-time feeding differs");

    for reply in &whole.0 {
        let _ = Capabilities::from_ehlo(reply);
        let _ = Capabilities::from_helo(reply);
        let _ = reply.to_string();
        let mut wire = Vec::new();
        reply.write_to(&mut wire);
        // Writing puts the enhanced code on every line, which can push a long line over the cap.
        let fits = wire.split(|b| *b == b'\n').all(|l| l.len() <= MAX_REPLY_LINE + 1)
            && wire.iter().filter(|b| **b == b'\n').count() <= MAX_REPLY_LINES;
        if !fits {
            continue;
        }
        let (once, err) = replies_in_chunks(&wire, wire.len());
        assert_eq!((once.len(), &err), (1, &None), "a written reply parses back as one reply: {wire:?}");
        assert_eq!(once[0].code, reply.code, "code kept: {wire:?}");
        // Writing turns control characters into spaces, which can make the text start with an enhanced code
        // ("2.1.0\tx" becomes "2.1.0 x"); without them the enhanced code must survive as it was.
        if !reply.text.chars().any(|c| c != '\n' && (c.is_ascii_control())) {
            assert_eq!(once[0].enhanced, reply.enhanced, "enhanced code kept: {wire:?}");
        }
        let mut wire2 = Vec::new();
        once[0].write_to(&mut wire2);
        let (twice, _) = replies_in_chunks(&wire2, wire2.len());
        assert_eq!(twice, once, "formatting is stable after one round: {wire:?}");
    }
}

/// Every reply in `data` fed `chunk` bytes at a time, and the error that ended the stream, if any.
fn replies_in_chunks(data: &[u8], chunk: usize) -> (Vec<crate::Reply>, Option<crate::client::reply::ReplyError>) {
    use crate::client::reply::{ReplyParser, MAX_REPLY_LINE};

    let mut parser = ReplyParser::new();
    let mut buf: Vec<u8> = Vec::new();
    let mut out = Vec::new();
    for piece in data.chunks(chunk) {
        buf.extend_from_slice(piece);
        // Consumed bytes are dropped once per read, as the connection's buffer does, not once per reply.
        let mut start = 0;
        loop {
            let unconsumed = &buf[start..];
            match parser.feed(unconsumed) {
                Ok((n, reply)) => {
                    assert!(n <= unconsumed.len(), "consumed {n} of {} octets", unconsumed.len());
                    start += n;
                    match reply {
                        Some(r) => out.push(r),
                        None => break,
                    }
                }
                Err(e) => return (out, Some(e)),
            }
        }
        buf.drain(..start);
        assert!(buf.len() <= MAX_REPLY_LINE + 1, "{} octets left unconsumed", buf.len());
    }
    (out, None)
}
