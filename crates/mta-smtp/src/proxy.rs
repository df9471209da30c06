//! PROXY protocol v1 (text) and v2 (binary) headers, as sent by HAProxy and cloud load balancers before the
//! client's first byte. Parsing is sans-I/O; [`read_header`] reads exactly the header, nothing more, so the
//! stream can go on to TLS or SMTP untouched.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use tokio::io::{AsyncRead, AsyncReadExt};

/// The v2 signature.
const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// The longest v1 line, CRLF included.
const V1_MAX: usize = 107;

/// The addresses a proxy reported. `None` for `UNKNOWN` (v1) and `LOCAL` or non-IP families (v2): the
/// connection's own addresses apply then.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ProxyHeader {
    /// The real client.
    pub source: Option<SocketAddr>,
    /// The address the client connected to.
    pub destination: Option<SocketAddr>,
}

/// A bad or missing PROXY header: close the connection without a reply.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProxyError {
    /// The bytes are not a valid PROXY header.
    #[error("invalid PROXY header: {0}")]
    Invalid(&'static str),
    /// Reading the header failed.
    #[error("reading PROXY header: {0}")]
    Io(#[from] std::io::Error),
}

/// Parses a header at the start of `buf`: `Ok(None)` when more bytes are needed, else the header and its
/// length in octets.
pub fn parse(buf: &[u8]) -> Result<Option<(ProxyHeader, usize)>, ProxyError> {
    if buf.len() >= 6 && buf.starts_with(b"PROXY ") {
        let Some(end) = memchr::memchr(b'\n', &buf[..buf.len().min(V1_MAX)]) else {
            return if buf.len() >= V1_MAX { Err(ProxyError::Invalid("v1 line too long")) } else { Ok(None) };
        };
        return parse_v1(&buf[..=end]).map(|h| Some((h, end + 1)));
    }
    let n = buf.len().min(V2_SIGNATURE.len());
    if buf[..n] == V2_SIGNATURE[..n] {
        if buf.len() < 16 {
            return Ok(None);
        }
        let total = 16 + usize::from(u16::from_be_bytes([buf[14], buf[15]]));
        if buf.len() < total {
            return Ok(None);
        }
        return parse_v2(&buf[..total]).map(|h| Some((h, total)));
    }
    if b"PROXY ".starts_with(buf) {
        return Ok(None);
    }
    Err(ProxyError::Invalid("no PROXY header"))
}

/// Parses a v1 line (`PROXY TCP4 192.0.2.1 198.51.100.1 5678 25\r\n`).
pub fn parse_v1(line: &[u8]) -> Result<ProxyHeader, ProxyError> {
    let bad = ProxyError::Invalid("malformed v1 header");
    let line = line.strip_suffix(b"\r\n").ok_or(ProxyError::Invalid("v1 header without CRLF"))?;
    let text = std::str::from_utf8(line).map_err(|_| ProxyError::Invalid("malformed v1 header"))?;
    let mut parts = text.split(' ');
    if parts.next() != Some("PROXY") {
        return Err(bad);
    }
    let family = parts.next().ok_or(ProxyError::Invalid("malformed v1 header"))?;
    if family == "UNKNOWN" {
        return Ok(ProxyHeader::default());
    }
    let (Some(src), Some(dst), Some(sport), Some(dport), None) =
        (parts.next(), parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad);
    };
    let (src, dst): (IpAddr, IpAddr) = match family {
        "TCP4" => (
            src.parse::<Ipv4Addr>().map_err(|_| ProxyError::Invalid("bad v1 address"))?.into(),
            dst.parse::<Ipv4Addr>().map_err(|_| ProxyError::Invalid("bad v1 address"))?.into(),
        ),
        "TCP6" => (
            src.parse::<Ipv6Addr>().map_err(|_| ProxyError::Invalid("bad v1 address"))?.into(),
            dst.parse::<Ipv6Addr>().map_err(|_| ProxyError::Invalid("bad v1 address"))?.into(),
        ),
        _ => return Err(ProxyError::Invalid("unknown v1 family")),
    };
    let port = |p: &str| {
        if p.is_empty() || p.len() > 5 || !p.bytes().all(|b| b.is_ascii_digit()) {
            return Err(ProxyError::Invalid("bad v1 port"));
        }
        p.parse::<u16>().map_err(|_| ProxyError::Invalid("bad v1 port"))
    };
    Ok(ProxyHeader {
        source: Some(SocketAddr::new(src, port(sport)?)),
        destination: Some(SocketAddr::new(dst, port(dport)?)),
    })
}

