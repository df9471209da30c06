//! Who is calling: the client address (behind trusted proxies) and the API key.
//!
//! - With `http.api_keys` configured, every `/api/v1/*` request needs `Authorization: Bearer <key>`: no (or a
//!   malformed) header is `401 unauthorized`, a key that matches no configured hash is `403 invalid_api_key`.
//!   Keys are compared as SHA-256 digests in constant time.
//! - Without keys, only loopback clients are served (`403 forbidden` for others).
//! - The client address is the TCP peer, unless the peer is in `http.trusted_proxies`: then it is the right-most
//!   address of `X-Forwarded-For` that is not itself a trusted proxy (the left-most one if all are).
//! - IPv4-mapped IPv6 addresses (`::ffff:1.2.3.4`) are their IPv4 address: peers come canonical from the
//!   listener, `X-Forwarded-For` elements and `trusted_proxies` networks are made so here.

use std::net::IpAddr;

use axum::http::{header, HeaderMap, StatusCode};
use ipnet::IpNet;

use super::error::ApiError;
use crate::secrets::{constant_time_eq, sha256_hash};

/// The authenticated caller of one request (a request extension).
#[derive(Debug, Clone)]
pub struct Caller {
    /// Stable name of the API key (`key-<first 16 hex digits of its hash>`), or `loopback` without keys.
    /// Scopes idempotency keys and rate limits, and is recorded as the message's `auth`.
    pub label: String,
    /// The client's address (after trusted proxies).
    pub ip: IpAddr,
}

/// One accepted key: its configured hash and label.
#[derive(Debug, Clone)]
struct Key {
    hash: String,
    label: String,
}

/// The auth settings of the HTTP section.
#[derive(Debug, Clone)]
pub struct Auth {
    keys: Vec<Key>,
    trusted_proxies: Vec<IpNet>,
}

impl Auth {
    /// From `http.api_keys` (`sha256:<hex>`) and `http.trusted_proxies`.
    pub fn new(api_keys: &[String], trusted_proxies: &[IpNet]) -> anyhow::Result<Self> {
        let mut keys = Vec::with_capacity(api_keys.len());
        for (i, k) in api_keys.iter().enumerate() {
            let k = k.trim().to_ascii_lowercase();
            let hex = k.strip_prefix("sha256:").unwrap_or("");
            if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                anyhow::bail!(
                    "http.api_keys[{i}] is not a \"sha256:<64 hex digits>\" hash (make one with `mta-server hash-key`)"
                );
            }
            keys.push(Key { label: format!("key-{}", &hex[..16]), hash: k });
        }
        Ok(Auth { keys, trusted_proxies: trusted_proxies.iter().map(canonical_net).collect() })
    }

    fn trusted(&self, ip: IpAddr) -> bool {
        self.trusted_proxies.iter().any(|n| n.contains(&ip))
    }

    /// The client's address: `peer`, or what a trusted proxy says in `X-Forwarded-For`.
    pub fn client_ip(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        if !self.trusted(peer) {
            return peer;
        }
        let hops: Vec<IpAddr> = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|s| parse_forwarded_ip(s.trim()))
            .collect();
        hops.iter().rev().find(|ip| !self.trusted(**ip)).or(hops.first()).copied().unwrap_or(peer)
    }

    /// Check the request's credentials; `client` is the address from [`Auth::client_ip`].
    pub fn check(&self, headers: &HeaderMap, client: IpAddr) -> Result<Caller, ApiError> {
        if self.keys.is_empty() {
            if is_loopback(client) {
                return Ok(Caller { label: "loopback".into(), ip: client });
            }
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                "no API keys are configured: only loopback clients are served",
            ));
        }
        let Some(value) = headers.get(header::AUTHORIZATION) else {
            return Err(ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", "missing Authorization: Bearer <key>"));
        };
        let token = value
            .to_str()
            .ok()
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, t)| t.trim())
            .filter(|t| !t.is_empty());
        let Some(token) = token else {
            return Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "malformed Authorization header (want Bearer <key>)",
            ));
        };
        let presented = sha256_hash(token);
        // Compare against every key (no early exit on the first match, so timing says nothing about which).
        let mut found: Option<&Key> = None;
        for k in &self.keys {
            if constant_time_eq(presented.as_bytes(), k.hash.as_bytes()) {
                found = Some(k);
            }
        }
        match found {
            Some(k) => Ok(Caller { label: k.label.clone(), ip: client }),
            None => Err(ApiError::new(StatusCode::FORBIDDEN, "invalid_api_key", "the API key is not valid")),
        }
    }
}

