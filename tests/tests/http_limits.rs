//! End to end: the real `mta-server` binary keeps large HTTP bodies in check — an announced oversize body is
//! refused before a byte of it is sent, a chunked one as soon as it passes the cap, and the event loop keeps
//! answering health checks while large injections are parsed.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mta_tests::{http_request, HttpResponse, TestServer};
use serde_json::json;

/// `smtp.max_message_size` of the cap tests: the body cap is twice this plus 64 KiB.
const SMALL_MAX_MESSAGE: usize = 1 << 20;
const CAP: usize = 2 * SMALL_MAX_MESSAGE + (64 << 10);

/// One response read off `stream` without waiting for the connection to close: status line, headers, then
/// `Content-Length` bytes.
fn read_response(stream: &mut TcpStream) -> HttpResponse {
    let mut raw = Vec::new();
    let mut byte = [0u8; 1];
    while !raw.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte) {
            Ok(1) => raw.push(byte[0]),
            other => panic!("no complete response head ({other:?}): {:?}", String::from_utf8_lossy(&raw)),
        }
    }
    let head = String::from_utf8_lossy(&raw).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines.next().and_then(|l| l.split(' ').nth(1)).and_then(|s| s.parse().ok()).expect("status line");
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let len: usize = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .expect("a Content-Length");
    let mut body = vec![0u8; len];
    stream.read_exact(&mut body).expect("response body");
    HttpResponse { status, headers, body }
}

fn assert_too_large_and_closed(stream: &mut TcpStream, r: &HttpResponse) {
    assert_eq!(r.status, 413, "{}", r.text());
    assert_eq!(r.json()["error"]["code"], "too_large", "{}", r.text());
    assert_eq!(r.header("connection"), Some("close"));
    // The rest of the body is never read: the server closes (EOF, or a reset for what it left unread).
    let mut rest = [0u8; 64];
    match stream.read(&mut rest) {
        Ok(0) | Err(_) => {}
        Ok(n) => panic!("more bytes after the 413: {:?}", String::from_utf8_lossy(&rest[..n])),
    }
}

fn post_head(addr: SocketAddr, extra_headers: &str) -> TcpStream {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let head = format!(
        "POST /api/v1/messages HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n{extra_headers}\r\n"
    );
    stream.write_all(head.as_bytes()).unwrap();
    stream
}

#[test]
fn a_body_announced_over_the_cap_is_refused_before_it_is_sent() {
    let server = TestServer::start(&format!("[smtp]\nmax_message_size = {SMALL_MAX_MESSAGE}\n"));
    for expect_continue in [false, true] {
        let expect = if expect_continue { "Expect: 100-continue\r\n" } else { "" };
        let mut stream = post_head(server.http, &format!("Content-Length: {}\r\n{expect}", 200 << 20));
        // Only the head was sent: an answer proves the server did not wait for (or read) the body. With
        // `Expect: 100-continue`, the first status line is the 413: the body was never invited.
        let r = read_response(&mut stream);
        assert_too_large_and_closed(&mut stream, &r);
    }
    // One byte over the cap is enough; the cap itself is not refused for its size.
    let mut stream = post_head(server.http, &format!("Content-Length: {}\r\n", CAP + 1));
    let r = read_response(&mut stream);
    assert_too_large_and_closed(&mut stream, &r);
    let mut stream = post_head(server.http, &format!("Content-Length: {CAP}\r\n"));
    stream.write_all(&vec![b' '; CAP]).unwrap();
    let r = read_response(&mut stream);
    assert_eq!((r.status, r.json()["error"]["code"].as_str()), (400, Some("invalid_json")), "{}", r.text());
}

#[test]
fn a_chunked_body_is_refused_as_soon_as_it_passes_the_cap() {
    let server = TestServer::start(&format!("[smtp]\nmax_message_size = {SMALL_MAX_MESSAGE}\n"));
    let mut stream = post_head(server.http, "Transfer-Encoding: chunked\r\n");
    let mut writer = stream.try_clone().unwrap();
    // Up to twice the cap, in 64 KiB chunks, and never the last chunk: the body has no end to read to.
    let sender = std::thread::spawn(move || {
        let chunk = vec![b'x'; 64 << 10];
        let mut sent = 0;
        while sent < 2 * CAP {
            let frame = [format!("{:x}\r\n", chunk.len()).as_bytes(), &chunk, b"\r\n"].concat();
            if writer.write_all(&frame).is_err() {
                break;
            }
            sent += chunk.len();
        }
        sent
    });
    let r = read_response(&mut stream);
    assert_too_large_and_closed(&mut stream, &r);
    let sent = sender.join().unwrap();
    assert!(sent > CAP, "the client sent {sent} bytes, not past the cap");
}

/// Raw content of about `size` bytes in 78-octet lines (the JSON has a `\n` escape per line to decode).
fn large_message(size: usize) -> String {
    let mut m = String::with_capacity(size + 100);
    m.push_str("From: a@sender.test\nTo: b@dest.test\nSubject: large\n\n");
    let line = format!("{}\n", "x".repeat(77));
    while m.len() < size {
        m.push_str(&line);
    }
    m
}

#[test]
fn health_checks_are_answered_while_large_injections_are_parsed() {
    const INJECTIONS: usize = 6;
    const SIZE: usize = 30 << 20;
    let server = TestServer::start("");
    let body = Arc::new(
        json!({"envelope_sender": "a@sender.test", "recipients": ["b@dest.test"], "content": large_message(SIZE)})
            .to_string()
            .into_bytes(),
    );
    let addr = server.http;
    let stop = Arc::new(AtomicBool::new(false));
    let probes = Arc::new(Mutex::new(Vec::new()));
    let prober = {
        let (stop, probes) = (stop.clone(), probes.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let started = Instant::now();
                let r = http_request(addr, "GET", "/health/live", &[], b"");
                probes.lock().unwrap().push((r.status, started.elapsed()));
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    let injectors: Vec<_> = (0..INJECTIONS)
        .map(|_| {
            let body = body.clone();
            std::thread::spawn(move || {
                http_request(addr, "POST", "/api/v1/messages", &[("Content-Type", "application/json")], &body)
            })
        })
        .collect();
    let answers: Vec<HttpResponse> = injectors.into_iter().map(|t| t.join().unwrap()).collect();
    stop.store(true, Ordering::Relaxed);
    prober.join().unwrap();

    let accepted = answers.iter().filter(|r| r.status == 202).count();
    for r in &answers {
        // The body memory budget may make a request wait, and past its wait refuse it for a retry.
        assert!(r.status == 202 || (r.status == 503 && r.header("retry-after").is_some()), "{} {}", r.status, r.text());
    }
    assert!(accepted >= INJECTIONS / 2, "only {accepted} of {INJECTIONS} injections accepted");
    let probes = probes.lock().unwrap();
    let slowest = probes.iter().map(|(_, d)| *d).max().unwrap_or_default();
    eprintln!("{accepted}/{INJECTIONS} accepted; {} health probes, slowest {slowest:?}", probes.len());
    assert!(probes.len() >= 5, "too few health probes ran: {}", probes.len());
    assert!(probes.iter().all(|(status, _)| *status == 200), "{probes:?}");
    // A liveness check, not a performance target: generous, but far below a stalled event loop.
    assert!(slowest < Duration::from_secs(2), "/health/live took {slowest:?} while injections were parsed");
}
