//! A loopback DNS server answering from the pool, so that a plain hickory `TokioResolver`
//! (mail-auth's) shares our cache, coalescing, caps and retry budget.
//!
//! Point the client at the returned address with its own cache off (`cache_size = 0`) and
//! `attempts = 0`. Answers are synthesized under the query name (a CNAME chain is flattened);
//! TTLs are what is left in our cache. NXDOMAIN → NXDOMAIN, NODATA (and any question about the
//! root name, e.g. a null MX's target) → NOERROR/empty, a transient
//! failure → SERVFAIL, other query types → NOTIMP. UDP answers too large for the client are
//! truncated (TC) and the client retries over TCP on the same port.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use hickory_proto::op::{Edns, Message, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, MX, PTR, TXT};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

use super::cache::Answer;
use super::error::DnsError;
use super::name::normalize;
use super::Resolver;

/// Requests answered at once; beyond, UDP requests are dropped (the client times out).
const MAX_CONCURRENT: usize = 1024;

/// A hickory resolver that asks only our stub at `stub`: hickory's cache off and no retries of its own (the pool
/// behind the stub caches and retries), no hosts file or search list, `timeout` per query. mail-auth uses it.
pub fn stub_client(
    stub: SocketAddr,
    timeout: std::time::Duration,
) -> Result<hickory_resolver::TokioResolver, hickory_resolver::net::NetError> {
    use hickory_resolver::config::{NameServerConfig, ResolveHosts, ResolverConfig};
    use hickory_resolver::net::runtime::TokioRuntimeProvider;
    let mut ns = NameServerConfig::udp_and_tcp(stub.ip());
    for c in ns.connections.iter_mut() {
        c.port = stub.port();
    }
    let mut b = hickory_resolver::TokioResolver::builder_with_config(
        ResolverConfig::from_name_servers(vec![ns]),
        TokioRuntimeProvider::default(),
    );
    let o = b.options_mut();
    o.cache_size = 0;
    o.attempts = 0;
    o.timeout = timeout;
    o.use_hosts_file = ResolveHosts::Never;
    o.ndots = 0;
    o.edns0 = true;
    b.build()
}

/// Bind UDP and TCP on one port. With port 0 the UDP port the kernel picks may be taken for TCP, so try again
/// with a new port (a fixed port is tried once).
async fn bind_same_port(addr: SocketAddr) -> io::Result<(UdpSocket, TcpListener)> {
    let mut last = None;
    for _ in 0..if addr.port() == 0 { 50 } else { 1 } {
        let udp = UdpSocket::bind(addr).await?;
        match TcpListener::bind(udp.local_addr()?).await {
            Ok(tcp) => return Ok((udp, tcp)),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| io::Error::new(io::ErrorKind::AddrInUse, "no common UDP/TCP port")))
}

impl Resolver {
    /// Serve this pool over DNS (UDP and TCP, same port) on `addr` (`127.0.0.1:0` for an
    /// ephemeral port). Returns the bound address and the server task (abort it to stop).
    pub async fn serve_stub(&self, addr: SocketAddr) -> io::Result<(SocketAddr, JoinHandle<()>)> {
        let (udp, tcp) = bind_same_port(addr).await?;
        let udp = Arc::new(udp);
        let local = udp.local_addr()?;
        let resolver = self.clone();
        let handle = tokio::spawn(async move {
            let limit = Arc::new(Semaphore::new(MAX_CONCURRENT));
            let tcp_task = tokio::spawn(serve_tcp(resolver.clone(), tcp, limit.clone()));
            let _abort = AbortOnDrop(tcp_task);
            let mut buf = vec![0u8; 4096];
            loop {
                let Ok((n, peer)) = udp.recv_from(&mut buf).await else {
                    continue;
                };
                let Ok(permit) = limit.clone().try_acquire_owned() else {
                    continue;
                };
                let packet = buf[..n].to_vec();
                let (r, sock) = (resolver.clone(), udp.clone());
                tokio::spawn(async move {
                    if let Some(resp) = respond(&r, &packet, true).await {
                        let _ = sock.send_to(&resp, peer).await;
                    }
                    drop(permit);
                });
            }
        });
        Ok((local, handle))
    }
}

struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn serve_tcp(resolver: Resolver, listener: TcpListener, limit: Arc<Semaphore>) {
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            continue;
        };
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            continue;
        };
        let r = resolver.clone();
        tokio::spawn(async move {
            let _permit = permit;
            loop {
                let mut len = [0u8; 2];
                let read = tokio::time::timeout(std::time::Duration::from_secs(10), stream.read_exact(&mut len)).await;
                if !matches!(read, Ok(Ok(_))) {
                    return;
                }
                let mut packet = vec![0u8; usize::from(u16::from_be_bytes(len))];
                if stream.read_exact(&mut packet).await.is_err() {
                    return;
                }
                let Some(resp) = respond(&r, &packet, false).await else {
                    return;
                };
                let Ok(n) = u16::try_from(resp.len()) else {
                    return;
                };
                if stream.write_all(&n.to_be_bytes()).await.is_err() || stream.write_all(&resp).await.is_err() {
                    return;
                }
            }
        });
    }
}

/// Answer one DNS request from the pool. `None`: not a decodable query (dropped).
async fn respond(r: &Resolver, packet: &[u8], udp: bool) -> Option<Vec<u8>> {
    let req = Message::from_vec(packet).ok()?;
    let mut resp = Message::response(req.metadata.id, req.metadata.op_code);
    resp.metadata.recursion_desired = req.metadata.recursion_desired;
    resp.metadata.recursion_available = true;
    resp.add_queries(req.queries.iter().cloned());
    if req.edns.is_some() {
        let mut edns = Edns::new();
        edns.set_max_payload(1232);
        resp.set_edns(edns);
    }
    let max_len = usize::from(req.max_payload());
    let Some(q) = req.queries.first() else {
        resp.metadata.response_code = ResponseCode::FormErr;
        return resp.to_vec().ok();
    };
    let qname = q.name().clone();
    let rtype = q.query_type();
    if !matches!(rtype, RecordType::A | RecordType::AAAA | RecordType::MX | RecordType::TXT | RecordType::PTR) {
        resp.metadata.response_code = ResponseCode::NotImp;
        return resp.to_vec().ok();
    }
    // The root name (mail-auth asks `. A` for a null MX target): it has no such records. Answered
    // here as NODATA, not FORMERR, which hickory would turn into an error (a temperror for SPF).
    if qname.is_root() {
        return resp.to_vec().ok();
    }
    let key = match normalize(&qname.to_ascii()) {
        Ok(n) => (n, rtype),
        Err(_) => {
            resp.metadata.response_code = ResponseCode::FormErr;
            return resp.to_vec().ok();
        }
    };
    match r.inner.lookup(key).await {
        Ok((entry, _)) => {
            let ttl =
                entry.expires.saturating_duration_since(std::time::Instant::now()).as_secs().min(u64::from(u32::MAX))
                    as u32;
            match &entry.data {
                Ok(answer) => {
                    for rdata in to_rdata(answer) {
                        resp.add_answer(Record::from_rdata(qname.clone(), ttl, rdata));
                    }
                }
                Err(DnsError::NxDomain) => resp.metadata.response_code = ResponseCode::NXDomain,
                Err(_) => {}
            }
        }
        Err(e) if e.is_permanent() => {
            if e == DnsError::NxDomain {
                resp.metadata.response_code = ResponseCode::NXDomain;
            }
        }
        Err(_) => resp.metadata.response_code = ResponseCode::ServFail,
    }
    let bytes = resp.to_vec().ok()?;
    if udp && bytes.len() > max_len {
        resp.answers.clear();
        resp.metadata.truncation = true;
        return resp.to_vec().ok();
    }
    Some(bytes)
}

fn host(name: &str) -> Option<Name> {
    if name == "." {
        return Some(Name::root());
    }
    Name::from_ascii(format!("{name}.")).ok()
}

fn to_rdata(a: &Answer) -> Vec<RData> {
    match a {
        Answer::A(v) => v.iter().map(|ip| RData::A(A(*ip))).collect(),
        Answer::Aaaa(v) => v.iter().map(|ip| RData::AAAA(AAAA(*ip))).collect(),
        Answer::Mx(v) => v.iter().filter_map(|m| Some(RData::MX(MX::new(m.preference, host(&m.exchange)?)))).collect(),
        Answer::Txt(v) => {
            v.iter().map(|t| RData::TXT(TXT::from_bytes(t.strings.iter().map(|s| s.as_slice()).collect()))).collect()
        }
        Answer::Ptr(v) => v.iter().filter_map(|p| Some(RData::PTR(PTR(host(p)?)))).collect(),
        // Not a type mail-auth asks for; the stub never queries it.
        Answer::Tlsa(_) => Vec::new(),
    }
}
