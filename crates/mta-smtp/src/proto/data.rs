//! Message content receivers for DATA (dot-terminated) and BDAT (counted chunks).
//!
//! Both enforce the same content rules: CRLF is the only line ending (a bare LF or bare CR anywhere is an
//! error: the SMTP smuggling defence, CVE-2023-51764), text lines are at most `max_line` octets without the
//! CRLF, and the message is at most `max_size` octets. A content error never stops the receiver early: DATA
//! keeps reading to the real `CRLF.CRLF` (and only that ends it, never `LF.CRLF` or `CR.CRLF`), BDAT to the
//! end of the announced chunk, so the session stays in sync with the client and nothing of the message is
//! read as commands or as a second message. After the first error bytes are counted but no longer stored.
//!
//! Content can be taken out as it arrives ([`DataReceiver::take`], [`BdatReceiver::take`]), so a session holds
//! at most one read's worth of a message; [`HopCounter`] counts `Received:` fields on those chunks.

use bytes::{Bytes, BytesMut};

/// Why a message's content was refused; [`DataError::reply`] gives the reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DataError {
    /// A LF not preceded by CR.
    #[error("bare LF in message content")]
    BareLf,
    /// A CR not followed by LF.
    #[error("bare CR in message content")]
    BareCr,
    /// A line longer than the limit.
    #[error("line too long")]
    LineTooLong,
    /// More octets than the size limit.
    #[error("message too big")]
    TooBig,
}

impl DataError {
    /// The reply for the end of DATA or for the BDAT chunk where the error was seen.
    pub fn reply(&self) -> crate::Reply {
        use crate::Reply;
        match self {
            DataError::BareLf | DataError::BareCr => Reply::fixed(554, 5, 6, 11, "Bare CR or LF not allowed"),
            DataError::LineTooLong => Reply::fixed(554, 5, 6, 0, "Line too long"),
            DataError::TooBig => Reply::TOO_BIG,
        }
    }
}

/// Where the DATA scanner is within the current line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DotState {
    /// After a CRLF (or at the very start): a `.` here is special.
    LineStart,
    /// After a `.` at the start of a line.
    Dot,
    /// After `.` CR at the start of a line: an LF now ends the data.
    DotCr,
    /// Inside a line.
    InLine,
    /// After a CR inside a line.
    Cr,
}

/// The result of feeding bytes to a receiver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// Every byte was consumed; more are needed.
    NeedMore,
    /// The end was found after `consumed` bytes of the input; the rest belongs to what comes next.
    Done {
        /// Bytes of the input that belonged to the message.
        consumed: usize,
    },
}

/// Shared limits, storage and error tracking.
#[derive(Debug)]
struct Sink {
    out: BytesMut,
    size: u64,
    line_len: usize,
    max_line: usize,
    max_size: u64,
    error: Option<DataError>,
}

impl Sink {
    fn new(max_line: usize, max_size: u64) -> Sink {
        Sink { out: BytesMut::with_capacity(16 * 1024), size: 0, line_len: 0, max_line, max_size, error: None }
    }

    fn fail(&mut self, e: DataError) {
        if self.error.is_none() {
            self.error = Some(e);
            self.out = BytesMut::new();
        }
    }

    /// Line content without line breaks.
    fn text(&mut self, bytes: &[u8]) {
        self.line_len += bytes.len();
        if self.line_len > self.max_line {
            self.fail(DataError::LineTooLong);
        }
        self.store(bytes);
    }

    fn crlf(&mut self) {
        self.line_len = 0;
        self.store(b"\r\n");
    }

    fn store(&mut self, bytes: &[u8]) {
        self.size += bytes.len() as u64;
        if self.size > self.max_size {
            self.fail(DataError::TooBig);
        }
        if self.error.is_none() {
            self.out.extend_from_slice(bytes);
        }
    }

    fn take(&mut self) -> Bytes {
        self.out.split().freeze()
    }

    fn output(&self) -> &[u8] {
        &self.out
    }

    fn clear_output(&mut self) {
        self.out.clear();
    }

    fn finish(self) -> Result<Bytes, DataError> {
        match self.error {
            Some(e) => Err(e),
            None => Ok(self.out.freeze()),
        }
    }
}