/// Parses a complete v2 header (signature, 4 fixed octets and the address block; TLVs are ignored).
pub fn parse_v2(header: &[u8]) -> Result<ProxyHeader, ProxyError> {
    if header.len() < 16 || header[..12] != V2_SIGNATURE {
        return Err(ProxyError::Invalid("bad v2 signature"));
    }
    let (version, command) = (header[12] >> 4, header[12] & 0x0f);
    if version != 2 {
        return Err(ProxyError::Invalid("bad v2 version"));
    }
    let body = &header[16..];
    if usize::from(u16::from_be_bytes([header[14], header[15]])) != body.len() {
        return Err(ProxyError::Invalid("bad v2 length"));
    }
    match command {
        0 => return Ok(ProxyHeader::default()),
        1 => {}
        _ => return Err(ProxyError::Invalid("bad v2 command")),
    }
    let port = |at: usize| u16::from_be_bytes([body[at], body[at + 1]]);
    match header[13] >> 4 {
        1 if body.len() >= 12 => {
            let src = Ipv4Addr::new(body[0], body[1], body[2], body[3]);
            let dst = Ipv4Addr::new(body[4], body[5], body[6], body[7]);
            Ok(ProxyHeader {
                source: Some(SocketAddr::new(src.into(), port(8))),
                destination: Some(SocketAddr::new(dst.into(), port(10))),
            })
        }
        2 if body.len() >= 36 => {
            let mut src = [0u8; 16];
            let mut dst = [0u8; 16];
            src.copy_from_slice(&body[..16]);
            dst.copy_from_slice(&body[16..32]);
            Ok(ProxyHeader {
                source: Some(SocketAddr::new(Ipv6Addr::from(src).into(), port(32))),
                destination: Some(SocketAddr::new(Ipv6Addr::from(dst).into(), port(34))),
            })
        }
        1 | 2 => Err(ProxyError::Invalid("short v2 address block")),
        _ => Ok(ProxyHeader::default()),
    }
}

/// Reads exactly one header from `stream` (never a byte past it). Put a timeout around it.
pub async fn read_header<S: AsyncRead + Unpin>(stream: &mut S) -> Result<ProxyHeader, ProxyError> {
    let mut buf = vec![0u8; 8];
    stream.read_exact(&mut buf).await?;
    if buf.starts_with(b"PROXY ") {
        // Byte by byte up to the LF: the line is short and this happens once per connection.
        while buf.last() != Some(&b'\n') {
            if buf.len() >= V1_MAX {
                return Err(ProxyError::Invalid("v1 line too long"));
            }
            buf.push(stream.read_u8().await?);
        }
        return parse_v1(&buf);
    }
    if buf[..] != V2_SIGNATURE[..8] {
        return Err(ProxyError::Invalid("no PROXY header"));
    }
    buf.resize(16, 0);
    stream.read_exact(&mut buf[8..]).await?;
    let len = usize::from(u16::from_be_bytes([buf[14], buf[15]]));
    buf.resize(16 + len, 0);
    stream.read_exact(&mut buf[16..]).await?;
    parse_v2(&buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sa(s: &str) -> Option<SocketAddr> {
        s.parse().ok()
    }

    #[test]
    fn v1() {
        let h = parse(b"PROXY TCP4 192.0.2.1 198.51.100.2 5678 25\r\nEHLO").ok().flatten();
        assert_eq!(h, Some((ProxyHeader { source: sa("192.0.2.1:5678"), destination: sa("198.51.100.2:25") }, 43)));
        let h = parse_v1(b"PROXY TCP6 2001:db8::1 2001:db8::2 1 2\r\n").ok();
        assert_eq!(h.and_then(|h| h.source), sa("[2001:db8::1]:1"));
        assert_eq!(parse_v1(b"PROXY UNKNOWN\r\n").ok(), Some(ProxyHeader::default()));
        assert!(parse_v1(b"PROXY TCP4 192.0.2.1 198.51.100.2 5678 99999\r\n").is_err());
        assert!(parse_v1(b"PROXY TCP4 2001:db8::1 198.51.100.2 1 2\r\n").is_err());
        assert!(matches!(parse(b"PROXY TCP4 1.2"), Ok(None)));
        assert!(matches!(parse(b"PRO"), Ok(None)));
        assert!(parse(b"EHLO x\r\n").is_err());
    }

    #[test]
    fn v2() {
        let mut h = V2_SIGNATURE.to_vec();
        h.extend_from_slice(&[0x21, 0x11, 0, 12, 192, 0, 2, 1, 198, 51, 100, 2, 0x16, 0x2e, 0, 25]);
        let parsed = parse(&h).ok().flatten();
        assert_eq!(
            parsed,
            Some((ProxyHeader { source: sa("192.0.2.1:5678"), destination: sa("198.51.100.2:25") }, 28))
        );
        assert!(matches!(parse(&h[..20]), Ok(None)));
        let mut local = V2_SIGNATURE.to_vec();
        local.extend_from_slice(&[0x20, 0x00, 0, 0]);
        assert_eq!(parse_v2(&local).ok(), Some(ProxyHeader::default()));
        let mut short = V2_SIGNATURE.to_vec();
        short.extend_from_slice(&[0x21, 0x11, 0, 4, 1, 2, 3, 4]);
        assert!(parse_v2(&short).is_err());
    }

    #[tokio::test]
    async fn read_stops_at_the_header() {
        let mut input: &[u8] = b"PROXY TCP4 192.0.2.1 198.51.100.2 5678 25\r\nEHLO x\r\n";
        let h = read_header(&mut input).await.ok();
        assert_eq!(h.and_then(|h| h.source), sa("192.0.2.1:5678"));
        assert_eq!(input, b"EHLO x\r\n");
    }
}
