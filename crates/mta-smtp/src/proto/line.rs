//! Byte-fed command line reader with a hard length cap.

use bytes::BytesMut;

/// What [`LineReader::next`] found in the input buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum LineEvent {
    /// A complete line, without its CRLF (a lone LF also ends a command line).
    Line(BytesMut),
    /// A line longer than the cap ended; its bytes were discarded. Reply `500 5.5.2 Line too long`
    /// and carry on with the next line: nothing of the long line is ever treated as a command.
    TooLong,
}

/// Splits command lines off an input buffer. Incomplete input is a normal result (`None`: read more).
#[derive(Debug, Clone)]
pub struct LineReader {
    /// Maximum line length in octets, CRLF included (RFC 5321 §4.5.3.1.4: 512).
    max: usize,
    /// Inside a line that already went over the cap: drop bytes until its end.
    discarding: bool,
}

impl LineReader {
    /// A reader for lines of at most `max` octets including the CRLF.
    pub fn new(max: usize) -> LineReader {
        LineReader { max: max.max(3), discarding: false }
    }

    /// Takes the next line off the front of `buf`, if a complete one is there. Bytes of an over-long line are
    /// removed from `buf` as they arrive, so the buffer never grows beyond the cap.
    pub fn next(&mut self, buf: &mut BytesMut) -> Option<LineEvent> {
        match memchr::memchr(b'\n', buf) {
            Some(i) => {
                let mut line = buf.split_to(i + 1);
                if std::mem::take(&mut self.discarding) || line.len() > self.max {
                    return Some(LineEvent::TooLong);
                }
                line.truncate(i);
                if line.last() == Some(&b'\r') {
                    line.truncate(i - 1);
                }
                Some(LineEvent::Line(line))
            }
            None => {
                if self.discarding || buf.len() >= self.max {
                    self.discarding = true;
                    buf.clear();
                }
                None
            }
        }
    }

    /// Forgets a partly discarded line (used when the input buffer is thrown away, as after STARTTLS).
    pub fn reset(&mut self) {
        self.discarding = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_lines() {
        let mut r = LineReader::new(512);
        let mut b = BytesMut::from(&b"NOOP\r\nRSET\nQU"[..]);
        assert_eq!(r.next(&mut b), Some(LineEvent::Line(BytesMut::from(&b"NOOP"[..]))));
        assert_eq!(r.next(&mut b), Some(LineEvent::Line(BytesMut::from(&b"RSET"[..]))));
        assert_eq!(r.next(&mut b), None);
        b.extend_from_slice(b"IT\r\n");
        assert_eq!(r.next(&mut b), Some(LineEvent::Line(BytesMut::from(&b"QUIT"[..]))));
    }

    #[test]
    fn cap_is_inclusive_of_crlf() {
        let mut r = LineReader::new(10);
        let mut b = BytesMut::from(&b"12345678\r\n123456789\r\nNOOP\r\n"[..]);
        assert_eq!(r.next(&mut b), Some(LineEvent::Line(BytesMut::from(&b"12345678"[..]))));
        assert_eq!(r.next(&mut b), Some(LineEvent::TooLong));
        assert_eq!(r.next(&mut b), Some(LineEvent::Line(BytesMut::from(&b"NOOP"[..]))));
    }

    #[test]
    fn long_line_across_reads_is_discarded_to_its_end() {
        let mut r = LineReader::new(10);
        let mut b = BytesMut::from(&b"0123456789abc"[..]);
        assert_eq!(r.next(&mut b), None);
        assert!(b.is_empty());
        b.extend_from_slice(b"QUIT\r\nNOOP\r\n");
        assert_eq!(r.next(&mut b), Some(LineEvent::TooLong));
        assert_eq!(r.next(&mut b), Some(LineEvent::Line(BytesMut::from(&b"NOOP"[..]))));
    }
}