/// The accessors DATA and BDAT receivers share, over their `sink`.
macro_rules! sink_access {
    () => {
        /// Octets of content seen so far (after unstuffing, CRLFs included), stored or not.
        pub fn size(&self) -> u64 {
            self.sink.size
        }

        /// The content stored since the last call (empty once an error was seen): stream it on, keep nothing.
        pub fn take(&mut self) -> Bytes {
            self.sink.take()
        }

        /// The content stored since the last [`Self::clear_output`], borrowed (the buffer keeps its capacity).
        pub fn output(&self) -> &[u8] {
            self.sink.output()
        }

        /// Forget the stored content (after handing [`Self::output`] on).
        pub fn clear_output(&mut self) {
            self.sink.clear_output();
        }

        /// The first content error so far.
        pub fn error(&self) -> Option<DataError> {
            self.sink.error
        }
    };
}

/// What a session needs of a content receiver, DATA or BDAT: feed it bytes, hand on what it stored.
pub trait ContentReceiver {
    /// Feeds received bytes; [`Progress::Done`] says how many belonged to the content.
    fn feed(&mut self, input: &[u8]) -> Progress;
    /// The content stored since the last [`ContentReceiver::clear_output`].
    fn output(&self) -> &[u8];
    /// Forget the stored content (after handing it on).
    fn clear_output(&mut self);
}

impl ContentReceiver for DataReceiver {
    fn feed(&mut self, input: &[u8]) -> Progress {
        DataReceiver::feed(self, input)
    }
    fn output(&self) -> &[u8] {
        DataReceiver::output(self)
    }
    fn clear_output(&mut self) {
        DataReceiver::clear_output(self)
    }
}

impl ContentReceiver for BdatReceiver {
    fn feed(&mut self, input: &[u8]) -> Progress {
        BdatReceiver::feed(self, input)
    }
    fn output(&self) -> &[u8] {
        BdatReceiver::output(self)
    }
    fn clear_output(&mut self) {
        BdatReceiver::clear_output(self)
    }
}

/// Receives DATA content: finds the terminating `CRLF.CRLF`, removes dot-stuffing, checks the content.
#[derive(Debug)]
pub struct DataReceiver {
    state: DotState,
    sink: Sink,
}

impl DataReceiver {
    /// A receiver for lines of at most `max_line` octets (without CRLF) and messages of at most `max_size`.
    pub fn new(max_line: usize, max_size: u64) -> DataReceiver {
        DataReceiver { state: DotState::LineStart, sink: Sink::new(max_line, max_size) }
    }

    /// Feeds the next bytes from the client.
    pub fn feed(&mut self, input: &[u8]) -> Progress {
        let mut i = 0;
        while i < input.len() {
            match self.state {
                DotState::InLine => {
                    let rest = &input[i..];
                    match memchr::memchr2(b'\r', b'\n', rest) {
                        None => {
                            self.sink.text(rest);
                            return Progress::NeedMore;
                        }
                        Some(j) => {
                            self.sink.text(&rest[..j]);
                            if rest[j] == b'\r' {
                                self.state = DotState::Cr;
                            } else {
                                // A bare LF never ends a line here, so `LF.CRLF` cannot end the data.
                                self.sink.fail(DataError::BareLf);
                            }
                            i += j + 1;
                        }
                    }
                }
                DotState::LineStart => {
                    if input[i] == b'.' {
                        self.state = DotState::Dot;
                        i += 1;
                    } else {
                        self.state = DotState::InLine;
                    }
                }
                DotState::Dot => {
                    if input[i] == b'\r' {
                        self.state = DotState::DotCr;
                        i += 1;
                    } else {
                        // The leading dot was stuffing: drop it, the byte is line content.
                        self.state = DotState::InLine;
                    }
                }
                DotState::DotCr => {
                    if input[i] == b'\n' {
                        self.state = DotState::LineStart;
                        return Progress::Done { consumed: i + 1 };
                    }
                    // `.` CR then something else: the CR was bare.
                    self.sink.fail(DataError::BareCr);
                    self.state = DotState::InLine;
                }
                DotState::Cr => {
                    if input[i] == b'\n' {
                        self.sink.crlf();
                        self.state = DotState::LineStart;
                        i += 1;
                    } else {
                        self.sink.fail(DataError::BareCr);
                        self.state = DotState::InLine;
                    }
                }
            }
        }
        Progress::NeedMore
    }

    sink_access!();

