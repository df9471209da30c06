//! A scripted authoritative DNS server for suites that define their own answers record by
//! record, such as RFC 7208's SPF suite: any name (`foo:bar/baz.example.com`, names under the
//! root, several TLDs in one table), queries left unanswered (`TIMEOUT`), chosen RCODEs, raw
//! TXT bytes. hickory-server's in-memory zones need an SOA per zone, refuse such names and
//! always answer, hence this small server on hickory-proto's codec (UDP and TCP, one port).

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, CNAME, MX, PTR, TXT};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinHandle;

/// One scripted entry of a name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scripted {
    /// An A record.
    A(Ipv4Addr),
    /// An AAAA record.
    Aaaa(Ipv6Addr),
    /// An MX record; an empty exchange is the root (null MX).
    Mx(u16, String),
    /// A TXT record: its character-strings as raw bytes (none: an empty record).
    Txt(Vec<Vec<u8>>),
    /// A PTR record.
    Ptr(String),
    /// A CNAME: answers carry it and the target's records of the asked type (one level).
    Cname(String),
    /// Queries for types the name has no record of get no answer at all.
    Timeout,
    /// Queries for types the name has no record of get this RCODE.
    Rcode(ResponseCode),
}

/// The server's data: names (any case, trailing dot optional) and their entries. A name not
/// listed is NXDOMAIN; a listed name without a record of the asked type is NODATA.
#[derive(Debug, Clone, Default)]
pub struct ScriptedZone {
    names: HashMap<String, Vec<Scripted>>,
}

fn key(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

/// A name from raw labels (no syntax check: the suites use names outside host name syntax).
fn raw_name(name: &str) -> Option<Name> {
    let labels: Vec<&[u8]> = name.split('.').filter(|l| !l.is_empty()).map(str::as_bytes).collect();
    if labels.is_empty() {
        return Some(Name::root());
    }
    Name::from_labels(labels).ok()
}

impl ScriptedZone {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Add an entry to `name`.
    pub fn add(&mut self, name: &str, entry: Scripted) -> &mut Self {
        self.names.entry(key(name)).or_default().push(entry);
        self
    }

    /// Make `name` exist (NODATA for every type) without records.
    pub fn touch(&mut self, name: &str) -> &mut Self {
        self.names.entry(key(name)).or_default();
        self
    }

    fn rdata(e: &Scripted, t: RecordType) -> Option<RData> {
        match (e, t) {
            (Scripted::A(ip), RecordType::A) => Some(RData::A(A(*ip))),
            (Scripted::Aaaa(ip), RecordType::AAAA) => Some(RData::AAAA(AAAA(*ip))),
            (Scripted::Mx(p, ex), RecordType::MX) => Some(RData::MX(MX::new(*p, raw_name(ex)?))),
            (Scripted::Txt(s), RecordType::TXT) => {
                Some(RData::TXT(TXT::from_bytes(s.iter().map(Vec::as_slice).collect())))
            }
            (Scripted::Ptr(n), RecordType::PTR) => Some(RData::PTR(PTR(raw_name(n)?))),
            (Scripted::Cname(n), RecordType::CNAME) => Some(RData::CNAME(CNAME(raw_name(n)?))),
            _ => None,
        }
    }

    /// The answer to `(qname, qtype)`: `None` means no reply (a timeout).
    fn answer(&self, qname: &Name, qtype: RecordType) -> Option<(ResponseCode, Vec<Record>)> {
        let labels: Vec<String> = qname.iter().map(|l| String::from_utf8_lossy(l).into_owned()).collect();
        let k = key(&labels.join("."));
        let Some(entries) = self.names.get(&k) else {
            return Some((ResponseCode::NXDomain, Vec::new()));
        };
        let mut records: Vec<Record> = entries
            .iter()
            .filter_map(|e| Self::rdata(e, qtype))
            .map(|d| Record::from_rdata(qname.clone(), 300, d))
            .collect();
        if records.is_empty() && qtype != RecordType::CNAME {
            if let Some(Scripted::Cname(target)) = entries.iter().find(|e| matches!(e, Scripted::Cname(_))) {
                let tname = raw_name(target)?;
                records.push(Record::from_rdata(qname.clone(), 300, RData::CNAME(CNAME(tname.clone()))));
                if let Some(tentries) = self.names.get(&key(target)) {
                    records.extend(
                        tentries
                            .iter()
                            .filter_map(|e| Self::rdata(e, qtype))
                            .map(|d| Record::from_rdata(tname.clone(), 300, d)),
                    );
                }
                return Some((ResponseCode::NoError, records));
            }
        }
        if records.is_empty() {
            for e in entries {
                match e {
                    Scripted::Timeout => return None,
                    Scripted::Rcode(code) => return Some((*code, Vec::new())),
                    _ => {}
                }
            }
        }
        Some((ResponseCode::NoError, records))
    }

    fn respond(&self, packet: &[u8], max_udp: Option<usize>) -> Option<Vec<u8>> {
        let req = Message::from_vec(packet).ok()?;
        let q = req.queries.first()?;
        let (code, answers) = self.answer(q.name(), q.query_type())?;
        let mut resp = Message::response(req.metadata.id, req.metadata.op_code);
        resp.metadata.recursion_desired = req.metadata.recursion_desired;
        resp.metadata.authoritative = true;
        resp.metadata.response_code = code;
        resp.add_queries(req.queries.iter().cloned());
        for a in answers {
            resp.add_answer(a);
        }
        let bytes = resp.to_vec().ok()?;
        match max_udp {
            Some(max) if bytes.len() > max => {
                resp.answers.clear();
                resp.metadata.truncation = true;
                resp.to_vec().ok()
            }
            _ => Some(bytes),
        }
    }
}

/// A [`ScriptedZone`] served on a loopback address (UDP and TCP, same port). Stops when dropped.
pub struct ScriptedDnsServer {
    addr: SocketAddr,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for ScriptedDnsServer {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl ScriptedDnsServer {
    /// Serve `zone` on `ip`:<ephemeral>.
    pub async fn start(ip: IpAddr, zone: ScriptedZone) -> io::Result<Self> {
        let (udp, tcp) = super::bind_pair(ip).await?;
        let addr = udp.local_addr()?;
        let zone = Arc::new(zone);
        let z = zone.clone();
        let udp_task = tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            loop {
                let Ok((n, peer)) = udp.recv_from(&mut buf).await else {
                    continue;
                };
                if let Some(resp) = z.respond(&buf[..n], Some(1232)) {
                    let _ = udp.send_to(&resp, peer).await;
                }
            }
        });
        let tcp_task = tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = tcp.accept().await else {
                    continue;
                };
                let z = zone.clone();
                tokio::spawn(async move {
                    loop {
                        let mut len = [0u8; 2];
                        match tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut len)).await {
                            Ok(Ok(_)) => {}
                            _ => return,
                        }
                        let mut p = vec![0u8; usize::from(u16::from_be_bytes(len))];
                        if s.read_exact(&mut p).await.is_err() {
                            return;
                        }
                        let Some(resp) = z.respond(&p, None) else {
                            continue;
                        };
                        let Ok(n) = u16::try_from(resp.len()) else {
                            return;
                        };
                        if s.write_all(&n.to_be_bytes()).await.is_err() || s.write_all(&resp).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        Ok(Self { addr, tasks: vec![udp_task, tcp_task] })
    }

    /// The server's address (UDP and TCP).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}
