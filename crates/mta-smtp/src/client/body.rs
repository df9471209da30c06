//! Message content as it goes on the wire, sans-I/O.
//!
//! Stored messages already have CRLF line endings (the server refuses bare CR/LF), so the usual case is "send the
//! bytes as they are" and costs one `memchr` scan, no copy. When a bare CR or LF does occur (a message injected
//! through some other path) it is sent as CRLF: a lone LF or CR followed by `.` is how SMTP smuggling ends a
//! message early at a lenient receiver, and we never want to be the one who relays that.

use std::borrow::Cow;

/// The content ready to write: for `DATA` dot-stuffed (`dot_stuff`), for `BDAT` as is; in both cases with every
/// line ending made CRLF. Borrows `data` when nothing changes.
pub fn encode(data: &[u8], dot_stuff: bool) -> Cow<'_, [u8]> {
    if !needs_change(data, dot_stuff) {
        return Cow::Borrowed(data);
    }
    let mut out = Vec::with_capacity(data.len() + data.len() / 32 + 2);
    if dot_stuff && data.first() == Some(&b'.') {
        out.push(b'.');
    }
    let mut start = 0;
    let mut breaks = memchr::memchr2_iter(b'\r', b'\n', data);
    while let Some(p) = breaks.next() {
        out.extend_from_slice(&data[start..p]);
        let end = if data[p] == b'\r' && data.get(p + 1) == Some(&b'\n') {
            breaks.next();
            p + 2
        } else {
            p + 1
        };
        out.extend_from_slice(b"\r\n");
        if dot_stuff && data.get(end) == Some(&b'.') {
            out.push(b'.');
        }
        start = end;
    }
    out.extend_from_slice(&data[start..]);
    Cow::Owned(out)
}

fn needs_change(data: &[u8], dot_stuff: bool) -> bool {
    if dot_stuff && data.first() == Some(&b'.') {
        return true;
    }
    let mut breaks = memchr::memchr2_iter(b'\r', b'\n', data);
    while let Some(p) = breaks.next() {
        if data[p] == b'\n' || data.get(p + 1) != Some(&b'\n') {
            return true; // bare LF or bare CR
        }
        breaks.next();
        if dot_stuff && data.get(p + 2) == Some(&b'.') {
            return true;
        }
    }
    false
}

/// What ends `DATA` content that went through [`encode`]: `.` on its own line, with a CRLF first when the content
/// does not end with one (and nothing extra for empty content).
pub fn data_terminator(encoded: &[u8]) -> &'static [u8] {
    if encoded.is_empty() || encoded.ends_with(b"\r\n") {
        b".\r\n"
    } else {
        b"\r\n.\r\n"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn wire(data: &[u8]) -> Vec<u8> {
        let body = encode(data, true);
        let mut out = body.to_vec();
        out.extend_from_slice(data_terminator(&body));
        out
    }

    /// What a receiver recovers from DATA content: lines up to the lone dot, leading dot removed.
    fn unstuff(wire: &[u8]) -> Option<Vec<u8>> {
        let mut out = Vec::new();
        let mut rest = wire;
        loop {
            let nl = rest.windows(2).position(|w| w == b"\r\n")?;
            let line = &rest[..nl];
            rest = &rest[nl + 2..];
            if line == b"." {
                return rest.is_empty().then_some(out);
            }
            out.extend_from_slice(line.strip_prefix(b".").unwrap_or(line));
            out.extend_from_slice(b"\r\n");
        }
    }

    #[test]
    fn clean_content_is_borrowed() {
        let data = b"Subject: x\r\n\r\nbody\r\n";
        assert!(matches!(encode(data, true), Cow::Borrowed(_)));
        assert_eq!(wire(data), b"Subject: x\r\n\r\nbody\r\n.\r\n");
    }

    #[test]
    fn leading_dots_are_doubled() {
        assert_eq!(wire(b".start\r\nmid\r\n.\r\n..two\r\n"), b"..start\r\nmid\r\n..\r\n...two\r\n.\r\n");
        // BDAT: no stuffing.
        assert!(matches!(encode(b".start\r\n", false), Cow::Borrowed(_)));
    }

    #[test]
    fn missing_final_crlf_is_added_and_empty_content_is_empty() {
        assert_eq!(wire(b"no newline"), b"no newline\r\n.\r\n");
        assert_eq!(wire(b""), b".\r\n");
    }

    #[test]
    fn bare_line_endings_become_crlf_so_nothing_can_end_the_message_early() {
        assert_eq!(wire(b"a\n.\nb\r.\rc"), b"a\r\n..\r\nb\r\n..\r\nc\r\n.\r\n");
        assert_eq!(encode(b"a\nb\r", false).as_ref(), b"a\r\nb\r\n");
    }

    proptest! {
        /// Whatever the content, the receiver gets exactly our lines back (with CRLF endings) and the message
        /// ends only at our terminator.
        #[test]
        fn stuffing_round_trips(data in proptest::collection::vec(prop_oneof![Just(b'.'), Just(b'\r'), Just(b'\n'), Just(b'a')], 0..200)) {
            let w = wire(&data);
            let back = unstuff(&w);
            prop_assert!(back.is_some(), "terminator not found exactly at the end");
            let mut expected = encode(&data, false).into_owned();
            if !expected.is_empty() && !expected.ends_with(b"\r\n") {
                expected.extend_from_slice(b"\r\n");
            }
            prop_assert_eq!(back.unwrap_or_default(), expected);
        }
    }
}