    /// The message after [`Progress::Done`]: the exact bytes after unstuffing not yet taken, or the first
    /// content error.
    pub fn finish(self) -> Result<Bytes, DataError> {
        self.sink.finish()
    }
}

/// Receives a BDAT message over its chunks; checks run across chunk boundaries.
#[derive(Debug)]
pub struct BdatReceiver {
    /// After a CR, maybe the last byte of the previous chunk.
    pending_cr: bool,
    /// Octets of the current chunk still to come.
    remaining: u64,
    sink: Sink,
}

impl BdatReceiver {
    /// A receiver with the same limits as [`DataReceiver::new`].
    pub fn new(max_line: usize, max_size: u64) -> BdatReceiver {
        BdatReceiver { pending_cr: false, remaining: 0, sink: Sink::new(max_line, max_size) }
    }

    /// Starts a chunk of `size` octets (the number in the BDAT command).
    pub fn start_chunk(&mut self, size: u64) {
        self.remaining = size;
    }

    /// Octets of the current chunk not yet fed.
    pub fn remaining(&self) -> u64 {
        self.remaining
    }

    /// Feeds bytes of the current chunk; returns how many of `input` belong to it (the rest is the next command).
    pub fn feed(&mut self, input: &[u8]) -> Progress {
        let take = usize::try_from(self.remaining).map_or(input.len(), |r| r.min(input.len()));
        self.scan(&input[..take]);
        self.remaining -= take as u64;
        if self.remaining == 0 {
            Progress::Done { consumed: take }
        } else {
            Progress::NeedMore
        }
    }

    fn scan(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            if self.pending_cr {
                self.pending_cr = false;
                if data[0] == b'\n' {
                    self.sink.crlf();
                    data = &data[1..];
                    continue;
                }
                self.sink.fail(DataError::BareCr);
            }
            match memchr::memchr2(b'\r', b'\n', data) {
                None => {
                    self.sink.text(data);
                    return;
                }
                Some(j) => {
                    self.sink.text(&data[..j]);
                    if data[j] == b'\r' {
                        self.pending_cr = true;
                    } else {
                        self.sink.fail(DataError::BareLf);
                    }
                    data = &data[j + 1..];
                }
            }
        }
    }

    // After each chunk check `error()`: a failed chunk ends the transaction.
    sink_access!();

    /// The message after the LAST chunk (what was not taken yet). Content that does not end with CRLF gets one appended so the
    /// message can later be relayed with DATA; a trailing lone CR is a bare CR.
    pub fn finish(mut self) -> Result<Bytes, DataError> {
        if self.pending_cr {
            self.sink.fail(DataError::BareCr);
        } else if self.sink.line_len > 0 {
            self.sink.crlf();
        }
        self.sink.finish()
    }
}

/// Counts `Received:` fields in the header section (up to the first empty line) for the hop limit.
pub fn count_received_headers(message: &[u8]) -> usize {
    let mut count = 0;
    let mut rest = message;
    while !rest.is_empty() && !rest.starts_with(b"\r\n") {
        if rest.len() >= 9 && rest[..9].eq_ignore_ascii_case(b"received:") {
            count += 1;
        }
        match memchr::memchr(b'\n', rest) {
            Some(i) => rest = &rest[i + 1..],
            None => break,
        }
    }
    count
}

/// Counts `Received:` fields in a header section fed in chunks of any size (the streaming form of
/// [`count_received_headers`]).
#[derive(Debug, Clone, Default)]
pub struct HopCounter {
    count: usize,
    /// The first bytes of the current line (up to 9, enough for `received:`).
    start: Vec<u8>,
    /// Octets of the current line seen so far.
    line_len: usize,
    /// The empty line was seen: the body starts, nothing more is counted.
    done: bool,
}

impl HopCounter {
    /// A counter at the start of a message.
    pub fn new() -> HopCounter {
        HopCounter::default()
    }

    /// Feeds the next content bytes.
    pub fn feed(&mut self, mut data: &[u8]) {
        while !self.done && !data.is_empty() {
            let (line, ended) = match memchr::memchr(b'\n', data) {
                Some(i) => (&data[..=i], true),
                None => (data, false),
            };
            if self.start.len() < 9 {
                let want = (9 - self.start.len()).min(line.len());
                self.start.extend_from_slice(&line[..want]);
            }
            self.line_len += line.len();
            data = &data[line.len()..];
            if ended {
                if self.line_len <= 2 {
                    // CRLF alone: the end of the header section.
                    self.done = true;
                } else if self.start.len() == 9 && self.start.eq_ignore_ascii_case(b"received:") {
                    self.count += 1;
                }
                self.start.clear();
                self.line_len = 0;
            }
        }
    }