fn is_loopback(ip: IpAddr) -> bool {
    ip.to_canonical().is_loopback()
}

/// A network inside `::ffff:0:0/96` as the IPv4 network it maps (peers are compared in IPv4 form).
fn canonical_net(net: &IpNet) -> IpNet {
    match net {
        IpNet::V6(v6) if v6.prefix_len() >= 96 => match v6.network().to_ipv4_mapped() {
            Some(v4) => ipnet::Ipv4Net::new(v4, v6.prefix_len() - 96).map_or(*net, IpNet::V4),
            None => *net,
        },
        _ => *net,
    }
}

/// One `X-Forwarded-For` element: `1.2.3.4`, `1.2.3.4:567`, `2001:db8::1` or `[2001:db8::1]:567`.
fn parse_forwarded_ip(s: &str) -> Option<IpAddr> {
    let ip = if let Ok(ip) = s.parse::<IpAddr>() {
        ip
    } else if let Ok(sa) = s.parse::<std::net::SocketAddr>() {
        sa.ip()
    } else {
        s.strip_prefix('[').and_then(|r| r.strip_suffix(']')).and_then(|r| r.parse().ok())?
    };
    Some(ip.to_canonical())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let auth = Auth::new(&[], &["10.0.0.0/8".parse().unwrap()]).unwrap();
        let h = headers(&[("x-forwarded-for", "203.0.113.9, 198.51.100.7, 10.1.1.1")]);
        assert_eq!(auth.client_ip("10.0.0.1".parse().unwrap(), &h), "198.51.100.7".parse::<IpAddr>().unwrap());
        assert_eq!(auth.client_ip("192.0.2.1".parse().unwrap(), &h), "192.0.2.1".parse::<IpAddr>().unwrap());
        let all_trusted = headers(&[("x-forwarded-for", "10.9.9.9, 10.1.1.1")]);
        assert_eq!(auth.client_ip("10.0.0.1".parse().unwrap(), &all_trusted), "10.9.9.9".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn ipv4_mapped_addresses_are_their_ipv4_address() {
        let auth = Auth::new(&[], &["::ffff:10.0.0.0/104".parse().unwrap()]).unwrap();
        let h = headers(&[("x-forwarded-for", "::ffff:203.0.113.9, [::ffff:10.1.1.1]:80")]);
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(auth.client_ip(ip("10.0.0.1"), &h), ip("203.0.113.9"));
        assert!(is_loopback(ip("::ffff:127.0.0.1")));
        assert!(auth.check(&HeaderMap::new(), ip("::ffff:127.0.0.1")).is_ok());
    }

    #[test]
    fn keys_are_checked_and_labelled() {
        let auth = Auth::new(&[sha256_hash("secret-1")], &[]).unwrap();
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        assert_eq!(auth.check(&headers(&[]), ip).unwrap_err().status, StatusCode::UNAUTHORIZED);
        let bad = headers(&[("authorization", "Bearer nope")]);
        assert_eq!(auth.check(&bad, ip).unwrap_err().status, StatusCode::FORBIDDEN);
        let good = headers(&[("authorization", "Bearer secret-1")]);
        assert!(auth.check(&good, ip).unwrap().label.starts_with("key-"));
    }

    #[test]
    fn without_keys_only_loopback() {
        let auth = Auth::new(&[], &[]).unwrap();
        assert!(auth.check(&HeaderMap::new(), "::1".parse().unwrap()).is_ok());
        assert!(auth.check(&HeaderMap::new(), "192.0.2.1".parse().unwrap()).is_err());
    }
}