    /// `Received:` fields seen so far.
    pub fn count(&self) -> usize {
        self.count
    }
}

/// Dot-stuffs `content` and appends the `.CRLF` terminator: the inverse of [`DataReceiver`], for clients and
/// tests. `content` must be empty or end with CRLF.
pub fn dot_stuff(content: &[u8], out: &mut Vec<u8>) {
    let mut at_line_start = true;
    for &b in content {
        if at_line_start && b == b'.' {
            out.push(b'.');
        }
        out.push(b);
        at_line_start = b == b'\n';
    }
    out.extend_from_slice(b".\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(chunks: &[&[u8]]) -> (Result<Bytes, DataError>, usize) {
        let mut r = DataReceiver::new(998, 1000);
        for (n, c) in chunks.iter().enumerate() {
            if let Progress::Done { consumed } = r.feed(c) {
                assert_eq!(n, chunks.len() - 1, "ended early");
                return (r.finish(), consumed);
            }
        }
        panic!("no end found")
    }

    #[test]
    fn unstuffs_and_ends() {
        let (m, c) = data(&[b"a\r\n..b\r\n.c\r\n.\r\nQUIT\r\n"]);
        assert_eq!(m, Ok(Bytes::from_static(b"a\r\n.b\r\nc\r\n")));
        assert_eq!(c, 15);
        assert_eq!(data(&[b".\r\n"]).0, Ok(Bytes::new()));
    }

    #[test]
    fn terminator_across_every_split() {
        let msg = b"Subject: x\r\n\r\nbody\r\n..\r\n.\r\n";
        for split in 0..msg.len() {
            let (m, c) = data(&[&msg[..split], &msg[split..]]);
            assert_eq!(m, Ok(Bytes::from_static(b"Subject: x\r\n\r\nbody\r\n.\r\n")));
            assert_eq!(c, msg.len() - split);
        }
        let one_by_one: Vec<&[u8]> = msg.chunks(1).collect();
        assert!(data(&one_by_one).0.is_ok());
    }

    #[test]
    fn bare_lf_and_cr_never_terminate() {
        // `LF.CRLF` and `CR.CRLF` are content (with an error), the real end comes later.
        let (m, c) = data(&[b"a\n.\r\nMAIL FROM:<x@y>\r\n.\r\n"]);
        assert_eq!(m, Err(DataError::BareLf));
        assert_eq!(c, 25);
        assert_eq!(data(&[b"a\r.\r\nb\r\n.\r\n"]).0, Err(DataError::BareCr));
        assert_eq!(data(&[b"a\r\n.\n.\r\n.\r\n"]).0, Err(DataError::BareLf));
        assert_eq!(data(&[b"a\r\n.\r.\r\n.\r\n"]).0, Err(DataError::BareCr));
        assert_eq!(data(&[b"a\r", b"\r\n.\r\n"]).0, Err(DataError::BareCr));
        assert_eq!(data(&[b"a\r", b"\n.\r\n"]).0, Ok(Bytes::from_static(b"a\r\n")));
    }

    #[test]
    fn line_length_limit() {
        let mut ok = vec![b'x'; 998];
        ok.extend_from_slice(b"\r\n.\r\n");
        let mut r = DataReceiver::new(998, 10_000);
        assert_eq!(r.feed(&ok), Progress::Done { consumed: ok.len() });
        assert!(r.finish().is_ok());
        let mut long = vec![b'x'; 999];
        long.extend_from_slice(b"\r\n.\r\n");
        let mut r = DataReceiver::new(998, 10_000);
        assert_eq!(r.feed(&long), Progress::Done { consumed: long.len() });
        assert_eq!(r.finish(), Err(DataError::LineTooLong));
        // A stuffed dot does not count: the line is 998 octets of content.
        let mut stuffed = vec![b'.'; 999];
        stuffed.extend_from_slice(b"\r\n.\r\n");
        let mut r = DataReceiver::new(998, 10_000);
        r.feed(&stuffed);
        assert_eq!(r.finish().map(|b| b.len()), Ok(1000));
    }

    #[test]
    fn size_limit_counts_to_the_end() {
        let mut r = DataReceiver::new(998, 10);
        assert_eq!(r.feed(b"0123456789\r\n"), Progress::NeedMore);
        assert_eq!(r.feed(b"more\r\n.\r\n"), Progress::Done { consumed: 9 });
        assert_eq!(r.size(), 18);
        assert_eq!(r.finish(), Err(DataError::TooBig));
    }

    #[test]
    fn bdat_chunks() {
        let mut r = BdatReceiver::new(998, 100);
        r.start_chunk(3);
        assert_eq!(r.feed(b"ab\rNOOP"), Progress::Done { consumed: 3 });
        assert_eq!(r.error(), None);
        r.start_chunk(4);
        assert_eq!(r.feed(b"\ncd"), Progress::NeedMore);
        assert_eq!(r.feed(b"\r\n"), Progress::Done { consumed: 1 });
        r.start_chunk(1);
        assert_eq!(r.feed(b"\n"), Progress::Done { consumed: 1 });
        assert_eq!(r.finish(), Ok(Bytes::from_static(b"ab\r\ncd\r\n")));

        let mut r = BdatReceiver::new(998, 100);
        r.start_chunk(4);
        r.feed(b"a\nb\r");
        assert_eq!(r.error(), Some(DataError::BareLf));
        let mut r = BdatReceiver::new(998, 100);
        r.start_chunk(2);
        r.feed(b"a\r");
        r.start_chunk(1);
        r.feed(b"b");
        assert_eq!(r.error(), Some(DataError::BareCr));
        let mut r = BdatReceiver::new(998, 100);
        r.start_chunk(2);
        r.feed(b"a\r");
        assert_eq!(r.finish(), Err(DataError::BareCr));
        let mut r = BdatReceiver::new(998, 100);
        r.start_chunk(3);
        r.feed(b"abc");
        assert_eq!(r.finish(), Ok(Bytes::from_static(b"abc\r\n")));
        let mut r = BdatReceiver::new(998, 4);
        r.start_chunk(5);
        r.feed(b"abcde");
        assert_eq!(r.error(), Some(DataError::TooBig));
    }

    #[test]
    fn received_headers_counted_in_header_section_only() {
        let m = b"Received: a\r\n\tcont\r\nRECEIVED: b\r\nSubject: x\r\n\r\nReceived: body\r\n";
        assert_eq!(count_received_headers(m), 2);
    }

    #[test]
    fn hop_counter_agrees_with_the_whole_message_count_at_every_split() {
        let m: &[u8] = b"Received: a\r\n\tcont\r\nRECEIVED: b\r\nSubject: x\r\nreceived:c\r\n\r\nReceived: body\r\n";
        for split in 0..m.len() {
            let mut h = HopCounter::new();
            h.feed(&m[..split]);
            h.feed(&m[split..]);
            assert_eq!(h.count(), count_received_headers(m), "split at {split}");
        }
        let mut h = HopCounter::new();
        for b in m.chunks(1) {
            h.feed(b);
        }
        assert_eq!(h.count(), 3);
    }

    #[test]
    fn taken_chunks_add_up_to_the_message() {
        let msg = b"Subject: x\r\n\r\n..a\r\nbody\r\n.\r\n";
        for split in 0..msg.len() {
            let mut r = DataReceiver::new(998, 1000);
            let mut got = Vec::new();
            r.feed(&msg[..split]);
            got.extend_from_slice(&r.take());
            r.feed(&msg[split..]);
            got.extend_from_slice(&r.take());
            assert_eq!(r.finish(), Ok(Bytes::new()));
            assert_eq!(got, b"Subject: x\r\n\r\n.a\r\nbody\r\n");
        }
    }

    #[test]
    fn stuffing_round_trip() {
        let mut out = Vec::new();
        dot_stuff(b".a\r\n..\r\nb\r\n", &mut out);
        assert_eq!(out, b"..a\r\n...\r\nb\r\n.\r\n");
        let mut r = DataReceiver::new(998, 1000);
        assert_eq!(r.feed(&out), Progress::Done { consumed: out.len() });
        assert_eq!(r.finish(), Ok(Bytes::from_static(b".a\r\n..\r\nb\r\n")));
    }
}
